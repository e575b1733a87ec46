"""PostgresWarehouse: the warehouse in a PostgreSQL 15+ schema, same tables and ids as the others.

- URL: a libpq URL, ``postgresql://user@host:5432/db?schema=NAME`` (``postgres://`` too; schema
  ``public`` by default; ``?host=/cloudsql/PROJECT:REGION:INSTANCE`` for a Cloud SQL socket). The
  password comes from the URL, ``TAXI_PIPELINE_WAREHOUSE_PASSWORD`` or ``PGPASSWORD`` (in that
  order) and never appears in an error or a log line.
- PostgreSQL cannot read the lake: :meth:`stage` streams the object through this client, gzip
  inflated here (ISA-L, on its own thread), into ``COPY ... FROM STDIN`` of an UNLOGGED landing
  table of the run's own (``{dataset}_tripdata_YYYY_MM_{run digest}``), in one transaction with
  its creation, so a killed COPY leaves nothing. Runs of different months never wait for each
  other; a landing table whose run died is dropped by the next run of its month (a session
  advisory lock marks the ones in use).
- :meth:`merge_staged` is the insert-only MERGE over the staged pickup ranges, in one transaction
  with the load record, under transaction advisory locks on the dataset-months it touches (the
  file's month and every pickup month the staging data has): two processes, or two Cloud Run
  instances, never both insert the same rows.
- :meth:`query` runs the user's one statement in a READ ONLY transaction that is rolled back.

psycopg is imported when the first connection is made (cold starts).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taxi_pipeline.adapters.postgres import sql
from taxi_pipeline.datasets import Dataset, Month, staging_table
from taxi_pipeline.errors import (
    ConfigurationError,
    PermanentError,
    PipelineError,
    TransientError,
)
from taxi_pipeline.logs import redact
from taxi_pipeline.messages import RunState
from taxi_pipeline.ports import (
    DateRange,
    JobContext,
    LoadRecord,
    ObjectInfo,
    ObjectReader,
    QueryResult,
    RunEvent,
    StagingSummary,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

MINIMUM_SERVER_VERSION: Final = 150000
"""MERGE appeared in PostgreSQL 15."""

OpenObject = Callable[[str, str | None], AbstractContextManager[ObjectReader]]
"""How the warehouse reads a lake object (``Lake.open``)."""

_SCHEMA_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COPY_CHUNK: Final = 1 << 20
_BAD_SAMPLES: Final = 5
_IDLE_CONNECTIONS: Final = 4
# SQLSTATEs of a value an input function refused: the file is landed as text and parsed value
# by value instead. Any other COPY error (a short line, bad UTF-8) fails the month as it is.
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

    def __init__(self, target: ConnectionTarget, open_object: OpenObject | None = None) -> None:
        self.target = target
        self.schema = target.schema
        self._open_object = open_object
        self._secrets = [
            s
            for s in (target.password, _url_password(target.conninfo), os.environ.get("PGPASSWORD"))
            if s
        ]
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        # One connection per month being staged, from stage() to drop_month_objects(): it holds
        # the session advisory lock that marks the landing table in use.
        self._staging: dict[tuple[Dataset, Month], _Staging] = {}
        self._check_and_create(self._connect(first=True))

    @classmethod
    def from_url(
        cls, url: str, *, password: str | None = None, open_object: OpenObject | None = None
    ) -> PostgresWarehouse:
        return cls(parse_url(url, password), open_object)

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
            # cost more than it saved (measured on the first load of a month).
            conn.execute(
                "SELECT set_config('search_path', %s, false), set_config('TimeZone', 'UTC', false),"
                " set_config('DateStyle', 'ISO, MDY', false), set_config('jit', 'off', false)",
                [sql.quote_ident(self.schema)],
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

    def _check_and_create(self, conn: psycopg.Connection[Any]) -> None:
        """The server can MERGE, the schema exists; create the history tables and parsers."""
        try:
            check_server_version(conn.info.server_version, self.target.described)
            (exists,) = _one(conn, "SELECT to_regnamespace(%s) IS NOT NULL", [self.schema])
            if not exists:
                raise ConfigurationError(
                    f"schema {self.schema!r} does not exist in PostgreSQL at"
                    f" {self.target.described}; create it (CREATE SCHEMA {self.schema}) or choose"
                    " another with ?schema=NAME"
                )
            self._ddl(conn, [*sql.history_sql(self.schema), *self._functions_sql()])
        except BaseException:
            conn.close()
            raise
        self._release(conn)

    def _functions_sql(self) -> list[str]:
        return sql.try_cast_functions_sql(self.schema)

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
        self, what: str, statement: str, params: Sequence[object] | None = None
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
        return sql.qualified(self.schema, name)

    def ensure_final_table(self, dataset: Dataset) -> None:
        with self._connection() as conn:
            self._ddl(conn, sql.final_table_sql(dataset, self.schema))

    def create_external_table(self, dataset: Dataset, month: Month, source: ObjectInfo) -> str:
        """Nothing to create: PostgreSQL cannot read the lake, :meth:`stage` copies the object
        in. Returns the prefix of the month's landing tables."""
        return staging_table(dataset, month)

    def stage(
        self, dataset: Dataset, month: Month, source: ObjectInfo, context: JobContext
    ) -> StagingSummary:
        import psycopg

        if self._open_object is None:
            raise ConfigurationError("this PostgreSQL warehouse was built without a lake to read")
        self._end_staging(dataset, month)
        name = landing_name(dataset, month, context.run_id)
        conn = self._connect()
        staging = _Staging(conn, name)
        with self._lock:
            self._staging[(dataset, month)] = staging
        landing = self._table(name)
        try:
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [_in_use_key(name)])
            try:
                self._land(conn, dataset, source, landing)
            except psycopg.DataError as exc:
                if exc.sqlstate not in _VALUE_REFUSED:
                    raise
                log.info(
                    "%s: COPY refused a value (%s); parsing it value by value",
                    source.name,
                    self._redact(_first_line(exc)),
                )
                self._land_as_text(conn, dataset, source, landing, name)
            summary = self._measure(conn, dataset, month, landing)
        except psycopg.Error as exc:
            raise self._translate(exc, f"stage {source.name}") from exc
        staging.rows_bad = summary.rows_bad
        return summary

    def _land(
        self, conn: psycopg.Connection[Any], dataset: Dataset, source: ObjectInfo, landing: str
    ) -> None:
        """CREATE + COPY in one transaction: a COPY cut short leaves no table behind."""
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {landing}")
            conn.execute(sql.landing_table_sql(dataset, landing))
            self._copy(conn, dataset, source, landing)
            conn.execute(f"ANALYZE {landing}")

    def _land_as_text(
        self,
        conn: psycopg.Connection[Any],
        dataset: Dataset,
        source: ObjectInfo,
        landing: str,
        name: str,
    ) -> None:
        text_table = self._table(f"{name}_text")
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {landing}")
            conn.execute(f"DROP TABLE IF EXISTS {text_table}")
            conn.execute(sql.landing_table_sql(dataset, text_table, as_text=True))
            self._copy(conn, dataset, source, text_table)
            conn.execute(sql.landing_table_sql(dataset, landing))
            conn.execute(sql.reparse_sql(dataset, text_table, landing))
            conn.execute(f"DROP TABLE {text_table}")
            conn.execute(f"ANALYZE {landing}")

    def _copy(
        self, conn: psycopg.Connection[Any], dataset: Dataset, source: ObjectInfo, table: str
    ) -> None:
        """Stream the lake object, inflated on ISA-L's own thread, into COPY, 1 MiB at a time."""
        from isal import igzip_threaded

        assert self._open_object is not None
        with self._open_object(source.name, source.generation) as raw:
            inflated: BinaryIO = igzip_threaded.open(  # type: ignore[no-untyped-call]
                raw, "rb", threads=1, block_size=_COPY_CHUNK
            )
            with inflated, conn.cursor().copy(sql.copy_sql(dataset, table)) as copy:
                while chunk := inflated.read(_COPY_CHUNK):
                    copy.write(chunk)

    def _measure(
        self, conn: psycopg.Connection[Any], dataset: Dataset, month: Month, landing: str
    ) -> StagingSummary:
        rows, bad, out_of_month, no_pickup, dates = _one(
            conn, sql.summary_sql(dataset, month, landing)
        )
        samples: tuple[str, ...] = ()
        if bad:
            found = conn.execute(sql.bad_samples_sql(dataset, landing, _BAD_SAMPLES)).fetchall()
            samples = tuple(str(text) for (text,) in found)
        return StagingSummary(
            rows=int(rows),
            rows_bad=int(bad),
            rows_out_of_month=int(out_of_month),
            rows_without_pickup=int(no_pickup),
            pickup_dates=tuple(dates or ()),
            bad_samples=samples,
        )

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
        """The insert-only MERGE and the load record, one transaction, under the advisory locks
        of every dataset-month it touches (taken in order: two merges never deadlock)."""
        import psycopg

        with self._lock:
            staging = self._staging.get((dataset, month))
        if staging is None or staging.conn.closed:
            raise TransientError(
                f"the {dataset.value} {month} landing table is gone; stage the month again"
            )
        conn = staging.conn
        landing = self._table(staging.name)
        partition = sql.partition_name(dataset, month)
        checked = staging.rows_bad != 0
        try:
            with conn.transaction():
                for key in merge_lock_keys(dataset, month, pickup_ranges, include_null_pickup):
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])
                # The file's month is locked: whether its partition exists cannot change now.
                (loaded_before,) = _one(
                    conn, "SELECT to_regclass(%s) IS NOT NULL", [self._table(partition)]
                )
                if loaded_before:
                    statement = sql.merge_sql(
                        dataset,
                        self._table(dataset.final_table),
                        landing,
                        month,
                        pickup_ranges,
                        include_null_pickup,
                        checked=checked,
                    )
                    inserted = conn.execute(statement).rowcount
                else:
                    first, *rest = sql.new_partition_sql(
                        dataset,
                        self.schema,
                        landing,
                        month,
                        pickup_ranges,
                        include_null_pickup,
                        checked=checked,
                    )
                    # Measured: the SELECT's expressions (types, id) on parallel workers shorten
                    # the bulk write even on two busy cores; the planner's default transfer cost
                    # per row keeps it serial.
                    conn.execute("SET LOCAL parallel_setup_cost = 0")
                    conn.execute("SET LOCAL parallel_tuple_cost = 0")
                    inserted = conn.execute(first).rowcount
                    for statement in rest:
                        conn.execute(statement)
                if load is not None:
                    self._insert_load(conn, load, inserted)
        except psycopg.Error as exc:
            raise self._translate(exc, f"merge into {dataset.final_table}") from exc
        return int(inserted)

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        """Drop this run's landing table, and those of the month whose run died."""
        self._end_staging(dataset, month)
        prefix = staging_table(dataset, month) + "_"
        pattern = prefix.replace("_", r"\_") + "%"
        with self._connection() as conn:
            import psycopg

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
                        continue  # a live run's landing table
                    try:
                        conn.execute(f"DROP TABLE IF EXISTS {self._table(str(table))}")
                    finally:
                        conn.execute(
                            "SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                            [_in_use_key(owner)],
                        )
            except psycopg.Error as exc:
                raise self._translate(exc, f"drop the {dataset.value} {month} landing") from exc

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

    def query(self, sql_text: str) -> QueryResult:
        """The user's statement in a READ ONLY transaction that is always rolled back: a
        statement that would change something fails, and nothing it did stays."""
        import psycopg

        with self._connection() as conn:
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("SET TRANSACTION READ ONLY")
                    # A snapshot now: from here on the transaction cannot be made read-write.
                    conn.execute("SELECT 1")
                    cursor = conn.execute(sql_text)
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

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        import psycopg

        if not events:
            return
        rows = [
            (
                e.run_id,
                e.dataset,
                e.month,
                e.step,
                e.state.value,
                e.attempt,
                _utc(e.started_at),
                _utc(e.finished_at),
                e.rows,
                e.bytes,
                json.dumps(dict(e.labels), sort_keys=True),
                e.error,
                json.dumps(dict(e.details), sort_keys=True),
                _utc(e.recorded_at) or datetime.now(UTC),
            )
            for e in events
        ]
        with self._connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO {self._table('pipeline_runs')} (run_id, dataset, month,"
                        ' step, state, attempt, started_at, finished_at, "rows", bytes, labels,'
                        " error, details, recorded_at)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        rows,
                    )
            except psycopg.Error as exc:
                raise self._translate(exc, "append run events") from exc

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        where, params = ["TRUE"], []  # type: list[str], list[object]
        if run_id is not None:
            where.append("run_id = %s")
            params.append(run_id)
        if dataset is not None:
            where.append("dataset = %s")
            params.append(dataset)
        if since is not None:
            where.append("recorded_at >= %s")
            params.append(_utc(since))
        rows = self._run(
            "read run events",
            'SELECT run_id, dataset, month, step, state, attempt, started_at, finished_at, "rows",'
            f" bytes, labels, error, details, recorded_at FROM {self._table('pipeline_runs')}"
            f" WHERE {' AND '.join(where)} ORDER BY recorded_at, seq",
            params,
        )
        return [
            RunEvent(
                run_id=r[0],
                dataset=r[1],
                month=r[2],
                step=r[3],
                state=RunState(r[4]),
                attempt=r[5],
                started_at=_utc(r[6]),
                finished_at=_utc(r[7]),
                rows=r[8],
                bytes=r[9],
                labels=json.loads(r[10] or "{}"),
                error=r[11],
                details=json.loads(r[12] or "{}"),
                recorded_at=_utc(r[13]),
            )
            for r in rows
        ]

    def _insert_load(
        self, conn: psycopg.Connection[Any], record: LoadRecord, inserted: int
    ) -> None:
        conn.execute(
            f"INSERT INTO {self._table('pipeline_loads')} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                record.dataset.value,
                str(record.month),
                record.object_name,
                record.generation,
                record.run_id,
                record.rows_in_file,
                inserted,
                _utc(record.loaded_at),
            ],
        )

    def record_load(self, record: LoadRecord) -> None:
        import psycopg

        with self._connection() as conn:
            try:
                self._insert_load(conn, record, record.rows_inserted)
            except psycopg.Error as exc:
                raise self._translate(exc, "record load") from exc

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        loads = self._loads("object_name = %s AND generation = %s", [object_name, generation])
        return loads[-1] if loads else None

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        if dataset is None:
            return self._loads("TRUE", [])
        return self._loads("dataset = %s", [dataset.value])

    def _loads(self, where: str, params: list[object]) -> list[LoadRecord]:
        rows = self._run(
            "read loads",
            "SELECT dataset, month, object_name, generation, run_id, rows_in_file, rows_inserted,"
            f" loaded_at FROM {self._table('pipeline_loads')} WHERE {where} ORDER BY loaded_at",
            params,
        )
        return [
            LoadRecord(
                Dataset(r[0]),
                Month.parse(r[1]),
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                _utc(r[7]) or datetime.min.replace(tzinfo=UTC),
            )
            for r in rows
        ]


@dataclass
class _Staging:
    conn: psycopg.Connection[Any]
    name: str
    rows_bad: int | None = None
    """Measured by :meth:`PostgresWarehouse.stage`; 0 lets the merge skip the type checks."""


def check_server_version(version: int, where: str) -> None:
    """Refuse a server without MERGE (``version``: libpq's number, 150004 for 15.4)."""
    if version < MINIMUM_SERVER_VERSION:
        raise ConfigurationError(
            f"PostgreSQL at {where} is version {version // 10000}.{version % 10000}; the"
            " warehouse needs PostgreSQL 15 or newer (MERGE)"
        )


def landing_name(dataset: Dataset, month: Month, run_id: str) -> str:
    """``green_tripdata_2019_01_<10 hex of the run id's MD5>``: one landing table per run."""
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


def _utc(value: datetime | None) -> datetime | None:
    """Aware UTC (a naive value is taken as UTC, as the other warehouses hold it)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
