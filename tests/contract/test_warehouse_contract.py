"""The Warehouse contract: one suite over every adapter (DuckDB, PostgreSQL, BigQuery on the
emulator).

An adapter that passes it is interchangeable for the steps. BigQuery runs in ``load`` staging
mode: the emulator has no external tables (see tests/integration/test_bigquery_warehouse.py for
what the external mode proves there).
"""

# google-cloud-storage ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse
from taxi_pipeline.adapters.embedded import EmbeddedWarehouse
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.gcs.store import GcsStore
from taxi_pipeline.adapters.postgres.warehouse import PostgresWarehouse
from taxi_pipeline.adapters.sql.dialects import POSTGRES
from taxi_pipeline.devkit.generator import GeneratedFile, generate_month, write_raw
from taxi_pipeline.devkit.parquet_generator import GeneratedParquet, generate_parquet_month
from taxi_pipeline.domain.datasets import Dataset, Month, csv_name, object_name
from taxi_pipeline.domain.formats import CSV_GZ, PARQUET, format_of
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.errors import PermanentError
from taxi_pipeline.pipeline.ports import (
    JobContext,
    LakeReader,
    MergePlan,
    ObjectInfo,
    Replacement,
    Warehouse,
)
from taxi_pipeline.pipeline.steps.merge import pickup_ranges
from taxi_pipeline.settings import Settings, StagingMode

GREEN, JAN = Dataset.GREEN, Month(2019, 1)
ROWS = 2500
HISTORY = {"pipeline_runs", "pipeline_loads"}
T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


@dataclass
class Harness:
    """A warehouse plus how to put a file where it reads from, and list what it holds."""

    warehouse: Warehouse
    lake: LakeReader
    put_object: Callable[[Path, str], ObjectInfo]
    """Put a file into the lake under a name (``lookup/...``)."""
    table_names: Callable[[], list[str]]
    ident: Callable[[str], str] = str
    """A mixed-case column name in a query: as it is where names ignore case (DuckDB,
    BigQuery), quoted where unquoted names fold to lower case (PostgreSQL)."""

    def put(self, path: Path, dataset: Dataset, month: Month) -> ObjectInfo:
        """Put a month's file where the warehouse reads it from (its ``raw/`` name)."""
        return self.put_object(path, object_name(dataset, month, format_of(path.name) or CSV_GZ))


@dataclass(frozen=True)
class AdapterConfig:
    name: str
    build: Callable[[pytest.FixtureRequest, Path], Iterator[Harness]]


def _duckdb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    warehouse = EmbeddedWarehouse.at(tmp_path / "warehouse.duckdb", threads=2)
    lake = tmp_path / "lake"

    def put(path: Path, name: str) -> ObjectInfo:
        target = lake / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return ObjectInfo("lake", name, "1", target.stat().st_size, target.as_uri())

    yield Harness(warehouse, FolderStore(lake), put, warehouse.table_names)
    warehouse.close()


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    server = request.getfixturevalue("postgres_server")
    database = request.getfixturevalue("postgres_database")
    lake = FolderStore(tmp_path / "lake")
    warehouse = PostgresWarehouse.from_url(server.url(database), password=server.password)

    def put(path: Path, name: str) -> ObjectInfo:
        with lake.writer(name, {}) as out:
            out.write(path.read_bytes())
        info = lake.stat(name)
        assert info is not None
        return info

    yield Harness(warehouse, lake, put, warehouse.table_names, POSTGRES.quote_ident)
    warehouse.close()


