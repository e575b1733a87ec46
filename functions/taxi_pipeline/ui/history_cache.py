"""The run history held in memory and brought up to date incrementally, for the web UI.

Deriving 10,000 runs from their ~70,000 lines takes seconds; a page must answer in 200 ms. The
history is append-only, so after one full read each refresh asks the warehouse only for the lines
recorded since the previous refresh began (minus an ``overlap``, for lines written with an earlier
timestamp but committed later: concurrent writers, BigQuery DML), and re-derives just the runs
those lines belong to, with :func:`history.derive_run`: the states are the derivation's own.

Re-reading the overlap is exact without any line identity: every cached line recorded at or
after the cut is dropped and replaced by the fresh read, which holds all of them again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.history import Run
from taxi_pipeline.domain.runs import LoadRecord, RunEvent


class HistorySource(Protocol):
    """What the cache reads (the warehouse's run history and load ledger)."""

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]: ...

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]: ...


@dataclass(frozen=True)
class Snapshot:
    """Every run as derived at one moment."""

    runs: Sequence[Run]
    """History order (oldest first), as :func:`history.derive_runs` returns them."""
    by_id: Mapping[str, Run]
    taken_at: datetime
    active: int
    """Runs QUEUED, RUNNING or RETRYING."""

    @property
    def latest_first(self) -> list[Run]:
        return list(reversed(self.runs))


EMPTY = Snapshot((), {}, datetime.min.replace(tzinfo=UTC), 0)


@dataclass
class HistoryCache:
    """Thread-safe; one refresh at a time, at most one per ``min_interval`` seconds."""

    source: HistorySource
    overlap: timedelta = timedelta(minutes=2)
    """How far before the previous refresh each refresh reads again."""
    min_interval: float = 0.25
    """Seconds during which a snapshot is served without asking the warehouse again."""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _events: dict[str, list[RunEvent]] | None = field(default=None, init=False)
    _runs: dict[str, Run] = field(default_factory=dict, init=False)
    _read_from: datetime | None = field(default=None, init=False)
    _snapshot: Snapshot = field(default=EMPTY, init=False)
    _refreshed: float = field(default=float("-inf"), init=False)
    _loads: list[LoadRecord] = field(default_factory=list, init=False)
    _loads_refreshed: float = field(default=float("-inf"), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def snapshot(self) -> Snapshot:
        """The runs, refreshed unless the last refresh is younger than ``min_interval``."""
        with self._lock:
            if time.monotonic() - self._refreshed >= self.min_interval:
                self._refresh()
            return self._snapshot

    def loads(self) -> list[LoadRecord]:
        """Every completed load (for coverage), refreshed like the runs."""
        with self._lock:
            if time.monotonic() - self._loads_refreshed >= self.min_interval:
                self._loads = self.source.loads()
                self._loads_refreshed = time.monotonic()
            return self._loads

    def invalidate(self) -> None:
        """The next read asks the warehouse (after a submit: show the new run at once)."""
        with self._lock:
            self._refreshed = self._loads_refreshed = float("-inf")

    def _refresh(self) -> None:
        began = self.clock()
        if self._events is None or self._read_from is None:
            events: dict[str, list[RunEvent]] = {}
            for event in self.source.run_events():
                events.setdefault(event.run_id, []).append(event)
            self._events = events
            touched: Sequence[str] = list(events)
        else:
            cut = self._read_from
            fresh: dict[str, list[RunEvent]] = {}
            for event in self.source.run_events(since=cut):
                fresh.setdefault(event.run_id, []).append(event)
            for run_id, lines in fresh.items():
                # Lines without a time never come back from a `since` read: keep them.
                kept = [
                    e
                    for e in self._events.get(run_id, ())
                    if e.recorded_at is None or e.recorded_at < cut
                ]
                self._events[run_id] = kept + lines
            touched = list(fresh)
        self._read_from = began - self.overlap
        self._refreshed = time.monotonic()
        changed = False
        for run_id in touched:
            run = history.derive_run(self._events[run_id])
            if self._runs.get(run_id) != run:
                self._runs[run_id] = run
                changed = True
        if changed or self._snapshot is EMPTY:
            ordered = history.sort_runs(self._runs.values())
            self._snapshot = Snapshot(
                tuple(ordered),
                dict(self._runs),
                began,
                sum(1 for r in ordered if r.is_active),
            )
        else:
            self._snapshot = Snapshot(
                self._snapshot.runs, self._snapshot.by_id, began, self._snapshot.active
            )
