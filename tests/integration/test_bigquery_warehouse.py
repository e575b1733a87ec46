"""BigQueryWarehouse against the BigQuery emulator (local-bigquery) reading fake-gcs-server.

The emulator has no external tables (``CREATE EXTERNAL TABLE`` makes an empty ordinary table), so
the ``load`` staging mode is proven end to end and the ``external`` mode as far as the emulator
goes: its DDL runs, the adapter refuses the non-external result loudly, and its staging CTAS runs
over a stand-in holding what BigQuery would read through the external table.
"""

# google-cloud-storage ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.cloud import bigquery
from google.cloud.storage import Bucket
from google.cloud.storage import Client as StorageClient

from taxi_pipeline.adapters.bigquery.warehouse import SQL, BigQueryWarehouse
from taxi_pipeline.adapters.duckdb.warehouse import DuckDbWarehouse
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.gcs.store import GcsStore
from taxi_pipeline.adapters.sql.tables import external_table, staging_table
from taxi_pipeline.devkit.generator import GeneratedFile, generate_month, write_raw
from taxi_pipeline.domain.datasets import Dataset, Month, object_name
from taxi_pipeline.errors import ConfigurationError, PermanentError
from taxi_pipeline.pipeline.ports import JobContext, MergePlan, ObjectInfo, StagingSummary
from taxi_pipeline.pipeline.steps.merge import pickup_ranges
from taxi_pipeline.settings import Settings, StagingMode

pytestmark = pytest.mark.emulator

GREEN, JAN = Dataset.GREEN, Month(2019, 1)
CAP = 7 * 1024**3  # a maximum_bytes_billed that is not the default, to see it on the jobs
ROWS = 4000