def _bigquery(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    client = request.getfixturevalue("bigquery_client")
    storage = request.getfixturevalue("storage_client")
    suffix = uuid.uuid4().hex[:10]
    dataset = f"contract_{suffix}"
    client.create_dataset(dataset)
    bucket = storage.create_bucket(f"lake-{suffix}")
    warehouse = BigQueryWarehouse(
        client.project, dataset, Settings(staging_mode=StagingMode.LOAD), client=client
    )

    def put(path: Path, name: str) -> ObjectInfo:
        fmt = format_of(path.name)
        blob = bucket.blob(name)
        blob.upload_from_filename(str(path), content_type=fmt.content_type if fmt else "text/csv")
        blob.reload()
        uri = f"gs://{bucket.name}/{blob.name}"
        return ObjectInfo(bucket.name, blob.name, str(blob.generation), blob.size, uri)

    lake = GcsStore(bucket.name, Settings(), client=storage)
    yield Harness(warehouse, lake, put, warehouse.table_names)
    client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


CONFIGS = [
    pytest.param(AdapterConfig("duckdb", _duckdb)),
    pytest.param(AdapterConfig("postgres", _postgres)),
    pytest.param(AdapterConfig("bigquery-emulator-load", _bigquery), marks=pytest.mark.emulator),
]


@pytest.fixture(params=CONFIGS, ids=lambda c: c.name)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    config: AdapterConfig = request.param
    yield from config.build(request, tmp_path)


@pytest.fixture(scope="module")
def green_file(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFile:
    return generate_month(tmp_path_factory.mktemp("files"), GREEN, JAN, ROWS, seed=3)


def _count(warehouse: Warehouse, table: str) -> int:
    ((n,),) = warehouse.query(f"SELECT COUNT(*) AS n FROM {table}").rows
    assert isinstance(n, int)
    return n


def test_final_table_creation_is_idempotent(harness: Harness) -> None:
    warehouse = harness.warehouse
    for dataset in Dataset:
        warehouse.ensure_final_table(dataset)
        warehouse.ensure_final_table(dataset)
        result = warehouse.query(f"SELECT * FROM {dataset.final_table} LIMIT 0")
        assert result.columns == ["unique_row_id", "filename", *dataset.layout.final_names]
        assert _count(warehouse, dataset.final_table) == 0
    assert set(harness.table_names()) - HISTORY == {d.final_table for d in Dataset}


def test_stage_and_merge_counts(harness: Harness, green_file: GeneratedFile) -> None:
    warehouse = harness.warehouse
    source = harness.put(green_file.path, GREEN, JAN)
    context = JobContext("green-201901-contract", GREEN, JAN, "merge")
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, source, harness.lake)

    staged = warehouse.stage(source, harness.lake, context)
    assert (staged.rows, staged.rows_bad, staged.rows_without_pickup) == (ROWS, 0, 0)
    assert staged.rows_out_of_month == green_file.out_of_month_rows
    assert set(green_file.stray_pickup_dates) <= set(staged.pickup_dates)
    assert list(staged.pickup_dates) == sorted(staged.pickup_dates)
    ranges = pickup_ranges(staged.pickup_dates)

    assert warehouse.merge_staged(MergePlan(context, ranges, False)).inserted == ROWS
    # Another run of the month (BigQuery: a redelivery of the same run attaches to its jobs and
    # repeats their figures, test_bigquery_warehouse.py) inserts nothing.
    other = JobContext("green-201901-contract2", GREEN, JAN, "merge")
    assert warehouse.merge_staged(MergePlan(other, ranges, False)).inserted == 0  # re-merge
    warehouse.create_external_table(GREEN, JAN, source, harness.lake)
    rerun = JobContext("green-201901-contract3", GREEN, JAN, "merge")
    again = warehouse.stage(source, harness.lake, rerun)
    assert again == staged
    assert warehouse.merge_staged(MergePlan(rerun, ranges, False)).inserted == 0  # re-run
    assert _count(warehouse, GREEN.final_table) == ROWS
    distinct = warehouse.query("SELECT COUNT(DISTINCT unique_row_id) FROM green_tripdata")
    assert distinct.rows == [(ROWS - green_file.duplicate_rows,)]


def test_merge_records_its_load_with_the_count(harness: Harness, green_file: GeneratedFile) -> None:
    """A plan with a load: ``merge_staged`` records the load itself, with the rows it inserted."""
    warehouse = harness.warehouse
    source = harness.put(green_file.path, GREEN, JAN)
    context = JobContext("green-201901-ledger", GREEN, JAN, "merge")
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, source, harness.lake)
    staged = warehouse.stage(source, harness.lake, context)
    load = LoadRecord(
        GREEN, JAN, source.name, source.generation, context.run_id, staged.rows, 0, T0
    )
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, False, load=load)).inserted == ROWS
    assert warehouse.find_load(source.name, source.generation) == replace(load, rows_inserted=ROWS)
    warehouse.drop_month_objects(GREEN, JAN)


