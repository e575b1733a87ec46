"""The composition root: the one place that picks adapters (by URL) and wires the handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from taxi_pipeline.adapters.memory.bus import InProcessBus
from taxi_pipeline.adapters.memory.locks import ThreadLocks
from taxi_pipeline.domain.datasets import Dataset, Month, parse_object_name
from taxi_pipeline.domain.messages import IngestRequest, IngestResult, RunState, Topic, parse_model
from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.local.admission import RunGate, Ticket
from taxi_pipeline.logs import redact
from taxi_pipeline.pipeline import handlers
from taxi_pipeline.pipeline.cloudevents import build_gcs_event
from taxi_pipeline.pipeline.ports import (
    Bus,
    Lake,
    NullProgress,
    ObjectInfo,
    Ports,
    Progress,
    Source,
    Warehouse,
)
from taxi_pipeline.pipeline.recorder import new_run_id, queued_event
from taxi_pipeline.pipeline.steps.common import run_attributes
from taxi_pipeline.pipeline.steps.download import check_source_base
from taxi_pipeline.settings import LogFormat, Settings

LAKE_EVENTS_TOPIC = "lake-object-finalized"
"""In-process stand-in for the GCS trigger (Eventarc) of the register function."""


@dataclass
class LocalPipeline:
    """The embedded default: folder lake, DuckDB warehouse, in-process bus, same handlers."""

    ports: Ports
    bus: InProcessBus
    results: dict[str, IngestResult] = field(default_factory=dict)
    gate: RunGate = field(default_factory=lambda: RunGate(1_000_000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(
        self,
        dataset: Dataset,
        month: Month,
        *,
        labels: Mapping[str, str] | None = None,
        force: bool = False,
        run_id: str | None = None,
    ) -> str:
        """Record the run QUEUED and put its request on the bus once the dataset has a free
        slot (:class:`RunGate`); returns its run id."""
        run_id = run_id or new_run_id(dataset, month)
        request = IngestRequest(
            dataset=dataset, month=str(month), run_id=run_id, labels=dict(labels or {}), force=force
        )
        self.ports.warehouse.append_run_events(
            [queued_event(run_id, dataset, month, request.labels)]
        )

        def publish() -> None:
            self.bus.publish(
                Topic.INGEST_REQUESTS,
                request.to_bytes(),
                run_attributes(run_id, dataset, month, request.labels),
            )

        self.gate.offer(Ticket(run_id, dataset, publish))
        return run_id

    def drain(self, workers: int = 1) -> None:
        """Process the bus until it is idle and no request waits for a slot."""
        while True:
            held = self.gate.holding()
            self.bus.drain(workers)
            # The bus was idle: a run that held its slot since before has ended unseen.
            if not self.gate.release(held) and not self.gate.waiting():
                return

    def _collect(self, data: bytes, attributes: Mapping[str, str]) -> None:
        result = parse_model(IngestResult, data, "ingest result")
        with self._lock:
            earlier = self.results.get(result.run_id)
            # A redelivered merge repeats a loaded run's result with fewer figures: keep the first.
            if earlier is None or earlier.state is not RunState.SUCCESS:
                self.results[result.run_id] = result
        self.gate.done(result.run_id, result.dataset)

    def close(self) -> None:
        self.ports.close()


def _file_path(url: str, what: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ConfigurationError(f"{what} must be a file:// URL, got {url!r}")
    return Path(unquote(parts.path))


def build_local(settings: Settings, progress: Progress | None = None) -> LocalPipeline:
    """Wire the embedded default. Lake and warehouse may still be chosen by URL."""
    from taxi_pipeline.adapters.folder.store import FolderStore

    check_source_base(settings)
    bus = InProcessBus(project="local", max_attempts=settings.max_delivery_attempts)
    lake_url = settings.resolved_lake_url
    if not lake_url.startswith("file://"):
        raise ConfigurationError(
            f"the embedded default needs a file:// lake, got {lake_url!r}; the cloud functions"
            " use gs:// lakes"
        )

    def announce(info: ObjectInfo) -> None:
        attributes: dict[str, str] = {"object": info.name}
        try:
            dataset, month = parse_object_name(info.name)
            attributes |= {"dataset": dataset.value, "month": str(month)}
        except ValueError:
            pass
        if "run_id" in info.metadata:
            attributes["run_id"] = info.metadata["run_id"]
        bus.deliver(LAKE_EVENTS_TOPIC, build_gcs_event(info), attributes)

    lake = FolderStore(_file_path(lake_url, "TAXI_PIPELINE_LAKE_URL"), on_finalized=announce)
    ports = Ports(
        settings=settings,
        lake=lake,
        warehouse=build_warehouse(settings),
        bus=bus,
        source=_http_source(settings),
        locks=ThreadLocks(),
        progress=progress or NullProgress(),
    )
    pipeline = LocalPipeline(ports, bus, gate=RunGate(settings.max_concurrent_runs_per_dataset))
    bus.subscribe(Topic.INGEST_REQUESTS, lambda event: handlers.handle_ingest_request(event, ports))
    bus.subscribe(LAKE_EVENTS_TOPIC, lambda event: handlers.handle_object_finalized(event, ports))
    bus.subscribe(Topic.MERGE_REQUESTS, lambda event: handlers.handle_merge_request(event, ports))
    bus.subscribe(Topic.DEAD_LETTER, lambda event: handlers.handle_dead_letter(event, ports))
    bus.listen(Topic.INGEST_RESULTS, pipeline._collect)
    return pipeline


def build_warehouse(settings: Settings, *, read_only: bool = False) -> Warehouse:
    """The warehouse named by ``TAXI_PIPELINE_WAREHOUSE_URL``; ``read_only``: an existing one,
    opened for reading without creating anything (DuckDB: no file, no folder, no tables)."""
    url = settings.resolved_warehouse_url
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        from taxi_pipeline.adapters.postgres.warehouse import PostgresWarehouse

        password = settings.warehouse_password
        return PostgresWarehouse.from_url(
            url,
            password=password.get_secret_value() if password else None,
            read_only=read_only,
        )
    if scheme == "duckdb":
        from taxi_pipeline.adapters.duckdb.warehouse import DuckDbWarehouse

        return DuckDbWarehouse.from_url(
            url,
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            read_only=read_only,
        )
    if scheme == "bigquery":
        from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse

        return BigQueryWarehouse.from_url(url, settings, client=_bigquery_emulator_client(settings))
    raise ConfigurationError(
        f"unknown warehouse URL scheme in {redact(url)!r}"
        " (use duckdb://, bigquery:// or postgresql://)"
    )


def _bigquery_emulator_client(settings: Settings) -> Any:
    """A client aimed at ``bigquery_api_endpoint`` (an emulator); ``None``: the default client."""
    endpoint = settings.bigquery_api_endpoint
    if not endpoint:
        return None
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    project = urlsplit(settings.resolved_warehouse_url).netloc
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
        location=settings.bigquery_location,
    )


def build_lake(settings: Settings) -> Lake:
    """The lake named by ``TAXI_PIPELINE_LAKE_URL`` (no event wiring: for reading)."""
    from taxi_pipeline.adapters.folder.store import FolderStore

    url = settings.resolved_lake_url
    if url.startswith("file://"):
        return FolderStore(_file_path(url, "TAXI_PIPELINE_LAKE_URL"))
    if url.startswith("gs://"):
        from taxi_pipeline.adapters.gcs.store import GcsStore

        return GcsStore.from_url(url, settings)
    raise ConfigurationError(f"unknown lake URL scheme in {url!r} (use file:// or gs://)")


_cloud_ports: Ports | None = None
_cloud_lock = threading.Lock()


def cloud_ports() -> Ports:
    """The ports of a Cloud Run function: built on the first event, then cached per instance.

    Nothing here runs at import time, so ``import main`` stays fast (cold starts).
    """
    global _cloud_ports
    with _cloud_lock:
        if _cloud_ports is None:
            from taxi_pipeline.logs import configure_logging

            try:
                settings = Settings()
                configure_logging(settings.log_format, settings.log_level)
                _cloud_ports = build_cloud(settings)
            except Exception as exc:
                # Every event fails the same way until the function is redeployed: they are
                # redelivered (kept, not dropped) and this line reaches a person through the
                # failed-run alert, which a bare crash outside the handlers would not.
                configure_logging(LogFormat.JSON)
                logging.getLogger(__name__).error(
                    "the function cannot start: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"alert": handlers.ALERT_LABEL},
                )
                raise
        return _cloud_ports


def build_cloud(settings: Settings) -> Ports:
    """GCS lake, BigQuery warehouse, Pub/Sub bus (or whatever the URLs name)."""
    from taxi_pipeline.adapters.gcs.store import GcsLocks, GcsStore

    check_source_base(settings)
    lake = build_lake(settings)
    warehouse = build_warehouse(settings)
    locks = GcsLocks(lake) if isinstance(lake, GcsStore) else ThreadLocks()
    return Ports(
        settings=settings,
        lake=lake,
        warehouse=warehouse,
        bus=build_bus(settings),
        source=_http_source(settings),
        locks=locks,
    )


def build_bus(settings: Settings) -> Bus:
    """The cloud functions' bus named by ``TAXI_PIPELINE_BUS_URL`` (default: Pub/Sub)."""
    url = settings.bus_url
    if url is None:
        project = settings.gcp_project or _project_of(settings.resolved_warehouse_url)
        url = f"pubsub://{project}"
    parts = urlsplit(url)
    if parts.scheme == "pubsub" and parts.netloc and parts.path in ("", "/"):
        from taxi_pipeline.adapters.pubsub.bus import PubSubBus

        return PubSubBus(parts.netloc)
    if parts.scheme == "memory":
        return InProcessBus(project=parts.netloc or "local")
    raise ConfigurationError(f"unknown bus URL {url!r} (use pubsub://project or memory://)")


def _http_source(settings: Settings) -> Source:
    # Imported here: httpx pulls in its CLI's dependencies (~0.1 s), which cold starts skip.
    from taxi_pipeline.adapters.http.source import HttpxSource

    return HttpxSource(settings.http_timeout_seconds, allow_insecure=settings.allow_insecure_source)


def reset_cloud_ports() -> None:
    """Forget the cached cloud ports (closing the warehouse): tests that change settings."""
    global _cloud_ports
    with _cloud_lock:
        if _cloud_ports is not None:
            _cloud_ports.close()
        _cloud_ports = None


def _project_of(warehouse_url: str) -> str:
    parts = urlsplit(warehouse_url)
    if parts.scheme != "bigquery" or not parts.netloc:
        raise ConfigurationError(
            "set TAXI_PIPELINE_GCP_PROJECT (or a bigquery://project/dataset warehouse URL)"
        )
    return parts.netloc
