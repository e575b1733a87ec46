"""The CLI on a PostgreSQL warehouse (folder lake, in-process bus): ``TAXI_PIPELINE_WAREHOUSE_URL=
postgresql://...`` and the same commands as on DuckDB.

Counts equal the files' rows, ids equal the formula computed here with hashlib, a re-run inserts
nothing, two overlapping backfills in two processes end exact, and a process killed with
SIGKILL while its COPY or its MERGE runs leaves nothing partial: the re-run is exact.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from support.e2e import Cli, Source, serve_months
from support.postgres import PostgresServer
from taxi_pipeline.devkit.generator import GeneratedFile
from taxi_pipeline.domain.datasets import Dataset, Month

BIG = (Dataset.YELLOW, Month(2019, 4))
BIG_ROWS = 300_000  # a COPY and a MERGE of about a second each: long enough to be caught
SCRIPT = Path(sys.executable).with_name("taxi-pipeline")


def _expected_ids(generated: GeneratedFile) -> list[str]:
    """The reference formula from the raw CSV text: MD5 of VendorID, pickup + '+00', dropoff +
    '+00', PULocationID, DOLocationID, NULL as ''."""
    layout = generated.dataset.layout
    ids = []
    with gzip.open(generated.path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            parts = []
            for name in layout.id_columns:
                value = row[name]
                if name in (layout.pickup, layout.dropoff) and value:
                    value += "+00"
                parts.append(value)
            ids.append(hashlib.md5("".join(parts).encode()).hexdigest())
    return ids


@pytest.fixture
def env(postgres_server: PostgresServer, postgres_database: str) -> dict[str, str]:
    """A warehouse URL without the password, which comes from the setting."""
    return {
        "TAXI_PIPELINE_WAREHOUSE_URL": postgres_server.url(postgres_database),
        "TAXI_PIPELINE_WAREHOUSE_PASSWORD": postgres_server.password,
    }


@pytest.fixture
def pg(tmp_path: Path, source: Source, env: dict[str, str]) -> Cli:
    return Cli(tmp_path / "home", source.url, CliRunner(), env)


@pytest.fixture
def db(postgres_server: PostgresServer, postgres_database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(
        postgres_server.url(postgres_database, password=True), autocommit=True
    ) as conn:
        yield conn


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    with serve_months(tmp_path_factory.mktemp("big"), {BIG: BIG_ROWS}) as served:
        yield served


@pytest.fixture(scope="module")
def landed_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """The big month with one count written ``+1``: the strict typing takes it, this client's
    does not, so the month lands as text and is typed there."""
    with serve_months(tmp_path_factory.mktemp("landed"), {BIG: BIG_ROWS}) as served:
        path = served.files[BIG].path
        lines = gzip.decompress(path.read_bytes()).split(b"\n")
        fields = lines[1].split(b",")
        fields[3] = b"+1"  # passenger_count, in no id
        lines[1] = b",".join(fields)
        path.write_bytes(gzip.compress(b"\n".join(lines), compresslevel=1))
        yield served


def _count(db: psycopg.Connection, sql: str) -> int:
    row = db.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _tables(db: psycopg.Connection) -> set[str]:
    rows = db.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition"
    ).fetchall()
    return {str(r[0]) for r in rows}


def test_run_loads_every_row_with_the_reference_ids_and_a_rerun_inserts_none(
    pg: Cli, source: Source, db: psycopg.Connection
) -> None:
    yellow = source.files[(Dataset.YELLOW, Month(2019, 1))]
    code, out = pg("run", "yellow", "2019-01")
    assert code == 0, out
    assert "SUCCESS" in out
    assert _count(db, "SELECT count(*) FROM yellow_tripdata") == yellow.rows
    stored = [r[0] for r in db.execute("SELECT encode(unique_row_id, 'hex') FROM yellow_tripdata")]
    assert sorted(stored) == sorted(_expected_ids(yellow))
    assert len(set(stored)) == yellow.rows - yellow.duplicate_rows
    out_of_month = _count(
        db,
        "SELECT count(*) FROM yellow_tripdata WHERE tpep_pickup_datetime < '2019-01-01'"
        " OR tpep_pickup_datetime >= '2019-02-01'",
    )
    assert out_of_month == yellow.out_of_month_rows

    source.server.reset_log()
    code, out = pg("run", "yellow", "2019-01", "--force")
    assert code == 0, out
    assert _count(db, "SELECT count(*) FROM yellow_tripdata") == yellow.rows
    loads = db.execute("SELECT rows_in_file, rows_inserted FROM pipeline_loads ORDER BY loaded_at")
    assert loads.fetchall() == [(yellow.rows, yellow.rows), (yellow.rows, 0)]
    # Only the final table and the run history remain: every landing table was dropped.
    assert _tables(db) == {"yellow_tripdata", "pipeline_runs", "pipeline_loads"}


def test_sql_runs_status_and_only_missing_read_the_postgres_history(
    pg: Cli, source: Source
) -> None:
    code, out = pg("backfill", "green", "--from", "2019-01", "--to", "2019-02")
    assert code == 0, out
    green = [source.files[(Dataset.GREEN, Month(2019, m))].rows for m in (1, 2)]
    assert pg.rows(
        'SELECT filename, count(*), count(DISTINCT "PULocationID") > 1 FROM green_tripdata'
        " GROUP BY 1 ORDER BY 1"
    ) == [
        ["green_tripdata_2019-01.csv", str(green[0]), "true"],
        ["green_tripdata_2019-02.csv", str(green[1]), "true"],
    ]
    code, out = pg("runs")
    assert code == 0, out
    assert out.count("SUCCESS") == 2
    code, out = pg("status")
    assert code == 0, out
    assert f"{green[0]:,}" in out
    assert "2/31 loaded" in out
    code, out = pg("backfill", "green", "--from", "2019-01", "--to", "2019-02", "--only-missing")
    assert code == 0, out
    assert "2 already loaded and skipped" in out
    # The user's statement runs read-only and is rolled back.
    code, out = pg("sql", "DELETE FROM green_tripdata")
    assert code != 0
    assert "read-only" in out
    assert pg.rows("SELECT count(*) FROM green_tripdata") == [[str(sum(green))]]


def _spawn(home: Path, source_url: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SCRIPT), *args],
        env={
            **os.environ,
            "TAXI_PIPELINE_HOME": str(home),
            "TAXI_PIPELINE_SOURCE_URL": source_url,
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_overlapping_backfills_in_two_processes_load_each_row_once(
    tmp_path: Path, source: Source, env: dict[str, str], db: psycopg.Connection
) -> None:
    home = tmp_path / "home"  # one home: one lake folder, one warehouse
    first = _spawn(home, source.url, env, "backfill", "yellow", "--from", "2019-01", "--to",
                   "2019-03", "--concurrency", "3")  # fmt: skip
    second = _spawn(home, source.url, env, "backfill", "yellow", "--from", "2019-02", "--to",
                    "2019-03", "--concurrency", "2")  # fmt: skip
    for process in (first, second):
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, out
    files = [source.files[(Dataset.YELLOW, Month(2019, m))] for m in (1, 2, 3)]
    per_file = db.execute(
        "SELECT filename, count(*), count(DISTINCT unique_row_id) FROM yellow_tripdata"
        " GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert per_file == [
        (f.path.name.removesuffix(".gz"), f.rows, f.rows - f.duplicate_rows) for f in files
    ]
    assert _count(db, "SELECT count(*) FROM yellow_tripdata") == sum(f.rows for f in files)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _active(db: psycopg.Connection, statement: str) -> bool:
    rows = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'taxi-pipeline'"
        " AND state = 'active' AND query LIKE %s",
        [statement + "%"],
    ).fetchone()
    return bool(rows and rows[0])


def _run(home: Path, source: Source, env: dict[str, str], *args: str) -> None:
    process = _spawn(home, source.url, env, "run", "yellow", "2019-04", *args)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out


# The statement a run is killed in: the COPY into its staging table (typed by the client); the
# typed staging table built from a landing table (a month the client's typing refuses: the same
# transaction); the first load of the file (the staging table indexed to become the file's
# partition); the MERGE of a file loaded before (a forced re-run of a loaded month).
KILLED_IN = {
    "copy": "COPY",
    "staging": 'CREATE TABLE "public"."yellow_tripdata_2019_04_',
    "first-load": 'CREATE INDEX IF NOT EXISTS "yellow_tripdata_file_2019_04_csv_',
    "merge": "MERGE INTO",
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(KILLED_IN))
def test_killed_during_copy_or_merge_then_rerun_is_exact(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    env: dict[str, str],
    db: psycopg.Connection,
    phase: str,
) -> None:
    big_source: Source = request.getfixturevalue(
        "landed_source" if phase == "staging" else "big_source"
    )
    big = big_source.files[BIG]
    home = tmp_path / "home"
    before = 0
    if phase == "merge":
        _run(home, big_source, env)
        before = big.rows
    statement = KILLED_IN[phase]
    args = ["--force"] if phase == "merge" else []
    victim = _spawn(home, big_source.url, env, "run", "yellow", "2019-04", *args)
    try:
        _wait_for(lambda: _active(db, statement) or victim.poll() is not None, statement)
        assert victim.poll() is None, "the run ended before its statement was caught"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    # The server ends the dead client's statement on its own; nothing of it was committed.
    _wait_for(lambda: not _active(db, statement), "the dead client's statement to end")
    if "yellow_tripdata" in _tables(db):
        assert _count(db, "SELECT count(*) FROM yellow_tripdata") == before
    assert _count(db, "SELECT count(*) FROM pipeline_loads") == (1 if before else 0)

    _run(home, big_source, env, *args)
    assert _count(db, "SELECT count(*) FROM yellow_tripdata") == big.rows
    distinct = _count(db, "SELECT count(DISTINCT unique_row_id) FROM yellow_tripdata")
    assert distinct == big.rows - big.duplicate_rows
    # The killed run's landing table (if its COPY had committed) went with the re-run's cleanup.
    assert _tables(db) == {"yellow_tripdata", "pipeline_runs", "pipeline_loads"}
