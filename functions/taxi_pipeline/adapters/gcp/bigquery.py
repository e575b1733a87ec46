"""BigQueryWarehouse: the warehouse in a BigQuery dataset, same tables and ids as DuckDbWarehouse.

- Final tables ``{dataset}_tripdata``: ``unique_row_id BYTES, filename STRING`` then the CSV
  columns with the reference types, ``PARTITION BY DATE(pickup)``, clustered by pickup/dropoff zone.
- Staging, two modes (``settings.staging_mode``):

  * ``external`` (the reference): ``{...}_ext`` is an external table over the ``gs://`` object with
    every column STRING; the staging CTAS reads it once (an external CSV is billed in full on every
    query, so nothing else reads it: the bad-row samples are kept in the staging table).
  * ``load``: a load job copies the object into ``{...}_raw`` (every column STRING); load jobs are
    not billed as queries, and the CTAS then reads a native table.

  Either way the staging table ``{dataset}_tripdata_YYYY_MM`` applies the types with ``SAFE_CAST``
  (a value that does not fit is counted as bad instead of failing the file, as in DuckDB) and
  computes the reference ``unique_row_id``. Every table of a month expires after a day by itself,
  so a crash never leaves storage behind for long.
- The merge is the reference's insert-only MERGE whose ON clause also carries constant pickup
  bounds on the target's partition column (:func:`merge_sql`), so only the partitions the staging
  data touches are scanned.
- Every job is labelled (dataset, month, run id, step) and query jobs are capped by
  ``settings.maximum_bytes_billed``. SDK errors go through :func:`errors.translate`.

``google.cloud.bigquery`` is imported only when the client is first needed (cold starts).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from taxi_pipeline.adapters.gcp.errors import translate
from taxi_pipeline.datasets import (
    Column,
    Dataset,
    Month,
    csv_name,
    external_table,
    staging_table,
)
from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.messages import RunState
from taxi_pipeline.ports import (
    DateRange,
    JobContext,
    LoadRecord,
    ObjectInfo,
    QueryResult,
    RunEvent,
    StagingSummary,
)
from taxi_pipeline.settings import Settings, StagingMode

if TYPE_CHECKING:
    from google.cloud import bigquery

RUNS_TABLE: Final = "pipeline_runs"
LOADS_TABLE: Final = "pipeline_loads"
STAGING_EXPIRATION: Final = timedelta(days=1)
_BAD_SAMPLES: Final = 5
# One DML INSERT per batch; BigQuery allows 10,000 query parameters per query.
_EVENTS_PER_INSERT: Final = 500

# https://cloud.google.com/resource-manager/docs/creating-managing-projects: 6-30 characters,
# lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen;
# legacy domain-scoped projects are written "example.com:project".
_PROJECT_RE: Final = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# Datasets: letters, digits and underscores, at most 1,024 characters.
_DATASET_RE: Final = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
# Tables may hold more (Unicode letters, marks, dashes, spaces); the pipeline's own names are
# ASCII words, and anything else reaching a table name is a bug worth stopping on.
_TABLE_RE: Final = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
# Label keys and values: lowercase letters, digits, "_" and "-", at most 63 characters.
_LABEL_BAD_CHARS: Final = re.compile(r"[^a-z0-9_-]")


def validate_project(project: str) -> str:
    """A BigQuery project id, or :class:`ConfigurationError` saying which rule it breaks."""
    if not _PROJECT_RE.match(project):
        raise ConfigurationError(
            f"invalid BigQuery project id {project!r}: 6-30 lowercase letters, digits or"
            " hyphens, starting with a letter and not ending with a hyphen"
        )
    return project


def validate_dataset(dataset: str) -> str:
    """A BigQuery dataset name (letters, digits, underscores; at most 1,024 characters)."""
    if not _DATASET_RE.match(dataset):
        raise ConfigurationError(
            f"invalid BigQuery dataset name {dataset!r}: use letters, digits and underscores"
            " (at most 1,024 characters)"
        )
    return dataset


def validate_table(table: str) -> str:
    """A table name the pipeline creates (ASCII letters, digits, underscores)."""
    if not _TABLE_RE.match(table):
        raise ConfigurationError(f"invalid BigQuery table name {table!r}")
    return table


def quote_ident(name: str) -> str:
    """A backquoted GoogleSQL identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_text(text: str) -> str:
    """A GoogleSQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def label_value(text: str) -> str:
    """``text`` made a valid label value (lowercase, ``[a-z0-9_-]``, at most 63 characters)."""
    return _LABEL_BAD_CHARS.sub("_", text.lower())[:63]


def job_labels(
    context: JobContext | None = None,
    *,
    step: str | None = None,
    dataset: Dataset | None = None,
    month: Month | None = None,
) -> dict[str, str]:
    """Labels of a job: the run's context, or what is known without one."""
    labels = {"component": "taxi-pipeline"}
    if context is not None:
        labels |= {
            "dataset": context.dataset.value,
            "month": str(context.month),
            "run_id": context.run_id,
            "step": context.step,
        }
    if dataset is not None:
        labels["dataset"] = dataset.value
    if month is not None:
        labels["month"] = str(month)
    if step is not None:
        labels["step"] = step
    return {key: label_value(value) for key, value in labels.items()}