Factory = Callable[[StagingMode], BigQueryWarehouse]


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def green_file(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFile:
    """A generated month with the published quirks: strays years away, duplicates, "1.0"s."""
    return generate_month(tmp_path_factory.mktemp("files"), GREEN, JAN, ROWS, seed=7)


@pytest.fixture
def bucket(storage_client: StorageClient) -> Bucket:
    return storage_client.create_bucket(_unique("lake").replace("_", "-"))


@pytest.fixture
def bq_dataset(bigquery_client: bigquery.Client) -> Iterator[str]:
    name = _unique("taxi")
    bigquery_client.create_dataset(name)
    yield name
    bigquery_client.delete_dataset(name, delete_contents=True, not_found_ok=True)


@pytest.fixture
def make_warehouse(bigquery_client: bigquery.Client, bq_dataset: str) -> Factory:
    def make(mode: StagingMode) -> BigQueryWarehouse:
        settings = Settings(staging_mode=mode, maximum_bytes_billed=CAP)
        url = f"bigquery://{bigquery_client.project}/{bq_dataset}"
        return BigQueryWarehouse.from_url(url, settings, client=bigquery_client)

    return make


def _upload(bucket: Bucket, path: Path, dataset: Dataset = GREEN, month: Month = JAN) -> ObjectInfo:
    blob = bucket.blob(object_name(dataset, month))
    blob.upload_from_filename(str(path), content_type="application/gzip")
    blob.reload()
    return ObjectInfo(
        bucket.name, blob.name, str(blob.generation), blob.size, f"gs://{bucket.name}/{blob.name}"
    )


def _gcs(bucket: Bucket) -> GcsStore:
    """The bucket as the lake (the reader the staging port is given)."""
    return GcsStore(bucket.name, Settings(), client=bucket.client)


def _folder(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "lake")


def _duckdb(tmp_path: Path, path: Path) -> tuple[DuckDbWarehouse, ObjectInfo]:
    warehouse = DuckDbWarehouse(tmp_path / "warehouse.duckdb", threads=1)
    target = tmp_path / "lake" / object_name(GREEN, JAN)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    info = ObjectInfo("local", object_name(GREEN, JAN), "1", path.stat().st_size, target.as_uri())
    warehouse.ensure_final_table(GREEN)
    warehouse.create_external_table(GREEN, JAN, info, _folder(tmp_path))
    return warehouse, info


def _jobs(client: bigquery.Client, run_id: str) -> list[bigquery.QueryJob | bigquery.LoadJob]:
    """This run's jobs, found by their labels as a user would find them."""
    return [
        job
        for job in client.list_jobs(max_results=300)
        if isinstance(job, bigquery.QueryJob | bigquery.LoadJob)
        and (job.labels or {}).get("run_id") == run_id
    ]


def test_load_mode_end_to_end(
    make_warehouse: Factory,
    bigquery_client: bigquery.Client,
    bucket: Bucket,
    green_file: GeneratedFile,
    tmp_path: Path,
) -> None:
    warehouse = make_warehouse(StagingMode.LOAD)
    source = _upload(bucket, green_file.path)
    context = JobContext(_unique("green-201901").replace("_", "-"), GREEN, JAN, "merge")

    warehouse.ensure_final_table(GREEN)
    warehouse.ensure_final_table(GREEN)  # idempotent
    final = bigquery_client.get_table(warehouse.table_id(GREEN.final_table))
    assert final.time_partitioning is not None
    assert final.time_partitioning.field == "lpep_pickup_datetime"
    assert final.clustering_fields == ["PULocationID", "DOLocationID"]
    assert [(f.name, f.field_type) for f in final.schema[:4]] == [
        ("unique_row_id", "BYTES"),
        ("filename", "STRING"),
        ("VendorID", "STRING"),
        ("lpep_pickup_datetime", "TIMESTAMP"),
    ]

    assert (
        warehouse.create_external_table(GREEN, JAN, source, _gcs(bucket))
        == "green_tripdata_2019_01_raw"
    )
    staged = warehouse.stage(source, _gcs(bucket), context)
    assert (staged.rows, staged.rows_bad, staged.rows_without_pickup) == (ROWS, 0, 0)
    assert staged.rows_out_of_month == green_file.out_of_month_rows
    assert set(green_file.stray_pickup_dates) <= set(staged.pickup_dates)

    # Nothing is left behind for long: the month's tables expire by themselves.
    soon = datetime.now(UTC) + timedelta(days=1)
    for name in (staging_table(GREEN, JAN), "green_tripdata_2019_01_raw"):
        expires = bigquery_client.get_table(warehouse.table_id(name)).expires
        assert expires is not None
        assert abs(expires - soon) < timedelta(minutes=10), name

    ranges = pickup_ranges(staged.pickup_dates)
    assert len(ranges) >= 3  # the month plus strays years away, each its own range
    inserted = warehouse.merge_staged(MergePlan(context, ranges, False)).inserted
    assert inserted == ROWS  # duplicates inside one file are all kept, as in the reference
    # The same run's merge again (a redelivery) attaches to its job: the same figure, no new
    # insert. Another run of the month stages and merges anew and inserts nothing.
    assert warehouse.merge_staged(MergePlan(context, ranges, False)).inserted == ROWS
    other = JobContext(_unique("green-201901").replace("_", "-"), GREEN, JAN, "merge")
    again = warehouse.stage(source, _gcs(bucket), other)
    assert (
        warehouse.merge_staged(MergePlan(other, pickup_ranges(again.pickup_dates), False)).inserted
        == 0
    )
    (count,) = warehouse.query("SELECT COUNT(*) AS n FROM green_tripdata").rows
    assert count == (ROWS,)

    # Every stray date landed in its own partition.
    partitions = {
        r["partition_id"]
        for r in bigquery_client.query_and_wait(
            f"SELECT partition_id FROM `{warehouse.project}.{warehouse.dataset}`"
            ".INFORMATION_SCHEMA.PARTITIONS WHERE table_name = 'green_tripdata'"
        )
    }
    assert partitions == {d.strftime("%Y%m%d") for d in staged.pickup_dates}

    # Same file, same ids as the DuckDB adapter (the same reference formula on both engines).
    duck, local = _duckdb(tmp_path, green_file.path)
    duck_staged = duck.stage(local, _folder(tmp_path), context)
    assert duck_staged == staged
    duck.merge_staged(MergePlan(context, pickup_ranges(duck_staged.pickup_dates), False))
    bq_ids = Counter(
        r[0] for r in warehouse.query("SELECT TO_HEX(unique_row_id) FROM green_tripdata").rows
    )
    duck_ids = Counter(
        r[0] for r in duck.query("SELECT lower(hex(unique_row_id)) FROM green_tripdata").rows
    )
    duck.close()
    assert bq_ids == duck_ids
    assert sum(bq_ids.values()) == ROWS
    assert len(bq_ids) == ROWS - green_file.duplicate_rows

    # Jobs carry the run's labels and the cap; the MERGE read only the staging data's dates.
    jobs = _jobs(bigquery_client, context.run_id)
    merges = [j for j in jobs if isinstance(j, bigquery.QueryJob) and j.query.startswith("MERGE")]
    assert len(merges) == 1  # its repeat attached to it (the third merge was another run's)
    prune = SQL.target_pickup_predicate(GREEN, ranges, False, "T")
    for job in merges:
        assert job.labels == {
            "component": "taxi-pipeline",
            "dataset": "green",
            "month": "2019-01",
            "run_id": context.run_id,
            "step": "merge",
        }
        assert f"ON T.unique_row_id = S.unique_row_id\n  AND ({prune})" in job.query
        assert "TIMESTAMP '2088-01-24'" in job.query
    assert all(j.maximum_bytes_billed == CAP for j in jobs if isinstance(j, bigquery.QueryJob))
    loads = [j for j in jobs if isinstance(j, bigquery.LoadJob)]
    assert len(loads) == 1
    assert loads[0].labels["step"] == "merge"
    assert all(j.allow_quoted_newlines for j in loads)  # read as DuckDB reads the file

    warehouse.drop_month_objects(GREEN, JAN)
    warehouse.drop_month_objects(GREEN, JAN)  # already gone: no error
    assert warehouse.table_names() == ["green_tripdata"]


def _green_line(**values: str) -> str:
    row = dict.fromkeys(GREEN.layout.names, "")
    row |= {
        "VendorID": "2",
        "lpep_pickup_datetime": "2019-01-01 00:46:40",
        "lpep_dropoff_datetime": "2019-01-01 00:53:20",
        "store_and_fwd_flag": "N",
        "RatecodeID": "1",
        "PULocationID": "74",
        "DOLocationID": "75",
        "passenger_count": "1",
        "trip_distance": "0.86",
        "fare_amount": "6",
        "total_amount": "7.3",
        "payment_type": "2",
        "trip_type": "1",
    }
    row |= values
    return ",".join(row[n] for n in GREEN.layout.names)


def test_values_that_do_not_fit_are_counted_like_duckdb(
    make_warehouse: Factory, bucket: Bucket, tmp_path: Path
) -> None:
    lines = [
        _green_line(),
        _green_line(passenger_count="1.0", payment_type="1.0"),  # accepted, as in DuckDB
        _green_line(passenger_count="1.5"),  # bad
        _green_line(fare_amount="abc", lpep_pickup_datetime="2019-01-02 10:00:00"),  # bad
        _green_line(VendorID="", PULocationID="", congestion_surcharge=""),  # empty: NULL
        _green_line(lpep_pickup_datetime="2019-13-45 00:00:00"),  # bad, no pickup
        _green_line(lpep_pickup_datetime="2008-12-31 23:59:59"),  # stray
    ]
    path = write_raw(tmp_path / "green_tripdata_2019-01.csv.gz", GREEN.layout.header, lines)
    warehouse = make_warehouse(StagingMode.LOAD)
    source = _upload(bucket, path)
    context = JobContext("green-201901-badvalues", GREEN, JAN, "merge")
    warehouse.ensure_final_table(GREEN)
    staged = warehouse.stage(source, _gcs(bucket), context)

    duck, local = _duckdb(tmp_path, path)
    duck_staged = duck.stage(local, _folder(tmp_path), context)
    duck.close()
    expected_bad = {lines[2], lines[3], lines[5]}
    assert (staged.rows, staged.rows_bad, staged.rows_without_pickup) == (7, 3, 1)
    assert staged.rows_out_of_month == 1
    assert set(staged.bad_samples) == expected_bad == set(duck_staged.bad_samples)
    assert _without_samples(staged) == _without_samples(duck_staged)

    table = warehouse.table_ref(staging_table(GREEN, JAN))
    result = warehouse.query(
        f"SELECT passenger_count, payment_type, VendorID IS NULL AS no_vendor FROM {table}"
        " ORDER BY TO_HEX(unique_row_id)"
    )
    assert Counter(result.rows) == Counter(
        [(1, 2, False)] * 4 + [(1, 1, False), (None, 2, False), (1, 2, True)]
    )


def _without_samples(summary: StagingSummary) -> StagingSummary:
    return StagingSummary(
        summary.rows,
        summary.rows_bad,
        summary.rows_out_of_month,
        summary.rows_without_pickup,
        summary.pickup_dates,
    )


def test_external_mode_as_far_as_the_emulator_goes(
    make_warehouse: Factory,
    bigquery_client: bigquery.Client,
    bucket: Bucket,
    green_file: GeneratedFile,
) -> None:
    warehouse = make_warehouse(StagingMode.EXTERNAL)
    source = _upload(bucket, green_file.path)
    ext = external_table(GREEN, JAN)
    warehouse.ensure_final_table(GREEN)

    # The DDL is accepted, but the emulator makes an ordinary empty table: refused loudly.
    with pytest.raises(ConfigurationError, match="not an external one"):
        warehouse.create_external_table(GREEN, JAN, source, _gcs(bucket))
    made = bigquery_client.get_table(warehouse.table_id(ext))
    assert (made.table_type, made.num_rows) == ("TABLE", 0)
    assert [(f.name, f.field_type) for f in made.schema] == [
        (n, "STRING") for n in GREEN.layout.names
    ]

    # Stand-in for the external table: the same STRING columns holding the file's text, which
    # is what BigQuery reads through it. The external mode's staging CTAS then runs unchanged.
    load = bigquery_client.load_table_from_uri(
        source.uri,
        warehouse.table_id(ext),
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            skip_leading_rows=1,
            schema=[bigquery.SchemaField(n, "STRING") for n in GREEN.layout.names],
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        ),
    )
    load.result()
    context = JobContext("green-201901-external", GREEN, JAN, "merge")
    staged = warehouse.stage(source, _gcs(bucket), context)
    assert (staged.rows, staged.rows_bad) == (ROWS, 0)
    assert staged.rows_out_of_month == green_file.out_of_month_rows
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, False)).inserted == ROWS
    assert not [
        j for j in _jobs(bigquery_client, context.run_id) if isinstance(j, bigquery.LoadJob)
    ]
    warehouse.drop_month_objects(GREEN, JAN)
    assert warehouse.table_names() == ["green_tripdata"]


