"""fhv, fhvhv and the taxi zones through the CLI on the embedded default (issue 17).

The mirror's fhv CSV (``{base}/fhv/fhv_tripdata_YYYY-MM.csv.gz``), the TLC's fhv and fhvhv
Parquet files (``{base}/trip-data/...``) and the zone lookup (``{base}/misc/...``) are generated
and served over local HTTP. Every expectation comes from the generated files themselves (the
CSV text read with ``csv``, the Parquet generator's own description), never from what the
pipeline wrote.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.e2e import Cli
from support.postgres import PostgresServer
from taxi_pipeline.devkit.generator import GeneratedFile, generate_month
from taxi_pipeline.devkit.parquet_generator import GeneratedParquet, generate_parquet_month
from taxi_pipeline.devkit.source_server import TLC_PREFIX, Fault, SourceServer, serve_directory
from taxi_pipeline.devkit.zone_lookup import GeneratedZones, write_zone_lookup, zone_rows
from taxi_pipeline.domain.datasets import Dataset, Month

FHV, FHVHV = Dataset.FHV, Dataset.FHVHV
MIRROR_MONTH = Month(2019, 2)
TLC_MONTHS = {
    (FHV, Month(2019, 3)): 1_800,  # location ids DOUBLE, SR_Flag null-typed
    (FHV, Month(2023, 6)): 2_100,  # location ids and SR_Flag INT64
    (FHVHV, Month(2024, 6)): 2_400,  # the first period: 24 columns
    (FHVHV, Month(2025, 2)): 2_200,  # cbd_congestion_fee
}


@dataclass
class Served:
    server: SourceServer
    folder: Path
    csv: GeneratedFile
    parquet: dict[tuple[Dataset, Month], GeneratedParquet]
    zones: GeneratedZones


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("more-datasets")
    csv_file = generate_month(folder, FHV, MIRROR_MONTH, 3_000, seed=31)
    parquet = {
        key: generate_parquet_month(folder / TLC_PREFIX, key[0].value, key[1], rows, seed=32)
        for key, rows in TLC_MONTHS.items()
    }
    zones = write_zone_lookup(folder)
    with serve_directory(folder) as server:
        yield Served(server, folder, csv_file, parquet, zones)


@pytest.fixture
def cli(tmp_path: Path, served: Served) -> Cli:
    return Cli(tmp_path / "home", served.server.base_url, CliRunner())


def _md5(parts: list[str]) -> str:
    return hashlib.md5("".join(parts).encode()).hexdigest()


def _csv_reference_ids(generated: GeneratedFile) -> Counter[str]:
    """The README's fhv formula from the CSV text: base, pickup and dropoff (BigQuery writes a
    TIMESTAMP with ``+00``), the zones as INTEGERs (``80.0`` is ``80``), NULL as ''."""
    ids: Counter[str] = Counter()
    with gzip.open(generated.path, "rt", newline="") as text:
        for row in csv.DictReader(text):
            zones = [
                str(int(Decimal(row[name]))) if row[name] else ""
                for name in ("PUlocationID", "DOlocationID")
            ]
            stamps = [f"{row[name]}+00" for name in ("pickup_datetime", "dropOff_datetime")]
            ids[_md5([row["dispatching_base_num"], *stamps, *zones])] += 1
    return ids


def _parquet_reference_ids(generated: GeneratedParquet) -> Counter[str]:
    layout = Dataset(generated.dataset).layout
    times = {layout.pickup, layout.dropoff}
    ids: Counter[str] = Counter()
    for texts in generated.expected_id_texts():
        parts = [
            f"{text}+00" if name in times and text else (text or "")
            for name, text in zip(layout.id_columns, texts, strict=True)
        ]
        ids[_md5(parts)] += 1
    return ids


def _ids(cli: Cli, table: str, filename: str) -> Counter[str]:
    rows = cli.rows(f"SELECT unique_row_id FROM {table} WHERE filename = '{filename}'")
    return Counter(row[0] for row in rows)


def _summary(out: str, month: Month) -> list[str]:
    """The summary table's cells of ``month``'s row: month, state, rows, inserted, present, ..."""
    line = next(line for line in out.splitlines() if line.strip().startswith(f"{month} "))
    return line.split()


def test_fhv_from_the_mirror_loads_exactly_with_reference_ids_and_reruns_insert_nothing(
    cli: Cli, served: Served
) -> None:
    generated = served.csv
    code, out = cli("run", "fhv", str(MIRROR_MONTH))
    assert code == 0, out
    cells = _summary(out, MIRROR_MONTH)
    rows = f"{generated.rows:,}"
    assert cells[1:5] == ["SUCCESS", rows, rows, "0"], out
    assert cells[5] == str(generated.out_of_month_rows)  # outside the month, kept
    assert cells[6] == "0", "80.0 zones and empty ones are no bad values"
    assert _ids(cli, "fhv_tripdata", "fhv_tripdata_2019-02.csv") == _csv_reference_ids(generated)
    # The integer zones: "80.0" in the file is 80 in the table, empty is NULL.
    with gzip.open(generated.path, "rt", newline="") as text:
        zones = [row["PUlocationID"] for row in csv.DictReader(text)]
    ((count, total),) = cli.rows("SELECT count(PUlocationID), sum(PUlocationID) FROM fhv_tripdata")
    assert int(count) == sum(bool(z) for z in zones)
    assert int(total) == sum(int(Decimal(z)) for z in zones if z)
    assert any(z.endswith(".0") for z in zones)

    # The re-run is recognised as loaded (no download); forced, it merges again: 0 inserted.
    served.server.reset_log()
    code, out = cli("run", "fhv", str(MIRROR_MONTH))
    assert code == 0, out
    assert served.server.bytes_sent == 0
    code, out = cli("run", "fhv", str(MIRROR_MONTH), "--force")
    assert code == 0, out
    assert _summary(out, MIRROR_MONTH)[1:5] == ["SUCCESS", rows, "0", rows], out
    assert cli.rows("SELECT count(*) FROM fhv_tripdata") == [[str(generated.rows)]]


@pytest.mark.parametrize("key", list(TLC_MONTHS), ids=lambda k: f"{k[0].value}-{k[1]}")
def test_the_tlcs_fhv_and_fhvhv_months_load_exactly_with_reference_ids(
    cli: Cli, served: Served, key: tuple[Dataset, Month]
) -> None:
    dataset, month = key
    generated = served.parquet[key]
    # fhv 2019-03 lies in the mirror's range: the TLC is asked explicitly; fhvhv has no mirror.
    source = ["--source", "tlc"] if dataset is FHV else []
    code, out = cli("run", dataset.value, str(month), *source)
    assert code == 0, out
    rows = f"{generated.rows:,}"
    assert _summary(out, month)[1:7] == [
        "SUCCESS", rows, rows, "0", str(generated.out_of_month_rows), "0",
    ], out  # fmt: skip
    table = dataset.final_table
    assert _ids(cli, table, generated.name) == _parquet_reference_ids(generated)
    expected = generated.expected_table()
    if dataset is FHVHV:
        ((seconds, fare, cbd),) = cli.rows(
            "SELECT sum(trip_time), sum(base_passenger_fare), count(cbd_congestion_fee)"
            f" FROM {table} WHERE filename = '{generated.name}'"
        )
        assert int(seconds) == sum(expected.column("trip_time").to_pylist())
        fares = sum(Decimal(repr(v)) for v in expected.column("base_passenger_fare").to_pylist())
        assert Decimal(fare) == fares
        has_fee = "cbd_congestion_fee" in expected.column_names
        assert int(cbd) == (generated.rows if has_fee else 0)
    else:
        ((zones,),) = cli.rows(f"SELECT sum(DOlocationID) FROM {table}")
        values = expected.column("DOlocationID").to_pylist()
        assert int(zones) == sum(int(v) for v in values if v is not None)

    code, out = cli("run", dataset.value, str(month), *source, "--force")
    assert code == 0, out
    assert _summary(out, month)[1:5] == ["SUCCESS", rows, "0", rows], out
    assert cli.rows(f"SELECT count(*) FROM {table}") == [[str(generated.rows)]]


def test_the_mirror_has_no_fhvhv_and_fhvhv_has_no_month_before_2019_02(cli: Cli) -> None:
    code, out = cli("run", "fhvhv", "2021-01", "--source", "mirror")
    assert code == 2, out
    assert "fhvhv is not published by the mirror" in " ".join(out.split())
    code, out = cli("run", "fhvhv", "2019-01")
    assert code == 2, out
    assert "fhvhv trip data starts 2019-02" in " ".join(out.split())


def test_zones_load_reload_and_join_the_trips(cli: Cli, served: Served, tmp_path: Path) -> None:
    code, out = cli("zones")
    assert code == 0, out
    assert "taxi_zone_lookup: 265 zones" in out
    table = cli.rows("SELECT LocationID, Borough, Zone, service_zone FROM taxi_zone_lookup"
                     " ORDER BY LocationID")  # fmt: skip
    # Rows the CLI prints as CSV: read them back with csv (names with commas are quoted).
    code, text = cli("sql", "SELECT * FROM taxi_zone_lookup ORDER BY LocationID", "--format",
                     "csv")  # fmt: skip
    parsed = list(csv.reader(text.splitlines()))[1:]
    assert [tuple([int(r[0]), *r[1:]]) for r in parsed] == list(served.zones.rows)
    assert len(table) == 265
    assert any(", " in row[2] for row in parsed), "quoted names with commas survive"
    assert parsed[-1] == ["265", "Unknown", "NA", "N/A"]

    code, out = cli("zones")  # a reload replaces, never adds
    assert code == 0, out
    assert cli.rows("SELECT count(*), count(DISTINCT LocationID) FROM taxi_zone_lookup") == [
        ["265", "265"]
    ]
    code, out = cli("zones", "--if-missing")
    assert code == 0, out
    assert "nothing loaded" in out

    # Every analysis joins the trips' INTEGER zones on LocationID.
    code, out = cli("run", "fhv", str(MIRROR_MONTH))
    assert code == 0, out
    ((joined, trips),) = cli.rows(
        "SELECT count(z.LocationID), count(f.PUlocationID) FROM fhv_tripdata f"
        " LEFT JOIN taxi_zone_lookup z ON f.PUlocationID = z.LocationID"
    )
    assert joined == trips

    # A new version of the file replaces the table whole; a broken one changes nothing.
    write_zone_lookup(served.folder, zone_rows(count=263, seed=3))
    try:
        code, out = cli("zones")
        assert code == 0, out
        assert cli.rows("SELECT count(*) FROM taxi_zone_lookup") == [["263"]]
        served.zones.path.write_text('"LocationID","Borough"\n1,"EWR"\n')
        code, out = cli("zones")
        assert code == 1, out
        assert "header" in out
        assert cli.rows("SELECT count(*) FROM taxi_zone_lookup") == [["263"]]
    finally:
        write_zone_lookup(served.folder, served.zones.rows)


def test_zones_not_published_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with serve_directory(empty) as server:
        cli = Cli(tmp_path / "home", server.base_url, CliRunner())
        code, out = cli("zones")
    assert code == 1, out
    assert re.search(r"error: taxi_zone_lookup: .*misc/taxi_zone_lookup.csv is not published", out)
    assert "Traceback" not in out


def test_status_shows_every_dataset_and_months_no_upstream_publishes(cli: Cli) -> None:
    code, out = cli("run", "fhvhv", "2024-06")
    assert code == 0, out
    code, out = cli("status")
    assert code == 0, out
    header = next(line for line in out.splitlines() if line.startswith("MONTH"))
    assert header.split() == ["MONTH", "yellow", "green", "fhv", "fhvhv"]
    january = next(line for line in out.splitlines() if line.startswith("2019-01 "))
    assert january.split() == ["2019-01", ".", ".", ".", "-"]  # fhvhv starts 2019-02
    june = next(line for line in out.splitlines() if line.startswith("2024-06 "))
    assert june.split()[-2:] == ["2,400", "tlc"]
    assert "fhvhv: 1/31 loaded (2,400 rows)" in out


def test_a_failed_fhvhv_download_names_the_tlc_option_only(cli: Cli, served: Served) -> None:
    """fhvhv has no mirror: the hint under a failure at the source names only the TLC's URL."""
    name = served.parquet[(FHVHV, Month(2024, 6))].name
    served.server.inject(name, Fault.unavailable(times=None))
    try:
        code, out = cli("run", "fhvhv", "2024-06")
    finally:
        served.server.clear_faults(name)
    assert code == 1, out
    flat = " ".join(out.split())
    assert "2024-06 FAILED:" in flat
    assert "answered HTTP 503" in flat
    assert "use --tlc-url (TAXI_PIPELINE_TLC_URL) for another source" in flat
    assert "unexpected" not in flat


