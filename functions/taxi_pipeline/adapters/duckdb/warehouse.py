"""DuckDbWarehouse: the embedded warehouse (one DuckDB file), same tables as BigQuery.

The external table is a view over ``read_csv`` of the lake file with every column read as text
(an explicit schema), so a value that does not fit its type is counted instead of failing the
whole file; staging applies the reference types with ``TRY_CAST``. The id matches BigQuery's:
MD5 over the reference fields cast the way BigQuery casts them to STRING.

Many processes share one home, and DuckDB lets one process at a time open a database file (a
writer shuts out readers too; measured, README "Many processes, one home"). So the connection
is to an in-memory database, private to the process: the external views and the staging tables
live there, and staging (the larger half of a merge's work) needs no file at all. The warehouse
file is ATTACHed (as ``warehouse``) only around the statements that need it (creating a final
table, the merge's insert, a user's query) and DETACHed when the last of them in this process
ends, so other processes get their turn. ``guard`` is the cross-process lock around every
attachment (bootstrap gives a lock file that says who holds it, so a process waits with a
message instead of failing with DuckDB's "Could not set lock on file"). The run history lives
elsewhere (``adapters/sqlite``), since it must be readable while a merge holds the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import duckdb

from taxi_pipeline.adapters.sql.dialects import DUCKDB
from taxi_pipeline.adapters.sql.history import LOADS_TABLE, RUNS_TABLE, History
from taxi_pipeline.adapters.sql.statements import (
    SourceColumn,
    SourceKind,
    Sources,
    Statements,
    source_columns,
)
from taxi_pipeline.adapters.sql.tables import external_table, staging_table
from taxi_pipeline.domain.datasets import Dataset, Month, csv_name, parse_object
from taxi_pipeline.domain.formats import CSV_GZ
from taxi_pipeline.domain.lookups import LookupTable
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.errors import ConfigurationError, PermanentError, RunCancelled, TransientError
from taxi_pipeline.local.process import pid_alive
from taxi_pipeline.pipeline.cancellation import Cancellation
from taxi_pipeline.pipeline.ports import (
    DateRange,
    JobContext,
    LakeReader,
    MergeOutcome,
    MergePlan,
    NullProgress,
    ObjectInfo,
    Progress,
    ProgressTask,
    QueryResult,
    Replacement,
    StagingSummary,
)

log = logging.getLogger(__name__)

SQL: Final = Statements(DUCKDB)
HISTORY: Final = History(DUCKDB, RUNS_TABLE, LOADS_TABLE)
"""The history statements in DuckDB's SQL (the embedded default keeps its history in SQLite,
``adapters/sqlite``; DuckDB's read what a warehouse file of an earlier version holds)."""

FILE_ALIAS: Final = "warehouse"
"""The catalog name of the attached warehouse file."""
_LEGACY_HISTORY: Final = History(
    DUCKDB, f"{FILE_ALIAS}.{RUNS_TABLE}", f"{FILE_ALIAS}.{LOADS_TABLE}"
)
HISTORY_COLUMNS: Final = {
    "pipeline_runs": {
        "run_id": "VARCHAR",
        "dataset": "VARCHAR",
        "month": "VARCHAR",
        "step": "VARCHAR",
        "state": "VARCHAR",
        "attempt": "INTEGER",
        "started_at": "TIMESTAMP",
        "finished_at": "TIMESTAMP",
        "rows": "BIGINT",
        "bytes": "BIGINT",
        "labels": "VARCHAR",
        "error": "VARCHAR",
        "details": "VARCHAR",
        "recorded_at": "TIMESTAMP",
        "process": "VARCHAR",
    },
    "pipeline_loads": {
        "dataset": "VARCHAR",
        "month": "VARCHAR",
        "object_name": "VARCHAR",
        "generation": "VARCHAR",
        "run_id": "VARCHAR",
        "rows_in_file": "BIGINT",
        "rows_inserted": "BIGINT",
        "loaded_at": "TIMESTAMP",
    },
}
"""The run history tables as ``taxi-pipeline sql`` shows them (they live in SQLite)."""
HISTORY_TABLES: Final = tuple(HISTORY_COLUMNS)
_PROGRESS_POLL_SECONDS: Final = 0.25
_LOCK_RETRY_SECONDS: Final = 0.2
UNCOMMITTED_ROW_IDS: Final = 36_028_797_018_960_000
"""DuckDB numbers the rows a transaction appended, until it commits, from its ``MAX_ROW_ID``; no
committed row has a row id that high. So ``rowid >= UNCOMMITTED_ROW_IDS`` reads exactly the rows
the open transaction inserted, from those row groups only (the filter prunes the others). Each
load checks it against the insert's count and stages the slow way if a DuckDB numbers them
otherwise (tests/unit/test_duckdb_one_pass.py pins it)."""
_NOT_CLEAN: Final = "taxi-pipeline: the month has a value to set aside"

