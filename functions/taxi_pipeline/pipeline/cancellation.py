"""Stopping runs: which runs must stop, and how to stop what they are doing right now.

A run is cancelled by Ctrl-C or SIGTERM (every run of the process), by ``taxi-pipeline runs
cancel`` from another terminal (one run; the owning process polls the history for the request),
or, in the cloud, by the cancel line in the history that the run's next step finds. Steps check
at their start (:meth:`Cancellation.check` with ``recorded=True`` also reads the history) and
between chunks of long work; what blocks in a library (a DuckDB statement) registers how to
interrupt it with :meth:`Cancellation.interruptible`. A step that stops raises
:class:`~taxi_pipeline.errors.RunCancelled`; the entry point records CANCELLED and acknowledges
the event, so a cancelled run is never retried.

Pure Python and thread-safe: the signal handler, the watcher thread and the bus workers all
call in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from taxi_pipeline.errors import RunCancelled

log = logging.getLogger(__name__)


class _HasRunId(Protocol):
    @property
    def run_id(self) -> str | None: ...


_SCOPE: ContextVar[_HasRunId | None] = ContextVar("taxi_pipeline_run_scope", default=None)


@contextmanager
def run_scope(invocation: _HasRunId) -> Iterator[None]:
    """Name the run the current thread works for (read lazily: steps fill the run id in as
    they identify it), for code that is not handed the run id (lock waits, progress)."""
    token = _SCOPE.set(invocation)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_run_id() -> str | None:
    """The run id of the innermost :func:`run_scope`, if known yet."""
    scope = _SCOPE.get()
    return scope.run_id if scope is not None else None


class Cancellation:
    """Which runs must stop in this process, and the interrupters of their work in progress.

    ``recorded`` looks a run up in the history (a cancel line written by another process); it
    is consulted only by :meth:`check` with ``recorded=True``, once per step, since in the cloud
    it is a warehouse query.
    """

    def __init__(self, recorded: Callable[[str], str | None] | None = None) -> None:
        self._recorded = recorded
        self._lock = threading.Lock()
        self._cancelled: dict[str, str] = {}
        self._everything: str | None = None
        self._interrupters: dict[str, list[Callable[[], None]]] = {}

    def cancel(self, run_id: str, reason: str) -> None:
        """Stop one run: later checks raise, work in progress is interrupted."""
        with self._lock:
            self._cancelled.setdefault(run_id, reason)
            interrupters = list(self._interrupters.get(run_id, ()))
        self._fire(interrupters)

    def cancel_everything(self, reason: str) -> None:
        """Stop every run of this process, those that have not started yet too (Ctrl-C)."""
        with self._lock:
            if self._everything is None:
                self._everything = reason
            interrupters = [i for group in self._interrupters.values() for i in group]
        self._fire(interrupters)

    @property
    def everything(self) -> str | None:
        """Why every run of this process stops (None: it does not)."""
        with self._lock:
            return self._everything

    def reason(self, run_id: str | None) -> str | None:
        """Why ``run_id`` must stop, as far as this process knows (None: it goes on)."""
        with self._lock:
            if self._everything is not None:
                return self._everything
            return self._cancelled.get(run_id) if run_id else None

    def check(self, run_id: str | None = None, *, recorded: bool = False) -> None:
        """Raise :class:`RunCancelled` if the run (default: the current scope's) must stop;
        ``recorded`` also asks the history (a step's start)."""
        run_id = run_id if run_id is not None else current_run_id()
        reason = self.reason(run_id)
        if reason is None and recorded and run_id and self._recorded is not None:
            reason = self._recorded(run_id)
            if reason is not None:
                with self._lock:
                    self._cancelled.setdefault(run_id, reason)
        if reason is not None:
            raise RunCancelled(reason)

    @contextmanager
    def interruptible(self, run_id: str, interrupt: Callable[[], None]) -> Iterator[None]:
        """Call ``interrupt`` (from another thread) if the run is cancelled during the block;
        raises at once if it already is."""
        with self._lock:
            self._interrupters.setdefault(run_id, []).append(interrupt)
        try:
            self.check(run_id)
            yield
        finally:
            with self._lock:
                group = self._interrupters.get(run_id, [])
                if interrupt in group:
                    group.remove(interrupt)
                if not group:
                    self._interrupters.pop(run_id, None)

    @staticmethod
    def _fire(interrupters: list[Callable[[], None]]) -> None:
        for interrupt in interrupters:
            try:
                interrupt()
            except Exception:  # one failed interrupter must not keep the others from running
                log.warning("could not interrupt work in progress", exc_info=True)
