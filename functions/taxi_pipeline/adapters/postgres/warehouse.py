"""PostgresWarehouse: the warehouse in a PostgreSQL 15+ schema, same tables and ids as the others.

- URL: a libpq URL, ``postgresql://user@host:5432/db?schema=NAME`` (``postgres://`` too; schema
  ``public`` by default; ``?host=/cloudsql/PROJECT:REGION:INSTANCE`` for a Cloud SQL socket). The
  password comes from the URL, ``TAXI_PIPELINE_WAREHOUSE_PASSWORD`` or ``PGPASSWORD`` (in that
  order) and never appears in an error or a log line.
- PostgreSQL cannot read the lake: :meth:`stage` streams the object through this client
  (``LakeReader.open_read``), gzip inflated here (ISA-L, on its own thread), into ``COPY ... FROM
  STDIN`` of an UNLOGGED text landing table, then builds the run's own UNLOGGED staging table
  (``{dataset}_tripdata_YYYY_MM_{run digest}``) from it with the shared staging SQL
  (:mod:`taxi_pipeline.adapters.sql.statements`: the same types, bad values and ids as DuckDB and
  BigQuery), all in one transaction, so a killed COPY leaves nothing. Runs of different months
  never wait for each other; a staging table whose run died is dropped by the next run of its
  month (a session advisory lock marks the ones in use).
- :meth:`merge_staged` is the insert-only merge over the staged pickup ranges, in one transaction
  with the load record, under transaction advisory locks on the dataset-months it touches (the
  file's month and every pickup month the staging data has): two processes, or two Cloud Run
  instances, never both insert the same rows. The final table is partitioned by file: a file's
  first load is written in bulk into a new table, indexed, then attached as its partition; a
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
_IDLE_CONNECTIONS: Final = 4
_LOOKUP_CHUNK: Final = 1 << 20
"""Bytes of a lookup file per COPY write."""
# SQLSTATEs of a value an input function refused: the file is landed as text and typed value by
# value instead. Any other COPY error (a short line, bad UTF-8) fails the month as it is.
_VALUE_REFUSED: Final = frozenset({"22P02", "22007", "22008", "22003", "22009"})
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
        with self._lock:
            self._staging[(dataset, month)] = _Staging(conn, name, filename)
        staging, landing = self._table(name), self._table(f"{name}_text")
        try:
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [_in_use_key(name)])
            try:
                row = self._land_and_stage(conn, dataset, month, lake, source, staging, landing)
            except psycopg.DataError as exc:
                if exc.sqlstate not in _VALUE_REFUSED:
                    raise
                log.info(
                    "%s: COPY refused a value (%s); landing it as text",
                    source.name,
                    self._redact(_first_line(exc)),
                )
                row = self._land_and_stage(
                    conn, dataset, month, lake, source, staging, landing, as_text=True
                )
            conn.execute(f"ANALYZE {staging}")
        except psycopg.Error as exc:
            raise self._translate(exc, f"stage {source.name}") from exc
        return SQL.summary(row)

    def _land_and_stage(
        self,
        conn: psycopg.Connection[Any],
        dataset: Dataset,
        month: Month,
        lake: LakeReader,
        source: ObjectInfo,
        staging: str,
        landing: str,
        *,
        as_text: bool = False,
    ) -> tuple[Any, ...]:
        """COPY the object into the landing table, build the staging table from it with the
        shared staging SQL, measure it: one transaction, so a COPY cut short (a kill, a lost
        connection) leaves nothing.

        The landing table has the dialect's landing types, parsed by COPY's input functions (no
        per-value casts in SQL); ``as_text``: every column text, for a file with a value some
        input function refuses (typed then value by value, NULL where a value does not fit).
        The format's CSV feed writes the object into COPY (a CSV inflated as it is, a Parquet
        object's rows as CSV), so every format lands alike: the staging SQL types them as it
        types the CSV's text.
        """
        _, _, fmt = parse_object(source.name)
        q = POSTGRES.quote_ident
        in_file = _landed_columns(dataset, month, fmt)
        landed = [column for column, _ in in_file]
        types = {c.name: "text" if as_text else POSTGRES.landing_types[c.kind] for c in landed}
        columns = ", ".join(q(c.name) for c in landed)
        # The landing table holds the final columns the file has, each as text would: what
        # the staging SQL reads from a CSV.
        sources: Sources = {
            c.name: SourceColumn(c.name if c in landed else None)
            for c in dataset.layout.final_columns
        }
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {staging}")
            conn.execute(f"DROP TABLE IF EXISTS {landing}")
            conn.execute(
                f"CREATE UNLOGGED TABLE {landing} ("
                + ", ".join(f"{q(c.name)} {types[c.name]}" for c in landed)
                + ")"
            )
            statement = f"COPY {landing} ({columns}) FROM STDIN {POSTGRES.copy_options(fmt)}"
            with lake.open_read(source.name) as raw, conn.cursor().copy(statement) as copy:
                fmt.write_csv(raw, [(c.name, name) for c, name in in_file], _CopySink(copy))
            filename = csv_name(dataset, month, fmt)
            conn.execute(
                SQL.staging_sql(
                    dataset, month, staging, landing, filename, sources, landed=not as_text
                )
            )
            conn.execute(f"DROP TABLE {landing}")
            row = _one(conn, SQL.measure_sql(dataset, month, staging))
            if SQL.repeated_headers(row):
                conn.execute(SQL.drop_repeated_headers_sql(staging))
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
        source = self._table(staging.name)
        final = self._table(dataset.final_table)
        partition = self._table(partition_name(dataset, staging.filename))
        deleted = 0
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
                else:
                    # The file's first load: its new rows written in bulk into a table of their
                    # own, indexes built sorted, then attached as the file's partition (ATTACH
                    # checks the filename, a sequential read).
                    conn.execute(f"CREATE TABLE {partition} (LIKE {final})")
                    inserted = conn.execute(
                        SQL.insert_missing_sql(
                            dataset, partition, final, source, pickup_ranges, include_null_pickup
                        )
                    ).rowcount
                    for statement in _index_sql(dataset, self.schema, partition):
                        conn.execute(statement)
                    conn.execute(
                        f"ALTER TABLE {final} ATTACH PARTITION {partition}"
                        f" FOR VALUES IN ({POSTGRES.quote_text(staging.filename)})"
                    )
                load = plan.recorded_load(int(inserted))
                if load is not None:
                    statement, params = self.history.insert_load(load)
                    conn.execute(statement, _params(params))
        except psycopg.Error as exc:
            raise self._translate(exc, f"merge into {dataset.final_table}") from exc
        return MergeOutcome(int(inserted), deleted if replacing is not None else None)

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
                    owner = str(table).removesuffix("_text")
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
                staging.conn.execute(f"DROP TABLE IF EXISTS {self._table(staging.name)}")
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


def _params(params: Sequence[Param]) -> dict[str, object]:
    return {p.name: p.value for p in params}


def _index_sql(dataset: Dataset, schema: str, table_ref: str) -> list[str]:
    """The pickup and id indexes of the final table, or of one of its partitions: the merge
    reads only the staged pickup ranges of the target, so its cost follows the month, not the
    table. No unique index: duplicate rows inside one published file are kept, as the reference
    keeps them."""
    table = table_ref.rsplit(".", 1)[-1].strip('"')
    q = POSTGRES.quote_ident
    return [
        f"CREATE INDEX IF NOT EXISTS {q(table + '_pickup')}"
        f" ON {table_ref} ({q(dataset.layout.pickup)})",
        f"CREATE INDEX IF NOT EXISTS {q(table + '_unique_row_id')} ON {table_ref} (unique_row_id)",
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


def _landed_columns(dataset: Dataset, month: Month, fmt: SourceFormat) -> list[tuple[Column, str]]:
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


class _CopySink:
    """A write-only file over a COPY (what a format's CSV feed writes into; pyarrow's CSV
    writer asks for the rest)."""

    def __init__(self, copy: psycopg.Copy) -> None:
        self._copy = copy
        self.closed = False

    def write(self, data: bytes) -> int:
        self._copy.write(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
