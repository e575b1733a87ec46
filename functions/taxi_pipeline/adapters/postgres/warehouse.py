"""PostgresWarehouse: the warehouse in a PostgreSQL 15+ schema, same tables and ids as the others.

- URL: a libpq URL, ``postgresql://user@host:5432/db?schema=NAME`` (``postgres://`` too; schema
  ``public`` by default; ``?host=/cloudsql/PROJECT:REGION:INSTANCE`` for a Cloud SQL socket). The
  password comes from the URL, ``TAXI_PIPELINE_WAREHOUSE_PASSWORD`` or ``PGPASSWORD`` (in that
  order) and never appears in an error or a log line.
- PostgreSQL cannot read the lake: :meth:`stage` passes the object through this client. An
  object the lake holds as a file here (``ObjectInfo.local_file``: a gzip CSV, or a Parquet file
  read as its CSV feed's texts) is typed by this client on its way into one binary ``COPY`` of
  the run's own staging table (:mod:`.client_typing`: DuckDB checks the files' spellings, types
  the values and computes the id; pgpq encodes the rows). Any other object (a GCS stream), or a
  month the client refuses, is streamed
  (``LakeReader.open_read``; the format's CSV feed inflates a gzip CSV, or writes a Parquet file's
  rows as CSV) into ``COPY ... FROM STDIN`` of UNLOGGED text landing tables, through two
  connections at once (:mod:`.copying`), then typed into the run's own staging table
  (``{dataset}_tripdata_YYYY_MM_{run digest}``). Either way the staging table is written and
  measured (and the landing tables dropped) in one transaction, so a killed COPY leaves no staging
  table. The landing's typing is strict first (``Statements.strict_staging_sql``: plain casts of
  the files' own spellings in one statement the server runs on parallel workers; its table has the
  final table's columns only), exact where the strict one refuses a value (the shared staging SQL
  of :mod:`taxi_pipeline.adapters.sql.statements`: NULL where a value does not fit, the row
  counted bad): the same types, bad values and ids as DuckDB and BigQuery every way. Runs of
  different months never wait for each other; a staging table whose run died is dropped by the
  next run of its month (a session advisory lock marks the ones in use).
- :meth:`merge_staged` is the insert-only merge over the staged pickup ranges, in one transaction
  with the load record, under transaction advisory locks on the dataset-months it touches (the
  file's month and every pickup month the staging data has): two processes, or two Cloud Run
  instances, never both insert the same rows. The final table is partitioned by file: a file's
  first load deletes the ids the final table holds from its strict staging table, indexes it and
  attaches it as the file's partition (an exactly typed one is written into a new partition); a
  file loaded before merges with MERGE.
- :meth:`query` runs the user's one statement in a READ ONLY transaction that is rolled back.

psycopg is imported when the first connection is made (cold starts).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taxi_pipeline.adapters.postgres import client_typing
from taxi_pipeline.adapters.postgres.copying import CopyTarget, copy_through
from taxi_pipeline.adapters.sql.dialects import POSTGRES
from taxi_pipeline.adapters.sql.history import LOADS_TABLE, RUNS_TABLE, History, Param
from taxi_pipeline.adapters.sql.statements import SourceColumn, Sources, Statements, source_columns
from taxi_pipeline.adapters.sql.tables import staging_table
from taxi_pipeline.domain.datasets import Column, Dataset, Month, csv_name, parse_object
from taxi_pipeline.domain.formats import SourceFormat
from taxi_pipeline.domain.lookups import LookupTable
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.errors import (
    ConfigurationError,
    PermanentError,
    PipelineError,
    TransientError,
)
from taxi_pipeline.logs import redact
from taxi_pipeline.pipeline.ports import (
    DateRange,
    JobContext,
    LakeReader,
    MergeOutcome,
    MergePlan,
    ObjectInfo,
    QueryResult,
    StagingSummary,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

SQL: Final = Statements(POSTGRES)

MINIMUM_SERVER_VERSION: Final = 150000
"""MERGE appeared in PostgreSQL 15."""

_SCHEMA_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COPY_STREAMS: Final = 2
"""Connections a month lands through at once (two server processes parse it)."""
_IDLE_CONNECTIONS: Final = 4
_LOOKUP_CHUNK: Final = 1 << 20
"""Bytes of a lookup file per COPY write."""
# SQLSTATEs of a value the strict staging refused (a cast, or taxi_pipeline_refuse): the month is
# typed the exact way instead, from the same landed rows. Any other error fails the month.
VALUE_REFUSED: Final = frozenset({"22P02", "22007", "22008", "22003", "22009"})
# The strict staging and its measure run on parallel workers where the server has them: a month's
# rows are one large table, and moving a row to the leader costs less than typing it.
_PARALLEL_SETTINGS: Final = (("parallel_setup_cost", "0"), ("parallel_tuple_cost", "0"))
_INDEX_MEMORY: Final = "256MB"
"""maintenance_work_mem of a first load's index builds (sorted in memory, and with two parallel
workers, which the server's 64MB default allows only below 32MB each); the session's only."""
_TRANSIENT_STATES: Final = frozenset(
    {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300", "53400", "08006"}
)


@dataclass(frozen=True)
class ConnectionTarget:
    """Where the warehouse lives, parsed from its URL (the password kept out of ``repr``)."""

    conninfo: str
    schema: str
    password: str | None

    @property
    def described(self) -> str:
        """``user@host:port/db`` for messages; never the password."""
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(self.conninfo)
        host = parts.get("host") or "localhost"
        port = parts.get("port") or "5432"
        user = f"{parts['user']}@" if parts.get("user") else ""
        return f"{user}{host}:{port}/{parts.get('dbname') or ''}"


def parse_url(url: str, password: str | None = None) -> ConnectionTarget:
    """A ``postgresql://`` URL without our ``schema`` parameter, which libpq does not know.

    ``password``: the TAXI_PIPELINE_WAREHOUSE_PASSWORD setting, used when the URL has none
    (libpq itself then falls back to PGPASSWORD and ~/.pgpass).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError("not a postgresql:// URL: " + redact(url))
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else "public"
    if not _SCHEMA_RE.match(schema):
        raise ConfigurationError(
            f"invalid schema name {schema!r}: letters, digits and underscores, at most 63"
        )
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, ""))
    try:
        from psycopg.conninfo import conninfo_to_dict

        url_password = conninfo_to_dict(conninfo).get("password")
    except Exception as exc:
        raise ConfigurationError(
            f"invalid PostgreSQL URL {redact(url)}: {_first_line(exc)}"
        ) from exc
    return ConnectionTarget(conninfo, schema, None if url_password else password)


