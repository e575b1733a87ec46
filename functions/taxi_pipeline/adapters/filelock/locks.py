"""Locks shared by every process of one home: lock files (``flock`` through the filelock
library), which the kernel releases when their process dies, so no lock ever goes stale.

Beside each lock file, a ``.holder`` file says who holds it (pid, host, command, what for,
since when): a process that must wait prints that instead of failing. A waiting process leaves
a marker in ``.waiting/``, and a process about to take a lock first lets earlier waiters of
other processes go (for a moment), so one busy process cannot starve the others (flock itself
promises no order).

Used for the dataset-month locks of the steps (:class:`FileLocks`, the ``Locks`` port), the
per-dataset run slots of ``local.admission`` (:class:`FileSlots`), and the warehouse file,
which DuckDB lets one process open at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from filelock import FileLock, Timeout

from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.errors import RunCancelled
from taxi_pipeline.local.admission import Slot
from taxi_pipeline.local.process import pid_alive, this_process

POLL_SECONDS: Final = 0.1
"""How often a waiting process tries again (and checks whether it was cancelled)."""
DEFER_SECONDS: Final = 2.0
"""Longest a process lets earlier waiters of other processes go first."""

Notice = Callable[[str], None]
StopReason = Callable[[], str | None]


def _never() -> str | None:
    return None


def _ignore(_message: str) -> None:
    pass


class ProcessLock:
    """One lock file, held by one thread of one process at a time (a new instance per hold:
    each opens its own file description, which is what ``flock`` excludes)."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        self.path = path
        self.name = name or path.stem
        self._holder = path.with_name(path.name + ".holder")
        self._waiting = path.with_name(path.name + ".waiting")
        self._lock = FileLock(str(path), thread_local=False)

    def try_acquire(self, purpose: str) -> bool:
        """Take the lock if it is free; never waits."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        self._write_holder(purpose)
        return True

    def acquire(
        self, purpose: str, *, on_wait: Notice = _ignore, stop: StopReason = _never
    ) -> None:
        """Wait for the lock, saying once who holds it; raises :class:`RunCancelled` when
        ``stop`` gives a reason to stop waiting."""
        marker: Path | None = None
        try:
            if self._earlier_waiters():
                marker = self._mark_waiting()
                self._let_earlier_waiters_go(stop)
            told = False
            while True:
                try:
                    self._lock.acquire(timeout=0 if not told else POLL_SECONDS)
                except Timeout:
                    if marker is None:
                        marker = self._mark_waiting()
                    if not told:
                        on_wait(f"waiting for {self.name}: {self.holder() or 'held elsewhere'}")
                        told = True
                    _check(stop)
                    continue
                self._write_holder(purpose)
                return
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)

    def release(self) -> None:
        self._lock.release()

    def holder(self) -> str | None:
        """Who holds the lock, as the holder wrote it (None: unknown)."""
        try:
            data = json.loads(self._holder.read_text())
            since = datetime.fromtimestamp(float(data["since"]), UTC)
            held = f"held by pid {data['pid']} on {data['host']} ({data['command']})"
            purpose = f" for {data['purpose']}" if data.get("purpose") else ""
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return f"{held}{purpose}, since {since:%H:%M:%S} UTC"

    def holder_pid(self) -> int | None:
        try:
            pid = json.loads(self._holder.read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return pid if isinstance(pid, int) else None

    def _write_holder(self, purpose: str) -> None:
        me = this_process()
        record = {
            "pid": me.pid,
            "host": me.host,
            "command": me.command,
            "purpose": purpose,
            "since": time.time(),
        }
        tmp = self._holder.with_name(f"{self._holder.name}.{me.pid}.{secrets.token_hex(3)}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._holder)

    def _mark_waiting(self) -> Path:
        self._waiting.mkdir(exist_ok=True)
        marker = self._waiting / f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(3)}"
        marker.touch()
        return marker

    def _earlier_waiters(self) -> list[Path]:
        """Markers of live waiters in other processes (those of dead ones are removed)."""
        try:
            markers = sorted(self._waiting.iterdir())
        except FileNotFoundError:
            return []
        mine = os.getpid()
        found = []
        for marker in markers:
            parts = marker.name.split("-")
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == mine:
                continue
            if not pid_alive(pid):
                marker.unlink(missing_ok=True)
                continue
            found.append(marker)
        return found

    def _let_earlier_waiters_go(self, stop: StopReason) -> None:
        deadline = time.monotonic() + DEFER_SECONDS
        earlier = self._earlier_waiters()
        while earlier and time.monotonic() < deadline:
            _check(stop)
            time.sleep(POLL_SECONDS / 2)
            earlier = [m for m in earlier if m.exists()]


def _check(stop: StopReason) -> None:
    reason = stop()
    if reason is not None:
        raise RunCancelled(reason)


class FileLocks:
    """The ``Locks`` port across processes: ``{directory}/{key}.lock``.

    Threads of this process queue on an in-process lock first (no polling, no message about
    ourselves), then take the file lock. ``on_wait`` hears who holds a lock another process has;
    ``stop`` ends a wait with :class:`RunCancelled` (Ctrl-C, ``runs cancel``)."""

    def __init__(
        self, directory: Path, *, on_wait: Notice = _ignore, stop: StopReason = _never
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.on_wait = on_wait
        self.stop = stop
        self._guard = threading.Lock()
        self._local: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, key: str, purpose: str = "") -> Iterator[None]:
        with self._guard:
            local = self._local.setdefault(key, threading.Lock())
        while not local.acquire(timeout=POLL_SECONDS):
            _check(self.stop)
        try:
            lock = ProcessLock(self.directory / f"{key}.lock", key)
            lock.acquire(purpose or key, on_wait=self.on_wait, stop=self.stop)
            try:
                yield
            finally:
                lock.release()
        finally:
            local.release()


class _FileSlot:
    def __init__(self, lock: ProcessLock) -> None:
        self._lock: ProcessLock | None = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


class FileSlots:
    """``limit`` run slots per dataset shared by the processes of a home:
    ``{directory}/slot-{dataset}-{i}.lock``. A process that dies frees its slots."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.limit = limit

    def _lock(self, dataset: Dataset, index: int) -> ProcessLock:
        return ProcessLock(
            self.directory / f"slot-{dataset.value}-{index}.lock", f"a {dataset.value} slot"
        )

    def take(self, dataset: Dataset, run_id: str) -> Slot | None:
        for index in range(self.limit):
            lock = self._lock(dataset, index)
            if lock.try_acquire(f"run {run_id}"):
                return _FileSlot(lock)
        return None

    def holders(self, dataset: Dataset) -> list[str]:
        """Holders of the dataset's slots that are other processes."""
        found = []
        for index in range(self.limit):
            lock = self._lock(dataset, index)
            if lock.try_acquire("a look"):
                lock.release()  # it was free
                continue
            pid = lock.holder_pid()
            if pid is not None and pid != os.getpid():
                found.append(lock.holder() or f"held by pid {pid}")
        return found
