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
- The jobs of a step (load, staging, measure, merge) have ids derived from the run, the object
  generation, the step and the job's role (:meth:`BigQueryWarehouse.job_id`). BigQuery refuses a
  second job with an id it knows ("Already Exists"), so a redelivered merge (its lock broken
  after a killed attempt, say) attaches to the job that is still running or done instead of
  starting a second insert-only MERGE beside it: BigQuery does not serialise INSERT DML, and
  two such MERGEs could both insert. Only a job that ended in an error is run again, under the
  next id.

``google.cloud.bigquery`` is imported only when the client is first needed (cold starts).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from taxi_pipeline.adapters.google_credentials import credentials_of
from taxi_pipeline.adapters.google_errors import translate
from taxi_pipeline.adapters.sql.dialects import BIGQUERY, STAGING_EXPIRATION
from taxi_pipeline.adapters.sql.history import LOADS_TABLE, RUNS_TABLE, History, Param
from taxi_pipeline.adapters.sql.statements import Statements, source_columns
from taxi_pipeline.adapters.sql.tables import external_table, staging_table
from taxi_pipeline.domain.datasets import Dataset, Month, csv_name, parse_object
from taxi_pipeline.domain.formats import CSV_GZ, SourceFormat
from taxi_pipeline.domain.lookups import LookupTable
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.errors import ConfigurationError, TransientError
from taxi_pipeline.pipeline.ports import (
    DateRange,
    JobContext,
    LakeReader,
    MergeOutcome,
    MergePlan,
    ObjectInfo,
    QueryResult,
    Replacement,
    StagingSummary,
)
from taxi_pipeline.settings import Settings, StagingMode

if TYPE_CHECKING:
    from google.cloud import bigquery

log = logging.getLogger(__name__)

SQL: Final = Statements(BIGQUERY)
# One DML INSERT per batch; BigQuery allows 10,000 query parameters per query.
_EVENTS_PER_INSERT: Final = 500
# Jobs of one name that may end in an error before a step gives up (transient, redelivered).
_MAX_RERUNS: Final = 50

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


quote_ident: Final = BIGQUERY.quote_ident
quote_text: Final = BIGQUERY.quote_text


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


def external_table_sql(
    dataset: Dataset, table_ref: str, uri: str, fmt: SourceFormat = CSV_GZ
) -> str:
    """``CREATE OR REPLACE EXTERNAL TABLE`` over the lake object, read as the format's options
    say (:meth:`BigQueryDialect.external_options`): a CSV with every column STRING, a Parquet
    file with the schema its footer declares."""
    options = ",\n  ".join([*BIGQUERY.external_options(fmt), f"uris = [{quote_text(uri)}]"])
    columns = ""
    if BIGQUERY.text_schema(fmt):
        listed = ",\n  ".join(f"{quote_ident(c.name)} STRING" for c in dataset.layout.columns)
        columns = f" (\n  {listed}\n)"
    return (
        f"CREATE OR REPLACE EXTERNAL TABLE {table_ref}{columns}\n"
        f"OPTIONS (\n  {options},\n  {BIGQUERY.expiration_option()}\n)"
    )


def replace_sql(
    dataset: Dataset,
    final_ref: str,
    staging_ref: str,
    ranges: Sequence[DateRange],
    include_null_pickup: bool,
    replacing: Replacement,
) -> str:
    """One multi-statement transaction: delete the month's replaced rows, insert the staged
    ones whose id the table does not hold, commit; the last statement returns ``(rows
    deleted, rows inserted)``. Both DML statements carry constant pickup bounds, so each reads
    only the partitions it names. The insert is ``INSERT ... WHERE NOT EXISTS`` rather than the
    MERGE: the same rows, and the BigQuery emulator runs no MERGE inside a transaction."""
    delete = SQL.delete_month_sql(dataset, final_ref, replacing)
    merge = SQL.merge_sql(
        dataset, final_ref, staging_ref, ranges, include_null_pickup, style="insert-missing"
    )
    return (
        "DECLARE deleted, inserted INT64 DEFAULT 0;\n"
        "BEGIN TRANSACTION;\n"
        f"{delete};\n"
        "SET deleted = @@row_count;\n"
        f"{merge};\n"
        "SET inserted = @@row_count;\n"
        "COMMIT TRANSACTION;\n"
        "SELECT deleted, inserted"
    )


