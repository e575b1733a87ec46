"""SqliteHistory: the embedded default's run history and load ledger, shared by processes.

DuckDB lets one process at a time open a database file, and a writer shuts out readers too; the
history must be read (``runs``, ``status``, ``runs show --follow``) and written (every step,
every heartbeat) by several processes at once. SQLite in WAL mode does that: readers never wait,
writers queue for milliseconds. So the embedded default keeps ``pipeline_runs`` and
``pipeline_loads`` here (``{home}/runs.sqlite``), the trip tables in DuckDB. BigQuery and
PostgreSQL keep their history in their own database.

Besides the two tables of the port, three tables serve the local orchestrator: ``processes``
(each process's heartbeat: a run whose process stopped beating is ABANDONED), ``progress``
(each running phase's figures, for ``runs show --follow`` in another terminal), and ``meta``.

Timestamps are stored as integer microseconds since the epoch (UTC): exact, and ordered.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from filelock import FileLock, Timeout

from taxi_pipeline.adapters.sql.dialects import HistoryKind
from taxi_pipeline.adapters.sql.history import (
    LOAD_COLUMNS,
    LOADS_TABLE,
    RUNS_TABLE,
    History,
    Param,
)
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.history import Liveness
from taxi_pipeline.domain.runs import CANCEL_STEP, LoadRecord, RunEvent
from taxi_pipeline.errors import ConfigurationError, TransientError
from taxi_pipeline.local.orchestrator import PhaseFigures
from taxi_pipeline.local.process import ProcessInfo, is_gone

HEARTBEAT_SECONDS: Final = 2.0
"""How often a process of the embedded default beats."""
STALE_AFTER: Final = timedelta(seconds=30)
"""A process silent this long is gone (it may sit on another host, or its pid was reused)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, dataset TEXT, month TEXT, step TEXT NOT NULL, state TEXT NOT NULL,
    attempt INTEGER, started_at INTEGER, finished_at INTEGER, rows INTEGER, bytes INTEGER,
    labels TEXT, error TEXT, details TEXT, recorded_at INTEGER NOT NULL, process TEXT
);
CREATE INDEX IF NOT EXISTS pipeline_runs_run ON pipeline_runs (run_id);
CREATE INDEX IF NOT EXISTS pipeline_runs_recorded ON pipeline_runs (recorded_at);
CREATE INDEX IF NOT EXISTS pipeline_runs_step ON pipeline_runs (step);
CREATE TABLE IF NOT EXISTS pipeline_loads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL, month TEXT NOT NULL, object_name TEXT NOT NULL,
    generation TEXT NOT NULL, run_id TEXT NOT NULL, rows_in_file INTEGER NOT NULL,
    rows_inserted INTEGER NOT NULL, loaded_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pipeline_loads_object ON pipeline_loads (object_name, generation);
