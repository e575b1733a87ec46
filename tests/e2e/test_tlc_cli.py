"""The TLC's Parquet months through the CLI on the embedded default (issue 11).

Generated files in each schema period's exact schema (``devkit/parquet_generator``) are served
over local HTTP in the TLC's layout (``{base}/trip-data/{name}``, 403 for a missing month, S3's
ETag and Last-Modified); the CSV mirror's months come from the same server. Every expectation is
computed from the generator's own description of the file (``expected_table``,
``expected_id_texts``), never from what the pipeline wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from support.e2e import Cli
from support.postgres import PostgresServer
from taxi_pipeline.devkit.generator import GeneratedFile, generate_month
from taxi_pipeline.devkit.parquet_generator import (
    GeneratedParquet,
    arrow_type,
    generate_parquet_month,
)
from taxi_pipeline.devkit.source_server import SourceServer, serve_directory
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.tlc_schemas import period_of, tlc_file_name

ROWS = 2_500

# One month of every schema period of both datasets (domain/tlc_schemas.py), and the months
# inside a period whose files differ: yellow 2020-10 holds airport_fee null-typed, 2022-06 as
# DOUBLE; 2020-10 lies in the mirror's range, so it is asked of the TLC explicitly.
PERIOD_MONTHS = [
    ("yellow", Month(2015, 3)),
    ("yellow", Month(2020, 10)),
    ("yellow", Month(2022, 6)),
    ("yellow", Month(2024, 1)),
    ("yellow", Month(2025, 2)),
    ("green", Month(2016, 5)),
    ("green", Month(2024, 1)),
    ("green", Month(2025, 2)),
]
TWIN = Month(2019, 3)
"""A mirror month whose CSV also exists as a Parquet file of the same trips (the TLC's layout)."""
NON_INTEGRAL = (Month(2021, 9), 2)
"""A month whose file writes two passenger counts as 1.5 (its period writes counts as DOUBLE)."""
NEW_COLUMN = Month(2025, 3)
MISSING_COLUMN = Month(2024, 5)


@dataclass
class TlcSource:
    server: SourceServer
    months: dict[tuple[str, Month], GeneratedParquet]
    twin_csv: GeneratedFile
    twin_parquet: Path
    non_integral: GeneratedParquet
    new_column: GeneratedParquet
    missing_column: GeneratedParquet


@pytest.fixture(scope="module")
def tlc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlcSource]:
    folder = tmp_path_factory.mktemp("tlc-source")
    months = {
        (dataset, month): generate_parquet_month(folder, dataset, month, ROWS, seed=11)
        for dataset, month in PERIOD_MONTHS
    }
    twin_csv = generate_month(folder, Dataset.YELLOW, TWIN, ROWS, seed=12)
    twin_parquet = _parquet_twin(twin_csv, folder)
    non_integral = generate_parquet_month(
        folder, "yellow", NON_INTEGRAL[0], ROWS, seed=13, non_integral_counts=NON_INTEGRAL[1]
    )
    new_column = generate_parquet_month(
        folder, "yellow", NEW_COLUMN, ROWS, seed=14, extra_columns={"cbd_toll_rebate": "double"}
    )
    missing_column = generate_parquet_month(
        folder, "yellow", MISSING_COLUMN, ROWS, seed=15, omit_columns=["Airport_fee"]
    )
    with serve_directory(folder) as server:
        yield TlcSource(
            server, months, twin_csv, twin_parquet, non_integral, new_column, missing_column
        )


@pytest.fixture
def cli(tmp_path: Path, tlc: TlcSource) -> Cli:
    return Cli(tmp_path / "home", tlc.server.base_url, CliRunner())


def _parquet_twin(csv: GeneratedFile, folder: Path) -> Path:
    """The CSV's rows as the TLC writes the month (its period's names and physical types)."""
    month = csv.month
    fields = period_of("yellow", month).fields_in(month)
    with duckdb.connect() as con:
        table = con.sql(
            f"SELECT * FROM read_csv('{csv.path}', header = true, all_varchar = true)"
        ).to_arrow_table()
    columns = []
    for name, kind in fields:
        target = arrow_type(kind)
        if name not in table.column_names:
            columns.append(pa.nulls(len(table), type=target))
            continue
        text = table.column(name)
        if pa.types.is_timestamp(target):
            columns.append(text.cast(pa.timestamp("s")).cast(target))
        elif pa.types.is_integer(target):  # the CSV writes some codes as "1.0"
            columns.append(text.cast(pa.float64()).cast(target))
        else:
            columns.append(text.cast(target))
    path = folder / "trip-data" / tlc_file_name("yellow", month)
    path.parent.mkdir(exist_ok=True)
    schema = pa.schema([pa.field(name, arrow_type(kind)) for name, kind in fields])
    pq.write_table(pa.Table.from_arrays(columns, schema=schema), path, version="2.6")
    return path