# -- SQL builders (pure, unit-tested) --------------------------------------------------------


def raw_table(dataset: Dataset, month: Month) -> str:
    """Name of the month's raw STRING table in ``load`` staging mode."""
    return f"{staging_table(dataset, month)}_raw"


def final_table_sql(dataset: Dataset, table_ref: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of the partitioned, clustered final table."""
    layout = dataset.layout
    columns = ",\n  ".join(f"{quote_ident(c.name)} {c.bigquery_type}" for c in layout.columns)
    # Clustering by zone: within a pickup-date partition, the question users ask most ("trips
    # from/to zone X") then reads only the blocks of that zone instead of the whole day, which
    # the reference (no clustering) pays for in full. Re-clustering is automatic and free.
    # Clustering by unique_row_id would not help the MERGE: a join prunes no blocks, only
    # constant filters do, and the partition bounds already narrow its scan.
    return (
        f"CREATE TABLE IF NOT EXISTS {table_ref} (\n"
        f"  unique_row_id BYTES,\n  filename STRING,\n  {columns}\n)\n"
        f"PARTITION BY DATE({quote_ident(layout.pickup)})\n"
        f"CLUSTER BY {quote_ident('PULocationID')}, {quote_ident('DOLocationID')}\n"
        f"OPTIONS (description = {quote_text(_final_description(dataset))})"
    )


def _final_description(dataset: Dataset) -> str:
    return (
        f"NYC {dataset.value} taxi trips, one row per published CSV row; unique_row_id is the"
        " zoomcamp reference MD5 id. Written by taxi-pipeline."
    )


def _expiration_option() -> str:
    days = STAGING_EXPIRATION.days
    return f"expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {days} DAY)"


def external_table_sql(dataset: Dataset, table_ref: str, uri: str) -> str:
    """``CREATE OR REPLACE EXTERNAL TABLE`` over the gzip CSV, every column STRING.

    Strict like DuckDB's ``read_csv``: a line with too few or too many fields fails the query
    (no ``ignore_unknown_values``, no jagged rows), so a truncated file cannot load partially.
    Like ``read_csv`` too, a newline inside a quoted field is part of the field
    (``allow_quoted_newlines``): without it BigQuery fails such a file that DuckDB loads. The
    option stops BigQuery from splitting a CSV file across workers, which a gzip file never is.
    """
    columns = ",\n  ".join(f"{quote_ident(c.name)} STRING" for c in dataset.layout.columns)
    return (
        f"CREATE OR REPLACE EXTERNAL TABLE {table_ref} (\n  {columns}\n)\n"
        f"OPTIONS (\n  format = 'CSV',\n  uris = [{quote_text(uri)}],\n"
        "  skip_leading_rows = 1,\n  compression = 'GZIP',\n  field_delimiter = ',',\n"
        "  quote = '\"',\n  allow_quoted_newlines = true,\n  encoding = 'UTF8',\n"
        f"  {_expiration_option()}\n)"
    )


def raw_load_config(dataset: Dataset, labels: Mapping[str, str]) -> bigquery.LoadJobConfig:
    """The load job of ``load`` staging mode: the gzip CSV into the raw table, every column STRING.

    The same reading as :func:`external_table_sql`: strict like DuckDB's ``read_csv`` (a short,
    long or malformed line fails the load) and newlines inside quoted fields allowed.
    """
    from google.cloud import bigquery

    return bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.CSV,
        schema=[bigquery.SchemaField(c.name, "STRING") for c in dataset.layout.columns],
        skip_leading_rows=1,
        field_delimiter=",",
        quote_character='"',
        # As DuckDB reads them; it only stops BigQuery splitting the file, and gzip is unsplittable.
        allow_quoted_newlines=True,
        encoding="UTF-8",
        allow_jagged_rows=False,
        ignore_unknown_values=False,
        max_bad_records=0,
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        labels=dict(labels),
    )


def typed_sql(column: Column, ref: str) -> str:
    """The typed value of a raw STRING column; NULL when it does not fit (as DuckDB's TRY_CAST)."""
    if column.kind == "string":
        return ref
    if column.kind == "integer":
        # "1.0" appears in some published months: accept whole decimals, refuse "1.5". A plain
        # SAFE_CAST(... AS INT64) refuses "1.0" in BigQuery (and rounds "1.5" in the emulator).
        number = f"SAFE_CAST({ref} AS NUMERIC)"
        return f"IF({number} = TRUNC({number}), SAFE_CAST({number} AS INT64), NULL)"
    return f"SAFE_CAST({ref} AS {column.bigquery_type})"


def unique_row_id_sql(dataset: Dataset) -> str:
    """The reference id over the typed columns, exactly the zoomcamp formula (BYTES)."""
    parts = [
        f'COALESCE(CAST({quote_ident(name)} AS STRING), "")' for name in dataset.layout.id_columns
    ]
    return f"MD5(CONCAT({', '.join(parts)}))"


def staging_sql(dataset: Dataset, month: Month, table_ref: str, source_ref: str) -> str:
    """CTAS of the staging table from the raw STRING table (external or loaded).

    Empty fields become NULL first (DuckDB reads them with ``nullstr = ''``); ``_bad`` flags a row
    with a value that does not fit its column type and ``_bad_row`` keeps such a row's text, so
    the samples never need a second read of the source.
    """
    layout = dataset.layout
    names = [quote_ident(n) for n in layout.names]
    nulled = ", ".join(f"NULLIF({n}, '') AS {n}" for n in names)
    typed = {c.name: typed_sql(c, "r." + quote_ident(c.name)) for c in layout.columns}
    typed_list = ",\n    ".join(f"{typed[c.name]} AS {quote_ident(c.name)}" for c in layout.columns)
    bad = " OR ".join(
        f"(r.{quote_ident(c.name)} IS NOT NULL AND {typed[c.name]} IS NULL)"
        for c in layout.columns
        if c.kind != "string"
    )
    line = ", ".join(f"IFNULL(r.{n}, '')" for n in names)
    return (
        f"CREATE OR REPLACE TABLE {table_ref}\n"
        f"OPTIONS ({_expiration_option()})\nAS\n"
        f"SELECT {unique_row_id_sql(dataset)} AS unique_row_id,\n"
        f"  {quote_text(csv_name(dataset, month))} AS filename,\n"
        f"  {', '.join(names)},\n"
        "  _bad_row IS NOT NULL AS _bad,\n  _bad_row\n"
        "FROM (\n"
        f"  SELECT {typed_list},\n"
        f"    IF({bad}, ARRAY_TO_STRING([{line}], ','), NULL) AS _bad_row\n"
        f"  FROM (SELECT {nulled} FROM {source_ref}) AS r\n"
        ")"
    )


def measure_sql(dataset: Dataset, month: Month, table_ref: str) -> str:
    """One query over the staging table: counts, distinct pickup dates, bad-row samples."""
    pickup = quote_ident(dataset.layout.pickup)
    first = date(month.year, month.month, 1)
    following = month.next()
    after = date(following.year, following.month, 1)
    # ARRAY(subquery) rather than ARRAY_AGG(... IGNORE NULLS LIMIT n): the emulator keeps NULLs
    # when a LIMIT is given; both forms mean the same in BigQuery.
    return (
        "SELECT COUNT(*) AS rows_total, COUNTIF(_bad) AS rows_bad,\n"
        f"  COUNTIF({pickup} < TIMESTAMP '{first.isoformat()}'"
        f" OR {pickup} >= TIMESTAMP '{after.isoformat()}') AS rows_out_of_month,\n"
        f"  COUNTIF({pickup} IS NULL) AS rows_without_pickup,\n"
        f"  ARRAY_AGG(DISTINCT DATE({pickup}) IGNORE NULLS) AS pickup_dates,\n"
        f"  ARRAY(SELECT _bad_row FROM {table_ref} WHERE _bad LIMIT {_BAD_SAMPLES})"
        " AS bad_samples\n"
        f"FROM {table_ref}"
    )


def target_pickup_predicate(
    dataset: Dataset, ranges: Sequence[DateRange], include_null: bool, alias: str = "T"
) -> str:
    """Constant bounds on the target's partition column: only these partitions are scanned.

    A join predicate alone does not prune a MERGE target; constants in its ON clause do. Each
    range is its own term, so a stray date years away adds one small range, not the years between.
    """
    pickup = f"{alias}.{quote_ident(dataset.layout.pickup)}"
    terms = [
        f"({pickup} >= TIMESTAMP '{r.start.isoformat()}'"
        f" AND {pickup} < TIMESTAMP '{r.end.isoformat()}')"
        for r in ranges
    ]
    if include_null:
        terms.append(f"{pickup} IS NULL")
    return " OR ".join(terms) or "FALSE"


def merge_sql(
    dataset: Dataset,
    final_ref: str,
    staging_ref: str,
    ranges: Sequence[DateRange],
    include_null_pickup: bool,
) -> str:
    """The insert-only MERGE of the staging table into the final table, partition-pruned."""
    columns = ["unique_row_id", "filename", *(quote_ident(n) for n in dataset.layout.names)]
    prune = target_pickup_predicate(dataset, ranges, include_null_pickup, "T")
    return (
        f"MERGE {final_ref} AS T\nUSING {staging_ref} AS S\n"
        f"ON T.unique_row_id = S.unique_row_id\n  AND ({prune})\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)})\n"
        f"  VALUES ({', '.join('S.' + c for c in columns)})"
    )


def run_history_sql(runs_ref: str, loads_ref: str) -> str:
    """Script creating ``pipeline_runs`` and ``pipeline_loads`` when missing."""
    return (
        f"CREATE TABLE IF NOT EXISTS {runs_ref} (\n"
        "  run_id STRING NOT NULL, dataset STRING, month STRING, step STRING NOT NULL,\n"
        "  state STRING NOT NULL, attempt INT64, started_at TIMESTAMP, finished_at TIMESTAMP,\n"
        "  `rows` INT64, `bytes` INT64, labels STRING, error STRING, details STRING,\n"
        "  recorded_at TIMESTAMP NOT NULL, seq INT64\n"
        ")\nPARTITION BY DATE(recorded_at)\nCLUSTER BY dataset, run_id;\n"
        f"CREATE TABLE IF NOT EXISTS {loads_ref} (\n"
        "  dataset STRING NOT NULL, month STRING NOT NULL, object_name STRING NOT NULL,\n"
        "  generation STRING NOT NULL, run_id STRING NOT NULL, rows_in_file INT64 NOT NULL,\n"
        "  rows_inserted INT64 NOT NULL, loaded_at TIMESTAMP NOT NULL\n"
        ")\nCLUSTER BY object_name"
    )


_ParamValue = str | int | datetime | None

_RUN_COLUMNS: Final = (
    ("run_id", "STRING"),
    ("dataset", "STRING"),
    ("month", "STRING"),
    ("step", "STRING"),
    ("state", "STRING"),
    ("attempt", "INT64"),
    ("started_at", "TIMESTAMP"),
    ("finished_at", "TIMESTAMP"),
    ("rows", "INT64"),
    ("bytes", "INT64"),
    ("labels", "STRING"),
    ("error", "STRING"),
    ("details", "STRING"),
    ("recorded_at", "TIMESTAMP"),
    ("seq", "INT64"),
)
_LOAD_COLUMNS: Final = (
    ("dataset", "STRING"),
    ("month", "STRING"),
    ("object_name", "STRING"),
    ("generation", "STRING"),
    ("run_id", "STRING"),
    ("rows_in_file", "INT64"),
    ("rows_inserted", "INT64"),
    ("loaded_at", "TIMESTAMP"),
)


class BigQueryWarehouse:
    """The warehouse in one BigQuery dataset (``bigquery://project/dataset``).

    Thread-safe: the client is created once, lazily; jobs are independent.
    """

    def __init__(
        self,
        project: str,
        dataset: str,
        settings: Settings,
        *,
        client: bigquery.Client | None = None,
    ) -> None:
        self.project = validate_project(project)
        self.dataset = validate_dataset(dataset)
        self.settings = settings
        self._client = client
        self._client_lock = threading.Lock()
        self._history_ready = False
        self._history_lock = threading.Lock()
        self._seq_lock = threading.Lock()
        self._seq = 0

    @classmethod
    def from_url(
        cls, url: str, settings: Settings, *, client: bigquery.Client | None = None
    ) -> BigQueryWarehouse:
        """``bigquery://project/dataset`` -> the warehouse (no request is made yet)."""
        parts = urlsplit(url)
        dataset = parts.path.strip("/")
        if parts.scheme != "bigquery" or not parts.netloc or not dataset or "/" in dataset:
            raise ConfigurationError(f"not a bigquery://project/dataset URL: {url!r}")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"unexpected query or fragment in {url!r}")
        return cls(parts.netloc, dataset, settings, client=client)

    @property
    def client(self) -> bigquery.Client:
        """The BigQuery client, created on first use (Application Default Credentials)."""
        with self._client_lock:
            if self._client is None:
                from google.cloud import bigquery

                try:
                    self._client = bigquery.Client(
                        project=self.project, location=self.settings.bigquery_location
                    )
                except Exception as exc:
                    raise translate(exc, "create the BigQuery client") from exc
            return self._client

    def close(self) -> None:
        """Close the client's HTTP session, when one was created."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()  # type: ignore[no-untyped-call]

    # -- names -------------------------------------------------------------------------------

    def table_id(self, table: str) -> str:
        """``project.dataset.table`` (API form)."""
        return f"{self.project}.{self.dataset}.{validate_table(table)}"

    def table_ref(self, table: str) -> str:
        """```project.dataset.table``` (SQL form)."""
        return quote_ident(self.table_id(table))

    def table_names(self) -> list[str]:
        """Tables in the dataset, sorted (tests and the CLI)."""
        with self._translated(f"list tables of {self.project}.{self.dataset}"):
            return sorted(
                t.table_id for t in self.client.list_tables(f"{self.project}.{self.dataset}")
            )

    # -- jobs --------------------------------------------------------------------------------

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            raise translate(exc, what) from exc

    def _query(
        self,
        what: str,
        sql: str,
        labels: Mapping[str, str],
        params: Sequence[Any] = (),
    ) -> tuple[bigquery.QueryJob, list[bigquery.Row], list[str]]:
        """Run a query job to completion: labelled, capped, errors translated.

        Returns the job, its rows and its column names.
        """
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            labels=dict(labels),
            maximum_bytes_billed=self.settings.maximum_bytes_billed,
            query_parameters=list(params),
            # Unqualified names resolve in the pipeline's dataset, so `taxi-pipeline sql "SELECT
            # COUNT(*) FROM green_tripdata"` reads the same on BigQuery as on DuckDB.
            default_dataset=f"{self.project}.{self.dataset}",
        )
        prefix = f"taxi_{labels.get('step', 'query').replace('-', '_')}_"
        with self._translated(what):
            job = self.client.query(
                sql,
                job_config=config,
                job_id_prefix=prefix,
                location=self.settings.bigquery_location,
            )
            result = job.result()
            rows = list(result)
        return job, rows, [field.name for field in result.schema or ()]

    # -- tables ------------------------------------------------------------------------------

    def ensure_final_table(self, dataset: Dataset) -> None:
        self._query(
            f"create final table {dataset.final_table}",
            final_table_sql(dataset, self.table_ref(dataset.final_table)),
            job_labels(step="ensure-final-table", dataset=dataset),
        )

    def create_external_table(self, dataset: Dataset, month: Month, source: ObjectInfo) -> str:
        """(Re)create the month's external table; returns its name.

        In ``load`` staging mode nothing is created here (:meth:`stage` loads the object into
        the raw table it returns the name of): the register step then costs no job at all.
        """
        if self.settings.staging_mode is StagingMode.LOAD:
            return raw_table(dataset, month)
        name = external_table(dataset, month)
        uri = _gcs_uri(source)
        self._query(
            f"create external table {name}",
            external_table_sql(dataset, self.table_ref(name), uri),
            job_labels(step="create-external-table", dataset=dataset, month=month),
        )
        with self._translated(f"check external table {name}"):
            kind = self.client.get_table(self.table_id(name)).table_type
        if kind != "EXTERNAL":
            # The BigQuery emulator answers CREATE EXTERNAL TABLE with an empty ordinary table:
            # staging from it would "succeed" with zero rows and lose the month silently.
            raise ConfigurationError(
                f"{name} was created as a {kind} table, not an external one (is this an"
                " emulator without external tables?); use TAXI_PIPELINE_STAGING_MODE=load"
            )
        return name

    def stage(
        self, dataset: Dataset, month: Month, source: ObjectInfo, context: JobContext
    ) -> StagingSummary:
        uri = _gcs_uri(source)
        if self.settings.staging_mode is StagingMode.LOAD:
            source_name = self._load_raw(dataset, month, uri, context)
        else:
            source_name = external_table(dataset, month)
        staging = staging_table(dataset, month)
        labels = job_labels(context)
        self._query(
            f"build staging table {staging}",
            staging_sql(dataset, month, self.table_ref(staging), self.table_ref(source_name)),
            labels,
        )
        _, rows, _ = self._query(
            f"measure staging table {staging}",
            measure_sql(dataset, month, self.table_ref(staging)),
            labels,
        )
        (row,) = rows
        return StagingSummary(
            rows=int(row["rows_total"]),
            rows_bad=int(row["rows_bad"]),
            rows_out_of_month=int(row["rows_out_of_month"]),
            rows_without_pickup=int(row["rows_without_pickup"]),
            pickup_dates=tuple(sorted(row["pickup_dates"] or ())),
            bad_samples=tuple(row["bad_samples"] or ()),
        )

    def _load_raw(self, dataset: Dataset, month: Month, uri: str, context: JobContext) -> str:
        """Load the gzip CSV into the month's raw STRING table with a (free) load job."""
        name = raw_table(dataset, month)
        with self._translated(f"load {uri} into {name}"):
            job = self.client.load_table_from_uri(
                uri,
                self.table_id(name),
                job_config=raw_load_config(dataset, job_labels(context)),
                job_id_prefix=f"taxi_{label_value(context.step).replace('-', '_')}_load_",
                location=self.settings.bigquery_location,
            )
            job.result()
            # A load job cannot set an expiration; set it right away (the next run of the
            # month replaces the table anyway, and drop_month_objects deletes it).
            table = self.client.get_table(self.table_id(name))
            table.expires = datetime.now(UTC) + STAGING_EXPIRATION
            self.client.update_table(table, ["expires"])
        return name

    def merge_staged(
        self,
        dataset: Dataset,
        month: Month,
        pickup_ranges: Sequence[DateRange],
        include_null_pickup: bool,
        context: JobContext,
        *,
        load: LoadRecord | None = None,
    ) -> int:
        """The MERGE, then the load record (a second job: a crash between them re-stages the
        month on redelivery and inserts 0)."""
        job, _, _ = self._query(
            f"merge {staging_table(dataset, month)} into {dataset.final_table}",
            merge_sql(
                dataset,
                self.table_ref(dataset.final_table),
                self.table_ref(staging_table(dataset, month)),
                pickup_ranges,
                include_null_pickup,
            ),
            job_labels(context),
        )
        inserted = int(job.num_dml_affected_rows or 0)
        if load is not None:
            self.record_load(replace(load, rows_inserted=inserted))
        return inserted

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        # The tables API deletes any kind of table (DROP TABLE / DROP EXTERNAL TABLE differ).
        for name in (
            staging_table(dataset, month),
            external_table(dataset, month),
            raw_table(dataset, month),
        ):
            with self._translated(f"drop {name}"):
                self.client.delete_table(self.table_id(name), not_found_ok=True)

    def query(self, sql: str) -> QueryResult:
        _, rows, columns = self._query("query", sql, job_labels(step="query"))
        return QueryResult(
            columns, [tuple(row[i] for i in range(len(columns))) for row in rows] if columns else []
        )

    # -- run history -------------------------------------------------------------------------

    def _ensure_history(self) -> None:
        with self._history_lock:
            if not self._history_ready:
                self._query(
                    "create run history tables",
                    run_history_sql(self.table_ref(RUNS_TABLE), self.table_ref(LOADS_TABLE)),
                    job_labels(step="history"),
                )
                self._history_ready = True

    def _insert(
        self,
        what: str,
        table: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[_ParamValue]],
        labels: Mapping[str, str],
    ) -> None:
        """One DML INSERT ... VALUES with typed query parameters."""
        from google.cloud import bigquery

        params: list[bigquery.ScalarQueryParameter] = []
        tuples = []
        for i, row in enumerate(rows):
            names = []
            for (column, kind), value in zip(columns, row, strict=True):
                name = f"r{i}_{column}"
                params.append(bigquery.ScalarQueryParameter(name, kind, value))
                names.append(f"@{name}")
            tuples.append(f"({', '.join(names)})")
        column_list = ", ".join(quote_ident(c) for c, _ in columns)
        self._query(
            what,
            f"INSERT INTO {self.table_ref(table)} ({column_list}) VALUES {', '.join(tuples)}",
            labels,
            params,
        )

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        """Append with DML INSERT rather than streaming inserts.

        A DML INSERT is read-after-write consistent and behaves the same in the emulator and in
        BigQuery; streaming (``insertAll``) rows sit in a buffer that DML cannot touch for 30
        minutes (no retention DELETE), and streaming into a just-created table can be dropped.
        INSERTs do not count against the mutating-DML limits (2 running + 20 queued per table);
        past 1,500 a day they run 10 at a time with 100 queued, far above what runs produce.
        """
        if not events:
            return
        self._ensure_history()
        now = datetime.now(UTC)
        rows = []
        for event in events:
            rows.append(
                (
                    event.run_id,
                    event.dataset,
                    event.month,
                    event.step,
                    event.state.value,
                    event.attempt,
                    _utc(event.started_at),
                    _utc(event.finished_at),
                    event.rows,
                    event.bytes,
                    json.dumps(dict(event.labels), sort_keys=True),
                    event.error,
                    json.dumps(dict(event.details), sort_keys=True),
                    _utc(event.recorded_at) or now,
                    self._next_seq(),
                )
            )
        labels = job_labels(step="history")
        if events[0].dataset and events[0].month:
            labels |= {
                "dataset": label_value(events[0].dataset),
                "month": label_value(events[0].month),
                "run_id": label_value(events[0].run_id),
            }
        for start in range(0, len(rows), _EVENTS_PER_INSERT):
            self._insert(
                "append run events",
                RUNS_TABLE,
                _RUN_COLUMNS,
                rows[start : start + _EVENTS_PER_INSERT],
                labels,
            )

    def _next_seq(self) -> int:
        """Orders events of equal ``recorded_at`` (BigQuery has no rowid)."""
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        from google.cloud import bigquery

        self._ensure_history()
        where, params = ["TRUE"], []  # type: list[str], list[bigquery.ScalarQueryParameter]
        if run_id is not None:
            where.append("run_id = @run_id")
            params.append(bigquery.ScalarQueryParameter("run_id", "STRING", run_id))
        if dataset is not None:
            where.append("dataset = @dataset")
            params.append(bigquery.ScalarQueryParameter("dataset", "STRING", dataset))
        if since is not None:
            where.append("recorded_at >= @since")
            params.append(bigquery.ScalarQueryParameter("since", "TIMESTAMP", _utc(since)))
        columns = ", ".join(quote_ident(c) for c, _ in _RUN_COLUMNS)
        _, rows, _ = self._query(
            "read run events",
            f"SELECT {columns} FROM {self.table_ref(RUNS_TABLE)}"
            f" WHERE {' AND '.join(where)} ORDER BY recorded_at, seq",
            job_labels(step="history"),
            params,
        )
        return [
            RunEvent(
                run_id=r["run_id"],
                dataset=r["dataset"],
                month=r["month"],
                step=r["step"],
                state=RunState(r["state"]),
                attempt=r["attempt"],
                started_at=_utc(r["started_at"]),
                finished_at=_utc(r["finished_at"]),
                rows=r["rows"],
                bytes=r["bytes"],
                labels=json.loads(r["labels"] or "{}"),
                error=r["error"],
                details=json.loads(r["details"] or "{}"),
                recorded_at=_utc(r["recorded_at"]),
            )
            for r in rows
        ]

    def record_load(self, record: LoadRecord) -> None:
        self._ensure_history()
        self._insert(
            "record load",
            LOADS_TABLE,
            _LOAD_COLUMNS,
            [
                (
                    record.dataset.value,
                    str(record.month),
                    record.object_name,
                    record.generation,
                    record.run_id,
                    record.rows_in_file,
                    record.rows_inserted,
                    _utc(record.loaded_at),
                )
            ],
            job_labels(JobContext(record.run_id, record.dataset, record.month, "record-load")),
        )

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        from google.cloud import bigquery

        loads = self._loads(
            "object_name = @object_name AND generation = @generation",
            [
                bigquery.ScalarQueryParameter("object_name", "STRING", object_name),
                bigquery.ScalarQueryParameter("generation", "STRING", generation),
            ],
        )
        return loads[-1] if loads else None

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        from google.cloud import bigquery

        if dataset is None:
            return self._loads("TRUE", [])
        return self._loads(
            "dataset = @dataset",
            [bigquery.ScalarQueryParameter("dataset", "STRING", dataset.value)],
        )

    def _loads(self, where: str, params: Sequence[Any]) -> list[LoadRecord]:
        self._ensure_history()
        columns = ", ".join(quote_ident(c) for c, _ in _LOAD_COLUMNS)
        _, rows, _ = self._query(
            "read loads",
            f"SELECT {columns} FROM {self.table_ref(LOADS_TABLE)} WHERE {where} ORDER BY loaded_at",
            job_labels(step="history"),
            params,
        )
        return [
            LoadRecord(
                Dataset(r["dataset"]),
                Month.parse(r["month"]),
                r["object_name"],
                r["generation"],
                r["run_id"],
                r["rows_in_file"],
                r["rows_inserted"],
                _utc(r["loaded_at"]) or datetime.min.replace(tzinfo=UTC),
            )
            for r in rows
        ]


def _gcs_uri(source: ObjectInfo) -> str:
    uri = source.uri
    if not uri.startswith("gs://") or "*" in uri:
        raise ConfigurationError(
            f"the BigQuery warehouse reads gs:// objects only (no wildcards), got {uri!r};"
            " use a gs:// lake"
        )
    return uri


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC (a naive value is taken as UTC, as DuckDB's TIMESTAMP holds it)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