@pytest.fixture(scope="module")
def green_parquet(tmp_path_factory: pytest.TempPathFactory) -> GeneratedParquet:
    """The TLC's file of the same month, from the 2013-08..2023-01 period (counts as DOUBLE)."""
    folder = tmp_path_factory.mktemp("parquet")
    return generate_parquet_month(folder, "green", JAN, 2_000, seed=4, non_integral_counts=1)


def _reference_ids(generated: GeneratedParquet) -> list[str]:
    ids = []
    for vendor, pickup, dropoff, pu, do in generated.expected_id_texts():
        stamps = [f"{t}+00" if t else "" for t in (pickup, dropoff)]
        text = "".join([vendor or "", *stamps, pu or "", do or ""])
        ids.append(hashlib.md5(text.encode()).hexdigest())
    return sorted(ids)


def test_a_parquet_month_stages_onto_the_reference_types(
    harness: Harness, green_parquet: GeneratedParquet
) -> None:
    """Counts as DOUBLE become integers (1.5 is a bad value), ids are the reference's over the
    final types, and the footer's rows are what staging reads."""
    warehouse = harness.warehouse
    source = harness.put(green_parquet.path, GREEN, JAN)
    context = JobContext("green-201901-parquet", GREEN, JAN, "merge")
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, source, harness.lake)
    staged = warehouse.stage(source, harness.lake, context)
    assert (staged.rows, staged.rows_bad) == (green_parquet.rows, 1)
    assert staged.rows_out_of_month == green_parquet.out_of_month_rows
    assert "1.5" in staged.bad_samples[0]
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, False)).inserted == green_parquet.rows
    ids = warehouse.query(
        "SELECT unique_row_id FROM green_tripdata WHERE filename = 'green_tripdata_2019-01.parquet'"
    )
    assert all(isinstance(r[0], bytes) for r in ids.rows)
    assert sorted(r[0].hex() for r in ids.rows if isinstance(r[0], bytes)) == _reference_ids(
        green_parquet
    )
    expected = green_parquet.expected_table().column("passenger_count").to_pylist()
    whole = [int(v) for v in expected if v is not None and v == int(v)]
    ((total,),) = warehouse.query("SELECT SUM(passenger_count) FROM green_tripdata").rows
    assert total == sum(whole)


def test_replace_deletes_the_month_and_inserts_the_staged_rows_at_once(
    harness: Harness, green_file: GeneratedFile, green_parquet: GeneratedParquet
) -> None:
    warehouse = harness.warehouse
    warehouse.ensure_final_table(GREEN)
    csv = harness.put(green_file.path, GREEN, JAN)
    first = JobContext("green-201901-csv", GREEN, JAN, "merge", csv.generation)
    warehouse.create_external_table(GREEN, JAN, csv, harness.lake)
    staged = warehouse.stage(csv, harness.lake, first)
    old_ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(first, old_ranges, False)).inserted == ROWS

    parquet = harness.put(green_parquet.path, GREEN, JAN)
    second = JobContext("green-201901-tlc", GREEN, JAN, "merge", parquet.generation)
    warehouse.create_external_table(GREEN, JAN, parquet, harness.lake)
    staged = warehouse.stage(parquet, harness.lake, second)
    ranges = pickup_ranges(staged.pickup_dates)
    names = (csv_name(GREEN, JAN, CSV_GZ), csv_name(GREEN, JAN, PARQUET))
    replacing = Replacement(names, (*old_ranges, *ranges))
    replaced = warehouse.merge_staged(MergePlan(second, ranges, False, replacing))
    assert (replaced.deleted, replaced.inserted) == (ROWS, green_parquet.rows)
    counts = warehouse.query("SELECT filename, COUNT(*) FROM green_tripdata GROUP BY filename")
    assert counts.rows == [("green_tripdata_2019-01.parquet", green_parquet.rows)]