class PostgresWarehouse:
    """The warehouse in one PostgreSQL schema; thread-safe (a connection per call or staging)."""

    stages_in_final_table: Final = False
    """Staging is a table of its own (from the COPY), which the merge's insert reads."""

    def __init__(self, target: ConnectionTarget, *, read_only: bool = False) -> None:
        """``read_only``: create nothing (the CLI's ``status``, ``runs``, ``sql``); the history
        tables must exist already."""
        self.target = target
        self.schema = target.schema
        self.history = History(POSTGRES, self._table(RUNS_TABLE), self._table(LOADS_TABLE))
        self._secrets = [
            s
            for s in (target.password, _url_password(target.conninfo), os.environ.get("PGPASSWORD"))
            if s
        ]
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        # One connection per month being staged, from stage() to drop_month_objects(): it holds
        # the session advisory lock that marks the staging table in use.
        self._staging: dict[tuple[Dataset, Month], _Staging] = {}
        self._check_and_create(self._connect(first=True), read_only=read_only)

    @classmethod
    def from_url(
        cls, url: str, *, password: str | None = None, read_only: bool = False
    ) -> PostgresWarehouse:
        return cls(parse_url(url, password), read_only=read_only)

    # -- connections ------------------------------------------------------------------------

    def _connect(self, *, first: bool = False) -> psycopg.Connection[Any]:
        import psycopg

        extra: dict[str, Any] = {"password": self.target.password} if self.target.password else {}
        extra.setdefault("application_name", "taxi-pipeline")
        extra.setdefault("connect_timeout", 10)
        try:
            conn = psycopg.connect(self.target.conninfo, autocommit=True, **extra)
        except psycopg.OperationalError as exc:
            raise self._connect_error(exc, first) from exc
        try:
            # DateStyle ISO: the id's timestamp text. jit off: compiling the load's expressions
            # cost more than it saved (measured on the first load of a month). The connection
            # check: a statement of a client killed meanwhile (kill -9) ends within a second
            # instead of running to its end.
            conn.execute(
                "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false),"
                " set_config('DateStyle', 'ISO, MDY', false), set_config('jit', 'off', false),"
                " set_config('client_connection_check_interval', '1000', false)",
                [POSTGRES.quote_ident(self.schema)],
            )
        except psycopg.Error as exc:
            conn.close()
            raise self._translate(exc, "configure the session") from exc
        return conn

    def _connect_error(self, exc: Exception, first: bool) -> PipelineError:
        where = self.target.described
        text = self._redact(_first_line(exc))
        if "password authentication failed" in text:
            return ConfigurationError(
                f"PostgreSQL at {where} refused the password (password authentication failed)"
            )
        if "no password supplied" in text or "password is required" in text.lower():
            return ConfigurationError(
                f"PostgreSQL at {where} needs a password: put it in the URL, PGPASSWORD or"
                " TAXI_PIPELINE_WAREHOUSE_PASSWORD"
            )
        if "does not exist" in text or "not permitted" in text or "no pg_hba.conf" in text:
            return ConfigurationError(f"PostgreSQL at {where}: {text}")
        if first:
            return ConfigurationError(f"cannot reach PostgreSQL at {where}: {text}")
        return TransientError(f"cannot reach PostgreSQL at {where}: {text}")

    def _check_and_create(self, conn: psycopg.Connection[Any], *, read_only: bool) -> None:
        """The server can MERGE, the schema exists; create the history tables and the
        try-cast functions (read-only: check the history tables are there)."""
        try:
            check_server_version(conn.info.server_version, self.target.described)
            (exists,) = _one(conn, "SELECT to_regnamespace(%s) IS NOT NULL", [self.schema])
            if not exists:
                raise ConfigurationError(
                    f"schema {self.schema!r} does not exist in PostgreSQL at"
                    f" {self.target.described}; create it (CREATE SCHEMA {self.schema}) or choose"
                    " another with ?schema=NAME"
                )
            if read_only:
                (found,) = _one(conn, "SELECT to_regclass(%s) IS NOT NULL", [self.history.runs_ref])
                if not found:
                    raise ConfigurationError(
                        f"no taxi-pipeline tables in schema {self.schema!r} of PostgreSQL at"
                        f" {self.target.described} (`taxi-pipeline run` creates them)"
                    )
            else:
                # Only what is missing: CREATE INDEX takes a lock on its table even when the
                # index exists, and every process (each Cloud Run instance) gets here.
                (ready,) = _one(
                    conn,
                    "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                    [self.history.runs_ref, self.history.loads_ref],
                )
                self._ddl(
                    conn, [*([] if ready else self._history_ddl()), *POSTGRES.functions_sql()]
                )
        except BaseException:
            conn.close()
            raise
        self._release(conn)

    def _history_ddl(self) -> list[str]:
        runs, loads = self.history.runs_ref, self.history.loads_ref
        return [
            *self.history.ddl(),
            f"CREATE INDEX IF NOT EXISTS pipeline_runs_run_id ON {runs} (run_id)",
            f"CREATE INDEX IF NOT EXISTS pipeline_loads_object ON {loads}"
            " (object_name, generation)",
        ]

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = self._connect()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._release(conn)

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg.pq import TransactionStatus

        if conn.closed or conn.info.transaction_status is not TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < _IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            staging, self._staging = list(self._staging.values()), {}
        for conn in [*idle, *(s.conn for s in staging)]:
            conn.close()

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return redact(text)

    def _translate(self, exc: Exception, what: str) -> PipelineError:
        """psycopg errors at the adapter edge: lost connections, deadlocks, cancels and
        serialization failures are transient; data and SQL errors permanent."""
        import psycopg

        if isinstance(exc, PipelineError):
            return exc
        message = f"{what}: {self._redact(_first_line(exc))}"
        state = getattr(exc, "sqlstate", None)
        if state in _TRANSIENT_STATES or (state or "").startswith("08"):
            return TransientError(message)
        if isinstance(exc, psycopg.OperationalError | psycopg.InternalError):
            return TransientError(message)
        if isinstance(exc, psycopg.Error) and state is None:
            return TransientError(message)  # no answer from the server: the connection broke
        return PermanentError(message)

    def _run(
        self,
        what: str,
        statement: str,
        params: Sequence[object] | dict[str, object] | None = None,
    ) -> list[tuple[Any, ...]]:
        """One statement on a pooled connection (autocommit); its rows, if it returns any."""
        import psycopg

        with self._connection() as conn:
            try:
                cursor = conn.execute(statement, params)
                return cursor.fetchall() if cursor.description else []
            except psycopg.Error as exc:
                raise self._translate(exc, what) from exc

    def _ddl(self, conn: psycopg.Connection[Any], statements: Sequence[str]) -> None:
        """DDL in one transaction under a lock of its own: two processes creating the same
        table at once would otherwise collide on the catalog."""
        import psycopg

        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ["ddl"])
                for statement in statements:
                    conn.execute(statement)
        except psycopg.Error as exc:
            raise self._translate(exc, "create tables") from exc

    # -- tables -----------------------------------------------------------------------------

    def _table(self, name: str) -> str:
        return f"{POSTGRES.quote_ident(self.schema)}.{POSTGRES.quote_ident(name)}"

    def ensure_final_table(self, dataset: Dataset) -> None:
        final = self._table(dataset.final_table)
        with self._connection() as conn:
            # Each merge gets here: an existing table is left alone (CREATE INDEX IF NOT EXISTS
            # would wait for the merges running on it). Table and indexes are one transaction.
            (exists,) = _one(conn, "SELECT to_regclass(%s) IS NOT NULL", [final])
            if not exists:
                self._ddl(
                    conn,
                    [SQL.final_table_sql(dataset, final), *_index_sql(dataset, self.schema, final)],
                )
                return
            # A table made before the TLC's fee columns gains them in place (NULL in the rows
            # there); the catalog read takes no lock, the ALTER only runs when one is missing.
            present = conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                [self.schema, dataset.final_table],
            ).fetchall()
            missing = SQL.add_columns_sql(dataset, final, [str(r[0]) for r in present])
            if missing:
                # IF NOT EXISTS: another process may have added it since the catalog read.
                self._ddl(
                    conn, [a.replace(" ADD COLUMN ", " ADD COLUMN IF NOT EXISTS ") for a in missing]
                )

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        """Nothing to create: PostgreSQL cannot read the lake, :meth:`stage` copies the object
        in. Returns the prefix of the month's staging tables."""
        return staging_table(dataset, month)

    def stage(self, source: ObjectInfo, lake: LakeReader, context: JobContext) -> StagingSummary:
        import psycopg

        dataset, month = context.dataset, context.month
        _, _, fmt = parse_object(source.name)
        POSTGRES.copy_options(fmt)  # a format PostgreSQL cannot take fails before any work
        self._end_staging(dataset, month)
        name = landing_name(dataset, month, context.run_id)
        filename = csv_name(dataset, month, fmt)
        conn = self._connect()
        entry = _Staging(conn, name, filename)
        with self._lock:
            self._staging[(dataset, month)] = entry
        staging = self._table(name)
        try:
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [_in_use_key(name)])
            row, strict = self._land_and_stage(conn, dataset, month, lake, source, name)
            if not strict:
                conn.execute(f"ANALYZE {staging}")
        except psycopg.Error as exc:
            raise self._translate(exc, f"stage {source.name}") from exc
        summary = SQL.summary(row)
        entry.partition_ready, entry.rows = strict, summary.rows
        return summary

    def _land_and_stage(
        self,
        conn: psycopg.Connection[Any],
        dataset: Dataset,
        month: Month,
        lake: LakeReader,
        source: ObjectInfo,
        name: str,
    ) -> tuple[tuple[Any, ...], bool]:
        """COPY the object into the staging table ``name`` and measure it: one transaction, so
        a COPY cut short (a kill, a lost connection) leaves no staging table. Returns the
        measure's row and whether the strict typing (or this client's) wrote it.

        An object in a lake on this machine (a gzip CSV, a Parquet file) is typed by this
        client on its way into COPY (:meth:`_stage_typed_in_client`), where the client and the
        server's input take every value. Any other object, or a month they refuse, lands in
        text landing tables first and is typed there:

        The rows land through :data:`_COPY_STREAMS` connections at once (:mod:`.copying`): this
        one's landing table is new in its transaction, each other's commits with its COPY (a
        run that dies leaves it to the next run of the month, as a staging table). The strict
        staging (:meth:`_stage_strict`) first; a month it refuses is typed from the same landed
        rows by the exact staging SQL (NULL where a value does not fit, the row counted bad). A
        format's CSV feed writes the object into COPY (a CSV inflated as it is, a Parquet
        object's rows as CSV), so every format lands alike, as the CSV's text.
        """
        _, _, fmt = parse_object(source.name)
        filename = csv_name(dataset, month, fmt)
        in_file = landed_columns(dataset, month, fmt)
        feed = [(column.name, name) for column, name in in_file]
        path = source.local_file
        if path is not None and client_typing.supports(dataset):
            typed = client_typing.TypedFile(path, fmt, dataset, month, feed)
            row = self._stage_typed_in_client(conn, typed, name, filename)
            if row is not None:
                return row, True
        q = POSTGRES.quote_ident
        landed = [column for column, _ in in_file]
        columns = ", ".join(q(c.name) for c in landed)
        # The landing tables hold the final columns the file has, each as text: what the
        # staging SQL reads from a CSV.
        sources: Sources = {
            c.name: SourceColumn(c.name if c in landed else None)
            for c in dataset.layout.final_columns
        }
        staging = self._table(name)
        landings = [self._table(n) for n in _landing_names(name)]
        text_columns = ", ".join(f"{q(c.name)} text" for c in landed)

        def create(landing: str) -> list[str]:
            return [
                f"DROP TABLE IF EXISTS {landing}",
                f"CREATE UNLOGGED TABLE {landing} ({text_columns})",
            ]

        helpers = self._copy_helpers(len(landings) - 1)
        landings = landings[: 1 + len(helpers)]
        done = False
        try:
            with conn.transaction():
                # The commit need not wait for the WAL: a server crash may lose this staging,
                # which the merge then reports gone (transient), and the redelivery stages
                # again. The merge's own commit waits as always.
                conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
                conn.execute(f"DROP TABLE IF EXISTS {staging}")
                for statement in create(landings[0]):
                    conn.execute(statement)
                targets = [
                    CopyTarget(
                        c,
                        f"COPY {landing} ({columns}) FROM STDIN"
                        f" {POSTGRES.copy_options(fmt, header=i == 0)}",
                        None if i == 0 else create(landing),
                    )
                    for i, (c, landing) in enumerate(zip([conn, *helpers], landings, strict=True))
                ]
                with lake.open_read(source.name) as raw:
                    copy_through(targets, lambda sink: fmt.write_csv(raw, feed, sink))
                union = " UNION ALL ".join(f"SELECT {columns} FROM {t}" for t in landings)
                relation = f"({union}) AS landed"
                row = self._stage_strict(conn, dataset, month, staging, relation, filename, sources)
                strict = row is not None
                if row is None:
                    conn.execute(
                        SQL.staging_sql(dataset, month, staging, relation, filename, sources)
                    )
                    row = _one(conn, SQL.measure_sql(dataset, month, staging))
                    if SQL.repeated_headers(row):
                        conn.execute(SQL.drop_repeated_headers_sql(staging))
                for landing in landings:
                    conn.execute(f"DROP TABLE {landing}")
            done = True
        finally:
            for helper, landing in zip(helpers, landings[1:], strict=True):
                if not done:
                    with contextlib.suppress(Exception):
                        helper.execute(f"DROP TABLE IF EXISTS {landing}")
                helper.close()
        return row, strict

    def _stage_typed_in_client(
        self,
        conn: psycopg.Connection[Any],
        file: client_typing.TypedFile,
        name: str,
        filename: str,
    ) -> tuple[Any, ...] | None:
        """The staging table ``name`` as the file's future partition, typed by this client on
        the way into one COPY (:mod:`.client_typing`), and measured: one transaction, so a COPY
        cut short leaves nothing. ``None`` where this client or the server's input refuses a
        value (nothing of it stays): the month then lands as text."""
        import psycopg

        dataset, staging = file.dataset, self._table(name)
        try:
            with conn.transaction():
                # As in the landing's transaction: a server crash may lose this staging, which
                # the merge then reports gone (transient), and the redelivery stages again.
                conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
                conn.execute(f"DROP TABLE IF EXISTS {staging}")
                for statement in client_typing.staging_table_sql(dataset, staging, filename):
                    conn.execute(statement)
                tally = client_typing.Tally(dataset, file.month)
                copied = copy_through(
                    [CopyTarget(conn, client_typing.copy_sql(dataset, staging, file.in_file))],
                    lambda sink: client_typing.write_typed_rows(file, sink, tally),
                    whole_records=False,
                )
                if copied != tally.rows:  # never seen: the measure would be of other rows
                    raise PermanentError(
                        f"{filename}: COPY wrote {copied} rows, this client sent {tally.rows}"
                    )
                return tally.measure_row()
        except client_typing.ClientTypingRefused as exc:
            reason = str(exc)
        except psycopg.DataError as exc:
            if exc.sqlstate not in VALUE_REFUSED:
                raise
            reason = _first_line(exc)
        log.info("%s: %s; landing it as text", filename, self._redact(reason))
        return None

    def _copy_helpers(self, count: int) -> list[psycopg.Connection[Any]]:
        """Up to ``count`` more connections for COPY; fewer where the server has no more to
        give (``max_connections``): the month then lands through fewer."""
        helpers: list[psycopg.Connection[Any]] = []
        while len(helpers) < count:
            try:
                helpers.append(self._connect())
            except TransientError as exc:
                log.info("landing through %d connection(s): %s", len(helpers) + 1, exc)
                break
        return helpers

    def _stage_strict(
        self,
        conn: psycopg.Connection[Any],
        dataset: Dataset,
        month: Month,
        staging: str,
        landing: str,
        filename: str,
        sources: Sources,
    ) -> tuple[Any, ...] | None:
        """The staging table as the file's future partition (``Statements.strict_staging_sql``:
        the final table's columns only, logged), measured; ``None`` where it refuses a value
        (nothing of it stays: a savepoint)."""
        import psycopg

        try:
            with conn.transaction():
                for name, value in _PARALLEL_SETTINGS:
                    conn.execute("SELECT set_config(%s, %s, true)", [name, value])
                conn.execute(
                    SQL.strict_staging_sql(dataset, month, staging, landing, filename, sources)
                )
                row = _one(conn, SQL.strict_measure_sql(dataset, month, staging))
        except psycopg.DataError as exc:
            if exc.sqlstate not in VALUE_REFUSED:
                raise
            log.info(
                "%s: %s; typing it the exact way",
                filename,
                self._redact(_first_line(exc)),
            )
            return None
        return row

    def merge_staged(self, plan: MergePlan) -> MergeOutcome:
        """The insert-only merge and the load record, one transaction, under the advisory locks
        of every dataset-month it touches (taken in order: two merges never deadlock). A
        replacing plan first drops the month's files' partitions and inserts the staged rows as
        the file's first load, in that same transaction: another session reads the month's old
        rows or its new ones (it waits on the dropped partitions' lock meanwhile)."""
        import psycopg

        dataset, month, replacing = plan.dataset, plan.month, plan.replacing
        pickup_ranges, include_null_pickup = plan.pickup_ranges, plan.include_null_pickup

        with self._lock:
            staging = self._staging.get((dataset, month))
        if staging is None or staging.conn.closed:
            raise TransientError(
                f"the {dataset.value} {month} staging table is gone; stage the month again"
            )
        conn = staging.conn
        final = self._table(dataset.final_table)
        partition = self._table(partition_name(dataset, staging.filename))
        # Merged again after its first load attached it: the staged rows are that partition.
        source = partition if staging.attached else self._table(staging.name)
        if staging.attached and replacing is not None and staging.filename in replacing.filenames:
            raise TransientError(
                f"the {dataset.value} {month} staged rows are the file's partition already;"
                " stage the month again"
            )
        deleted = 0
        attached = False
        try:
            with conn.transaction():
                for key in merge_lock_keys(dataset, month, pickup_ranges, include_null_pickup):
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])
                if replacing is not None:
                    # A row's filename routes it to its file's partition: the month's rows of
                    # a file are exactly that partition's.
                    for filename in replacing.filenames:
                        old = self._table(partition_name(dataset, filename))
                        (exists,) = _one(conn, "SELECT to_regclass(%s) IS NOT NULL", [old])
                        if exists:
                            (rows,) = _one(conn, f"SELECT count(*) FROM {old}")
                            conn.execute(f"DROP TABLE {old}")
                            deleted += int(rows)
                # The file's month is locked: whether its partition exists cannot change now.
                (loaded_before,) = _one(conn, "SELECT to_regclass(%s) IS NOT NULL", [partition])
                if loaded_before:
                    statement = SQL.merge_sql(
                        dataset, final, source, pickup_ranges, include_null_pickup
                    )
                    inserted = conn.execute(statement).rowcount
                elif staging.partition_ready:
                    # The file's first load, the strict staging table itself as its partition:
                    # the rows whose id the final table holds deleted (usually none), indexes
                    # built sorted, attached (ATTACH checks the filename, a sequential read,
                    # unless the table's CHECK says so already).
                    present = conn.execute(
                        SQL.delete_present_sql(
                            dataset, source, final, pickup_ranges, include_null_pickup
                        )
                    ).rowcount
                    inserted = staging.rows - present
                    self._index(conn, dataset, source, partition)
                    conn.execute(
                        f"ALTER TABLE {source} RENAME TO"
                        f" {POSTGRES.quote_ident(partition_name(dataset, staging.filename))}"
                    )
                    self._attach(conn, final, partition, staging.filename)
                    attached = True
                else:
                    # A first load typed the exact way: its new rows written in bulk into a
                    # table of their own, then indexed and attached likewise.
                    conn.execute(f"CREATE TABLE {partition} (LIKE {final})")
                    inserted = conn.execute(
                        SQL.insert_missing_sql(
                            dataset, partition, final, source, pickup_ranges, include_null_pickup
                        )
                    ).rowcount
                    self._index(conn, dataset, partition, partition)
                    self._attach(conn, final, partition, staging.filename)
                load = plan.recorded_load(int(inserted))
                if load is not None:
                    statement, params = self.history.insert_load(load)
                    conn.execute(statement, _params(params))
        except psycopg.Error as exc:
            raise self._translate(exc, f"merge into {dataset.final_table}") from exc
        staging.attached = staging.attached or attached
        return MergeOutcome(int(inserted), deleted if replacing is not None else None)

    def _index(
        self, conn: psycopg.Connection[Any], dataset: Dataset, table: str, partition: str
    ) -> None:
        """The final table's indexes on ``table``, named for the ``partition`` it becomes."""
        conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", [_INDEX_MEMORY])
        for statement in _index_sql(dataset, self.schema, table, name=partition):
            conn.execute(statement)

    @staticmethod
    def _attach(conn: psycopg.Connection[Any], final: str, partition: str, filename: str) -> None:
        conn.execute(
            f"ALTER TABLE {final} ATTACH PARTITION {partition}"
            f" FOR VALUES IN ({POSTGRES.quote_text(filename)})"
        )
        # The partition bound holds it now (a table typed in this client had it as a CHECK,
        # and as its default).
        conn.execute(
            f"ALTER TABLE {partition} DROP CONSTRAINT IF EXISTS {client_typing.FILE_CHECK},"
            " ALTER COLUMN filename DROP DEFAULT"
        )

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        """Drop this run's staging table, and those of the month whose run died."""
        import psycopg

        self._end_staging(dataset, month)
        prefix = staging_table(dataset, month) + "_"
        pattern = prefix.replace("_", r"\_") + "%"
        with self._connection() as conn:
            try:
                found = conn.execute(
                    "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(%s)"
                    " AND relkind = 'r' AND NOT relispartition AND relname LIKE %s",
                    [self.schema, pattern],
                ).fetchall()
                for (table,) in found:
                    owner = _staging_owner(str(table))
                    (free,) = _one(
                        conn,
                        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                        [_in_use_key(owner)],
                    )
                    if not free:
                        continue  # a live run's staging table
                    try:
                        conn.execute(f"DROP TABLE IF EXISTS {self._table(str(table))}")
                    finally:
                        conn.execute(
                            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                            [_in_use_key(owner)],
                        )
            except psycopg.Error as exc:
                raise self._translate(exc, f"drop the {dataset.value} {month} staging") from exc

    def _end_staging(self, dataset: Dataset, month: Month) -> None:
        """Forget this process's staging of the month: drop its table, close its connection."""
        with self._lock:
            staging = self._staging.pop((dataset, month), None)
        if staging is None:
            return
        with contextlib.suppress(Exception):
            if not staging.conn.closed:
                # And a landing table another connection committed, if the stage failed after.
                for table in [staging.name, *_landing_names(staging.name)[1:]]:
                    staging.conn.execute(f"DROP TABLE IF EXISTS {self._table(table)}")
        staging.conn.close()  # ends the session: its advisory lock goes with it

    # -- lookup tables ----------------------------------------------------------------------

    def replace_lookup(self, lookup: LookupTable, source: ObjectInfo, lake: LakeReader) -> int:
        """The object COPYed (through the client) into a temporary text table, then the
        table's rows deleted and the typed ones inserted, in one transaction: a reader sees the
        old rows or the new ones (MVCC; the table itself stays, so no query of it fails), a
        value that does not fit rolls everything back."""
        import psycopg

        q = POSTGRES.quote_ident
        table = self._table(lookup.table)
        landing = q(f"{lookup.table}_landing")
        columns = ", ".join(q(name) for name in lookup.names)
        with self._connection() as conn:
            try:
                self._ddl(conn, [SQL.lookup_table_sql(lookup, table)])
                with conn.transaction():
                    conn.execute(
                        f"CREATE TEMP TABLE {landing} ("
                        + ", ".join(f"{q(name)} text" for name in lookup.names)
                        + ") ON COMMIT DROP"
                    )
                    statement = f"COPY {landing} ({columns}) FROM STDIN (FORMAT csv, HEADER true)"
                    with lake.open_read(source.name) as raw, conn.cursor().copy(statement) as copy:
                        while chunk := raw.read(_LOOKUP_CHUNK):
                            copy.write(chunk)
                    conn.execute(f"DELETE FROM {table}")
                    conn.execute(
                        f"INSERT INTO {table} ({columns})\n"
                        + SQL.lookup_select_sql(lookup, landing)
                    )
                    (rows,) = _one(conn, f"SELECT count(*) FROM {table}")
            except psycopg.Error as exc:
                raise self._translate(exc, f"replace {lookup.table}") from exc
        return int(rows)

    def lookup_rows(self, lookup: LookupTable) -> int | None:
        table = self._table(lookup.table)
        ((exists,),) = self._run(
            f"find {lookup.table}", "SELECT to_regclass(%s) IS NOT NULL", [table]
        )
        if not exists:
            return None
        ((rows,),) = self._run(f"count {lookup.table}", f"SELECT count(*) FROM {table}")
        return int(rows)

    def query(self, sql: str) -> QueryResult:
        """The user's statement in a READ ONLY transaction that is always rolled back: a
        statement that would change something fails, and nothing it did stays."""
        import psycopg

        with self._connection() as conn:
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("SET TRANSACTION READ ONLY")
                    # A snapshot now: from here on the transaction cannot be made read-write.
                    conn.execute("SELECT 1")
                    cursor = conn.execute(sql)
                    columns = [d.name for d in cursor.description or []]
                    rows = [tuple(r) for r in cursor.fetchall()] if columns else []
            except psycopg.Error as exc:
                raise PermanentError(self._redact(_first_line(exc))) from exc
        return QueryResult(columns, rows)

    def table_names(self) -> list[str]:
        return [
            str(name)
            for (name,) in self._run(
                "list tables",
                # A final table's partitions are part of it, not tables of their own.
                "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(%s)"
                " AND relkind IN ('r', 'p') AND NOT relispartition ORDER BY 1",
                [self.schema],
            )
        ]

    # -- run history ------------------------------------------------------------------------

    def _history_run(self, what: str, statement: tuple[str, list[Param]]) -> list[tuple[Any, ...]]:
        sql, params = statement
        return self._run(what, sql, _params(params))

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        if events:
            # The server numbers the lines (seq): no sequence to fill.
            self._history_run("append run events", self.history.insert_events(events, lambda: 0))

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        rows = self._history_run(
            "read run events", self.history.select_events(run_id, dataset, since)
        )
        return [self.history.event(r) for r in rows]

    def record_load(self, record: LoadRecord) -> None:
        self._history_run("record load", self.history.insert_load(record))

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        rows = self._history_run(
            "read loads",
            self.history.select_loads(object_name=object_name, generation=generation),
        )
        return self.history.load(rows[-1]) if rows else None

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        rows = self._history_run("read loads", self.history.select_loads(dataset=dataset))
        return [self.history.load(r) for r in rows]


