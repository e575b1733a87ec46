"""Admission control for local runs: at most N runs of a dataset in flight, the rest QUEUED.

The embedded default runs every step on one in-process bus, so a run holds no worker while it
waits between steps. Limiting *runs* (not workers) therefore happens at the door: a submitted
request is recorded QUEUED at once, but published to ``ingest-requests`` only when its dataset
has a free slot; the slot frees when the run's ``IngestResult`` (SUCCESS, SKIPPED or FAILED)
is published. Waiting requests keep their submission order (Kestra's ``QUEUE`` behaviour).

The gate is local only: nothing in the cloud limits runs per dataset. There each function's
maximum instances (``infra/resources.py``; one request per instance) bound how many steps run at
once, over all datasets; a delivery past that bound is turned away and Pub/Sub redelivers it
later, each time counting as a delivery attempt toward the dead-letter policy.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from taxi_pipeline.domain.datasets import Dataset


@dataclass(frozen=True)
class Ticket:
    """A submitted request waiting for (or holding) a slot."""

    run_id: str
    dataset: Dataset
    publish: Callable[[], None]


class RunGate:
    """Per-dataset slots; thread-safe.

    ``publish`` runs under the gate's lock, so "holds a slot" and "its request is on the bus"
    change together (publishing only enqueues; no listener of ``ingest-requests`` calls back).
    """

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
            self._admit(ticket.dataset)

    def done(self, run_id: str, dataset: Dataset) -> None:
        """The run published its result: free its slot and admit the next waiting request."""
        with self._lock:
            self._running.get(dataset, set()).discard(run_id)
            self._admit(dataset)

    def holding(self) -> frozenset[str]:
        """Run ids holding a slot now."""
        with self._lock:
            return frozenset(r for running in self._running.values() for r in running)

    def release(self, run_ids: frozenset[str]) -> int:
        """Free the slots of ``run_ids`` and admit waiting requests; returns how many.

        For runs that held a slot through a moment the bus was idle: they ended without a
        result (e.g. a request rejected before its run id was read), so nothing else would
        ever free their slot.
        """
        with self._lock:
            for running in self._running.values():
                running.difference_update(run_ids)
            return sum(self._admit(dataset) for dataset in list(self._waiting))

    def waiting(self, dataset: Dataset | None = None) -> int:
        with self._lock:
            if dataset is not None:
                return len(self._waiting.get(dataset, ()))
            return sum(len(q) for q in self._waiting.values())

    def in_flight(self, dataset: Dataset) -> int:
        with self._lock:
            return len(self._running.get(dataset, ()))

    def _admit(self, dataset: Dataset) -> int:
        running = self._running.setdefault(dataset, set())
        queue = self._waiting.get(dataset, deque())
        admitted = 0
        while queue and len(running) < self.limit:
            ticket = queue.popleft()
            running.add(ticket.run_id)
            self.peak[dataset] = max(self.peak.get(dataset, 0), len(running))
            ticket.publish()
            admitted += 1
        return admitted
