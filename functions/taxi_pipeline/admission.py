"""Admission control for local runs: at most N runs of a dataset in flight, the rest QUEUED.

The embedded default runs every step on one in-process bus, so a run holds no worker while it
waits between steps. Limiting *runs* (not workers) therefore happens at the door: a submitted
request is recorded QUEUED at once, but published to ``ingest-requests`` only when its dataset
has a free slot; the slot frees when the run's ``IngestResult`` (SUCCESS, SKIPPED or FAILED)
is published. Waiting requests keep their submission order (Kestra's ``QUEUE`` behaviour).

In the cloud the same limit is the functions' maximum instances and Pub/Sub flow control.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from taxi_pipeline.datasets import Dataset


@dataclass(frozen=True)
class Ticket:
    """A submitted request waiting for (or holding) a slot."""

    run_id: str
    dataset: Dataset
    publish: Callable[[], None]


class RunGate:
    """Per-dataset slots; thread-safe. ``publish`` callbacks run outside the gate's lock."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the limit must be at least 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._running: dict[Dataset, set[str]] = {}
        self._waiting: dict[Dataset, deque[Ticket]] = {}
        self.peak: dict[Dataset, int] = {}
        """Most runs of each dataset that held a slot at the same time (for tests, reports)."""

    def offer(self, ticket: Ticket) -> None:
        """Publish now if the dataset has a free slot, else queue behind earlier requests."""
        with self._lock:
            self._waiting.setdefault(ticket.dataset, deque()).append(ticket)
            admitted = self._admit(ticket.dataset)
        for chosen in admitted:
            chosen.publish()

    def done(self, run_id: str, dataset: Dataset) -> None:
        """The run published its result: free its slot and admit the next waiting request."""
        with self._lock:
            self._running.get(dataset, set()).discard(run_id)
            admitted = self._admit(dataset)
        for chosen in admitted:
            chosen.publish()

    def release_all(self) -> bool:
        """The bus is idle, so nothing holds a slot for real (a run that ended without a
        result, e.g. rejected before its id was known): free every slot and admit waiting
        requests. Returns whether anything was admitted."""
        with self._lock:
            self._running.clear()
            admitted = [t for dataset in list(self._waiting) for t in self._admit(dataset)]
        for chosen in admitted:
            chosen.publish()
        return bool(admitted)

    def waiting(self, dataset: Dataset | None = None) -> int:
        with self._lock:
            if dataset is not None:
                return len(self._waiting.get(dataset, ()))
            return sum(len(q) for q in self._waiting.values())

    def in_flight(self, dataset: Dataset) -> int:
        with self._lock:
            return len(self._running.get(dataset, ()))

    def _admit(self, dataset: Dataset) -> list[Ticket]:
        running = self._running.setdefault(dataset, set())
        queue = self._waiting.get(dataset, deque())
        admitted = []
        while queue and len(running) < self.limit:
            ticket = queue.popleft()
            running.add(ticket.run_id)
            admitted.append(ticket)
        self.peak[dataset] = max(self.peak.get(dataset, 0), len(running))
        return admitted