def _reference_ids(generated: GeneratedParquet) -> Counter[str]:
    """The zoomcamp's id computed here, from the file's description: MD5 of VendorID, pickup,
    dropoff (as BigQuery writes a TIMESTAMP: ``+00``), PULocationID, DOLocationID."""
    ids: Counter[str] = Counter()
    for vendor, pickup, dropoff, pu, do in generated.expected_id_texts():
        parts = [
            vendor or "",
            f"{pickup}+00" if pickup else "",
            f"{dropoff}+00" if dropoff else "",
            pu or "",
            do or "",
        ]
        ids[hashlib.md5("".join(parts).encode()).hexdigest()] += 1
    return ids


def _ids(cli: Cli, table: str, filename: str) -> Counter[str]:
    rows = cli.rows(f"SELECT unique_row_id FROM {table} WHERE filename = '{filename}'")
    return Counter(row[0] for row in rows)


def _summary(out: str, month: Month) -> list[str]:
    """The summary table's cells of ``month``'s row."""
    line = next(line for line in out.splitlines() if line.strip().startswith(f"{month} "))
    return line.split()


def _money(values: list[object]) -> Decimal:
    return sum((Decimal(repr(v)) for v in values if v is not None), Decimal(0))


def _decimal(text: str) -> Decimal:
    return Decimal(text) if text else Decimal(0)


# -- every schema period, one final table ------------------------------------------------------


@pytest.mark.parametrize(("dataset", "month"), PERIOD_MONTHS, ids=lambda v: str(v))
def test_each_schema_period_loads_with_reference_ids_types_and_fees(
    cli: Cli, tlc: TlcSource, dataset: str, month: Month
) -> None:
    generated = tlc.months[(dataset, month)]
    code, out = cli("run", dataset, str(month), "--source", "tlc")
    assert code == 0, out
    cells = _summary(out, month)
    assert cells[1:4] == ["SUCCESS", f"{ROWS:,}", f"{ROWS:,}"], out
    assert cells[6] == "0", "no bad values"  # bad
    table = f"{dataset}_tripdata"

    assert _ids(cli, table, generated.name) == _reference_ids(generated)
    expected = generated.expected_table()
    fees = ["cbd_congestion_fee"] + (["airport_fee"] if dataset == "yellow" else [])
    ((rows, passengers, total, *loaded),) = cli.rows(
        f"SELECT count(*), sum(passenger_count), sum(total_amount),"
        f" {', '.join(f'count({fee}), sum({fee})' for fee in fees)}"
        f" FROM {table} WHERE filename = '{generated.name}'"
    )
    assert int(rows) == ROWS
    counts = expected.column("passenger_count").to_pylist()
    assert int(passengers) == sum(int(v) for v in counts if v is not None)  # 1.0 -> 1
    assert _decimal(total) == _money(expected.column("total_amount").to_pylist())
    by_folded = {name.casefold(): name for name in expected.column_names}
    filled = set()
    for position, fee in enumerate(fees):
        count, amount = loaded[2 * position], loaded[2 * position + 1]
        file_name = by_folded.get(fee)  # Airport_fee from 2023-02
        values = expected.column(file_name).to_pylist() if file_name else []
        assert int(count) == sum(v is not None for v in values), fee
        assert _decimal(amount) == _money(values), fee
        if int(count):
            filled.add(fee)
    assert filled == {
        fee
        for fee, since in (("airport_fee", Month(2021, 1)), ("cbd_congestion_fee", Month(2025, 1)))
        if fee in fees
        and month >= since
        and not (fee == "airport_fee" and month == Month(2020, 10))
    }

    code, out = cli("run", dataset, str(month), "--source", "tlc")
    assert code == 0, out
    assert _summary(out, month)[1:5] == ["SUCCESS", f"{ROWS:,}", "0", f"{ROWS:,}"], out
    assert int(cli.rows(f"SELECT count(*) FROM {table}")[0][0]) == ROWS