def test_a_truncated_file_fails_the_load_permanently(
    make_warehouse: Factory, bucket: Bucket, tmp_path: Path
) -> None:
    lines = [_green_line(), ",".join(_green_line().split(",")[:14])]  # a line cut short
    path = write_raw(tmp_path / "green_tripdata_2019-01.csv.gz", GREEN.layout.header, lines)
    warehouse = make_warehouse(StagingMode.LOAD)
    context = JobContext("green-201901-truncated", GREEN, JAN, "merge")
    with pytest.raises(PermanentError, match="load gs://"):
        warehouse.stage(_upload(bucket, path), _gcs(bucket), context)


def test_quoted_newlines_load_as_one_row_like_duckdb(
    make_warehouse: Factory, bigquery_client: bigquery.Client, bucket: Bucket, tmp_path: Path
) -> None:
    """A newline inside a quoted field belongs to the field, in both warehouses.

    The emulator reads CSV with DuckDB, which allows quoted newlines whatever the job says; what
    this shows on it is the job's setting and the same rows and samples as the local warehouse.
    """
    lines = [
        _green_line(),
        _green_line(store_and_fwd_flag='"N\nY"'),  # a string field: kept, newline and all
        _green_line(fare_amount='"7.\n00"'),  # a number field: a value that does not fit
    ]
    path = write_raw(tmp_path / "green_tripdata_2019-01.csv.gz", GREEN.layout.header, lines)
    warehouse = make_warehouse(StagingMode.LOAD)
    context = JobContext(_unique("green-201901-newlines").replace("_", "-"), GREEN, JAN, "merge")
    staged = warehouse.stage(_upload(bucket, path), _gcs(bucket), context)

    duck, local = _duckdb(tmp_path, path)
    duck_staged = duck.stage(local, _folder(tmp_path), context)
    duck.close()
    assert (staged.rows, staged.rows_bad) == (3, 1)
    assert staged == duck_staged
    flags = warehouse.query(
        f"SELECT store_and_fwd_flag FROM {warehouse.table_ref(staging_table(GREEN, JAN))}"
    )
    assert Counter(flags.rows) == Counter([("N",), ("N",), ("N\nY",)])
    (load,) = [j for j in _jobs(bigquery_client, context.run_id) if isinstance(j, bigquery.LoadJob)]
    assert load.allow_quoted_newlines is True