def test_fhv_fhvhv_and_zones_on_a_postgresql_warehouse(
    served: Served, tmp_path: Path, postgres_server: PostgresServer, postgres_database: str
) -> None:
    """The same commands with ``TAXI_PIPELINE_WAREHOUSE_URL=postgresql://...``: exact counts,
    the same ids, re-runs insert nothing, the zones replaced whole."""
    env = {
        "TAXI_PIPELINE_WAREHOUSE_URL": postgres_server.url(postgres_database),
        "TAXI_PIPELINE_WAREHOUSE_PASSWORD": postgres_server.password,
    }
    pg = Cli(tmp_path / "home", served.server.base_url, CliRunner(), env)
    hv = served.parquet[(FHVHV, Month(2025, 2))]
    for args, generated_rows in (
        (("fhv", str(MIRROR_MONTH)), served.csv.rows),
        (("fhvhv", "2025-02"), hv.rows),
    ):
        code, out = pg("run", *args)
        assert code == 0, out
        rows = f"{generated_rows:,}"
        assert _summary(out, Month.parse(args[1]))[1:5] == ["SUCCESS", rows, rows, "0"], out
        code, out = pg("run", *args, "--force")
        assert code == 0, out
        assert _summary(out, Month.parse(args[1]))[1:5] == ["SUCCESS", rows, "0", rows], out
    # Ids as hex text, the same formula as DuckDB's and BigQuery's.
    fhv_ids = Counter(
        row[0]
        for row in pg.rows(
            "SELECT encode(unique_row_id, 'hex') FROM fhv_tripdata"
            " WHERE filename = 'fhv_tripdata_2019-02.csv'"
        )
    )
    assert fhv_ids == _csv_reference_ids(served.csv)
    hv_ids = Counter(
        row[0] for row in pg.rows("SELECT encode(unique_row_id, 'hex') FROM fhvhv_tripdata")
    )
    assert hv_ids == _parquet_reference_ids(hv)
    ((cbd,),) = pg.rows("SELECT count(cbd_congestion_fee) FROM fhvhv_tripdata")
    assert int(cbd) == hv.rows

    for _ in range(2):  # load, then reload: never a duplicate
        code, out = pg("zones")
        assert code == 0, out
        assert "265 zones" in out
    ((count, distinct),) = pg.rows(
        'SELECT count(*), count(DISTINCT "LocationID") FROM taxi_zone_lookup'
    )
    assert (count, distinct) == ("265", "265")
    code, text = pg("sql", 'SELECT * FROM taxi_zone_lookup ORDER BY "LocationID"', "--format",
                    "csv")  # fmt: skip
    parsed = [tuple([int(r[0]), *r[1:]]) for r in list(csv.reader(text.splitlines()))[1:]]
    assert parsed == list(served.zones.rows)