def raw_load_config(
    dataset: Dataset, labels: Mapping[str, str], fmt: SourceFormat = CSV_GZ
) -> bigquery.LoadJobConfig:
    """The load job of ``load`` staging mode: the object into the raw table (a CSV's every
    column STRING, a Parquet file's own schema), read as the external table reads it
    (:meth:`BigQueryDialect.load_options`)."""
    from google.cloud import bigquery

    schema = (
        [bigquery.SchemaField(c.name, "STRING") for c in dataset.layout.columns]
        if BIGQUERY.text_schema(fmt)
        else None
    )
    return bigquery.LoadJobConfig(
        schema=schema,
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        labels=dict(labels),
        **BIGQUERY.load_options(fmt),
    )


class BigQueryWarehouse:
    """The warehouse in one BigQuery dataset (``bigquery://project/dataset``).

    Thread-safe: the client is created once, lazily; jobs are independent.
    """

    stages_in_final_table: Final = False
    """Staging is a table of its own (expiring), which the MERGE job reads."""

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
        self._final_ready: set[Dataset] = set()
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
                        project=self.project,
                        location=self.settings.bigquery_location,
                        credentials=credentials_of(self.settings),
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

    def job_id(self, context: JobContext, role: str, rerun: int = 0) -> str:
        """The id of the ``role`` job (``stage``, ``merge``, ...) of a run's step over one object
        generation; ``rerun`` counts the times a job of that name ended in an error."""
        key = "\n".join(
            (self.project, self.dataset, context.run_id, context.generation, context.step, role)
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        step = label_value(context.step).replace("-", "_")
        return f"taxi_{step}_{role}_{digest}_{rerun}"

    def _run_job(
        self,
        what: str,
        submit: Callable[[str | None], Any],
        identity: tuple[JobContext, str] | None,
    ) -> Any:
        """Submit a job and wait for it; with an ``identity``, under its deterministic id,
        attaching to the job of that id when BigQuery already has one that did not fail."""
        from google.api_core.exceptions import Conflict

        if identity is None:
            with self._translated(what):
                job = submit(None)
                job.result()
            return job
        context, role = identity
        for rerun in range(_MAX_RERUNS):
            job_id = self.job_id(context, role, rerun)
            with self._translated(what):
                try:
                    job = submit(job_id)
                except Conflict:
                    job = self.client.get_job(job_id, location=self.settings.bigquery_location)
                    if job.state == "DONE" and job.error_result:
                        continue  # that one failed: run the statement again, under the next id
                    log.info(
                        "%s: attaching to job %s (%s), submitted by an earlier delivery",
                        what,
                        job_id,
                        job.state,
                    )
                job.result()
            return job
        raise TransientError(f"{what}: {_MAX_RERUNS} jobs under this run's ids all failed")

    def _query(
        self,
        what: str,
        sql: str,
        labels: Mapping[str, str],
        params: Sequence[Any] = (),
        identity: tuple[JobContext, str] | None = None,
    ) -> tuple[bigquery.QueryJob, list[bigquery.Row], list[str]]:
        """Run a query job to completion: labelled, capped, errors translated.

        ``identity`` (the job context and the job's role in its step) gives the job its
        deterministic id (:meth:`job_id`). Returns the job, its rows and its column names.
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

        def submit(job_id: str | None) -> bigquery.QueryJob:
            if job_id is None:
                return self.client.query(
                    sql,
                    job_config=config,
                    job_id_prefix=prefix,
                    location=self.settings.bigquery_location,
                )
            # A job that failed is run again under the next id (_run_job), never by the
            # client's own job retry, which cannot reuse an id.
            return self.client.query(
                sql,
                job_config=config,
                job_id=job_id,
                job_retry=None,
                location=self.settings.bigquery_location,
            )

        job: bigquery.QueryJob = self._run_job(what, submit, identity)
        with self._translated(what):
            result = job.result()
            rows = list(result)
        return job, rows, [field.name for field in result.schema or ()]

    # -- tables ------------------------------------------------------------------------------

    def ensure_final_table(self, dataset: Dataset) -> None:
        """Create the final table, or add the columns a table made before them lacks (one
        ``ALTER TABLE`` each, in place: no row is rewritten). Checked once per instance:
        BigQuery limits the metadata updates of a table."""
        if dataset in self._final_ready:
            return
        labels = job_labels(step="ensure-final-table", dataset=dataset)
        ref = self.table_ref(dataset.final_table)
        self._query(
            f"create final table {dataset.final_table}", SQL.final_table_sql(dataset, ref), labels
        )
        with self._translated(f"read the schema of {dataset.final_table}"):
            present = [
                f.name for f in self.client.get_table(self.table_id(dataset.final_table)).schema
            ]
        for statement in SQL.add_columns_sql(dataset, ref, present):
            self._query(f"add a column to {dataset.final_table}", statement, labels)
        self._final_ready.add(dataset)

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        """(Re)create the month's external table; returns its name.

        In ``load`` staging mode nothing is created here (:meth:`stage` loads the object into
        the raw table it returns the name of): the register step then costs no job at all.
        """
        if self.settings.staging_mode is StagingMode.LOAD:
            return raw_table(dataset, month)
        name = external_table(dataset, month)
        uri = _gcs_uri(source)
        _, _, fmt = parse_object(source.name)
        self._query(
            f"create external table {name}",
            external_table_sql(dataset, self.table_ref(name), uri, fmt),
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

    def stage(self, source: ObjectInfo, lake: LakeReader, context: JobContext) -> StagingSummary:
        dataset, month = context.dataset, context.month
        uri = _gcs_uri(source)
        _, _, fmt = parse_object(source.name)
        if self.settings.staging_mode is StagingMode.LOAD:
            source_name = self._load_raw(dataset, month, uri, fmt, context)
        else:
            source_name = external_table(dataset, month)
        staging = staging_table(dataset, month)
        labels = job_labels(context)
        self._query(
            f"build staging table {staging}",
            SQL.staging_sql(
                dataset,
                month,
                self.table_ref(staging),
                self.table_ref(source_name),
                csv_name(dataset, month, fmt),
                source_columns(fmt, dataset, month),
            ),
            labels,
            identity=(context, "stage"),
        )
        _, rows, _ = self._query(
            f"measure staging table {staging}",
            SQL.measure_sql(dataset, month, self.table_ref(staging)),
            labels,
            identity=(context, "measure"),
        )
        (row,) = rows
        if SQL.repeated_headers(tuple(row)):
            self._query(
                f"drop repeated header lines from {staging}",
                SQL.drop_repeated_headers_sql(self.table_ref(staging)),
                labels,
                identity=(context, "drop_headers"),
            )
        return SQL.summary(tuple(row))

    def _load_raw(
        self, dataset: Dataset, month: Month, uri: str, fmt: SourceFormat, context: JobContext
    ) -> str:
        """Load the object into the month's raw STRING table with a (free) load job."""
        name = raw_table(dataset, month)
        what = f"load {uri} into {name}"

        def submit(job_id: str | None) -> bigquery.LoadJob:
            return self.client.load_table_from_uri(
                uri,
                self.table_id(name),
                job_config=raw_load_config(dataset, job_labels(context), fmt),
                job_id=job_id,
                location=self.settings.bigquery_location,
            )

        from google.api_core.exceptions import NotFound

        self._run_job(what, submit, (context, "load"))
        with self._translated(what):
            # A load job cannot set an expiration; set it right away (the next run of the
            # month replaces the table anyway, and drop_month_objects deletes it).
            try:
                table = self.client.get_table(self.table_id(name))
            except NotFound:
                # Attached to the load of an earlier delivery whose month tables were dropped
                # after its merge: the staging and merge jobs it ran are attached to as well.
                return name
            table.expires = datetime.now(UTC) + STAGING_EXPIRATION
            self.client.update_table(table, ["expires"])
        return name

    def merge_staged(self, plan: MergePlan) -> MergeOutcome:
        """The MERGE (a replacing plan's delete and insert: :func:`replace_sql`, one script job
        that a redelivery attaches to by its id), then the load record (a second job: a crash
        between them re-stages the month on redelivery and inserts 0)."""
        dataset, month, context = plan.dataset, plan.month, plan.context
        final = self.table_ref(dataset.final_table)
        staging = self.table_ref(staging_table(dataset, month))
        ranges, nulls = plan.pickup_ranges, plan.include_null_pickup
        outcome: MergeOutcome
        if plan.replacing is None:
            job, _, _ = self._query(
                f"merge {staging_table(dataset, month)} into {dataset.final_table}",
                SQL.merge_sql(dataset, final, staging, ranges, nulls),
                job_labels(context),
                identity=(context, "merge"),
            )
            outcome = MergeOutcome(int(job.num_dml_affected_rows or 0))
        else:
            _, rows, _ = self._query(
                f"replace {dataset.value} {month} with {staging_table(dataset, month)}",
                replace_sql(dataset, final, staging, ranges, nulls, plan.replacing),
                job_labels(context),
                identity=(context, "replace"),
            )
            (row,) = rows
            outcome = MergeOutcome(int(row[1]), int(row[0]))
        load = plan.recorded_load(outcome.inserted)
        if load is not None:
            self.record_load(load)
        return outcome

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        # The tables API deletes any kind of table (DROP TABLE / DROP EXTERNAL TABLE differ).
        for name in (
            staging_table(dataset, month),
            external_table(dataset, month),
            raw_table(dataset, month),
        ):
            with self._translated(f"drop {name}"):
                self.client.delete_table(self.table_id(name), not_found_ok=True)

    # -- lookup tables ----------------------------------------------------------------------

    def replace_lookup(self, lookup: LookupTable, source: ObjectInfo, lake: LakeReader) -> int:
        """A (free) load job of the CSV into ``{table}_load`` (every column STRING, expiring),
        then ``CREATE OR REPLACE TABLE`` of the typed rows: one atomic replacement."""
        from google.cloud import bigquery

        uri = _gcs_uri(source)
        loaded = f"{lookup.table}_load"
        labels = job_labels(step="replace-lookup")
        config = bigquery.LoadJobConfig(
            schema=[bigquery.SchemaField(name, "STRING") for name in lookup.names],
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
            labels=labels,
            **BIGQUERY.csv_load_options(),
        )

        def submit(job_id: str | None) -> bigquery.LoadJob:
            return self.client.load_table_from_uri(
                uri,
                self.table_id(loaded),
                job_config=config,
                job_id_prefix="taxi_replace_lookup_",
                location=self.settings.bigquery_location,
            )

        self._run_job(f"load {uri} into {loaded}", submit, None)
        try:
            self._query(
                f"replace {lookup.table}",
                SQL.replace_lookup_sql(
                    lookup, self.table_ref(lookup.table), self.table_ref(loaded)
                ),
                labels,
            )
        finally:
            with self._translated(f"drop {loaded}"):
                self.client.delete_table(self.table_id(loaded), not_found_ok=True)
        rows = self.lookup_rows(lookup)
        return 0 if rows is None else rows

    def lookup_rows(self, lookup: LookupTable) -> int | None:
        from google.api_core.exceptions import NotFound

        with self._translated(f"find {lookup.table}"):
            try:
                self.client.get_table(self.table_id(lookup.table))
            except NotFound:
                return None
        _, rows, _ = self._query(
            f"count {lookup.table}",
            f"SELECT COUNT(*) FROM {self.table_ref(lookup.table)}",
            job_labels(step="replace-lookup"),
        )
        return int(rows[0][0])

    def query(self, sql: str) -> QueryResult:
        _, rows, columns = self._query("query", sql, job_labels(step="query"))
        return QueryResult(
            columns, [tuple(row[i] for i in range(len(columns))) for row in rows] if columns else []
        )

    # -- run history -------------------------------------------------------------------------

    @property
    def _history(self) -> History:
        return History(BIGQUERY, self.table_ref(RUNS_TABLE), self.table_ref(LOADS_TABLE))

    def _ensure_history(self) -> None:
        with self._history_lock:
            if not self._history_ready:
                self._query(
                    "create run history tables",
                    ";\n".join(self._history.ddl()),
                    job_labels(step="history"),
                )
                self._history_ready = True

    def _history_query(
        self, what: str, statement: tuple[str, list[Param]], labels: Mapping[str, str]
    ) -> list[bigquery.Row]:
        """A history statement with its parameters typed for BigQuery."""
        from google.cloud import bigquery

        self._ensure_history()
        sql, params = statement
        typed = [
            bigquery.ScalarQueryParameter(p.name, BIGQUERY.history_types[p.kind], p.value)
            for p in params
        ]
        _, rows, _ = self._query(what, sql, labels, typed)
        return rows

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
        labels = job_labels(step="history")
        if events[0].dataset and events[0].month:
            labels |= {
                "dataset": label_value(events[0].dataset),
                "month": label_value(events[0].month),
                "run_id": label_value(events[0].run_id),
            }
        for start in range(0, len(events), _EVENTS_PER_INSERT):
            batch = events[start : start + _EVENTS_PER_INSERT]
            self._history_query(
                "append run events", self._history.insert_events(batch, self._next_seq), labels
            )

    def _next_seq(self) -> int:
        """Orders events of equal ``recorded_at`` (BigQuery has no rowid)."""
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        rows = self._history_query(
            "read run events",
            self._history.select_events(run_id, dataset, since),
            job_labels(step="history"),
        )
        return [self._history.event(tuple(r)) for r in rows]

    def record_load(self, record: LoadRecord) -> None:
        self._history_query(
            "record load",
            self._history.insert_load(record),
            job_labels(JobContext(record.run_id, record.dataset, record.month, "record-load")),
        )

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        loads = self._loads(object_name=object_name, generation=generation)
        return loads[-1] if loads else None

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        return self._loads(dataset=dataset)

    def _loads(self, **where: Any) -> list[LoadRecord]:
        rows = self._history_query(
            "read loads", self._history.select_loads(**where), job_labels(step="history")
        )
        return [self._history.load(tuple(r)) for r in rows]


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