CREATE TABLE IF NOT EXISTS processes (
    process TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, command TEXT,
    started_at INTEGER NOT NULL, beat_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    run_id TEXT NOT NULL, phase TEXT NOT NULL, description TEXT NOT NULL, done INTEGER NOT NULL,
    total INTEGER, unit TEXT NOT NULL, updated_at INTEGER NOT NULL, finished INTEGER NOT NULL,
    PRIMARY KEY (run_id, phase)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _micros(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1)


def _moment(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _now() -> int:
    return _micros(datetime.now(UTC)) or 0


class SqliteDialect:
    """The history statements' hooks in SQLite (``adapters/sql/history``): positional
    parameters, timestamps as integer microseconds, the row id ``id`` as insertion order, and
    the ``process`` of each line. The tables themselves are :data:`_SCHEMA`'s (their ``id``
    column, the indexes and the orchestrator's tables)."""

    history_types: Final[Mapping[HistoryKind, str]] = {
        "text": "TEXT",
        "integer": "INTEGER",
        "timestamp": "INTEGER",
    }
    insertion_order: Final = "id"
    loads_order: Final = "loaded_at, id"
    history_sequence: Final = False
    server_sequence: Final = "INTEGER PRIMARY KEY AUTOINCREMENT"
    history_process: Final = True

    def quote_ident(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def param(self, name: str) -> str:
        return "?"

    def to_timestamp(self, value: datetime | None) -> int | None:
        return _micros(value)

    def from_timestamp(self, value: int | None) -> datetime | None:
        return _moment(value)

    def history_suffix(self, table: str) -> str:
        return ""


HISTORY: Final = History(SqliteDialect(), RUNS_TABLE, LOADS_TABLE)


def _no_sequence() -> int:
    raise AssertionError("SQLite numbers the lines itself (id)")


@dataclass(frozen=True)
class PhaseProgress:
    """How far a running phase of a run has come (written by the process running it)."""

    run_id: str
    phase: str
    description: str
    done: int
    total: int | None
    unit: str
    updated_at: datetime
    finished: bool


@dataclass(frozen=True)
class ProcessBeat:
    process: str
    host: str
    pid: int
    command: str
    started_at: datetime
    beat_at: datetime


INIT_WAIT_SECONDS: Final = 30.0
"""Longest a process waits for another to finish opening the history (it takes milliseconds)."""


@contextmanager
def _initialising(path: Path) -> Iterator[None]:
    """Open the history file one process at a time (``{path}.lock``).

    Two processes opening a new file at once (two backfills started together on a fresh home)
    deadlock in SQLite: switching the file to WAL needs its exclusive lock, and the schema's
    ``CREATE TABLE`` upgrades a read to a write; SQLite breaks each deadlock by failing one side
    at once with "database is locked", without waiting out ``busy_timeout``. Taking turns for
    these few milliseconds removes both; after that, WAL lets the processes work side by side.
    """
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=INIT_WAIT_SECONDS)
    except Timeout as exc:
        raise ConfigurationError(
            f"cannot open the run history {path}: another process has held {lock.lock_file}"
            f" for {INIT_WAIT_SECONDS:.0f} s"
        ) from exc
    except OSError as exc:  # a folder this user may not write to
        raise ConfigurationError(f"cannot open the run history {path}: {exc}") from exc
    try:
        yield
    finally:
        lock.release()


class SqliteHistory:
    """``pipeline_runs`` and ``pipeline_loads`` in one SQLite file in WAL mode; thread-safe.

    ``process`` (the embedded default's own) is stamped on every line this instance appends, so
    the derivation can tell a run whose process died. ``create=False`` (read-only commands):
    a missing file reads as an empty history and is not created.
    """

    def __init__(
        self, path: Path, *, process: ProcessInfo | None = None, create: bool = True
    ) -> None:
        self.path = path
        self.process = process
        self._lock = threading.Lock()
        self._closed = False
        exists = path.exists()
        if not exists and not create:
            target = ":memory:"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            target = str(path)
        try:
            # autocommit (isolation_level=None): each statement or explicit BEGIN..COMMIT
            self._conn = sqlite3.connect(
                target, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA busy_timeout = 30000")
            if target == ":memory:":
                self._conn.executescript(_SCHEMA)
            else:
                with _initialising(path):
                    self._conn.execute("PRAGMA journal_mode = WAL")
                    # WAL + NORMAL: a commit survives the process dying; a power cut may lose
                    # the last commits, which only makes a re-run merge again (and insert 0).
                    self._conn.execute("PRAGMA synchronous = NORMAL")
                    self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the run history {path}: {exc}") from exc
        self.created = not exists and target != ":memory:"
        """Whether this instance created the file (a home from before it: import its history)."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._closed = True

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise TransientError(f"run history {self.path}: {exc}") from exc

    def _select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise TransientError(f"run history {self.path}: {exc}") from exc

    # -- run history ------------------------------------------------------------------------

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        if events:
            with self._transaction() as conn:
                self._insert_events(conn, events)

    def _insert_events(self, conn: sqlite3.Connection, events: Sequence[RunEvent]) -> None:
        stamp = self.process.id if self.process is not None else None
        now = datetime.now(UTC)
        rows = [
            HISTORY.event_row(replace(e, process=e.process or stamp), now, _no_sequence)
            for e in events
        ]
        conn.executemany(HISTORY.row_insert(RUNS_TABLE), rows)

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        sql, params = HISTORY.select_events(run_id, dataset, since)
        return [HISTORY.event(r) for r in self._select(sql, [p.value for p in params])]

    def cancel_requests(self, after: int = 0) -> tuple[int, list[tuple[str, str]]]:
        """Cancel lines appended after line ``after``: ``(last line id, [(run id, reason)])``,
        which the process running those runs polls."""
        rows = self._select(
            "SELECT id, run_id, error FROM pipeline_runs WHERE step = ? AND id > ? ORDER BY id",
            [CANCEL_STEP, after],
        )
        last = rows[-1][0] if rows else after
        return last, [(r[1], r[2] or "cancelled") for r in rows]

    def last_line(self) -> int:
        ((last,),) = self._select("SELECT coalesce(max(id), 0) FROM pipeline_runs")
        return int(last)

    # -- load ledger -----------------------------------------------------------------------

    def record_load(self, record: LoadRecord) -> None:
        with self._transaction() as conn:
            self._insert_loads(conn, [record])

    @staticmethod
    def _insert_loads(conn: sqlite3.Connection, records: Sequence[LoadRecord]) -> None:
        conn.executemany(HISTORY.row_insert(LOADS_TABLE), [HISTORY.load_row(r) for r in records])

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        loads = self._loads(HISTORY.select_loads(object_name=object_name, generation=generation))
        return loads[-1] if loads else None

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        return self._loads(HISTORY.select_loads(dataset=dataset))

    def _loads(self, statement: tuple[str, list[Param]]) -> list[LoadRecord]:
        sql, params = statement
        return [HISTORY.load(r) for r in self._select(sql, [p.value for p in params])]

    def import_history(self, events: Sequence[RunEvent], loads: Sequence[LoadRecord]) -> bool:
        """Take over the history of a home from before this store, once; returns whether it did
        (False: imported before)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM meta WHERE key = 'imported'").fetchone():
                return False
            conn.execute("INSERT INTO meta VALUES ('imported', ?)", [datetime.now(UTC).isoformat()])
            self._insert_events(conn, events)
            self._insert_loads(conn, loads)
        return True

    # -- processes ---------------------------------------------------------------------------

    def beat(self) -> None:
        """This process is alive (register it on the first beat)."""
        me = self.process
        if me is None:
            raise ValueError("a history without a process cannot beat")
        now = _now()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO processes VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (process) DO UPDATE SET beat_at = excluded.beat_at",
                [me.id, me.host, me.pid, me.command, now, now],
            )

    def leave(self) -> None:
        """This process ends: its row and its progress go (nothing left to do once the store
        was closed by another owner of it, such as the web UI's history)."""
        if self.process is None or self._closed:
            return
        with self._transaction() as conn:
            conn.execute("DELETE FROM processes WHERE process = ?", [self.process.id])
            conn.execute(
                "DELETE FROM progress WHERE run_id IN (SELECT DISTINCT run_id FROM"
                " pipeline_runs WHERE process = ?)",
                [self.process.id],
            )

    def processes(self) -> list[ProcessBeat]:
        rows = self._select(
            "SELECT process, host, pid, command, started_at, beat_at FROM processes ORDER BY 5"
        )
        return [
            ProcessBeat(
                r[0], r[1], r[2], r[3] or "", _moment(r[4]) or _EPOCH, _moment(r[5]) or _EPOCH
            )
            for r in rows
        ]

    def liveness(self, now: datetime | None = None) -> Liveness:
        """Which processes are alive now: a fresh heartbeat, and (on this host) a live pid."""
        now = now or datetime.now(UTC)
        beats = self.processes()
        alive = frozenset(
            p.process for p in beats if now - p.beat_at <= STALE_AFTER and not is_gone(p.process)
        )
        return Liveness(now, live_processes=alive, last_beats={p.process: p.beat_at for p in beats})

    # -- progress ----------------------------------------------------------------------------

    def set_progress(self, figures: PhaseFigures) -> None:
        run_id, description, done = figures.run_id, figures.description, figures.done
        total, unit, finished = figures.total, figures.unit, figures.finished
        phase = description.split(" ", 1)[0]
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO progress VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, phase)"
                " DO UPDATE SET description = excluded.description, done = excluded.done,"
                " total = excluded.total, unit = excluded.unit,"
                " updated_at = excluded.updated_at, finished = excluded.finished",
                [run_id, phase, description, done, total, unit, _now(), int(finished)],
            )

    def clear_progress(self, run_id: str) -> None:
        """The run ended: its progress is history now (its lines say the rest)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM progress WHERE run_id = ?", [run_id])

    def progress(self, run_id: str) -> list[PhaseProgress]:
        rows = self._select(
            "SELECT run_id, phase, description, done, total, unit, updated_at, finished"
            " FROM progress WHERE run_id = ? ORDER BY updated_at",
            [run_id],
        )
        return [
            PhaseProgress(r[0], r[1], r[2], r[3], r[4], r[5], _moment(r[6]) or _EPOCH, bool(r[7]))
            for r in rows
        ]

    # -- the tables for `taxi-pipeline sql` ----------------------------------------------------

    def table_rows(self, table: str) -> list[dict[str, object]]:
        """``pipeline_runs`` or ``pipeline_loads`` as rows of plain values (ISO timestamps)."""
        if table == RUNS_TABLE:
            columns, order = HISTORY.event_columns, "recorded_at, id"
        elif table == LOADS_TABLE:
            columns, order = LOAD_COLUMNS, "loaded_at, id"
        else:
            raise ValueError(f"no history table {table!r}")
        names = [c.name for c in columns]
        times = {c.name for c in columns if c.kind == "timestamp"}
        rows = self._select(f"SELECT {', '.join(names)} FROM {table} ORDER BY {order}")
        out = []
        for row in rows:
            record: dict[str, object] = {}
            for name, value in zip(names, row, strict=True):
                if name in times and value is not None:
                    moment = _moment(value)
                    value = moment.strftime("%Y-%m-%d %H:%M:%S.%f") if moment else None
                record[name] = value
            out.append(record)
        return out
