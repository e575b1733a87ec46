"""What a process of the embedded default does beside running steps, so that many processes
can share a home: it beats (a run whose process stopped beating is ABANDONED), it picks up the
cancel requests other processes record for its runs, it retries admission when another
process frees a run slot, and it mirrors the progress of its phases into the history, where
``runs show --follow`` in another terminal reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from taxi_pipeline.pipeline.cancellation import current_run_id
from taxi_pipeline.pipeline.ports import Progress, ProgressTask

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.5
"""How often cancel requests and freed slots are looked for."""
BEAT_SECONDS: Final = 2.0
PROGRESS_SECONDS: Final = 0.5
"""Shortest interval between two progress lines of a phase in the history."""


@dataclass(frozen=True)
class PhaseFigures:
    """How far a running phase of a run has come, as the process running it records it."""

    run_id: str
    description: str
    """Starts with the phase (``download``, ``verify``, ``stage``, ``merge``)."""
    done: int
    total: int | None
    unit: str
    finished: bool = False


class HomeHistory(Protocol):
    """What the orchestrator needs of the home's history (``adapters/sqlite``)."""

    def beat(self) -> None: ...

    def last_line(self) -> int: ...

    def cancel_requests(self, after: int = 0) -> tuple[int, list[tuple[str, str]]]: ...

    def set_progress(self, figures: PhaseFigures) -> None: ...

    def clear_progress(self, run_id: str) -> None: ...


@dataclass
class Watcher:
    """A daemon thread: heartbeat, cancel requests, admission retries (every ``POLL_SECONDS``).

    ``cancel(run_id, reason)`` stops a run of this process if it is one (the request of another
    process is already recorded); ``retry()`` admits runs waiting for a slot.
    """

    history: HomeHistory
    cancel: Callable[[str, str], object]
    retry: Callable[[], None]
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _after: int = 0

    def start(self) -> None:
        self.history.beat()
        # Requests recorded before this process began are not for its runs.
        self._after = self.history.last_line()
        self._thread = threading.Thread(target=self._run, name="home-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        beat = time.monotonic()
        while not self._stop.wait(POLL_SECONDS):
            try:
                if time.monotonic() - beat >= BEAT_SECONDS:
                    self.history.beat()
                    beat = time.monotonic()
                self._after, requests = self.history.cancel_requests(self._after)
                for run_id, reason in requests:
                    self.cancel(run_id, reason)
                self.retry()
            except Exception:  # a busy history must not end the watch: next round
                log.warning("the home watcher's round failed", exc_info=True)


class _MirroredTask:
    def __init__(self, inner: ProgressTask, history: HomeHistory, figures: PhaseFigures) -> None:
        self._inner = inner
        self._history = history
        self._figures = figures
        self._written = 0.0
        self._write()

    def advance(self, amount: int) -> None:
        self._inner.advance(amount)
        self._figures = replace(self._figures, done=self._figures.done + amount)
        if time.monotonic() - self._written >= PROGRESS_SECONDS:
            self._write()

    def close(self) -> None:
        self._inner.close()
        self._figures = replace(self._figures, finished=True)
        self._write()

    def _write(self) -> None:
        self._written = time.monotonic()
        try:
            self._history.set_progress(self._figures)
        except Exception:  # progress is a nicety: the work goes on without it
            log.debug("could not record progress of %s", self._figures.run_id, exc_info=True)


@dataclass
class MirroredProgress:
    """A :class:`Progress` that also records each phase's figures for other terminals."""

    inner: Progress
    history: HomeHistory

    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        task = self.inner.task(description, total, unit)
        run_id = current_run_id()
        if run_id is None:
            return task
        return _MirroredTask(task, self.history, PhaseFigures(run_id, description, 0, total, unit))