def test_sdk_errors_are_translated(make_warehouse: Factory) -> None:
    warehouse = make_warehouse(StagingMode.LOAD)
    context = JobContext("green-201901-errors", GREEN, JAN, "merge")
    with pytest.raises(PermanentError, match="query: BadRequest"):
        warehouse.query("SELEC nonsense")
    with pytest.raises(PermanentError, match="merge green_tripdata_2019_01 into green_tripdata"):
        warehouse.merge_staged(MergePlan(context, [], True))  # no tables at all


class _StallsAfterSubmittingTheMerge:
    """The first delivery's BigQuery client: its MERGE job is submitted, then the delivery
    stalls before it reads the outcome, as one killed or stuck while its job runs (whose lock
    another delivery then breaks). Everything else goes to the real client."""

    def __init__(self, client: bigquery.Client) -> None:
        self._client = client
        self.submitted = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    def query(self, sql: str, **options: object) -> bigquery.QueryJob:
        job = self._client.query(sql, **options)  # type: ignore[arg-type]
        if sql.startswith("MERGE"):
            self.submitted.set()
            assert self.release.wait(60), "the test never released the first delivery"
        return job


def _merge_jobs(client: bigquery.Client, run_id: str) -> list[bigquery.QueryJob]:
    return [
        j
        for j in _jobs(client, run_id)
        if isinstance(j, bigquery.QueryJob) and (j.query or "").startswith("MERGE")
    ]