@dataclass
class _Staging:
    conn: psycopg.Connection[Any]
    name: str
    filename: str
    """The ``filename`` of the staged rows: the value of the file's partition."""
    partition_ready: bool = False
    """Whether the strict staging wrote the table (the final table's columns only, logged): a
    file's first load attaches it as the file's partition."""
    rows: int = 0
    attached: bool = False
    """Whether a first load made the table the file's partition (committed)."""


def _params(params: Sequence[Param]) -> dict[str, object]:
    return {p.name: p.value for p in params}


def _index_sql(dataset: Dataset, schema: str, table_ref: str, name: str | None = None) -> list[str]:
    """The pickup index of the final table, or of one of its partitions (``name``: the table
    whose name it carries, default ``table_ref``): a merge reads the target only on the staged
    pickup ranges (each partition's index finds the few rows of another file there), then joins
    on the id by hashing, so its cost follows the month, not the table. No index on the id: no
    merge plan uses one (a hash join of a month's ids beats a million index probes), and
    building it cost a tenth of a first load (BENCHMARKS.md). No unique index either: duplicate
    rows inside one published file are kept, as the reference keeps them."""
    table = (name or table_ref).rsplit(".", 1)[-1].strip('"')
    q = POSTGRES.quote_ident
    return [
        f"CREATE INDEX IF NOT EXISTS {q(table + '_pickup')}"
        f" ON {table_ref} ({q(dataset.layout.pickup)})",
    ]


