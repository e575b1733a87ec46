"""DuckDbWarehouse: the embedded warehouse (one DuckDB file), same tables as BigQuery.

The external table is a view over ``read_csv`` of the lake file with every column read as text
(an explicit schema), so a value that does not fit its type is counted instead of failing the
whole file; staging applies the reference types with ``TRY_CAST``. The id matches BigQuery's:
MD5 over the reference fields cast the way BigQuery casts them to STRING.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import duckdb

from taxi_pipeline.datasets import (
    Column,
    Dataset,
    Month,
    csv_name,
    external_table,
    staging_table,
)
from taxi_pipeline.errors import ConfigurationError, PermanentError, TransientError
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

_DUCKDB_TYPES = {
    "string": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "integer": "BIGINT",
    "numeric": "DECIMAL(38, 9)",
}
_TIMESTAMP_TEXT = "%Y-%m-%d %H:%M:%S"
_BAD_SAMPLES = 5

_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id VARCHAR NOT NULL, dataset VARCHAR, month VARCHAR, step VARCHAR NOT NULL,
    state VARCHAR NOT NULL, attempt INTEGER, started_at TIMESTAMP, finished_at TIMESTAMP,
    rows BIGINT, bytes BIGINT, labels VARCHAR, error VARCHAR, details VARCHAR,
    recorded_at TIMESTAMP NOT NULL
)"""
_LOADS_DDL = """
CREATE TABLE IF NOT EXISTS pipeline_loads (
    dataset VARCHAR NOT NULL, month VARCHAR NOT NULL, object_name VARCHAR NOT NULL,
    generation VARCHAR NOT NULL, run_id VARCHAR NOT NULL, rows_in_file BIGINT NOT NULL,
    rows_inserted BIGINT NOT NULL, loaded_at TIMESTAMP NOT NULL
)"""


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _typed(column: Column, raw: str) -> str:
    """The reference type of ``raw`` (text), NULL where the text does not fit it."""
    if column.kind == "string":
        return raw
    if column.kind == "integer":
        # "1.0" appears in some published months: accept whole decimals, refuse "1.5".
        number = f"TRY_CAST({raw} AS DECIMAL(38, 9))"
        return f"CASE WHEN {number} = trunc({number}) THEN TRY_CAST({number} AS BIGINT) END"
    return f"TRY_CAST({raw} AS {_DUCKDB_TYPES[column.kind]})"


def _raw_alias(column: Column) -> str:
    return _quote_ident(f"__text_{column.name}")


def _bigquery_string(column: Column, ref: str) -> str:
    """``CAST(col AS STRING)`` as BigQuery spells it (timestamps end in ``+00``)."""
    if column.kind == "timestamp":
        return f"strftime({ref}, '{_TIMESTAMP_TEXT}') || '+00'"
    return f"CAST({ref} AS VARCHAR)"


def unique_row_id_sql(dataset: Dataset, alias: str = "") -> str:
    """The reference id: ``MD5(CONCAT(COALESCE(CAST(f AS STRING), ""), ...))`` as BYTES."""
    by_name = {c.name: c for c in dataset.layout.columns}
    prefix = f"{alias}." if alias else ""
    parts = [
        f"COALESCE({_bigquery_string(by_name[n], prefix + _quote_ident(n))}, '')"
        for n in dataset.layout.id_columns
    ]
    return f"unhex(md5(concat({', '.join(parts)})))"


def _translate(exc: duckdb.Error, what: str) -> Exception:
    """DuckDB errors at the adapter edge: write conflicts are transient, the rest permanent."""
    lines = str(exc).splitlines()
    message = lines[0][:500]
    if "CSV Error" in message:
        # The cause is on a later line ("Expected Number of Columns: 20 Found: 21", "Invalid
        # unicode ... not utf-8 encoded"); the row itself and DuckDB's advice are left out.
        cause = next(
            (line for line in lines[1:] if line and not line.startswith(("Original", "Possible"))),
            "",
        )
        message = f"{message}: {cause[:300]}" if cause else message
    if isinstance(exc, duckdb.TransactionException) or "Conflict" in message:
        return TransientError(f"{what}: {message}")
    if isinstance(exc, duckdb.IOException) and "lock" in message.lower():
        return TransientError(f"{what}: {message}")
    return PermanentError(f"{what}: {message}")


_ANALYZE: Final = re.compile(r"\banaly[sz]e\b", re.IGNORECASE)