def test_a_redelivered_merge_attaches_to_the_first_ones_job_instead_of_inserting_again(
    bigquery_client: bigquery.Client, bq_dataset: str, bucket: Bucket, green_file: GeneratedFile
) -> None:
    """Issue 12: the second merge of a run starts while the first one's MERGE job is in flight.
    Under the same deterministic job ids, the second delivery's staging and MERGE jobs are the
    first one's: BigQuery refuses the duplicates ("Already Exists") and the second delivery
    waits for those jobs. (The emulator finishes a job before it answers the insert, so it
    shows the refusal, not two MERGEs racing: on BigQuery, random ids let both insert.)"""
    settings = Settings(staging_mode=StagingMode.LOAD)
    stalling = _StallsAfterSubmittingTheMerge(bigquery_client)
    first = BigQueryWarehouse(
        bigquery_client.project,
        bq_dataset,
        settings,
        client=stalling,  # type: ignore[arg-type]
    )
    second = BigQueryWarehouse(
        bigquery_client.project, bq_dataset, settings, client=bigquery_client
    )
    source = _upload(bucket, green_file.path)
    context = JobContext(
        _unique("green-201901").replace("_", "-"), GREEN, JAN, "merge", source.generation
    )
    first.ensure_final_table(GREEN)
    staged = first.stage(source, _gcs(bucket), context)
    ranges = pickup_ranges(staged.pickup_dates)
    outcome: dict[str, int] = {}
    delivery = threading.Thread(
        target=lambda: outcome.setdefault(
            "first", first.merge_staged(MergePlan(context, ranges, False)).inserted
        )
    )
    delivery.start()
    try:
        assert stalling.submitted.wait(60)
        # The redelivery: stages again and merges, while the first delivery still waits.
        again = second.stage(source, _gcs(bucket), context)
        assert again == staged
        outcome["second"] = second.merge_staged(MergePlan(context, ranges, False)).inserted
    finally:
        stalling.release.set()
        delivery.join(60)

    assert outcome == {"first": ROWS, "second": ROWS}  # both report the one MERGE's inserts
    (count,) = second.query("SELECT COUNT(*) AS n FROM green_tripdata").rows
    assert count == (ROWS,)
    (merge,) = _merge_jobs(bigquery_client, context.run_id)  # one MERGE ran, not two
    assert merge.job_id == second.job_id(context, "merge")
    stages = [
        j
        for j in _jobs(bigquery_client, context.run_id)
        if isinstance(j, bigquery.QueryJob) and (j.query or "").startswith("CREATE OR REPLACE")
    ]
    assert [j.job_id for j in stages] == [second.job_id(context, "stage")]


def test_a_job_that_failed_runs_again_under_the_next_id(
    make_warehouse: Factory, bigquery_client: bigquery.Client, bucket: Bucket,
    green_file: GeneratedFile,
) -> None:  # fmt: skip
    warehouse = make_warehouse(StagingMode.LOAD)
    source = _upload(bucket, green_file.path)
    context = JobContext(
        _unique("green-201901").replace("_", "-"), GREEN, JAN, "merge", source.generation
    )
    warehouse.ensure_final_table(GREEN)
    with pytest.raises(PermanentError, match="merge green_tripdata_2019_01"):
        warehouse.merge_staged(MergePlan(context, [], True))  # no staging table yet: fails
    staged = warehouse.stage(source, _gcs(bucket), context)
    inserted = warehouse.merge_staged(
        MergePlan(context, pickup_ranges(staged.pickup_dates), True)
    ).inserted
    assert inserted == ROWS
    failed, done = sorted(_merge_jobs(bigquery_client, context.run_id), key=lambda j: j.job_id)
    assert (failed.job_id, failed.error_result is not None) == (
        warehouse.job_id(context, "merge", 0),
        True,
    )
    assert (done.job_id, done.error_result) == (warehouse.job_id(context, "merge", 1), None)