def test_rows_without_pickup_merge_once(harness: Harness, tmp_path: Path) -> None:
    good = "2,2019-01-05 10:00:00,2019-01-05 10:10:00,N,1,74,75,1,1.2,7,0,0.5,0,0,,0.3,7.8,2,1,"
    no_pickup = good.replace("2019-01-05 10:00:00", "", 1)
    bad_number = good.replace(",7,0,", ",seven,0,", 1)
    path = write_raw(tmp_path / "green.csv.gz", GREEN.layout.header, [good, no_pickup, bad_number])
    warehouse = harness.warehouse
    source = harness.put(path, GREEN, JAN)
    context = JobContext("green-201901-nopickup", GREEN, JAN, "merge")
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, source, harness.lake)
    staged = warehouse.stage(source, harness.lake, context)
    assert (staged.rows, staged.rows_bad, staged.rows_without_pickup) == (3, 1, 1)
    assert staged.bad_samples == (bad_number,)
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, True)).inserted == 3
    # The NULL-pickup row is found again only because the target's NULL pickups are read.
    other = JobContext("green-201901-nopickup2", GREEN, JAN, "merge")
    assert warehouse.merge_staged(MergePlan(other, ranges, True)).inserted == 0
    assert _count(warehouse, GREEN.final_table) == 3


def test_impossible_timestamps_and_non_numeral_ids_are_bad_values(
    harness: Harness, tmp_path: Path
) -> None:
    """Issue 12, items 5 and 9, on every engine: NULL, counted, out of the pickup dates."""
    good = "2,2019-01-05 10:00:00,2019-01-05 10:10:00,N,1,74,75,1,1.2,7,0,0.5,0,0,,0.3,7.8,2,1,"
    lines = [
        good,
        good.replace("2,", "1.0,", 1),  # a whole decimal, as some months write it: fine
        good.replace("2019-01-05 10:00:00", "infinity", 1),
        good.replace("2019-01-05 10:00:00", "9999-12-31 23:59:59", 1),
        good.replace("2019-01-05 10:00:00", "10000-01-01 00:00:00", 1),
        good.replace("2019-01-05 10:10:00", "infinity", 1),
        good.replace("2,", "22019-03-01 10:00:00+00,", 1),
        good.replace(",74,75,", ",7 4,75,", 1),
    ]
    path = write_raw(tmp_path / "green.csv.gz", GREEN.layout.header, lines)
    warehouse = harness.warehouse
    source = harness.put(path, GREEN, JAN)
    context = JobContext("green-201901-impossible", GREEN, JAN, "merge")
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, source, harness.lake)
    staged = warehouse.stage(source, harness.lake, context)
    assert (staged.rows, staged.rows_bad, staged.rows_without_pickup) == (8, 6, 3)
    assert staged.rows_without_dropoff == 1
    assert staged.pickup_dates == (date(2019, 1, 5),)
    assert len(staged.bad_samples) == 5  # at most five samples


def test_drop_month_objects_leaves_nothing(harness: Harness, green_file: GeneratedFile) -> None:
    warehouse = harness.warehouse
    source = harness.put(green_file.path, GREEN, JAN)
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, source, harness.lake)
    warehouse.stage(source, harness.lake, JobContext("green-201901-drop", GREEN, JAN, "merge"))
    assert len(set(harness.table_names()) - HISTORY) > 1

    warehouse.drop_month_objects(GREEN, JAN)
    assert set(harness.table_names()) - HISTORY == {"green_tripdata"}
    warehouse.drop_month_objects(GREEN, JAN)  # already gone: no error
    assert set(harness.table_names()) - HISTORY == {"green_tripdata"}


