"""Reliability harness (tests/reliability): at-least-once delivery under test control, and crashes.

``ChaosBus`` plays Pub/Sub + Eventarc for the real handlers: every published message (and every
lake object-finalized event) becomes a real CloudEvent, delivered ``copies`` times, in a shuffled
order, by worker threads; a delivery that raises (or "crashes") is redelivered with
``deliveryAttempt`` counting up until ``max_attempts``, then dead-lettered, as in the cloud.

``Killing*`` wrap the real local adapters and raise :class:`SimulatedCrash` at a chosen point.
It is a ``BaseException``: like a killed process, nothing the handlers do on ``Exception`` runs
(no RETRYING line, no cleanup in ``except Exception``); only ``finally`` blocks do.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, cast

from cloudevents.http import CloudEvent

from taxi_pipeline.adapters.embedded import EmbeddedWarehouse
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.http.source import HttpxSource
from taxi_pipeline.adapters.memory.locks import ThreadLocks
from taxi_pipeline.devkit.generator import GeneratedFile
from taxi_pipeline.devkit.source_server import SourceServer
from taxi_pipeline.domain.datasets import Dataset, Month, parse_object_name
from taxi_pipeline.domain.messages import IngestRequest, IngestResult, Topic, parse_model
from taxi_pipeline.pipeline import handlers
from taxi_pipeline.pipeline.cloudevents import (
    PUBSUB_PUBLISHED,
    CloudEventLike,
    build_gcs_event,
    dead_letter_attributes,
    event_time,
)
from taxi_pipeline.pipeline.cloudevents import build_pubsub_event as _build_pubsub_event
from taxi_pipeline.pipeline.ports import (
    Bus,
    DateRange,
    JobContext,
    Lake,
    LakeReader,
    LoadRecord,
    ObjectInfo,
    ObjectWriter,
    Ports,
    QueryResult,
    Replacement,
    RunEvent,
    StagingSummary,
    Warehouse,
)
from taxi_pipeline.settings import Settings

_T = TypeVar("_T")

JAN = Month(2019, 1)
FEB = Month(2019, 2)
MONTHS = {(Dataset.GREEN, JAN): 1_500, (Dataset.GREEN, FEB): 1_200, (Dataset.YELLOW, JAN): 1_500}


@dataclass
class Source:
    server: SourceServer
    files: dict[tuple[Dataset, Month], GeneratedFile]

    @property
    def url(self) -> str:
        return self.server.base_url


LAKE_EVENTS = "lake-object-finalized"
PROJECT = "reliability"

HandlerFn = Callable[[CloudEventLike, Ports], None]
HANDLERS: dict[str, HandlerFn] = {
    Topic.INGEST_REQUESTS: handlers.handle_ingest_request,
    LAKE_EVENTS: handlers.handle_object_finalized,
    Topic.MERGE_REQUESTS: handlers.handle_merge_request,
    Topic.DEAD_LETTER: handlers.handle_dead_letter,
}


class SimulatedCrash(BaseException):
    """The function's process died at this point."""


# --- delivery ------------------------------------------------------------------------------------


@dataclass
class _Delivery:
    topic: str
    key: str
    event: CloudEvent
    body: bytes
    attributes: dict[str, str]
    attempt: int