def partition_name(dataset: Dataset, filename: str) -> str:
    """The partition that holds the rows of one published file (``filename`` as the rows
    name it): ``green_tripdata_file_2019_01_csv``, ``green_tripdata_file_2019_01_parquet``."""
    stem = filename.removeprefix(f"{dataset.value}_tripdata_")
    return f"{dataset.final_table}_file_" + re.sub(r"[^0-9A-Za-z]", "_", stem)


def check_server_version(version: int, where: str) -> None:
    """Refuse a server without MERGE (``version``: libpq's number, 150004 for 15.4)."""
    if version < MINIMUM_SERVER_VERSION:
        raise ConfigurationError(
            f"PostgreSQL at {where} is version {version // 10000}.{version % 10000}; the"
            " warehouse needs PostgreSQL 15 or newer (MERGE)"
        )


def landing_name(dataset: Dataset, month: Month, run_id: str) -> str:
    """``green_tripdata_2019_01_<10 hex of the run id's MD5>``: one staging table per run."""
    digest = hashlib.md5(run_id.encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{staging_table(dataset, month)}_{digest}"


def _landing_names(name: str) -> list[str]:
    """The landing tables of staging table ``name``, one per COPY connection."""
    return [f"{name}_text", *(f"{name}_text{i}" for i in range(1, _COPY_STREAMS))]


def _staging_owner(table: str) -> str:
    """The staging table a landing table belongs to (a staging table its own)."""
    return re.sub(r"_text[0-9]*$", "", table)


def _in_use_key(landing: str) -> str:
    return f"taxi-pipeline:landing:{landing}"


def merge_lock_keys(
    dataset: Dataset, month: Month, ranges: Sequence[DateRange], include_null: bool
) -> list[str]:
    """Advisory lock keys of a merge, sorted: the file's dataset-month and every pickup month its
    rows fall in (a row of another month's file may carry the same id), plus NULL pickups."""
    months = {str(month)}
    for r in ranges:
        day = r.start
        while day < r.end:
            months.add(f"{day.year:04d}-{day.month:02d}")
            day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    if include_null:
        months.add("null-pickup")
    return sorted(f"taxi-pipeline:merge:{dataset.value}:{m}" for m in months)


def _one(
    conn: psycopg.Connection[Any], statement: str, params: Sequence[object] | None = None
) -> tuple[Any, ...]:
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return tuple(row)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__


def _url_password(conninfo: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    value = conninfo_to_dict(conninfo).get("password")
    return str(value) if value else None


def landed_columns(dataset: Dataset, month: Month, fmt: SourceFormat) -> list[tuple[Column, str]]:
    """The final columns a file of ``fmt`` for ``month`` has, in the order COPY lands them,
    each with its name in the file: a CSV's layout columns, a typed file's (Parquet) those its
    schema period names."""
    if not fmt.typed:
        return [(c, c.name) for c in dataset.layout.columns]
    sources = source_columns(fmt, dataset, month)
    return [
        (c, found)
        for c in dataset.layout.final_columns
        if (found := sources[c.name].name) is not None
    ]