def _events() -> list[RunEvent]:
    running = RunEvent(
        run_id="green-201901-aaaa",
        dataset="green",
        month="2019-01",
        step="merge",
        state=RunState.RUNNING,
        started_at=T0,
        labels={"trigger": "schedule"},
        recorded_at=T0,
    )
    return [
        running,
        replace(
            running,
            state=RunState.SUCCESS,
            attempt=2,
            finished_at=T0 + timedelta(seconds=5),
            rows=2500,
            bytes=123_456_789_012,
            details={"rows_in_file": "2500", "pickup_ranges": "3"},
            recorded_at=T0 + timedelta(seconds=5),
        ),
        RunEvent(
            run_id="yellow-201902-bbbb",
            dataset="yellow",
            month="2019-02",
            step="download",
            state=RunState.FAILED,
            error="HTTP 404: not published",
            recorded_at=T0 + timedelta(seconds=10),
        ),
    ]


def test_run_events_append_read_filter(harness: Harness) -> None:
    warehouse = harness.warehouse
    assert warehouse.run_events() == []
    events = _events()
    warehouse.append_run_events(events[:2])
    warehouse.append_run_events(events[2:])

    assert warehouse.run_events() == events  # every field round-trips, oldest first
    assert warehouse.run_events(run_id="green-201901-aaaa") == events[:2]
    assert warehouse.run_events(dataset="yellow") == events[2:]
    assert warehouse.run_events(since=T0 + timedelta(seconds=5)) == events[1:]
    assert warehouse.run_events(run_id="green-201901-aaaa", dataset="yellow") == []

    # Same recorded_at: append order decides.
    tie = [
        replace(events[2], step=f"step-{i}", recorded_at=T0 + timedelta(hours=1)) for i in range(3)
    ]
    warehouse.append_run_events(tie)
    latest = warehouse.run_events(since=T0 + timedelta(hours=1))
    assert [e.step for e in latest] == ["step-0", "step-1", "step-2"]


def test_loads_record_find(harness: Harness) -> None:
    warehouse = harness.warehouse
    name = object_name(GREEN, JAN)
    first = LoadRecord(GREEN, JAN, name, "1700000000000001", "green-201901-aaaa", 2500, 2500, T0)
    second = replace(first, generation="1700000000000002", run_id="green-201901-cccc",
                     rows_inserted=0, loaded_at=T0 + timedelta(minutes=1))  # fmt: skip
    yellow = LoadRecord(
        Dataset.YELLOW,
        Month(2019, 2),
        object_name(Dataset.YELLOW, Month(2019, 2)),
        "42",
        "yellow-201902-bbbb",
        10,
        9,
        T0 + timedelta(minutes=2),
    )
    assert warehouse.find_load(name, first.generation) is None
    for record in (first, second, yellow):
        warehouse.record_load(record)

    assert warehouse.find_load(name, first.generation) == first
    assert warehouse.find_load(name, second.generation) == second
    assert warehouse.find_load(name, "1700000000000003") is None
    assert warehouse.find_load(object_name(GREEN, Month(2019, 2)), first.generation) is None
    assert warehouse.loads(GREEN) == [first, second]
    assert warehouse.loads(Dataset.YELLOW) == [yellow]
    assert warehouse.loads() == [first, second, yellow]


def test_query(harness: Harness) -> None:
    result = harness.warehouse.query("SELECT 1 AS one, 'a' AS letter")
    assert result.columns == ["one", "letter"]
    assert result.rows == [(1, "a")]
    with pytest.raises(PermanentError):
        harness.warehouse.query("SELECT * FROM no_such_table")


# -- more datasets: fhv (mirror CSV and TLC Parquet), fhvhv, the taxi zones (issue 17) ----------

FHV, FHVHV = Dataset.FHV, Dataset.FHVHV


def _md5_of_texts(texts: list[str | None]) -> str:
    return hashlib.md5("".join(t or "" for t in texts).encode()).hexdigest()