def test_auto_takes_the_mirror_in_its_range_and_the_tlc_elsewhere(cli: Cli, tlc: TlcSource) -> None:
    assert cli("run", "yellow", str(TWIN))[0] == 0
    assert cli("run", "yellow", "2024-01")[0] == 0
    rows = cli.rows("SELECT DISTINCT filename FROM yellow_tripdata ORDER BY 1")
    assert rows == [["yellow_tripdata_2019-03.csv"], ["yellow_tripdata_2024-01.parquet"]]
    code, out = cli("status", "--dataset", "yellow")
    assert code == 0, out
    assert re.search(rf"^2019-03\s+{ROWS:,} mirror$", out, re.MULTILINE), out
    assert re.search(rf"^2024-01\s+{ROWS:,} tlc$", out, re.MULTILINE), out
    lake = cli.home / "lake" / "raw" / "yellow"
    assert sorted(p.name for p in lake.iterdir() if not p.name.startswith(".")) == [
        "yellow_tripdata_2019-03.csv.gz",
        "yellow_tripdata_2024-01.parquet",
    ]


# -- one month, one source ----------------------------------------------------------------------


def test_the_same_trip_gets_the_same_id_and_a_month_holds_one_source(
    cli: Cli, tlc: TlcSource
) -> None:
    month = str(TWIN)
    assert cli("run", "yellow", month)[0] == 0
    csv_ids = _ids(cli, "yellow_tripdata", "yellow_tripdata_2019-03.csv")
    assert sum(csv_ids.values()) == ROWS
    # The reference's id is over the CSV's text: a VendorID the CSV spells "1.0" (as some
    # published months do) is "1.0" in its id, where the Parquet file holds the integer 1. Every
    # other trip gets the very id it had.
    dotted = Counter(
        row[0]
        for row in cli.rows(
            "SELECT unique_row_id FROM yellow_tripdata WHERE \"VendorID\" LIKE '%.%'"
        )
    )
    assert dotted, "the generated CSV spells a few VendorIDs 1.0"
    canonical = csv_ids - dotted

    # Another source for a loaded month: refused, nothing downloaded, nothing changed.
    code, out = cli("run", "yellow", month, "--source", "tlc")
    assert code == 1, out
    assert "is loaded from the DataTalksClub mirror (yellow_tripdata_2019-03.csv.gz" in out
    assert "--replace" in out
    assert not (cli.home / "lake" / "raw" / "yellow" / "yellow_tripdata_2019-03.parquet").exists()
    assert _ids(cli, "yellow_tripdata", "yellow_tripdata_2019-03.csv") == csv_ids

    # --replace: the month's rows are the TLC's now, every trip under the id it had.
    code, out = cli("run", "yellow", month, "--source", "tlc", "--replace")
    assert code == 0, out
    assert f"replaced {ROWS:,} rows of yellow_tripdata_2019-03.csv.gz" in " ".join(out.split())
    assert cli.rows("SELECT DISTINCT filename FROM yellow_tripdata") == [
        ["yellow_tripdata_2019-03.parquet"]
    ]
    tlc_ids = _ids(cli, "yellow_tripdata", "yellow_tripdata_2019-03.parquet")
    assert sum(tlc_ids.values()) == ROWS
    assert canonical <= tlc_ids
    assert (tlc_ids - canonical).total() == dotted.total()
    run_id = _summary(out, TWIN)[-1]
    code, shown = cli(
        "sql",
        f"SELECT details FROM pipeline_runs WHERE run_id = '{run_id}' AND step = 'merge'"
        " AND state = 'SUCCESS'",
        "--format",
        "json",
    )
    assert code == 0, shown
    (line,) = shown.splitlines()
    details = json.loads(json.loads(line)["details"])
    assert details["rows_replaced"] == str(ROWS)
    assert "replaced" in details["notes"]
    code, out = cli("status", "--dataset", "yellow")
    assert re.search(rf"^2019-03\s+{ROWS:,} tlc$", out, re.MULTILINE), out

    # And back again, only with --replace.
    code, out = cli("run", "yellow", month, "--source", "mirror")
    assert code == 1, out
    assert "is loaded from the TLC" in out
    code, out = cli("run", "yellow", month, "--source", "mirror", "--replace")
    assert code == 0, out
    assert _ids(cli, "yellow_tripdata", "yellow_tripdata_2019-03.csv") == csv_ids
    assert int(cli.rows("SELECT count(*) FROM yellow_tripdata")[0][0]) == ROWS


def test_a_hand_uploaded_parquet_file_is_verified_whole_and_guarded(
    cli: Cli, tlc: TlcSource, tmp_path: Path
) -> None:
    generated = tlc.months[("green", Month(2024, 1))]
    code, out = cli("load", str(generated.path))
    assert code == 0, out
    assert "SUCCESS" in out
    assert _ids(cli, "green_tripdata", generated.name) == _reference_ids(generated)

    # A truncated file never reaches staging; its footer is gone.
    cut = tmp_path / "green_tripdata_2024-01.parquet"
    cut.write_bytes(generated.path.read_bytes()[:-100])
    code, out = cli("load", str(cut))
    assert code == 1, out
    assert "FAILED - no Parquet footer" in out


