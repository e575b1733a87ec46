"""Admission control for local runs: at most N runs of a dataset in flight, the rest QUEUED.

The embedded default runs every step on one in-process bus, so a run holds no worker while it
waits between steps. Limiting *runs* (not workers) therefore happens at the door: a submitted
request is recorded QUEUED at once, but published to ``ingest-requests`` only when its dataset
has a free slot; the slot frees when the run's ``IngestResult`` (SUCCESS, SKIPPED, FAILED or
CANCELLED) is published. Waiting requests keep their submission order (Kestra's ``QUEUE``
behaviour).

Slots come from :class:`Slots`: in one process :class:`MemorySlots`; the embedded default uses
the home's slot lock files (``adapters/filelock``), so the limit holds across every process of
a home and a slot of a process that died is free again. A slot freed in another process is
noticed by :meth:`RunGate.retry`, which the local pipeline calls every fraction of a second.

The gate is local only: nothing in the cloud limits runs per dataset. There each function's
maximum instances (``infra/resources.py``; one request per instance) bound how many steps run at
once, over all datasets; a delivery past that bound is turned away and Pub/Sub redelivers it
later, each time counting as a delivery attempt toward the dead-letter policy.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypedDict, Unpack

from taxi_pipeline.domain.datasets import Dataset, Month, Upstream


class RunOptions(TypedDict, total=False):
    """How a run is submitted, besides its dataset and month."""

    labels: Mapping[str, str] | None
    force: bool
    run_id: str | None
    """None: a new run id."""
    source: Upstream | None
    """None: the settings' source."""
    replace: bool


class Submitter(Protocol):
    """What submits local runs (``bootstrap.LocalPipeline``): recorded QUEUED at once,
    published when the gate admits them; returns the run id."""

    def submit(self, dataset: Dataset, month: Month, **options: Unpack[RunOptions]) -> str: ...


class Runner(Submitter, Protocol):
    """A :class:`Submitter` that also runs what was submitted until it is done."""

    def drain(self, workers: int = 1) -> None: ...


@dataclass(frozen=True)
class Ticket:
    """A submitted request waiting for (or holding) a slot."""

    run_id: str
    dataset: Dataset
    publish: Callable[[], None]


class Slot(Protocol):
    def release(self) -> None:
        """Free the slot (idempotent)."""


class Slots(Protocol):
    """Where the per-dataset slots live."""

    def take(self, dataset: Dataset, run_id: str) -> Slot | None:
        """A free slot of ``dataset`` held from now on, or None when all are taken."""

    def holders(self, dataset: Dataset) -> list[str]:
        """Who holds the dataset's slots in *other* processes (for a waiting message)."""


class _MemorySlot:
    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class MemorySlots:
    """``limit`` slots per dataset in this process only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._taken: dict[Dataset, int] = {}

    def take(self, dataset: Dataset, run_id: str) -> Slot | None:
        with self._lock:
            if self._taken.get(dataset, 0) >= self.limit:
                return None
            self._taken[dataset] = self._taken.get(dataset, 0) + 1

        def release() -> None:
            with self._lock:
                self._taken[dataset] -= 1

        return _MemorySlot(release)

    def holders(self, dataset: Dataset) -> list[str]:
        return []


class RunGate:
    """Per-dataset slots; thread-safe.

    ``publish`` runs under the gate's lock, so "holds a slot" and "its request is on the bus"
    change together (publishing only enqueues; no listener of ``ingest-requests`` calls back).
    """

    def __init__(self, limit: int, slots: Slots | None = None) -> None:
        if limit < 1:
            raise ValueError("the limit must be at least 1")
        self.limit = limit
        self.slots: Slots = slots if slots is not None else MemorySlots(limit)
        self._lock = threading.Lock()
        self._running: dict[Dataset, dict[str, Slot]] = {}
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
            slot = self._running.get(dataset, {}).pop(run_id, None)
            if slot is not None:
                slot.release()
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
                for run_id in run_ids & running.keys():
                    running.pop(run_id).release()
            return sum(self._admit(dataset) for dataset in list(self._waiting))

    def retry(self) -> int:
        """Admit waiting requests whose dataset has a slot free now (freed by another process);
        returns how many."""
        with self._lock:
            return sum(self._admit(dataset) for dataset in list(self._waiting))

    def withdraw(self, run_id: str) -> Ticket | None:
        """Take a waiting request off the queue (its run was cancelled); None if not waiting."""
        with self._lock:
            for queue in self._waiting.values():
                for ticket in queue:
                    if ticket.run_id == run_id:
                        queue.remove(ticket)
                        return ticket
        return None

    def withdraw_all(self) -> list[Ticket]:
        """Empty every queue (Ctrl-C); returns what waited."""
        with self._lock:
            tickets = [t for queue in self._waiting.values() for t in queue]
            self._waiting.clear()
            return tickets

    def waiting(self, dataset: Dataset | None = None) -> int:
        with self._lock:
            if dataset is not None:
                return len(self._waiting.get(dataset, ()))
            return sum(len(q) for q in self._waiting.values())

    def waiting_datasets(self) -> list[Dataset]:
        with self._lock:
            return [dataset for dataset, queue in self._waiting.items() if queue]

    def in_flight(self, dataset: Dataset) -> int:
        with self._lock:
            return len(self._running.get(dataset, ()))

    def _admit(self, dataset: Dataset) -> int:
        running = self._running.setdefault(dataset, {})
        queue = self._waiting.get(dataset, deque())
        admitted = 0
        while queue and len(running) < self.limit:
            ticket = queue[0]
            slot = self.slots.take(dataset, ticket.run_id)
            if slot is None:
                break  # every slot is held, some by other processes
            queue.popleft()
            running[ticket.run_id] = slot
            self.peak[dataset] = max(self.peak.get(dataset, 0), len(running))
            ticket.publish()
            admitted += 1
        return admitted