def _csv_reference_ids(generated: GeneratedFile) -> list[str]:
    """fhv's id computed here from the CSV text: base, pickup and dropoff as BigQuery writes a
    TIMESTAMP (``+00``), the zones as integers (``80.0`` -> ``80``), NULL as ''."""
    import csv
    import gzip

    ids = []
    with gzip.open(generated.path, "rt", newline="") as text:
        for row in csv.DictReader(text):
            zones = [
                str(int(float(row[z]))) if row[z] else "" for z in ("PUlocationID", "DOlocationID")
            ]
            stamps = [f"{row[t]}+00" for t in ("pickup_datetime", "dropOff_datetime")]
            ids.append(_md5_of_texts([row["dispatching_base_num"], *stamps, *zones]))
    return sorted(ids)


def _parquet_reference_ids(generated: GeneratedParquet) -> list[str]:
    dataset = Dataset(generated.dataset)
    times = {dataset.layout.pickup, dataset.layout.dropoff}
    ids = []
    for texts in generated.expected_id_texts():
        parts = [
            f"{t}+00" if name in times and t else t
            for name, t in zip(dataset.layout.id_columns, texts, strict=True)
        ]
        ids.append(_md5_of_texts(parts))
    return sorted(ids)


def _load(harness: Harness, dataset: Dataset, month: Month, path: Path, run: str) -> int:
    warehouse = harness.warehouse
    source = harness.put(path, dataset, month)
    context = JobContext(run, dataset, month, "merge", source.generation)
    warehouse.ensure_final_table(dataset)
    warehouse.create_external_table(dataset, month, source, harness.lake)
    staged = warehouse.stage(source, harness.lake, context)
    assert staged.rows_bad == 0, staged.bad_samples
    ranges = pickup_ranges(staged.pickup_dates)
    outcome = warehouse.merge_staged(MergePlan(context, ranges, staged.rows_without_pickup > 0))
    warehouse.drop_month_objects(dataset, month)
    return outcome.inserted


def _hex_ids(warehouse: Warehouse, table: str, filename: str) -> list[str]:
    rows = warehouse.query(f"SELECT unique_row_id FROM {table} WHERE filename = '{filename}'")
    return sorted(bytes(r[0]).hex() for r in rows.rows if isinstance(r[0], bytes | bytearray))


@pytest.fixture(scope="module")
def fhv_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedFile, GeneratedParquet]:
    """fhv 2019-02 from the mirror (CSV, "80.0" zones) and 2019-03 from the TLC (DOUBLE zones)."""
    folder = tmp_path_factory.mktemp("fhv")
    csv = generate_month(folder, FHV, Month(2019, 2), ROWS, seed=21)
    parquet = generate_parquet_month(folder, "fhv", Month(2019, 3), 2_000, seed=22)
    return csv, parquet


def test_fhv_months_from_both_sources_load_with_integer_zones_and_reference_ids(
    harness: Harness, fhv_files: tuple[GeneratedFile, GeneratedParquet]
) -> None:
    csv, parquet = fhv_files
    warehouse = harness.warehouse
    assert _load(harness, FHV, csv.month, csv.path, "fhv-201902-contract") == ROWS
    assert _load(harness, FHV, parquet.month, parquet.path, "fhv-201903-contract") == parquet.rows
    assert _hex_ids(warehouse, "fhv_tripdata", csv_name(FHV, csv.month)) == _csv_reference_ids(csv)
    assert _hex_ids(warehouse, "fhv_tripdata", parquet.name) == _parquet_reference_ids(parquet)
    expected = parquet.expected_table()
    pu, flag = harness.ident("PUlocationID"), harness.ident("SR_Flag")
    ((zones, total, flags),) = warehouse.query(
        f"SELECT COUNT({pu}), SUM({pu}), SUM({flag}) FROM fhv_tripdata"
        f" WHERE filename = '{parquet.name}'"
    ).rows
    values = [int(v) for v in expected.column("PUlocationID").to_pylist() if v is not None]
    assert (zones, total) == (len(values), sum(values))
    assert flags is None  # SR_Flag is null-typed from 2019-03
    # A re-run of a month inserts nothing.
    assert _load(harness, FHV, csv.month, csv.path, "fhv-201902-contract2") == 0
    assert _count(warehouse, "fhv_tripdata") == ROWS + parquet.rows