Guard = Callable[[str], AbstractContextManager[None]]
"""A cross-process lock around the use of the warehouse file, given what it is held for."""

TableRows = Sequence[Mapping[str, object]]
"""Rows of a table handed to :meth:`DuckDbWarehouse.query` (plain values, ISO timestamps)."""


def _no_guard(_purpose: str) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class _InFinal:
    """A month inserted straight into the final table by the open transaction of its staging
    cursor (:meth:`DuckDbWarehouse._stage_into_final_table`)."""

    dataset: Dataset
    rows: int
    attachment: ExitStack
    """The warehouse file, attached (and guarded) until the transaction commits or rolls back."""
    committed: bool = False


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
    if isinstance(exc, duckdb.InterruptException):
        return RunCancelled(f"{what}: interrupted")
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
    """The warehouse in one DuckDB file, attached only while a statement needs it; thread-safe
    (a cursor per call, one per month being merged)."""

    stages_in_final_table: Final = True
    """A clean month goes from the lake object to the final table in one pass, uncommitted
    until the merge: :meth:`_stage_into_final_table`."""

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "600MB",
        threads: int | None = None,
        guard: Guard = _no_guard,
        cancellation: Cancellation | None = None,
        progress: Progress | None = None,
        on_wait: Callable[[str], None] | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only``: create and change nothing (the CLI's ``sql``): no folder, the file
        attached read-only; a missing file reads as an empty warehouse."""
        self.path = path
        self._read_only = read_only
        self._guard = guard
        self._cancellation = cancellation or Cancellation()
        self._progress = progress or NullProgress()
        self._on_wait = on_wait or (lambda _message: None)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Past the memory limit, staging spills here; one folder per process (a killed
        # process's folder is removed by the next one that opens the warehouse).
        self._spill = path.with_name(path.name + ".tmp") / f"p{os.getpid()}"
        _sweep_spill_folders(self._spill.parent)
        if not read_only:
            # DuckDB makes its temp_directory when it first spills, but not that folder's
            # parent: without it the first statement past the memory limit fails.
            self._spill.parent.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            # No network on many machines: never try to fetch an extension.
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": memory_limit,
            "temp_directory": str(self._spill),
            # Row order means nothing in these tables; letting DuckDB drop it makes the
            # staging build and the insert ~15% faster.
            "preserve_insertion_order": False,
        }
        if threads:
            config["threads"] = threads
        self._conn = duckdb.connect(":memory:", config=config)
        self._ddl_lock = threading.Lock()
        # Staging tables are TEMP tables (in memory, spilled past the memory limit): ~2 s
        # faster per full month than writing them to the file and dropping them, and a crash
        # leaves none behind. A TEMP table lives in one connection, so each month being merged
        # keeps its own cursor from stage() to drop_month_objects().
        self._staging: dict[str, duckdb.DuckDBPyConnection] = {}
        self._in_final: dict[str, _InFinal] = {}
        self._final_tables: set[Dataset] = set()
        # The attachment of the file: how many statements use it, and whether it is writable.
        self._attach = threading.Condition()
        self._users = 0
        self._held: AbstractContextManager[None] | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> DuckDbWarehouse:
        parts = urlsplit(url)
        if parts.scheme != "duckdb" or not parts.path:
            raise ConfigurationError(f"not a duckdb:///path URL: {url!r}")
        return cls(Path(unquote(parts.path)), **options)

    def close(self) -> None:
        with self._ddl_lock:
            staged = list(self._staging)
        for stg in staged:
            self._discard_staging(stg)
        self._conn.close()
        shutil.rmtree(self._spill, ignore_errors=True)

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
        started = time.perf_counter()
        try:
            return current.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise _translate(exc, what) from exc
        finally:
            seconds = time.perf_counter() - started
            # Where a load's time goes: bench/ingest.py sums these into its phases.
            log.debug("%s: %.3f s", what, seconds, extra={"statement": what, "seconds": seconds})
            if own:
                current.close()

    # -- the file ---------------------------------------------------------------------------

    @contextmanager
    def _file(self, purpose: str) -> Iterator[None]:
        """The warehouse file attached for the block: shared by this process's statements,
        taken from other processes with ``guard`` (which waits for them, saying who).

        Read-write, a query's too, unless the warehouse was opened ``read_only`` (the CLI's
        ``sql``): then DuckDB refuses even to plan a write (``EXPLAIN DROP ...``). The guard
        excludes other processes either way; a query runs in a transaction that is rolled
        back."""
        with self._attach:
            if not self._users:
                held = self._guard(purpose)
                held.__enter__()
                try:
                    self._attach_file()
                except BaseException as exc:
                    held.__exit__(type(exc), exc, exc.__traceback__)
                    raise
                self._held = held
            self._users += 1
        try:
            yield
        finally:
            with self._attach:
                self._users -= 1
                if not self._users:
                    release, self._held = self._held, None
                    try:
                        self._run("detach the warehouse", f"DETACH {FILE_ALIAS}")
                    finally:
                        if release is not None:
                            release.__exit__(None, None, None)
                    self._attach.notify_all()

    def _attach_file(self) -> None:
        """ATTACH the file; another program holding it (DuckDB's own lock: a DuckDB shell, a
        process of another home) is waited for, saying so, like our own guard."""
        told = False
        while True:
            try:
                self._run(
                    "open the warehouse",
                    f"ATTACH {_quote_text(str(self.path))} AS {FILE_ALIAS}"
                    + (" (READ_ONLY)" if self._read_only else ""),
                )
                return
            except TransientError as exc:
                if "lock" not in str(exc).lower():
                    raise
                if not told:
                    self._on_wait(f"waiting for the warehouse {self.path}: {_lock_holder(exc)}")
                    told = True
                self._cancellation.check()
                time.sleep(_LOCK_RETRY_SECONDS)

    def _final(self, dataset: Dataset) -> str:
        return f"{FILE_ALIAS}.{dataset.final_table}"

    # -- tables ---------------------------------------------------------------------------

    # -- tables ---------------------------------------------------------------------------

    def ensure_final_table(self, dataset: Dataset) -> None:
        if dataset in self._final_tables:
            return  # made or found once; the merge's insert makes sure again
        with self._file(f"creating {dataset.final_table}"):
            self._create_final_table(dataset)
        self._final_tables.add(dataset)

    def _create_final_table(self, dataset: Dataset) -> None:
        """Create the final table, or add the columns a table made before them lacks."""
        with self._ddl_lock:
            self._run("create final table", SQL.final_table_sql(dataset, self._final(dataset)))
            present = self._run(
                "read final table columns",
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = ?"
                " AND table_name = ?",
                [FILE_ALIAS, dataset.final_table],
            )
            for statement in SQL.add_columns_sql(
                dataset, self._final(dataset), [r[0] for r in present]
            ):
                self._run("add a final table column", statement)

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        _, _, fmt = parse_object(source.name)
        relation = DUCKDB.read_source(fmt, str(_local_path(source)), dataset)
        name = external_table(dataset, month)
        with self._ddl_lock:
            self._run("create external table", f"CREATE OR REPLACE VIEW {name} AS {relation}")
        return name

    def _new_staging_cursor(self, staging: str) -> duckdb.DuckDBPyConnection:
        """A fresh connection for a month's staging (discarding one left by an earlier attempt:
        its staging table, or its rows in the final table, uncommitted)."""
        self._discard_staging(staging)
        cursor = self._cursor()
        with self._ddl_lock:
            self._staging[staging] = cursor
        return cursor

    def _discard_staging(self, staging: str) -> None:
        """Close a month's staging cursor: its TEMP table ends with it, and rows it inserted
        into the final table and did not commit are rolled back (the file then detached)."""
        with self._ddl_lock:
            cursor = self._staging.pop(staging, None)
            in_final = self._in_final.pop(staging, None)
        if cursor is not None:
            if in_final is not None and not in_final.committed:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
            cursor.close()
        if in_final is not None:
            in_final.attachment.close()

    def _staging_cursor(self, staging: str) -> duckdb.DuckDBPyConnection:
        with self._ddl_lock:
            cursor = self._staging.get(staging)
        if cursor is None:
            raise TransientError(f"staging table {staging} is gone; stage the month again")
        return cursor

    @contextmanager
    def _watched(
        self, cursor: duckdb.DuckDBPyConnection, context: JobContext, *phases: str
    ) -> Iterator[None]:
        """For the statements of the block: Ctrl-C or ``runs cancel`` interrupts them (the
        transaction rolls back), and their progress (DuckDB's estimate, in %) is reported as
        each of ``phases`` (a one-pass statement stages and merges at once). A cancel that
        comes before the block raises at once; one that comes between that check and the
        statement's start interrupts nothing, and the next check (before any commit) raises."""
        done = threading.Event()
        tasks: list[ProgressTask] = []
        # DuckDB tracks query_progress() only with its progress bar on; we print our own.
        cursor.execute("SET enable_progress_bar = true")
        cursor.execute("SET enable_progress_bar_print = false")

        def report() -> None:
            shown = 0
            while not done.wait(_PROGRESS_POLL_SECONDS):
                try:
                    percent = int(cursor.query_progress())
                except duckdb.Error:
                    return
                if percent > shown:
                    for task in tasks:
                        task.advance(percent - shown)
                    shown = percent

        watcher = threading.Thread(target=report, name=f"{phases[0]}-progress", daemon=True)
        try:
            with self._cancellation.interruptible(context.run_id, cursor.interrupt):
                tasks += [
                    self._progress.task(
                        f"{phase} {context.dataset.value} {context.month}", 100, "%"
                    )
                    for phase in phases
                ]
                watcher.start()
                yield
        finally:
            done.set()
            if watcher.is_alive():
                watcher.join()
            for task in tasks:
                task.close()

    def stage(self, source: ObjectInfo, lake: LakeReader, context: JobContext) -> StagingSummary:
        dataset, month = context.dataset, context.month
        ext, stg = external_table(dataset, month), staging_table(dataset, month)
        _, _, fmt = parse_object(source.name)
        filename = csv_name(dataset, month, fmt)
        select = SQL.staging_select(
            dataset, month, ext, filename, source_columns(fmt, dataset, month)
        )
        # A CSV's one pass reads it typed by DuckDB's reader (the text read and TRY_CASTs cost
        # a fifth of a month's load more); any value that does not fit stops it.
        one_pass = (
            SQL.staging_select(
                dataset,
                month,
                f"({DUCKDB.read_csv_typed(str(_local_path(source)), dataset)})",
                filename,
                _typed_csv_sources(dataset),
            )
            if fmt is CSV_GZ
            else select
        )
        cursor = self._new_staging_cursor(stg)
        staged = self._stage_into_final_table(dataset, month, one_pass, cursor, context)
        if staged is not None:
            return staged
        # A month with a value that does not fit its type, or a repeated header line: the
        # staging table counts, samples and sets those aside before anything is merged.
        with self._watched(cursor, context, "stage"):
            self._run(
                "build staging table", f"{DUCKDB.create_staging(stg)}\n{select}", cursor=cursor
            )
        (row,) = self._run(
            "measure staging table", SQL.measure_sql(dataset, month, stg), cursor=cursor
        )
        if SQL.repeated_headers(row):
            self._run("drop repeated headers", SQL.drop_repeated_headers_sql(stg), cursor=cursor)
        return SQL.summary(row)

    def _stage_into_final_table(
        self,
        dataset: Dataset,
        month: Month,
        select: str,
        cursor: duckdb.DuckDBPyConnection,
        context: JobContext,
    ) -> StagingSummary | None:
        """The staged rows straight into the final table, in a transaction left open: one pass
        from the lake object to the final table, as DuckDB alone would load it
        (BENCHMARKS.md). ``None``, with nothing changed, for a month that is not clean.

        The rows are those the staging table would hold, from the same staging SQL (over the
        CSV as DuckDB's reader types it, which is how ``TRY_CAST`` types its text). A clean
        month (the usual one) has no value that does not fit its type and no repeated header
        line: the first such row fails the statement (``error()``, or the reader), which is
        rolled back, and the month is staged the slow way. Until the merge commits, nobody
        else sees the rows: the summary is measured on them (the rows the transaction
        appended), the step checks it, and the merge deletes those whose id the table held
        before (on the staged dates), which is the insert-only merge's result, then commits.
        A refused or cancelled month, a crash or the next attempt's staging roll them back.
        The file stays attached, so other processes wait, and the merge step holds the
        dataset's insert lock from before this call to the commit
        (:attr:`stages_in_final_table`), so no other load commits in between.
        """
        stg = staging_table(dataset, month)
        final = self._final(dataset)
        columns = ", ".join(SQL.final_columns(dataset))
        guard = f"CASE WHEN _bad OR _header THEN error({_quote_text(_NOT_CLEAN)}) ELSE TRUE END"
        attachment = ExitStack()
        attachment.enter_context(
            self._file(f"stage {dataset.value} {month} (run {context.run_id})")
        )
        try:
            self._create_final_table(dataset)
            self._run("begin staging into the final table", "BEGIN TRANSACTION", cursor=cursor)
            try:
                with self._watched(cursor, context, "stage", "merge"):
                    ((rows,),) = self._run(
                        "stage into final table",
                        f"INSERT INTO {final} ({columns})\nSELECT {columns}\n"
                        f"FROM ({select}) AS staged\nWHERE {guard}",
                        cursor=cursor,
                    )
            except PermanentError as exc:
                # A value to set aside, a field the typed reader refuses, or a file that fails
                # any read: the staging table counts and samples the first, and reports the
                # last as it would have.
                reason = "a value to set aside" if _NOT_CLEAN in str(exc) else str(exc)[:300]
                log.info("%s %s: %s; staging it first", dataset.value, month, reason)
                self._abandon(cursor, attachment)
                return None
            inserted = (
                "(SELECT *, FALSE AS _bad, CAST(NULL AS VARCHAR) AS _bad_row, FALSE AS _header"
                f" FROM {final} WHERE rowid >= {UNCOMMITTED_ROW_IDS}) AS staged"
            )
            (row,) = self._run(
                "measure staged rows", SQL.measure_sql(dataset, month, inserted), cursor=cursor
            )
            staged = SQL.summary(row)
            if staged.rows != rows:
                log.warning(
                    "%s %s: the transaction's rows read back as %d, %d inserted; staging it first",
                    dataset.value,
                    month,
                    staged.rows,
                    rows,
                )
                self._abandon(cursor, attachment)
                return None
        except BaseException:
            self._abandon(cursor, attachment)
            raise
        with self._ddl_lock:
            self._in_final[stg] = _InFinal(dataset, int(rows), attachment)
        return staged

    def _abandon(self, cursor: duckdb.DuckDBPyConnection, attachment: ExitStack) -> None:
        """Roll back what the cursor's transaction did and detach the file (if last)."""
        with contextlib.suppress(duckdb.Error):
            cursor.execute("ROLLBACK")
        attachment.close()

    def _merge_in_final(
        self,
        stg: str,
        in_final: _InFinal,
        pickup_ranges: Sequence[DateRange],
        include_null_pickup: bool,
        context: JobContext,
        replacing: Replacement | None,
    ) -> tuple[int, int]:
        """Commit a month staged into the final table, less the rows whose id the table held
        before it (and, replacing, less the month's old rows); ``(deleted, inserted)``."""
        if in_final.committed:
            if replacing is not None:
                raise TransientError(f"{stg} was merged already; stage the month again")
            return 0, 0  # merged again: every staged id is in the final table now
        dataset = in_final.dataset
        final = self._final(dataset)
        cursor = self._staging_cursor(stg)
        before = f"t.rowid < {UNCOMMITTED_ROW_IDS}"
        prune = SQL.target_pickup_predicate(dataset, pickup_ranges, include_null_pickup, "t")
        deleted = 0
        try:
            with self._watched(cursor, context, "merge"):
                if replacing is not None:
                    ((deleted,),) = self._run(
                        "delete the month's replaced rows",
                        f"{SQL.delete_month_sql(dataset, final, replacing, 't')}\n  AND {before}",
                        cursor=cursor,
                    )
                ((present,),) = self._run(
                    "drop staged rows already present",
                    f"DELETE FROM {final} WHERE rowid >= {UNCOMMITTED_ROW_IDS}"
                    f" AND unique_row_id IN (SELECT t.unique_row_id FROM {final} t"
                    f" WHERE {before} AND ({prune}))",
                    cursor=cursor,
                )
                # The last moment a cancel takes effect: once committed, the month is loaded.
                self._cancellation.check(context.run_id)
                self._run("commit the merge", "COMMIT", cursor=cursor)
        except BaseException:
            with self._ddl_lock:
                self._in_final.pop(stg, None)
            self._abandon(cursor, in_final.attachment)
            raise
        # Kept, committed, so that merging it again inserts nothing (the file is let go).
        in_final.committed = True
        in_final.attachment.close()
        return int(deleted), in_final.rows - int(present)

    def merge_staged(self, plan: MergePlan) -> MergeOutcome:
        """The insert (a replacing plan's delete with it), in one transaction: another process
        reads the month's old rows or its new ones, never neither or both. The load ledger is
        not DuckDB's: the caller (:class:`EmbeddedWarehouse`) records ``plan.load`` once this
        has committed."""
        deleted, inserted = self._merge(
            plan.dataset,
            plan.month,
            plan.pickup_ranges,
            plan.include_null_pickup,
            plan.context,
            plan.replacing,
        )
        return MergeOutcome(inserted, deleted if plan.replacing is not None else None)

    def _merge(
        self,
        dataset: Dataset,
        month: Month,
        pickup_ranges: Sequence[DateRange],
        include_null_pickup: bool,
        context: JobContext,
        replacing: Replacement | None = None,
    ) -> tuple[int, int]:
        stg = staging_table(dataset, month)
        with self._ddl_lock:
            in_final = self._in_final.get(stg)
        if in_final is not None:
            return self._merge_in_final(
                stg, in_final, pickup_ranges, include_null_pickup, context, replacing
            )
        cursor = self._staging_cursor(stg)
        final = self._final(dataset)
        sql = SQL.merge_sql(dataset, final, stg, pickup_ranges, include_null_pickup)
        deleted = 0
        with (
            self._file(f"merge {dataset.value} {month} (run {context.run_id})"),
            self._watched(cursor, context, "merge"),
        ):
            self._create_final_table(dataset)
            # One transaction, committed only if the run was not cancelled meanwhile: an
            # interrupt that came just before the statement began (and so interrupted nothing)
            # still rolls the insert back. Nothing half-merged is ever committed.
            self._run("begin the merge", "BEGIN TRANSACTION", cursor=cursor)
            try:
                if replacing is not None:
                    ((deleted,),) = self._run(
                        "delete the month's replaced rows",
                        SQL.delete_month_sql(dataset, final, replacing),
                        cursor=cursor,
                    )
                ((inserted,),) = self._run("merge into final table", sql, cursor=cursor)
                self._cancellation.check(context.run_id)
                self._run("commit the merge", "COMMIT", cursor=cursor)
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
                raise
        return int(deleted), int(inserted)

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        self._discard_staging(staging_table(dataset, month))
        with self._ddl_lock:
            self._run("drop external", f"DROP VIEW IF EXISTS {external_table(dataset, month)}")

    # -- lookup tables ----------------------------------------------------------------------

    def replace_lookup(self, lookup: LookupTable, source: ObjectInfo, lake: LakeReader) -> int:
        """``CREATE OR REPLACE TABLE`` from ``read_csv`` of the lake file, in one transaction
        with the count: another process sees the old table or the new one."""
        relation = DUCKDB.read_csv(str(_local_path(source)), lookup.names)
        table = f"{FILE_ALIAS}.{_quote_ident(lookup.table)}"
        with self._file(f"replacing {lookup.table}"):
            cursor = self._cursor()
            try:
                self._run("begin the replacement", "BEGIN TRANSACTION", cursor=cursor)
                self._run(
                    f"replace {lookup.table}",
                    SQL.replace_lookup_sql(lookup, table, f"({relation}) AS source"),
                    cursor=cursor,
                )
                ((rows,),) = self._run(
                    f"count {lookup.table}", f"SELECT count(*) FROM {table}", cursor=cursor
                )
                self._run("commit the replacement", "COMMIT", cursor=cursor)
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
        return int(rows)

    def lookup_rows(self, lookup: LookupTable) -> int | None:
        if not self.path.exists():
            return None
        with self._file(f"counting {lookup.table}"):
            found = self._run(
                "find a lookup table",
                "SELECT count(*) FROM information_schema.tables WHERE table_catalog = ?"
                " AND table_name = ?",
                [FILE_ALIAS, lookup.table],
            )
            if not found[0][0]:
                return None
            ((rows,),) = self._run(
                f"count {lookup.table}",
                f"SELECT count(*) FROM {FILE_ALIAS}.{_quote_ident(lookup.table)}",
            )
        return int(rows)

    def query(self, sql: str, tables: Mapping[str, TableRows] | None = None) -> QueryResult:
        """The user's query; only queries: the file is the user's whole warehouse.

        Statements are checked before anything runs (SELECT, and EXPLAIN that does not execute
        its statement: ``EXPLAIN ANALYZE`` does), and what runs runs in a transaction that is
        always rolled back, so a statement that slipped through still changes nothing.
        ``tables`` (the run history, kept elsewhere) are TEMP tables of the query's cursor.
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
        exists = self.path.exists()
        with self._file("a query (taxi-pipeline sql)") if exists else nullcontext():
            cursor = self._cursor()
            try:
                if exists:
                    cursor.execute(f"USE {FILE_ALIAS}")
                for name, rows in (tables or {}).items():
                    _temp_table(cursor, name, rows)
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
        """Tables and views of the process's memory and of the file (tests, reports)."""
        names = self._run(
            "list tables",
            "SELECT table_name FROM information_schema.tables"
            f" WHERE table_catalog <> {_quote_text(FILE_ALIAS)}",
        )
        if self.path.exists():
            with self._file("listing tables"):
                names += self._run(
                    "list tables",
                    "SELECT table_name FROM information_schema.tables"
                    f" WHERE table_catalog = {_quote_text(FILE_ALIAS)}",
                )
        return sorted(r[0] for r in names)

    # -- a home from before the run history moved out of the file ---------------------------

    def legacy_history(self) -> tuple[list[RunEvent], list[LoadRecord]]:
        """``pipeline_runs`` and ``pipeline_loads`` of a warehouse file written by an earlier
        version (the history lived in the file then); empty when there are none."""
        if not self.path.exists():
            return [], []
        with self._file("reading the old run history"):
            present = {
                r[0]
                for r in self._run(
                    "list history tables",
                    "SELECT table_name FROM information_schema.tables"
                    f" WHERE table_catalog = {_quote_text(FILE_ALIAS)}",
                )
            }
            events = self._legacy_events() if "pipeline_runs" in present else []
            loads = self._legacy_loads() if "pipeline_loads" in present else []
        return events, loads

    def drop_legacy_history(self) -> None:
        """Drop the old history tables, once the run history holds their rows."""
        if not self.path.exists():
            return
        with self._file("dropping the old run history"):
            for table in HISTORY_TABLES:
                self._run("drop old history", f"DROP TABLE IF EXISTS {FILE_ALIAS}.{table}")

    def _legacy_events(self) -> list[RunEvent]:
        sql, _ = _LEGACY_HISTORY.select_events(None, None, None)
        return [_LEGACY_HISTORY.event(r) for r in self._run("read old run events", sql)]

    def _legacy_loads(self) -> list[LoadRecord]:
        sql, _ = _LEGACY_HISTORY.select_loads()
        return [_LEGACY_HISTORY.load(r) for r in self._run("read old loads", sql)]


def _temp_table(cursor: duckdb.DuckDBPyConnection, name: str, rows: TableRows) -> None:
    """``rows`` as a TEMP table of ``cursor``, typed as :data:`HISTORY_COLUMNS` says (through
    newline-delimited JSON: DuckDB's ``executemany`` takes ~1 ms a row)."""
    types = HISTORY_COLUMNS[name]
    columns = ", ".join(f"{_quote_ident(c)} {t}" for c, t in types.items())
    cursor.execute(f"CREATE OR REPLACE TEMP TABLE {_quote_ident(name)} ({columns})")
    if not rows:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    spec = ", ".join(f"{_quote_text(c)}: {_quote_text(t)}" for c, t in types.items())
    try:
        cursor.execute(
            f"INSERT INTO {_quote_ident(name)} SELECT * FROM read_json("
            f"{_quote_text(handle.name)}, format = 'newline_delimited', columns = {{{spec}}})"
        )
    finally:
        os.unlink(handle.name)


_TYPED_CSV_KINDS: Final[Mapping[str, SourceKind]] = {
    "string": "text",
    "timestamp": "timestamp",
    "integer": "decimal",
    "numeric": "decimal",
}


def _typed_csv_sources(dataset: Dataset) -> Sources:
    """The columns of :meth:`DuckDbDialect.read_csv_typed` as staging reads them."""
    present = set(dataset.layout.names)
    return {
        c.name: SourceColumn(c.name, _TYPED_CSV_KINDS[c.kind])
        if c.name in present
        else SourceColumn(None)
        for c in dataset.layout.final_columns
    }


def _lock_holder(exc: Exception) -> str:
    """Who holds the file, from DuckDB's message ("Conflicting lock is held in X (PID n)")."""
    match = re.search(r"held in (.+?) \(PID (\d+)\)", str(exc))
    return f"held by pid {match.group(2)} ({match.group(1)})" if match else str(exc)[:200]


def _sweep_spill_folders(parent: Path) -> None:
    """Remove the spill folders of processes that are gone."""
    try:
        folders = list(parent.iterdir())
    except FileNotFoundError:
        return
    for folder in folders:
        name = folder.name
        if name.startswith("p") and name[1:].isdigit() and not pid_alive(int(name[1:])):
            shutil.rmtree(folder, ignore_errors=True)


def _local_path(source: ObjectInfo) -> Path:
    path = source.local_file
    if path is None:
        raise ConfigurationError(
            f"the DuckDB warehouse reads local files only, got {source.uri!r}; use a file:// lake"
        )
    return path