def _not_a_query(statement: duckdb.Statement) -> str | None:
    """Why ``statement`` may not run for the user (None: it only reads)."""
    if statement.type is duckdb.StatementType.SELECT:
        return None
    if statement.type is duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE executes its statement; the word anywhere in an EXPLAIN is refused
        # rather than parsed (comments, option lists).
        return "EXPLAIN ANALYZE" if _ANALYZE.search(statement.query) else None
    return statement.type.name


class DuckDbWarehouse:
    """The warehouse in one DuckDB file; thread-safe (a cursor per call)."""

    def __init__(
        self, path: Path, *, memory_limit: str = "600MB", threads: int | None = None
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            # No network on many machines: never try to fetch an extension.
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": memory_limit,
            # Row order means nothing in these tables; letting DuckDB drop it makes the
            # staging build and the insert ~15% faster.
            "preserve_insertion_order": False,
        }
        if threads:
            config["threads"] = threads
        try:
            self._conn = duckdb.connect(str(path), config=config)
        except duckdb.IOException as exc:
            raise ConfigurationError(
                f"cannot open the warehouse {path}: {str(exc).splitlines()[0]}"
                " (is another taxi-pipeline process using it?)"
            ) from exc
        self._ddl_lock = threading.Lock()
        # Staging tables are TEMP tables (in memory, spilled past the memory limit): ~2 s
        # faster per full month than writing them to the file and dropping them, and a crash
        # leaves none behind. A TEMP table lives in one connection, so each month being merged
        # keeps its own cursor from stage() to drop_month_objects().
        self._staging: dict[str, duckdb.DuckDBPyConnection] = {}
        with self._ddl_lock:
            self._conn.execute(_RUNS_DDL)
            self._conn.execute(_LOADS_DDL)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> DuckDbWarehouse:
        parts = urlsplit(url)
        if parts.scheme != "duckdb" or not parts.path:
            raise ConfigurationError(f"not a duckdb:///path URL: {url!r}")
        return cls(Path(unquote(parts.path)), **options)

    def close(self) -> None:
        with self._ddl_lock:
            for cursor in self._staging.values():
                cursor.close()
            self._staging.clear()
        self._conn.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        return self._conn.cursor()

    def _run(
        self,
        what: str,
        sql: str,
        params: Sequence[object] | None = None,
        *,
        cursor: duckdb.DuckDBPyConnection | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement on ``cursor`` (a month's staging cursor) or a fresh one."""
        own = cursor is None
        current = self._cursor() if cursor is None else cursor
        try:
            return current.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise _translate(exc, what) from exc
        finally:
            if own:
                current.close()

    def _new_staging_cursor(self, staging: str) -> duckdb.DuckDBPyConnection:
        """A fresh connection for a month's staging (closing one left by an earlier attempt)."""
        cursor = self._cursor()
        with self._ddl_lock:
            previous = self._staging.pop(staging, None)
            self._staging[staging] = cursor
        if previous is not None:
            previous.close()
        return cursor

    def _staging_cursor(self, staging: str) -> duckdb.DuckDBPyConnection:
        with self._ddl_lock:
            cursor = self._staging.get(staging)
        if cursor is None:
            raise TransientError(f"staging table {staging} is gone; stage the month again")
        return cursor

    # -- tables ---------------------------------------------------------------------------

    def ensure_final_table(self, dataset: Dataset) -> None:
        columns = ", ".join(
            f"{_quote_ident(c.name)} {_DUCKDB_TYPES[c.kind]}" for c in dataset.layout.columns
        )
        with self._ddl_lock:
            self._run(
                "create final table",
                f"CREATE TABLE IF NOT EXISTS {dataset.final_table}"
                f" (unique_row_id BLOB, filename VARCHAR, {columns})",
            )

    def create_external_table(self, dataset: Dataset, month: Month, source: ObjectInfo) -> str:
        path = _local_path(source)
        columns = ", ".join(f"{_quote_text(c.name)}: 'VARCHAR'" for c in dataset.layout.columns)
        name = external_table(dataset, month)
        with self._ddl_lock:
            self._run(
                "create external table",
                f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_csv("
                f"{_quote_text(str(path))}, header = true, auto_detect = false, delim = ',',"
                f" quote = '\"', escape = '\"', nullstr = '', compression = 'gzip',"
                f" strict_mode = true, columns = {{{columns}}})",
            )
        return name

    def stage(
        self, dataset: Dataset, month: Month, source: ObjectInfo, context: JobContext
    ) -> StagingSummary:
        layout = dataset.layout
        ext, stg = external_table(dataset, month), staging_table(dataset, month)
        checked = [c for c in layout.columns if c.kind != "string"]
        # Each cast runs once: the text goes in under a private name, the typed value comes out
        # under the column's, and a row is bad where a text did not survive its cast.
        as_text = ", ".join(f"{_quote_ident(c.name)} AS {_raw_alias(c)}" for c in layout.columns)
        typed = ", ".join(
            [_raw_alias(c) for c in checked]
            + [f"{_typed(c, _raw_alias(c))} AS {_quote_ident(c.name)}" for c in layout.columns]
        )
        bad = " OR ".join(
            f"({_raw_alias(c)} IS NOT NULL AND {_quote_ident(c.name)} IS NULL)" for c in checked
        )
        names = ", ".join(_quote_ident(n) for n in layout.names)
        pickup = _quote_ident(layout.pickup)
        first_day = date(month.year, month.month, 1)
        next_month = month.next()
        after_last = date(next_month.year, next_month.month, 1)
        cursor = self._new_staging_cursor(stg)
        self._run(
            "build staging table",
            f"CREATE OR REPLACE TEMP TABLE {stg} AS"
            f" SELECT {unique_row_id_sql(dataset)} AS unique_row_id,"
            f" {_quote_text(csv_name(dataset, month))} AS filename, {names}, ({bad}) AS _bad"
            f" FROM (SELECT {typed} FROM (SELECT {as_text} FROM {ext}))",
            cursor=cursor,
        )
        ((rows, rows_bad, out_of_month, no_pickup),) = self._run(
            "measure staging table",
            f"SELECT count(*), count(*) FILTER (WHERE _bad),"
            f" count(*) FILTER (WHERE {pickup} < ? OR {pickup} >= ?),"
            f" count(*) FILTER (WHERE {pickup} IS NULL) FROM {stg}",
            [first_day, after_last],
            cursor=cursor,
        )
        dates = self._run(
            "list staging dates",
            f"SELECT DISTINCT CAST({pickup} AS DATE) FROM {stg} WHERE {pickup} IS NOT NULL",
            cursor=cursor,
        )
        samples: tuple[str, ...] = ()
        if rows_bad:
            unfit = " OR ".join(
                f"({name} IS NOT NULL AND {_typed(c, name)} IS NULL)"
                for c in checked
                for name in [_quote_ident(c.name)]
            )
            sample_rows = self._run(
                "sample bad rows", f"SELECT {names} FROM {ext} WHERE {unfit} LIMIT {_BAD_SAMPLES}"
            )
            samples = tuple(",".join("" if v is None else str(v) for v in r) for r in sample_rows)
        return StagingSummary(
            rows=rows,
            rows_bad=rows_bad,
            rows_out_of_month=out_of_month,
            rows_without_pickup=no_pickup,
            pickup_dates=tuple(sorted(d for (d,) in dates)),
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
        """The insert and the load record in one transaction."""
        stg = staging_table(dataset, month)
        columns = ", ".join(
            ["unique_row_id", "filename", *(_quote_ident(n) for n in dataset.layout.names)]
        )
        prune = target_pickup_predicate(dataset, pickup_ranges, include_null_pickup, "t")
        cursor = self._staging_cursor(stg)
        self._run("begin merge", "BEGIN TRANSACTION", cursor=cursor)
        try:
            ((inserted,),) = self._run(
                "merge into final table",
                f"INSERT INTO {dataset.final_table} ({columns})"
                f" SELECT {columns} FROM {stg} s WHERE NOT EXISTS (SELECT 1 FROM"
                f" {dataset.final_table} t WHERE ({prune}) AND t.unique_row_id = s.unique_row_id)",
                cursor=cursor,
            )
            if load is not None:
                self._run(
                    "record load",
                    "INSERT INTO pipeline_loads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    _load_row(load, int(inserted)),
                    cursor=cursor,
                )
            self._run("commit merge", "COMMIT", cursor=cursor)
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            raise
        return int(inserted)

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        with self._ddl_lock:
            staging = self._staging.pop(staging_table(dataset, month), None)
            if staging is not None:
                staging.close()  # a TEMP table ends with its connection
            self._run("drop external", f"DROP VIEW IF EXISTS {external_table(dataset, month)}")

    def query(self, sql: str) -> QueryResult:
        """The user's query; only queries: the file is the user's whole warehouse and history.

        Statements are checked before anything runs (SELECT, and EXPLAIN that does not execute
        its statement: ``EXPLAIN ANALYZE`` does), and what runs runs in a transaction that is
        always rolled back, so a statement that slipped through still changes nothing.
        """
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise PermanentError(str(exc).splitlines()[0]) from exc
        refused = sorted(
            {refusal for statement in statements if (refusal := _not_a_query(statement))}
        )
        if refused:
            raise PermanentError(
                "only queries can run here (SELECT, SHOW, DESCRIBE, EXPLAIN without ANALYZE),"
                f" not {', '.join(refused)}"
            )
        cursor = self._cursor()
        try:
            cursor.execute("BEGIN TRANSACTION")
            relation = cursor.execute(sql)
            columns = [d[0] for d in relation.description or []]
            return QueryResult(columns, relation.fetchall() if columns else [])
        except duckdb.Error as exc:
            raise PermanentError(str(exc).splitlines()[0]) from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            cursor.close()

    def table_names(self) -> list[str]:
        return [
            r[0]
            for r in self._run(
                "list tables", "SELECT table_name FROM information_schema.tables ORDER BY 1"
            )
        ]

    # -- run history ------------------------------------------------------------------------

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
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
                _naive(e.started_at),
                _naive(e.finished_at),
                e.rows,
                e.bytes,
                json.dumps(dict(e.labels), sort_keys=True),
                e.error,
                json.dumps(dict(e.details), sort_keys=True),
                _naive(e.recorded_at or datetime.now(UTC)),
            )
            for e in events
        ]
        cursor = self._cursor()
        try:
            cursor.executemany(
                "INSERT INTO pipeline_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        except duckdb.Error as exc:
            raise _translate(exc, "append run events") from exc
        finally:
            cursor.close()

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        where, params = ["TRUE"], []  # type: list[str], list[object]
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if dataset is not None:
            where.append("dataset = ?")
            params.append(dataset)
        if since is not None:
            where.append("recorded_at >= ?")
            params.append(_naive(since))
        rows = self._run(
            "read run events",
            "SELECT run_id, dataset, month, step, state, attempt, started_at, finished_at, rows,"
            " bytes, labels, error, details, recorded_at FROM pipeline_runs"
            f" WHERE {' AND '.join(where)} ORDER BY recorded_at, rowid",
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
                started_at=_aware(r[6]),
                finished_at=_aware(r[7]),
                rows=r[8],
                bytes=r[9],
                labels=json.loads(r[10] or "{}"),
                error=r[11],
                details=json.loads(r[12] or "{}"),
                recorded_at=_aware(r[13]),
            )
            for r in rows
        ]

    def record_load(self, record: LoadRecord) -> None:
        self._run(
            "record load",
            "INSERT INTO pipeline_loads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            _load_row(record, record.rows_inserted),
        )

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        loads = self._loads("object_name = ? AND generation = ?", [object_name, generation])
        return loads[-1] if loads else None

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        if dataset is None:
            return self._loads("TRUE", [])
        return self._loads("dataset = ?", [dataset.value])

    def _loads(self, where: str, params: list[object]) -> list[LoadRecord]:
        rows = self._run(
            "read loads",
            "SELECT dataset, month, object_name, generation, run_id, rows_in_file, rows_inserted,"
            f" loaded_at FROM pipeline_loads WHERE {where} ORDER BY loaded_at",
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
                _aware(r[7]) or datetime.min,
            )
            for r in rows
        ]


def target_pickup_predicate(
    dataset: Dataset, ranges: Sequence[DateRange], include_null: bool, alias: str
) -> str:
    """Constant pickup bounds on the target: only the dates the staging data has are read."""
    pickup = f"{alias}.{_quote_ident(dataset.layout.pickup)}"
    terms = [
        f"({pickup} >= TIMESTAMP '{r.start}' AND {pickup} < TIMESTAMP '{r.end}')" for r in ranges
    ]
    if include_null:
        terms.append(f"{pickup} IS NULL")
    return " OR ".join(terms) or "FALSE"


def _load_row(record: LoadRecord, rows_inserted: int) -> list[object]:
    return [
        record.dataset.value,
        str(record.month),
        record.object_name,
        record.generation,
        record.run_id,
        record.rows_in_file,
        rows_inserted,
        _naive(record.loaded_at),
    ]


def _local_path(source: ObjectInfo) -> Path:
    parts = urlsplit(source.uri)
    if parts.scheme != "file":
        raise ConfigurationError(
            f"the DuckDB warehouse reads local files only, got {source.uri!r}; use a file:// lake"
        )
    return Path(unquote(parts.path))


def _naive(value: datetime | None) -> datetime | None:
    """DuckDB TIMESTAMP holds UTC wall time without a zone."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)