@pytest.fixture(scope="module")
def fhvhv_file(tmp_path_factory: pytest.TempPathFactory) -> GeneratedParquet:
    folder = tmp_path_factory.mktemp("fhvhv")
    return generate_parquet_month(folder, "fhvhv", Month(2025, 2), 2_000, seed=23)


def test_an_fhvhv_month_loads_its_25_columns_with_reference_ids(
    harness: Harness, fhvhv_file: GeneratedParquet
) -> None:
    warehouse = harness.warehouse
    month = fhvhv_file.month
    assert _load(harness, FHVHV, month, fhvhv_file.path, "fhvhv-202502-contract") == 2_000
    assert _hex_ids(warehouse, "fhvhv_tripdata", fhvhv_file.name) == _parquet_reference_ids(
        fhvhv_file
    )
    expected = fhvhv_file.expected_table()
    ((seconds, cbd, licenses),) = warehouse.query(
        "SELECT SUM(trip_time), SUM(cbd_congestion_fee), COUNT(DISTINCT hvfhs_license_num)"
        " FROM fhvhv_tripdata"
    ).rows
    assert seconds == sum(expected.column("trip_time").to_pylist())
    cents = sum(round(v * 100) for v in expected.column("cbd_congestion_fee").to_pylist())
    assert round(cbd * 100) == cents  # type: ignore[operator]
    assert licenses == 3
    assert _load(harness, FHVHV, month, fhvhv_file.path, "fhvhv-202502-contract2") == 0


def test_the_zone_lookup_is_replaced_whole_and_a_reload_never_duplicates(
    harness: Harness, tmp_path: Path
) -> None:
    from taxi_pipeline.devkit.zone_lookup import write_zone_lookup, zone_rows
    from taxi_pipeline.domain.lookups import TAXI_ZONES

    warehouse = harness.warehouse
    assert warehouse.lookup_rows(TAXI_ZONES) is None
    first = write_zone_lookup(tmp_path / "a")
    source = harness.put_object(first.path, TAXI_ZONES.object_name)
    assert warehouse.replace_lookup(TAXI_ZONES, source, harness.lake) == 265
    assert warehouse.replace_lookup(TAXI_ZONES, source, harness.lake) == 265  # reload
    assert warehouse.lookup_rows(TAXI_ZONES) == 265
    location = harness.ident("LocationID")
    names = ", ".join(harness.ident(n) for n in TAXI_ZONES.names)
    rows = warehouse.query(f"SELECT {names} FROM taxi_zone_lookup ORDER BY {location}").rows
    assert rows == list(first.rows)
    zone_names = {str(row[2]) for row in rows}
    assert any(", " in name for name in zone_names)  # quoted names with commas survive
    assert any('"Fort Totten"' in name for name in zone_names)
    assert rows[-1] == (265, "Unknown", "NA", "N/A")  # NA is a name, not a NULL

    # Another version replaces the rows, it does not add to them.
    second = write_zone_lookup(tmp_path / "b", zone_rows(count=263, seed=5))
    source = harness.put_object(second.path, TAXI_ZONES.object_name)
    assert warehouse.replace_lookup(TAXI_ZONES, source, harness.lake) == 263
    assert warehouse.query(f"SELECT COUNT(DISTINCT {location}) FROM taxi_zone_lookup").rows == [
        (263,)
    ]

    # A file that does not fit fails the replacement and leaves the table as it was.
    broken = tmp_path / "broken.csv"
    broken.write_text('"LocationID","Borough","Zone","service_zone"\nseven,"Queens","x","y"\n')
    source = harness.put_object(broken, TAXI_ZONES.object_name)
    with pytest.raises(PermanentError):
        warehouse.replace_lookup(TAXI_ZONES, source, harness.lake)
    assert warehouse.lookup_rows(TAXI_ZONES) == 263
    assert "taxi_zone_lookup" in harness.table_names()
