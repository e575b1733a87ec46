"""Fault injection: the real adapters, wrapped to crash, fail or lie where a :class:`Faults` says.

The way dlt's dummy destination takes fail and retry probabilities, :class:`Faults` is plain
configuration, and ``bootstrap`` composes the wrappers around the adapters it builds
(``build_local(settings, faults=...)``, ``build_in_process``): the reliability tests (and a
drill) run the real composition root, the real in-process bus and the real handlers, with the
faults in between. Nothing else builds them.

- ``kill_at``: the process dies there (:class:`SimulatedCrash`), once, at its ``kill_nth``
  occurrence: ``before X`` / ``after X`` around a warehouse call ``X``, ``lake.write`` (a chunk
  written, nothing committed), ``after lake.commit``, ``before publish T`` / ``after publish T``.
- ``fail``: warehouse calls that raise their error every time (a fault outliving every retry).
- ``staged``: what ``stage`` reports instead of the truth (a warehouse that lies).
- ``copies`` / ``seed``: every message and lake event delivered ``copies`` times, in an order
  drawn from ``seed`` (at-least-once delivery, as Pub/Sub and Eventarc may do).

A :class:`Faults` also keeps what happened: the deliveries per message, the crashes and the
errors that escaped a handler.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, TypeVar

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.lookups import LookupTable
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.pipeline.cloudevents import CloudEventLike
from taxi_pipeline.pipeline.ports import (
    Bus,
    JobContext,
    Lake,
    LakeReader,
    MergeOutcome,
    MergePlan,
    ObjectInfo,
    ObjectWriter,
    QueryResult,
    StagingSummary,
    Warehouse,
)

_T = TypeVar("_T")
Handler = Callable[[CloudEventLike], None]


class SimulatedCrash(BaseException):
    """The function's process died at this point. A ``BaseException``: like a killed process,
    nothing the handlers do on ``Exception`` runs (no RETRYING line, no cleanup in ``except
    Exception``); only ``finally`` blocks do."""


class ProcessDied(Exception):
    """What the bus sees of a delivery whose process died: it is delivered again, as Pub/Sub
    redelivers a message that was never acknowledged."""


@dataclass
class Faults:
    """Which faults to inject, and what happened (module docstring)."""

    kill_at: str | None = None
    kill_nth: int = 1
    fail: Mapping[str, Exception] = field(default_factory=dict)
    staged: Callable[[StagingSummary], StagingSummary] | None = None
    copies: int = 1
    seed: int | None = None
    deliveries: Counter[str] = field(default_factory=Counter)
    """Deliveries per message (its event id: the same on every redelivery)."""
    crashes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """``Type: message`` of every error that escaped a handler (crashes aside)."""
    killed: bool = False
    _seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, point: str) -> None:
        """Raise :class:`SimulatedCrash` if the process is to die at ``point`` now."""
        with self._lock:
            if point != self.kill_at or self.killed:
                return
            self._seen += 1
            if self._seen < self.kill_nth:
                return
            self.killed = True
        raise SimulatedCrash(f"killed {point} (#{self.kill_nth})")

    def around(self, call: str, run: Callable[[], _T]) -> _T:
        """A warehouse call: the kill points around it, and its configured failure."""
        self.hit(f"before {call}")
        error = self.fail.get(call)
        if error is not None:
            raise error
        result = run()
        self.hit(f"after {call}")
        return result

    def delivering(self, handler: Handler) -> Handler:
        """``handler`` as the bus calls it: each delivery counted, each escaping error kept, a
        crash turned into :class:`ProcessDied` for the bus to deliver again."""

        def deliver(event: CloudEventLike) -> None:
            with self._lock:
                self.deliveries[str(event.get("id"))] += 1
            try:
                handler(event)
            except SimulatedCrash as crash:
                with self._lock:
                    self.crashes.append(str(crash))
                raise ProcessDied(str(crash)) from None
            except Exception as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                raise

        return deliver

    def lake(self, inner: Lake) -> Lake:
        return FaultyLake(inner, self)

    def warehouse(self, inner: Warehouse) -> Warehouse:
        return FaultyWarehouse(inner, self)

    def bus(self, inner: Bus) -> Bus:
        return FaultyBus(inner, self)


class _FaultyWriter:
    def __init__(self, inner: ObjectWriter, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def write(self, chunk: bytes) -> None:
        self._inner.write(chunk)
        self._faults.hit("lake.write")


class FaultyLake:
    """The lake, killed at ``lake.write`` (mid-upload) or ``after lake.commit``."""

    def __init__(self, inner: Lake, faults: Faults) -> None:
        self.inner = inner
        self._faults = faults

    def stat(self, name: str) -> ObjectInfo | None:
        return self.inner.stat(name)

    @contextmanager
    def writer(self, name: str, metadata: Mapping[str, str]) -> Iterator[ObjectWriter]:
        with self.inner.writer(name, metadata) as writer:
            yield _FaultyWriter(writer, self._faults)
        self._faults.hit("after lake.commit")

    def read_head(self, name: str, size: int) -> bytes:
        return self.inner.read_head(name, size)

    def open_read(self, name: str) -> AbstractContextManager[BinaryIO]:
        return self.inner.open_read(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)


class FaultyWarehouse:
    """The warehouse, killed ``before X`` or ``after X`` its calls that change something,
    failing or lying where told; reads pass through."""

    def __init__(self, inner: Warehouse, faults: Faults) -> None:
        self.inner = inner
        self._faults = faults

    @property
    def stages_in_final_table(self) -> bool:
        return self.inner.stages_in_final_table

    def ensure_final_table(self, dataset: Dataset) -> None:
        self._faults.around("ensure_final_table", lambda: self.inner.ensure_final_table(dataset))

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        return self._faults.around(
            "create_external_table",
            lambda: self.inner.create_external_table(dataset, month, source, lake),
        )

    def stage(self, source: ObjectInfo, lake: LakeReader, context: JobContext) -> StagingSummary:
        staged = self._faults.around("stage", lambda: self.inner.stage(source, lake, context))
        return self._faults.staged(staged) if self._faults.staged is not None else staged

    def merge_staged(self, plan: MergePlan) -> MergeOutcome:
        return self._faults.around("merge_staged", lambda: self.inner.merge_staged(plan))

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        self._faults.around(
            "drop_month_objects", lambda: self.inner.drop_month_objects(dataset, month)
        )

    def replace_lookup(self, lookup: LookupTable, source: ObjectInfo, lake: LakeReader) -> int:
        return self._faults.around(
            "replace_lookup", lambda: self.inner.replace_lookup(lookup, source, lake)
        )

    def lookup_rows(self, lookup: LookupTable) -> int | None:
        return self.inner.lookup_rows(lookup)

    def query(self, sql: str) -> QueryResult:
        return self.inner.query(sql)

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        self._faults.around("append_run_events", lambda: self.inner.append_run_events(events))

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        return self.inner.run_events(run_id, dataset, since)

    def record_load(self, record: LoadRecord) -> None:
        self._faults.around("record_load", lambda: self.inner.record_load(record))

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        return self.inner.find_load(object_name, generation)

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        return self.inner.loads(dataset)

    def close(self) -> None:
        self.inner.close()


class FaultyBus:
    """The bus the steps publish to, killed ``before publish {topic}`` or ``after publish
    {topic}``."""

    def __init__(self, inner: Bus, faults: Faults) -> None:
        self.inner = inner
        self._faults = faults

    def publish(self, topic: Topic, data: bytes, attributes: Mapping[str, str]) -> str:
        self._faults.hit(f"before publish {topic}")
        message_id = self.inner.publish(topic, data, attributes)
        self._faults.hit(f"after publish {topic}")
        return message_id
