"""Reliability rig (tests/reliability): the real composition root with faults injected.

A :class:`Rig` is what ``bootstrap.build_local`` (the embedded default) or
``bootstrap.build_in_process`` (GCS and BigQuery on their emulators) wires, with a
:class:`~taxi_pipeline.adapters.faults.wrappers.Faults` around its adapters: the real in-process
bus (every message and lake event delivered ``copies`` times, in an order drawn from ``seed``,
redelivered with ``deliveryAttempt`` counting up until the dead letter), the real handlers, and
the crash, failure or lie the test asks for. :class:`RigBus` only puts messages on that bus the
way Pub/Sub would and reads what happened.
"""

from __future__ import annotations

import csv
import gzip
import io
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

from cloudevents.http import CloudEvent

from taxi_pipeline.adapters.embedded import EmbeddedWarehouse
from taxi_pipeline.adapters.faults.wrappers import Faults, FaultyLake, FaultyWarehouse
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.memory.bus import InProcessBus
from taxi_pipeline.bootstrap import (
    LAKE_EVENTS_TOPIC,
    LocalPipeline,
    build_in_process,
    build_local,
)
from taxi_pipeline.devkit.generator import GeneratedFile
from taxi_pipeline.devkit.source_server import SourceServer
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import IngestRequest, IngestResult, Topic, parse_model
from taxi_pipeline.domain.runs import RunEvent
from taxi_pipeline.pipeline.cloudevents import build_pubsub_event
from taxi_pipeline.pipeline.ports import Lake, Ports, Warehouse
from taxi_pipeline.settings import Settings, StagingMode

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


PROJECT = "reliability"
LAKE_EVENTS = LAKE_EVENTS_TOPIC
"""The in-process bus's topic of the lake's object-finalized events (Eventarc's part)."""


@dataclass
class RigBus:
    """The pipeline's in-process bus, seen as Pub/Sub's user sees it: what to publish, what was
    delivered and what escaped (the counts are the :class:`Faults`')."""

    bus: InProcessBus
    faults: Faults

    @property
    def published(self) -> list[tuple[str, bytes, dict[str, str]]]:
        return self.bus.published

    @property
    def deliveries(self) -> Counter[str]:
        """Deliveries per message key (message id / object event id)."""
        return self.faults.deliveries

    @property
    def crashes(self) -> list[str]:
        return self.faults.crashes

    @property
    def failures(self) -> list[str]:
        return self.faults.failures

    def publish(self, topic: Topic, data: bytes, attributes: dict[str, str]) -> str:
        return self.bus.publish(topic, data, attributes)

    def deliver_event(
        self,
        topic: str,
        event: CloudEvent,
        attributes: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> str:
        """Queue a ready-made CloudEvent (``copies`` times); returns its delivery key. ``body``
        is the Pub/Sub message body a redelivery re-wraps (default: the event data)."""
        self.bus.deliver(topic, event, attributes or {}, body)
        return str(event["id"])

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
        event = build_pubsub_event(PROJECT, Topic.INGEST_REQUESTS, data, attributes, time=time)
        return self.deliver_event(Topic.INGEST_REQUESTS, event, attributes, data)

    def results(self) -> list[IngestResult]:
        return [
            parse_model(IngestResult, data, "ingest result")
            for topic, data, _ in self.published
            if topic == Topic.INGEST_RESULTS
        ]


class _TableLister(Protocol):
    def table_names(self) -> list[str]: ...


@dataclass
class Rig:
    """A pipeline from the composition root, its faults, and what to read it with.

    ``lake`` / ``warehouse`` are the adapters without the faults (FolderStore +
    EmbeddedWarehouse on the embedded default, GcsStore + BigQueryWarehouse on the emulators).
    """

    pipeline: LocalPipeline
    faults: Faults
    lake_leftovers: Callable[[], list[str]]
    """Temp or partial objects the lake holds (``.tmp`` files; non-``raw/`` objects)."""
    on_close: Callable[[], None] = lambda: None

    @property
    def ports(self) -> Ports:
        return self.pipeline.ports

    @property
    def bus(self) -> RigBus:
        return RigBus(self.pipeline.bus, self.faults)

    @property
    def lake(self) -> Lake:
        lake = self.pipeline.ports.lake
        return lake.inner if isinstance(lake, FaultyLake) else lake

    @property
    def warehouse(self) -> Warehouse:
        warehouse = self.pipeline.ports.warehouse
        return warehouse.inner if isinstance(warehouse, FaultyWarehouse) else warehouse

    @property
    def duckdb(self) -> bool:
        return isinstance(self.warehouse, EmbeddedWarehouse)

    def run(self, workers: int = 1) -> None:
        self.pipeline.drain(workers)

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
        try:
            self.pipeline.close()
        finally:
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
    faults: Faults | None = None,
    max_attempts: int = 5,
    **settings: object,
) -> Rig:
    """The embedded default as ``build_local`` wires it in ``home``, with ``faults`` (none
    asked: deliveries shuffled from seed 0, each once)."""
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
    faults = faults or Faults(seed=0)
    rig = Rig(build_local(config, faults=faults), faults, lambda: [])
    lake = rig.lake
    assert isinstance(lake, FolderStore)
    rig.lake_leftovers = _folder_leftovers(lake)
    return rig


def make_cloud_rig(
    storage_client: Any,
    bigquery_client: Any,
    bigquery_endpoint: str,
    source_url: str,
    *,
    faults: Faults | None = None,
    max_attempts: int = 5,
    **settings: object,
) -> Rig:
    """The same over GcsStore (fake-gcs-server, ``STORAGE_EMULATOR_HOST`` set) and
    BigQueryWarehouse (emulator, load-mode staging: the emulator has no external tables), as
    ``build_in_process`` wires them."""
    suffix = uuid.uuid4().hex[:10]
    bucket = storage_client.create_bucket(f"reliability-{suffix}")
    dataset = f"reliability_{suffix}"
    bigquery_client.create_dataset(dataset)
    options: dict[str, object] = {
        "source_url": source_url,
        "lake_url": f"gs://{bucket.name}",
        "warehouse_url": f"bigquery://{bigquery_client.project}/{dataset}",
        "bigquery_api_endpoint": bigquery_endpoint,
        "gcp_project": bigquery_client.project,
        "http_timeout_seconds": 10.0,
        "max_delivery_attempts": max_attempts,
        "staging_mode": StagingMode.LOAD,
        "upload_chunk_mib": 1,
    }
    options.update(settings)
    config = Settings(**options)  # type: ignore[arg-type]
    faults = faults or Faults(seed=0)
    rig = Rig(build_in_process(config, faults=faults), faults, lambda: [])
    gcs = rig.lake

    def leftovers() -> list[str]:
        return [o.name for o in gcs.list("") if not o.name.startswith(("raw/", "locks/"))]

    def close() -> None:
        bigquery_client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)

    rig.lake_leftovers, rig.on_close = leftovers, close
    return rig


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