@dataclass
class ChaosBus:
    """Pub/Sub + Eventarc semantics with duplicates, shuffling, parallelism and crashes."""

    copies: int = 1
    max_attempts: int = 5
    seed: int = 0
    ports: Ports | None = None
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    deliveries: Counter[str] = field(default_factory=Counter)
    """Deliveries per message key (message id / object generation)."""
    crashes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _queue: list[_Delivery] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _in_flight: int = 0
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    # Bus port
    def publish(self, topic: Topic, data: bytes, attributes: Mapping[str, str]) -> str:
        event = _build_pubsub_event(PROJECT, topic, data, attributes)
        key = str(event["id"])
        with self._cond:
            self.published.append((str(topic), data, dict(attributes)))
        if str(topic) in HANDLERS:
            for _ in range(self.copies):
                self._enqueue(_Delivery(str(topic), key, event, data, dict(attributes), 1))
        return key

    def announce(self, info: ObjectInfo) -> None:
        """FolderStore's ``on_finalized``: the GCS object-finalized event (one per commit)."""
        attributes = {"object": info.name}
        try:
            dataset, month = parse_object_name(info.name)
            attributes |= {"dataset": dataset.value, "month": str(month)}
        except ValueError:
            pass
        if "run_id" in info.metadata:
            attributes["run_id"] = info.metadata["run_id"]
        self.deliver_event(LAKE_EVENTS, build_gcs_event(info), attributes)

    def deliver_event(
        self,
        topic: str,
        event: CloudEvent,
        attributes: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> str:
        """Queue a ready-made CloudEvent (``copies`` times); returns its delivery key.

        ``body`` is the Pub/Sub message body a redelivery re-wraps (default: the event data).
        """
        key = str(event["id"])
        if body is None:
            body = event.data if isinstance(event.data, bytes) else json.dumps(event.data).encode()
        for _ in range(self.copies):
            self._enqueue(_Delivery(topic, key, event, body, dict(attributes or {}), 1))
        return key

    def _enqueue(self, delivery: _Delivery) -> None:
        with self._cond:
            self._queue.append(delivery)
            self._cond.notify()

    def drain(self, workers: int = 1) -> None:
        """Deliver until nothing is queued or in flight; shuffled picks, ``workers`` threads."""
        threads = [threading.Thread(target=self._work) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._in_flight:
                    self._cond.wait()
                if not self._queue:
                    self._cond.notify_all()
                    return
                index = self._random.randrange(len(self._queue))
                delivery = self._queue.pop(index)
                self._in_flight += 1
                self.deliveries[delivery.key] += 1
            try:
                self._handle(delivery)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _handle(self, delivery: _Delivery) -> None:
        assert self.ports is not None, "ChaosBus.ports is not wired"
        try:
            HANDLERS[delivery.topic](delivery.event, self.ports)
        except SimulatedCrash as crash:
            with self._cond:
                self.crashes.append(str(crash))
            self._retry(delivery)
        except Exception as exc:
            with self._cond:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self._retry(delivery)

    def _retry(self, delivery: _Delivery) -> None:
        if delivery.attempt >= self.max_attempts:
            if delivery.topic != Topic.DEAD_LETTER:
                self.publish(
                    Topic.DEAD_LETTER,
                    delivery.body,
                    dead_letter_attributes(delivery.event, delivery.attributes, delivery.attempt),
                )
            return
        attempt = delivery.attempt + 1
        event = delivery.event
        if event["type"] == PUBSUB_PUBLISHED:
            event = _build_pubsub_event(
                PROJECT,
                delivery.topic,
                delivery.body,
                delivery.attributes,
                message_id=delivery.key,
                delivery_attempt=attempt,
                time=event_time(event),
            )
        self._enqueue(
            _Delivery(
                delivery.topic, delivery.key, event, delivery.body, delivery.attributes, attempt
            )
        )

    # Reading what happened
    def results(self) -> list[IngestResult]:
        return [
            parse_model(IngestResult, data, "ingest result")
            for topic, data, _ in self.published
            if topic == Topic.INGEST_RESULTS
        ]

    def submit(
        self,
        dataset: Dataset,
        month: Month,
        run_id: str,
        *,
        time: datetime | None = None,
        body: bytes | None = None,
    ) -> str:
        """Publish an ingest request (or raw ``body``) as a Pub/Sub CloudEvent; returns its key."""
        data = (
            body
            if body is not None
            else IngestRequest(dataset=dataset, month=str(month), run_id=run_id).to_bytes()
        )
        attributes = {"run_id": run_id, "dataset": dataset.value, "month": str(month)}
        event = _build_pubsub_event(PROJECT, Topic.INGEST_REQUESTS, data, attributes, time=time)
        with self._cond:
            self.published.append((Topic.INGEST_REQUESTS.value, data, attributes))
        return self.deliver_event(Topic.INGEST_REQUESTS, event, attributes, data)


# --- crash injection -----------------------------------------------------------------------------


@dataclass
class KillSwitch:
    """Raises :class:`SimulatedCrash` at the ``nth`` time ``point`` is reached (once)."""

    point: str
    nth: int = 1
    seen: int = 0
    fired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, point: str) -> None:
        with self._lock:
            if point != self.point or self.fired:
                return
            self.seen += 1
            if self.seen < self.nth:
                return
            self.fired = True
        raise SimulatedCrash(f"killed {point} (#{self.nth})")


class _KillingWriter:
    def __init__(self, inner: ObjectWriter, switch: KillSwitch) -> None:
        self._inner = inner
        self._switch = switch

    def write(self, chunk: bytes) -> None:
        self._inner.write(chunk)
        self._switch.hit("lake.write")


class KillingLake:
    """The real lake, killed at ``lake.write`` (mid-upload) or ``after lake.commit``."""

    def __init__(self, inner: Lake, switch: KillSwitch) -> None:
        self.inner = inner
        self._switch = switch

    def stat(self, name: str) -> ObjectInfo | None:
        return self.inner.stat(name)

    @contextmanager
    def writer(self, name: str, metadata: Mapping[str, str]) -> Iterator[ObjectWriter]:
        with self.inner.writer(name, metadata) as writer:
            yield _KillingWriter(writer, self._switch)
        self._switch.hit("after lake.commit")

    def read_head(self, name: str, size: int) -> bytes:
        return self.inner.read_head(name, size)

    def open_read(self, name: str) -> AbstractContextManager[BinaryIO]:
        return self.inner.open_read(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)


class KillingWarehouse:
    """The real warehouse, killed ``before X`` or ``after X`` for any of its methods."""

    def __init__(self, inner: Warehouse, switch: KillSwitch) -> None:
        self.inner = inner
        self._switch = switch

    def _around(self, name: str, call: Callable[[], _T]) -> _T:
        self._switch.hit(f"before {name}")
        result = call()
        self._switch.hit(f"after {name}")
        return result

    @property
    def stages_in_final_table(self) -> bool:
        return self.inner.stages_in_final_table

    def ensure_final_table(self, dataset: Dataset) -> None:
        self._around("ensure_final_table", lambda: self.inner.ensure_final_table(dataset))

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        return self._around(
            "create_external_table",
            lambda: self.inner.create_external_table(dataset, month, source, lake),
        )

    def stage(
        self,
        dataset: Dataset,
        month: Month,
        source: ObjectInfo,
        lake: LakeReader,
        context: JobContext,
    ) -> StagingSummary:
        return self._around(
            "stage", lambda: self.inner.stage(dataset, month, source, lake, context)
        )

    def merge_staged(
        self,
        dataset: Dataset,
        month: Month,
        pickup_ranges: Sequence[DateRange],
        include_null_pickup: bool,
        context: JobContext,
        *,
        load: LoadRecord | None = None,
    ) -> int:
        return self._around(
            "merge_staged",
            lambda: self.inner.merge_staged(
                dataset, month, pickup_ranges, include_null_pickup, context, load=load
            ),
        )

    def replace_staged(
        self,
        dataset: Dataset,
        month: Month,
        pickup_ranges: Sequence[DateRange],
        include_null_pickup: bool,
        context: JobContext,
        replacing: Replacement,
        *,
        load: LoadRecord | None = None,
    ) -> tuple[int, int]:
        return self._around(
            "replace_staged",
            lambda: self.inner.replace_staged(
                dataset, month, pickup_ranges, include_null_pickup, context, replacing, load=load
            ),
        )

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        self._around("drop_month_objects", lambda: self.inner.drop_month_objects(dataset, month))

    def query(self, sql: str) -> QueryResult:
        return self.inner.query(sql)

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        self._around("append_run_events", lambda: self.inner.append_run_events(events))

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        return self.inner.run_events(run_id, dataset, since)

    def record_load(self, record: LoadRecord) -> None:
        self._around("record_load", lambda: self.inner.record_load(record))

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        return self.inner.find_load(object_name, generation)

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        return self.inner.loads(dataset)

    def close(self) -> None:
        self.inner.close()


class KillingBus:
    """The bus, killed ``before publish {topic}`` or ``after publish {topic}``."""

    def __init__(self, inner: Bus, switch: KillSwitch) -> None:
        self.inner = inner
        self._switch = switch

    def publish(self, topic: Topic, data: bytes, attributes: Mapping[str, str]) -> str:
        self._switch.hit(f"before publish {topic}")
        message_id = self.inner.publish(topic, data, attributes)
        self._switch.hit(f"after publish {topic}")
        return message_id


class FailingWarehouse(KillingWarehouse):
    """Every ``merge_staged`` fails with ``error`` (a fault that outlives every retry)."""

    def __init__(self, inner: Warehouse, error: Exception) -> None:
        super().__init__(inner, KillSwitch("never"))
        self._error = error

    def merge_staged(
        self,
        dataset: Dataset,
        month: Month,
        pickup_ranges: Sequence[DateRange],
        include_null_pickup: bool,
        context: JobContext,
        *,
        load: LoadRecord | None = None,
    ) -> int:
        raise self._error


# --- the rig ---------------------------------------------------------------------------------


class _TableLister(Protocol):
    def table_names(self) -> list[str]: ...


@dataclass
class Rig:
    """Real adapters (optionally wrapped) driven by a :class:`ChaosBus`.

    ``lake`` / ``warehouse`` are the unwrapped adapters (FolderStore + EmbeddedWarehouse on the
    embedded default, GcsStore + BigQueryWarehouse on the emulators).
    """

    ports: Ports
    bus: ChaosBus
    lake: Lake
    warehouse: Warehouse
    lake_leftovers: Callable[[], list[str]]
    """Temp or partial objects the lake holds (``.tmp`` files; non-``raw/`` objects)."""
    on_close: Callable[[], None] = lambda: None

    @property
    def duckdb(self) -> bool:
        return isinstance(self.warehouse, EmbeddedWarehouse)

    def run(self, workers: int = 1) -> None:
        self.bus.drain(workers)

    def table_names(self) -> list[str]:
        lister = cast(_TableLister, self.warehouse)
        return lister.table_names()

    def table_exists(self, dataset: Dataset) -> bool:
        return dataset.final_table in self.table_names()

    def final_table(self, dataset: Dataset) -> str:
        if self.duckdb:
            return dataset.final_table
        bq = cast(Any, self.warehouse)
        return f"`{bq.project}.{bq.dataset}.{dataset.final_table}`"

    def final_count(self, dataset: Dataset) -> int:
        return self.scalar(f"SELECT count(*) FROM {self.final_table(dataset)}")

    def scalar(self, sql: str) -> int:
        rows = self.warehouse.query(sql).rows
        return int(cast(int, rows[0][0])) if rows else 0

    def id_counts(self, dataset: Dataset, month: Month) -> Counter[tuple[str, ...]]:
        """Rows per reference-id fields (as text) that the final table holds for one file."""
        if not self.table_exists(dataset):
            return Counter()
        layout = dataset.layout
        fields = ", ".join(
            f"coalesce(strftime(\"{n}\", '%Y-%m-%d %H:%M:%S'), '')"
            if n in (layout.pickup, layout.dropoff)
            else f"coalesce(\"{n}\", '')"
            for n in layout.id_columns
        )
        result = self.warehouse.query(
            f"SELECT {fields}, count(*) FROM {dataset.final_table}"
            f" WHERE filename = '{dataset.value}_tripdata_{month}.csv' GROUP BY ALL"
        )
        return Counter(
            {tuple(str(v) for v in row[:-1]): int(cast(int, row[-1])) for row in result.rows}
        )

    def leftovers(self) -> list[str]:
        """Whatever a finished pipeline must not leave: month tables, temp and partial files."""
        found = [
            t
            for t in self.table_names()
            if t.endswith("_ext") or (t.count("_") >= 3 and t[-1].isdigit())
        ]
        return found + self.lake_leftovers()

    def raw_objects(self) -> list[str]:
        return [o.name for o in self.lake.list("raw/")]

    def events(self, run_id: str | None = None) -> list[RunEvent]:
        return self.warehouse.run_events(run_id=run_id)

    def close(self) -> None:
        self.on_close()


def _folder_leftovers(lake: FolderStore) -> Callable[[], list[str]]:
    def leftovers() -> list[str]:
        root = lake.root
        found = [str(p.relative_to(root)) for p in (root / ".tmp").rglob("*")]
        return found + [str(p.relative_to(root)) for p in root.rglob("*.part")]

    return leftovers


def make_rig(
    home: Path,
    source_url: str,
    *,
    copies: int = 1,
    seed: int = 0,
    max_attempts: int = 5,
    wrap_lake: Callable[[Lake], Lake] | None = None,
    wrap_warehouse: Callable[[Warehouse], Warehouse] | None = None,
    wrap_bus: Callable[[Bus], Bus] | None = None,
    **settings: object,
) -> Rig:
    """A pipeline over the real local adapters, optionally wrapped to inject faults."""
    options: dict[str, object] = {
        "home": home,
        "source_url": source_url,
        "duckdb_threads": 1,
        "duckdb_memory_limit": "256MB",
        "http_timeout_seconds": 10.0,
        "max_delivery_attempts": max_attempts,
    }
    options.update(settings)
    config = Settings(**options)  # type: ignore[arg-type]
    bus = ChaosBus(copies=copies, max_attempts=max_attempts, seed=seed)
    lake = FolderStore(home / "lake", on_finalized=bus.announce)
    warehouse = EmbeddedWarehouse.at(
        home / "warehouse.duckdb", memory_limit="256MB", threads=config.duckdb_threads
    )
    ports = Ports(
        settings=config,
        lake=wrap_lake(lake) if wrap_lake else lake,
        warehouse=wrap_warehouse(warehouse) if wrap_warehouse else warehouse,
        bus=wrap_bus(bus) if wrap_bus else bus,
        source=HttpxSource(
            config.http_timeout_seconds, allow_insecure=config.allow_insecure_source
        ),
        locks=ThreadLocks(),
    )
    bus.ports = ports
    return Rig(ports, bus, lake, warehouse, _folder_leftovers(lake), warehouse.close)


class AnnouncingLake:
    """A GCS lake plus the Eventarc stand-in: a committed object announces itself on the bus
    (fake-gcs-server's notifications are Pub/Sub-shaped, not Eventarc CloudEvents)."""

    def __init__(self, inner: Lake, announce: Callable[[ObjectInfo], None]) -> None:
        self.inner = inner
        self._announce = announce

    def stat(self, name: str) -> ObjectInfo | None:
        return self.inner.stat(name)

    @contextmanager
    def writer(self, name: str, metadata: Mapping[str, str]) -> Iterator[ObjectWriter]:
        with self.inner.writer(name, metadata) as writer:
            yield writer
        info = self.inner.stat(name)
        if info is not None:
            self._announce(info)

    def read_head(self, name: str, size: int) -> bytes:
        return self.inner.read_head(name, size)

    def open_read(self, name: str) -> AbstractContextManager[BinaryIO]:
        return self.inner.open_read(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self.inner.list(prefix)


def make_cloud_rig(
    storage_client: Any,
    bigquery_client: Any,
    source_url: str,
    *,
    copies: int = 1,
    seed: int = 0,
    max_attempts: int = 5,
    wrap_lake: Callable[[Lake], Lake] | None = None,
    wrap_warehouse: Callable[[Warehouse], Warehouse] | None = None,
    wrap_bus: Callable[[Bus], Bus] | None = None,
    **settings: object,
) -> Rig:
    """The same pipeline over GcsStore (fake-gcs-server) and BigQueryWarehouse (emulator,
    load-mode staging: the emulator has no external tables)."""
    from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse
    from taxi_pipeline.adapters.gcs.store import GcsStore
    from taxi_pipeline.settings import StagingMode

    options: dict[str, object] = {
        "source_url": source_url,
        "http_timeout_seconds": 10.0,
        "max_delivery_attempts": max_attempts,
        "staging_mode": StagingMode.LOAD,
        "upload_chunk_mib": 1,
    }
    options.update(settings)
    config = Settings(**options)  # type: ignore[arg-type]
    suffix = uuid.uuid4().hex[:10]
    bucket = storage_client.create_bucket(f"reliability-{suffix}")
    dataset = f"reliability_{suffix}"
    bigquery_client.create_dataset(dataset)
    bus = ChaosBus(copies=copies, max_attempts=max_attempts, seed=seed)
    gcs = GcsStore(bucket.name, config, client=storage_client)
    lake: Lake = AnnouncingLake(gcs, bus.announce)
    warehouse = BigQueryWarehouse(bigquery_client.project, dataset, config, client=bigquery_client)
    ports = Ports(
        settings=config,
        lake=wrap_lake(lake) if wrap_lake else lake,
        warehouse=wrap_warehouse(warehouse) if wrap_warehouse else warehouse,
        bus=wrap_bus(bus) if wrap_bus else bus,
        source=HttpxSource(
            config.http_timeout_seconds, allow_insecure=config.allow_insecure_source
        ),
        locks=ThreadLocks(),
    )
    bus.ports = ports

    def leftovers() -> list[str]:
        return [o.name for o in gcs.list("") if not o.name.startswith(("raw/", "locks/"))]

    def close() -> None:
        bigquery_client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)

    return Rig(ports, bus, gcs, warehouse, leftovers, close)


def file_id_counts(path: Path, dataset: Dataset) -> Counter[tuple[str, ...]]:
    """The oracle, independent of the pipeline: rows per reference-id fields in the file."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        ids = dataset.layout.id_columns
        return Counter(tuple(row[c] for c in ids) for row in reader)


def gzip_bytes(header: str, lines: Sequence[str]) -> bytes:
    """A small hand-made ``.csv.gz`` in memory (no timestamp: equal input, equal bytes)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buffer, mode="wb", mtime=0) as gz:
        gz.write((header + "\n").encode())
        for line in lines:
            gz.write((line + "\n").encode())
    return buffer.getvalue()


def assert_exact(rig: Rig, generated: GeneratedFile) -> None:
    """The final table holds every row of the file exactly once: same count, same ids.

    On DuckDB the rows per reference-id fields are compared with the file's; on the BigQuery
    emulator the row count and the distinct-id count (its dialect differs).
    """
    dataset, month = generated.dataset, generated.month
    expected = file_id_counts(generated.path, dataset)
    where = f"WHERE filename = '{dataset.value}_tripdata_{month}.csv'"
    table = rig.final_table(dataset)
    assert rig.scalar(f"SELECT count(*) FROM {table} {where}") == generated.rows
    distinct = rig.scalar(f"SELECT count(DISTINCT unique_row_id) FROM {table} {where}")
    assert distinct == len(expected)
    if rig.duckdb:
        assert rig.id_counts(dataset, month) == expected


RigFactory = Callable[..., Rig]
JsonLog = Callable[[], list[dict[str, Any]]]