# -- what a file holds beyond or short of its period ---------------------------------------------


def test_a_non_integral_count_is_a_bad_value(cli: Cli, tlc: TlcSource) -> None:
    month, bad = NON_INTEGRAL
    code, out = cli("run", "yellow", str(month))
    assert code == 0, out
    assert _summary(out, month)[6] == str(bad)
    rows = cli.rows(
        "SELECT count(*) FROM yellow_tripdata WHERE passenger_count IS NULL"
        " AND tpep_pickup_datetime IS NOT NULL AND trip_distance IS NOT NULL"
    )
    expected = tlc.non_integral.expected_table().column("passenger_count").to_pylist()
    assert int(rows[0][0]) == sum(v is None for v in expected) + bad


def test_a_new_column_is_reported_and_a_missing_one_fails_the_month(
    cli: Cli, tlc: TlcSource
) -> None:
    code, out = cli("run", "yellow", str(NEW_COLUMN))
    assert code == 0, out
    assert "new column cbd_toll_rebate (double) not loaded" in out
    assert int(cli.rows("SELECT count(*) FROM yellow_tripdata")[0][0]) == ROWS

    code, out = cli("run", "yellow", str(MISSING_COLUMN))
    assert code == 1, out
    assert "column 'Airport_fee' is missing" in " ".join(out.split())
    assert not (cli.home / "lake" / "raw" / "yellow" / tlc.missing_column.name).exists()


# -- what the TLC does not have ------------------------------------------------------------------


def test_a_month_the_tlc_has_not_published_is_skipped_once(cli: Cli, tlc: TlcSource) -> None:
    tlc.server.reset_log()
    code, out = cli("run", "green", "2024-02")
    assert code == 3, out
    assert "is not published (HTTP 403)" in " ".join(out.split())
    name = "/trip-data/green_tripdata_2024-02.parquet"
    assert [s for s in tlc.server.served if s.path == name] == [
        s for s in tlc.server.served if s.path == name and s.status == 403
    ]
    assert len([s for s in tlc.server.served if s.path == name]) == 1, "never retried"


@pytest.mark.parametrize(
    ("dataset", "month", "reason"),
    [
        ("yellow", "2010-12", "yellow files before 2011-01 have other column names"),
        ("green", "2013-07", "green trip data starts 2013-08"),
    ],
)
def test_months_before_the_tlc_layout_are_refused_before_anything_runs(
    cli: Cli, dataset: str, month: str, reason: str
) -> None:
    code, out = cli("run", dataset, month)
    assert code == 2, out
    assert reason in " ".join(out.split())
    assert not cli.home.exists()


# -- tables made before the fee columns ----------------------------------------------------------


def test_a_final_table_made_before_the_fee_columns_gains_them_in_place(
    cli: Cli, tlc: TlcSource
) -> None:
    assert cli("run", "yellow", str(TWIN))[0] == 0
    warehouse = cli.home / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:  # as the version before the fees made it
        con.execute("ALTER TABLE yellow_tripdata DROP COLUMN airport_fee")
        con.execute("ALTER TABLE yellow_tripdata DROP COLUMN cbd_congestion_fee")
    csv_ids = _ids(cli, "yellow_tripdata", "yellow_tripdata_2019-03.csv")

    code, out = cli("run", "yellow", "2025-02")
    assert code == 0, out
    ((csv_rows, csv_fees, tlc_fees),) = cli.rows(
        "SELECT count(*) FILTER (WHERE filename LIKE '%.csv'),"
        " count(airport_fee) FILTER (WHERE filename LIKE '%.csv'),"
        " count(cbd_congestion_fee) FILTER (WHERE filename LIKE '%.parquet')"
        " FROM yellow_tripdata"
    )
    assert (int(csv_rows), int(csv_fees)) == (ROWS, 0), "CSV rows kept, their fees NULL"
    assert int(tlc_fees) > 0
    assert _ids(cli, "yellow_tripdata", "yellow_tripdata_2019-03.csv") == csv_ids


