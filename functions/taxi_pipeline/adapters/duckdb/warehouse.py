"""DuckDbWarehouse: the embedded warehouse (one DuckDB file), same tables as BigQuery.

The external table is a view over ``read_csv`` of the lake file with every column read as text
(an explicit schema), so a value that does not fit its type is counted instead of failing the
whole file; staging applies the reference types with ``TRY_CAST``. The id matches BigQuery's:
MD5 over the reference fields cast the way BigQuery casts them to STRING.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import duckdb

from taxi_pipeline.adapters.sql.dialects import DUCKDB
from taxi_pipeline.adapters.sql.history import LOADS_TABLE, RUNS_TABLE, History, Param
from taxi_pipeline.adapters.sql.statements import Statements
from taxi_pipeline.domain.datasets import (
    Dataset,
    Month,
    csv_name,
    external_table,
    parse_object,
    staging_table,
)
from taxi_pipeline.errors import ConfigurationError, PermanentError, TransientError
from taxi_pipeline.pipeline.ports import (
    DateRange,
    JobContext,
    LakeReader,
    LoadRecord,
    ObjectInfo,
    QueryResult,
    RunEvent,
    StagingSummary,
)

SQL: Final = Statements(DUCKDB)
HISTORY: Final = History(DUCKDB, RUNS_TABLE, LOADS_TABLE)


def unique_row_id_sql(dataset: Dataset) -> str:
    """The reference id in DuckDB's SQL (the benchmarks build their tables with it)."""
    return SQL.unique_row_id_sql(dataset)


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
        self,
        path: Path,
        *,
        memory_limit: str = "600MB",
        threads: int | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only``: open an existing file for reading; create nothing (the CLI's
        ``status``, ``runs``, ``sql``)."""
        self.path = path
        if read_only and not path.is_file():
            raise ConfigurationError(f"no warehouse at {path}")
        if not read_only:
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
            self._conn = duckdb.connect(str(path), read_only=read_only, config=config)
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
        if not read_only:
            with self._ddl_lock:
                for statement in HISTORY.ddl():
                    self._conn.execute(statement)

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
        with self._ddl_lock:
            self._run("create final table", SQL.final_table_sql(dataset, dataset.final_table))

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        _, _, fmt = parse_object(source.name)
        relation = DUCKDB.read_source(fmt, str(_local_path(source)), dataset)
        name = external_table(dataset, month)
        with self._ddl_lock:
            self._run("create external table", f"CREATE OR REPLACE VIEW {name} AS {relation}")
        return name

    def stage(
        self,
        dataset: Dataset,
        month: Month,
        source: ObjectInfo,
        lake: LakeReader,
        context: JobContext,
    ) -> StagingSummary:
        ext, stg = external_table(dataset, month), staging_table(dataset, month)
        _, _, fmt = parse_object(source.name)
        cursor = self._new_staging_cursor(stg)
        self._run(
            "build staging table",
            SQL.staging_sql(dataset, month, stg, ext, csv_name(dataset, month, fmt)),
            cursor=cursor,
        )
        (row,) = self._run(
            "measure staging table", SQL.measure_sql(dataset, month, stg), cursor=cursor
        )
        if SQL.repeated_headers(row):
            self._run("drop repeated headers", SQL.drop_repeated_headers_sql(stg), cursor=cursor)
        return SQL.summary(row)

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
        sql = SQL.merge_sql(dataset, dataset.final_table, stg, pickup_ranges, include_null_pickup)
        cursor = self._staging_cursor(stg)
        self._run("begin merge", "BEGIN TRANSACTION", cursor=cursor)
        try:
            ((inserted,),) = self._run("merge into final table", sql, cursor=cursor)
            if load is not None:
                statement, params = HISTORY.insert_load(replace(load, rows_inserted=int(inserted)))
                self._run("record load", statement, [p.value for p in params], cursor=cursor)
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

    def _history(self, what: str, statement: tuple[str, list[Param]]) -> list[tuple[Any, ...]]:
        sql, params = statement
        return self._run(what, sql, [p.value for p in params])

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        if events:
            # DuckDB orders lines recorded at the same instant by rowid: no sequence to fill.
            self._history("append run events", HISTORY.insert_events(events, lambda: 0))

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        rows = self._history("read run events", HISTORY.select_events(run_id, dataset, since))
        return [HISTORY.event(r) for r in rows]

    def record_load(self, record: LoadRecord) -> None:
        self._history("record load", HISTORY.insert_load(record))

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        rows = self._history(
            "read loads", HISTORY.select_loads(object_name=object_name, generation=generation)
        )
        return HISTORY.load(rows[-1]) if rows else None

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        rows = self._history("read loads", HISTORY.select_loads(dataset=dataset))
        return [HISTORY.load(r) for r in rows]


def _local_path(source: ObjectInfo) -> Path:
    parts = urlsplit(source.uri)
    if parts.scheme != "file":
        raise ConfigurationError(
            f"the DuckDB warehouse reads local files only, got {source.uri!r}; use a file:// lake"
        )
    return Path(unquote(parts.path))
