"""``taxi-pipeline run`` / ``sql`` end to end on the embedded default (issue 2)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.e2e import Cli, Source
from taxi_pipeline.bootstrap import LocalPipeline
from taxi_pipeline.devkit.generator import GeneratedFile
from taxi_pipeline.domain.datasets import Dataset, Month, object_name


def _expected_ids(generated: GeneratedFile) -> list[str]:
    """The reference formula computed independently, from the raw CSV text (no DuckDB)."""
    layout = generated.dataset.layout
    ids = []
    with gzip.open(generated.path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            parts = []
            for name in layout.id_columns:
                value = row[name]
                if name in (layout.pickup, layout.dropoff) and value:
                    value += "+00"  # BigQuery's CAST(TIMESTAMP AS STRING)
                parts.append(value)
            ids.append(hashlib.md5("".join(parts).encode()).hexdigest().upper())
    return ids


def test_first_load_inserts_every_row_and_rerun_inserts_none(cli: Cli, source: Source) -> None:
    green = source.files[(Dataset.GREEN, Month(2019, 1))]

    code, out = cli("run", "green", "2019-01")
    assert code == 0, out
    assert "SUCCESS" in out
    assert f"{green.rows:,}" in out
    assert cli.rows("SELECT count(*) FROM green_tripdata") == [[str(green.rows)]]
    assert cli.rows("SELECT DISTINCT filename FROM green_tripdata") == [
        ["green_tripdata_2019-01.csv"]
    ]
    out_of_month = cli.rows(
        "SELECT count(*) FROM green_tripdata WHERE lpep_pickup_datetime < '2019-01-01'"
        " OR lpep_pickup_datetime >= '2019-02-01'"
    )
    assert out_of_month == [[str(green.out_of_month_rows)]]

    source.server.reset_log()
    code, out = cli("run", "green", "2019-01")
    assert code == 0, out
    assert cli.rows("SELECT count(*) FROM green_tripdata") == [[str(green.rows)]]
    assert source.server.bytes_sent == 0, "a re-run must not download again"
    runs = cli.rows(
        "SELECT rows_inserted FROM pipeline_loads WHERE month = '2019-01' ORDER BY loaded_at"
    )
    assert runs == [[str(green.rows)]], "the re-run is recognised as already loaded"


def test_ids_equal_an_independent_computation_of_the_formula(cli: Cli, source: Source) -> None:
    yellow = source.files[(Dataset.YELLOW, Month(2019, 1))]
    code, out = cli("run", "yellow", "2019-01")
    assert code == 0, out
    stored = [r[0] for r in cli.rows("SELECT hex(unique_row_id) FROM yellow_tripdata")]
    assert sorted(stored) == sorted(_expected_ids(yellow))
    assert len(set(stored)) == yellow.rows - yellow.duplicate_rows


def test_a_range_loads_months_side_by_side(cli: Cli, source: Source) -> None:
    code, out = cli("run", "yellow", "2019-01..2019-03")
    assert code == 0, out
    counts = cli.rows("SELECT filename, count(*) FROM yellow_tripdata GROUP BY 1 ORDER BY 1")
    assert counts == [
        [f"yellow_tripdata_2019-0{m}.csv", str(source.files[(Dataset.YELLOW, Month(2019, m))].rows)]
        for m in (1, 2, 3)
    ]
    # Loading a month that overlaps a loaded one by stray dates inserts only its own rows.
    code, out = cli("run", "yellow", "2019-02")
    assert code == 0, out
    total = sum(source.files[(Dataset.YELLOW, Month(2019, m))].rows for m in (1, 2, 3))
    assert cli.rows("SELECT count(*) FROM yellow_tripdata") == [[str(total)]]


def test_integer_columns_accept_the_decimal_spelling(cli: Cli, source: Source) -> None:
    code, out = cli("run", "green", "2019-02")
    assert code == 0, out
    green = source.files[(Dataset.GREEN, Month(2019, 2))]
    with gzip.open(green.path, "rt") as handle:
        raw_passengers = [row["passenger_count"] for row in csv.DictReader(handle)]
    assert "1.0" in raw_passengers
    loaded = cli.rows("SELECT count(*) FROM green_tripdata WHERE passenger_count IS NOT NULL")
    assert loaded == [[str(sum(1 for v in raw_passengers if v))]]
    # Everything else in the raw layer was a well-formed value: no bad rows were counted.
    assert "bad" not in cli.rows("SELECT state FROM pipeline_runs WHERE step = 'merge'")[0][0]


def test_missing_month_fails_with_the_reason(cli: Cli) -> None:
    code, out = cli("run", "green", "2020-05")
    assert code == 3, out  # SKIPPED: not published
    assert "not published" in out
    assert cli.rows("SELECT count(*) FROM pipeline_loads") == [["0"]]


def test_bad_month_argument_is_a_usage_error(cli: Cli) -> None:
    code, out = cli("run", "green", "2019-13")
    assert code == 2
    assert "01..12" in out


def test_sql_prints_a_table_by_default(cli: Cli) -> None:
    code, out = cli("run", "green", "2019-01")
    assert code == 0, out
    code, out = cli("sql", "SELECT filename, count(*) AS n FROM green_tripdata GROUP BY 1")
    assert code == 0
    assert "green_tripdata_2019-01.csv" in out
    assert "filename" in out


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE green_tripdata",
        "SELECT 1; DELETE FROM green_tripdata",
        "CREATE TABLE copy AS SELECT * FROM green_tripdata",
        "COPY green_tripdata TO 'out.csv'",
        "EXPLAIN ANALYZE DELETE FROM green_tripdata",
        "/* plan */ explain analyse DROP TABLE green_tripdata",
    ],
)
def test_sql_runs_queries_only(cli: Cli, statement: str) -> None:
    cli("run", "green", "2019-01")
    code, before = cli("sql", "SELECT count(*) FROM green_tripdata", "--format", "csv")
    code, out = cli("sql", statement)
    assert code != 0
    assert "only queries can run here" in out
    assert cli("sql", "SELECT count(*) FROM green_tripdata", "--format", "csv")[1] == before
    assert "copy" not in cli("sql", "SHOW TABLES", "--format", "csv")[1].split()


def test_sql_shows_plans_and_tables(cli: Cli) -> None:
    cli("run", "green", "2019-01")
    for statement in ("EXPLAIN SELECT count(*) FROM green_tripdata", "SHOW TABLES"):
        code, out = cli("sql", statement, "--format", "csv")
        assert code == 0, out
    # `sql` opens the warehouse read-only: even the plan of a write is refused, nothing runs.
    code, out = cli("sql", "EXPLAIN DROP TABLE green_tripdata", "--format", "csv")
    assert code == 1, out
    assert "read-only" in out
    assert "green_tripdata" in cli("sql", "SHOW TABLES", "--format", "csv")[1].split()


def test_lake_holds_the_raw_object_under_the_gcs_name(cli: Cli, source: Source) -> None:
    cli("run", "green", "2019-01")
    lake_file = cli.home / "lake" / object_name(Dataset.GREEN, Month(2019, 1))
    assert lake_file.read_bytes() == source.files[(Dataset.GREEN, Month(2019, 1))].path.read_bytes()
    assert not any((cli.home / "lake" / ".tmp").iterdir())


def test_installed_command_runs(tmp_path: Path, source: Source) -> None:
    """The console script itself (not the in-process runner), as a user types it."""
    script = Path(sys.executable).with_name("taxi-pipeline")
    result = subprocess.run(
        [
            str(script),
            "run",
            "green",
            "2019-01",
            "--source-url",
            source.url,
            "--home",
            str(tmp_path / "h"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "SUCCESS" in result.stdout


def _ctrl_c_after_the_first_month(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as the first month's run ends, before the command submits the next month."""
    drain = LocalPipeline.drain
    signalled: list[int] = []

    def drain_then_ctrl_c(self: LocalPipeline, workers: int = 1) -> None:
        drain(self, workers)
        if not signalled:
            signalled.append(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the CLI's handler runs on this thread
            deadline = time.monotonic() + 10
            while not self.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)  # its cancel thread has marked every run cancelled

    monkeypatch.setattr(LocalPipeline, "drain", drain_then_ctrl_c)


def test_ctrl_c_as_the_last_run_ends_cancels_nothing_and_says_so(
    cli: Cli, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ctrl_c_after_the_first_month(monkeypatch)
    code, out = cli("run", "green", "2019-01")
    assert code == 0, out
    assert "SUCCESS" in out  # the summary of the run that finished
    assert out.strip().splitlines()[-1] == (
        "Ctrl-C (SIGINT) came after the last run had finished: nothing was cancelled"
    )
    green = source.files[(Dataset.GREEN, Month(2019, 1))]
    assert cli.rows("SELECT count(*) FROM green_tripdata") == [[str(green.rows)]]


def test_ctrl_c_between_two_months_names_the_month_never_started(
    cli: Cli, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ctrl_c_after_the_first_month(monkeypatch)
    code, out = cli("run", "green", "2019-01..2019-02")
    assert code == 130, out
    assert out.strip().splitlines()[-1] == "cancelled between runs; not started: green 2019-02"
    assert cli.rows("SELECT DISTINCT filename FROM green_tripdata") == [
        ["green_tripdata_2019-01.csv"]
    ]