def test_a_backfill_across_both_sources_then_only_missing(cli: Cli, tlc: TlcSource) -> None:
    code, out = cli("backfill", "yellow", "--from", "2024-01", "--to", "2024-02")
    assert code == 3, out  # 2024-02: not published (403), SKIPPED
    assert "1 SUCCESS, 1 SKIPPED" in out
    code, out = cli("backfill", "yellow", "--from", "2024-01", "--to", "2024-02", "--only-missing")
    assert code == 3, out
    assert "1 already loaded and skipped" in out
    code, out = cli("backfill", "yellow", "--from", "2020-10", "--to", "2020-10", "--source", "tlc")
    assert code == 0, out
    rows = cli.rows("SELECT filename, count(*) FROM yellow_tripdata GROUP BY 1 ORDER BY 1")
    assert rows == [
        ["yellow_tripdata_2020-10.parquet", str(ROWS)],
        ["yellow_tripdata_2024-01.parquet", str(ROWS)],
    ]


# -- re-publication ------------------------------------------------------------------------------


def test_a_month_republished_upstream_is_listed_and_reloads_only_with_replace(
    tmp_path: Path,
) -> None:
    folder, month = tmp_path / "tlc", Month(2024, 3)
    first = generate_parquet_month(folder, "yellow", month, 1_500, seed=21)
    with serve_directory(folder) as server:
        cli = Cli(tmp_path / "home", server.base_url, CliRunner())
        assert cli("run", "yellow", str(month))[0] == 0
        server.reset_log()
        code, out = cli("status", "--check-upstream")
        assert code == 0, out
        assert "upstream: 1 loaded month asked (HEAD), 0 changed since the load" in out
        assert {s.method for s in server.served} == {"HEAD"}

        # The TLC re-uploads the month: other bytes, another ETag, size and Last-Modified.
        again = generate_parquet_month(folder, "yellow", month, 1_600, seed=22)
        code, out = cli("status", "--check-upstream")
        assert code == 0, out
        assert "1 changed since the load" in out
        flat = " ".join(out.split())
        assert "yellow 2024-03: changed upstream since its load (ETag" in flat
        assert "taxi-pipeline run yellow 2024-03 --replace" in flat

        code, out = cli("run", "yellow", str(month))  # the loaded file is kept: nothing new
        assert code == 0, out
        assert _summary(out, month)[1:4] == ["SUCCESS", f"{first.rows:,}", "0"]
        code, out = cli("run", "yellow", str(month), "--force")
        assert code == 1, out
        assert "changed upstream since yellow 2024-03 was loaded from it" in " ".join(out.split())
        assert cli.rows("SELECT count(*) FROM yellow_tripdata") == [[str(first.rows)]]

        code, out = cli("run", "yellow", str(month), "--replace")
        assert code == 0, out
        assert _summary(out, month)[1:3] == ["SUCCESS", f"{again.rows:,}"]
        assert _ids(cli, "yellow_tripdata", again.name) == _reference_ids(again)
        code, out = cli("status", "--check-upstream")
        assert "0 changed since the load" in out


# -- the same months on PostgreSQL ---------------------------------------------------------------


@pytest.fixture
def pg_cli(
    tmp_path: Path, tlc: TlcSource, postgres_server: PostgresServer, postgres_database: str
) -> Cli:
    env = {
        "TAXI_PIPELINE_WAREHOUSE_URL": postgres_server.url(postgres_database),
        "TAXI_PIPELINE_WAREHOUSE_PASSWORD": postgres_server.password,
    }
    return Cli(tmp_path / "home", tlc.server.base_url, CliRunner(), env)


@pytest.mark.parametrize(
    ("dataset", "month"),
    [
        ("yellow", Month(2015, 3)),
        ("yellow", Month(2020, 10)),
        ("yellow", Month(2025, 2)),
        ("green", Month(2016, 5)),
        ("green", Month(2024, 1)),
    ],
    ids=lambda v: str(v),
)
def test_on_postgres_each_schema_period_loads_with_reference_ids_types_and_fees(
    pg_cli: Cli, tlc: TlcSource, dataset: str, month: Month
) -> None:
    """PostgreSQL cannot read Parquet: the client types the file's texts on their way into
    one binary COPY, as DuckDB's and BigQuery's staging types them."""
    test_each_schema_period_loads_with_reference_ids_types_and_fees(pg_cli, tlc, dataset, month)


def test_on_postgres_a_non_integral_count_is_a_bad_value(pg_cli: Cli, tlc: TlcSource) -> None:
    """1.5 passengers: the client's typing refuses the month, which lands as text, where the
    exact typing counts the two values bad, as on DuckDB."""
    test_a_non_integral_count_is_a_bad_value(pg_cli, tlc)


def test_on_postgres_a_month_switches_source_only_with_replace(pg_cli: Cli, tlc: TlcSource) -> None:
    """The month's file partitions are dropped and the new file's attached in one transaction."""
    test_the_same_trip_gets_the_same_id_and_a_month_holds_one_source(pg_cli, tlc)
