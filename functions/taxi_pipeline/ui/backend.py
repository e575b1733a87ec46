"""Where the web UI reads the history and sends the runs it starts: locally or to the cloud.

- Local (a ``duckdb://`` warehouse, or a ``postgresql://`` one without a ``pubsub://`` bus
  URL): the UI process *is* the embedded pipeline. It builds the
  :class:`~taxi_pipeline.bootstrap.LocalPipeline`, reads the history through its warehouse (DuckDB
  allows one process per file) and runs submitted requests on a background thread, so the pages
  show them QUEUED and RUNNING while they go.
- Cloud (a ``bigquery://`` warehouse, or a ``postgresql://`` one with a ``pubsub://`` bus URL:
  ``deploy.sh --with-ui --warehouse postgres``): it reads the warehouse's history and publishes
  requests to Pub/Sub ``ingest-requests`` through ``bootstrap.build_bus``, as ``backfill --cloud``
  does. It writes nothing to the warehouse (on BigQuery its service account only reads): a run
  shows once the download function records it.

Restart and cancel: :meth:`Orchestrator.actions` names what a run offers; the pages draw a button
for each and ``POST /api/runs/{id}/actions/{name}`` calls :meth:`Orchestrator.perform`. Neither
orchestrator offers any yet; the local orchestrator's cancel and restart plug in here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Protocol

from taxi_pipeline.bootstrap import (
    LocalPipeline,
    build_bus,
    build_local,
    build_warehouse,
    warehouse_is_cloud,
)
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import ACTIVE, Run
from taxi_pipeline.domain.messages import IngestRequest, Topic
from taxi_pipeline.domain.runs import RunIdentity, new_run_id
from taxi_pipeline.local.backfill import BackfillPlan, publish_backfill
from taxi_pipeline.local.control import RESTARTABLE, cancel_run, current_run, restart_run
from taxi_pipeline.logs import redact
from taxi_pipeline.pipeline.ports import Bus, Warehouse
from taxi_pipeline.settings import Settings
from taxi_pipeline.ui.history_cache import HistoryCache

log = logging.getLogger(__name__)

UI_LABELS: Final = {"trigger": "manual", "via": "ui"}
"""Labels of every run the UI starts (a backfill adds its own)."""


@dataclass(frozen=True)
class RunAction:
    """A button on a run's page (restart, cancel, ...)."""

    name: str
    title: str


class Orchestrator(Protocol):
    """What the UI needs to start runs (and, where offered, act on them)."""

    @property
    def mode(self) -> str:
        """``local`` or ``cloud``: shown in the page header."""

    @property
    def submitted_state(self) -> str:
        """What a submitted run is at once: ``QUEUED`` (recorded) or ``PUBLISHED``."""

    def submit_run(self, dataset: Dataset, month: Month) -> str:
        """Start one run; returns its run id."""

    def submit_backfill(self, plan: BackfillPlan) -> dict[Month, str]:
        """Start a run per month of ``plan``; returns the run ids."""

    def actions(self, run: Run) -> Sequence[RunAction]:
        """What can be done to ``run`` now (none: no buttons)."""

    def perform(self, action: str, run: Run) -> str:
        """Do ``action`` to ``run``; returns what to tell the user. Only names from
        :meth:`actions` reach here."""

    def close(self) -> None:
        """Stop taking runs; release what the orchestrator holds."""


class LocalOrchestrator:
    """The embedded pipeline plus one background thread that processes its bus."""

    mode = "local"
    submitted_state = "QUEUED"

    def __init__(self, pipeline: LocalPipeline, *, workers: int) -> None:
        self.pipeline = pipeline
        self.workers = workers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ui-runs", daemon=True)
        self._thread.start()

    def submit_run(self, dataset: Dataset, month: Month) -> str:
        run_id = self.pipeline.submit(dataset, month, labels=UI_LABELS)
        self._wake.set()
        return run_id

    def submit_backfill(self, plan: BackfillPlan) -> dict[Month, str]:
        labels = plan.labels | {"via": UI_LABELS["via"]}
        run_ids = {
            month: self.pipeline.submit(plan.dataset, month, labels=labels) for month in plan.months
        }
        self._wake.set()
        return run_ids

    def actions(self, run: Run) -> Sequence[RunAction]:
        """Cancel for a queued or running run, restart for a failed, cancelled or abandoned one
        (the same rules as ``runs cancel`` / ``runs restart``), judged on the run as the home's
        history derives it now, heartbeats included."""
        history = self.pipeline.history
        if history is None:
            return ()
        current = current_run(history, run.run_id, history.liveness())
        if current.state in ACTIVE:
            return (RunAction("cancel", "Cancel"),)
        if current.state in RESTARTABLE:
            return (RunAction("restart", "Restart"),)
        return ()

    def perform(self, action: str, run: Run) -> str:
        history = self.pipeline.history
        if history is None:
            raise LookupError(f"{action!r} is not offered for run {run.run_id}")
        if action == "cancel":
            outcome = cancel_run(history, run.run_id, history.liveness(), history.process)
            # A run of this process stops at once; another process's stops when it polls.
            self.pipeline.cancel(run.run_id, "cancelled from the web UI", record=False)
            if not outcome.requested:
                return f"run {run.run_id} had already ended ({outcome.run.state.value})"
            return f"cancel of {run.run_id} requested"
        if action == "restart":
            new_run = restart_run(self.pipeline, history, run.run_id, history.liveness())
            self._wake.set()
            return f"restarted as {new_run}"
        raise LookupError(f"{action!r} is not offered for run {run.run_id}")

    def _work(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            # Cleared before the drain: a submit during it wakes the next round.
            self._wake.clear()
            try:
                self.pipeline.drain(self.workers)
            except Exception:
                # A failing step is recorded by the handlers; this is a bug in the loop itself.
                log.exception("the UI's run worker stopped a drain")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; the warehouse is closed only once no run is in flight."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Closing DuckDB under a running merge would fail it; the process ends anyway.
            log.warning("runs still in flight at shutdown are left as they are")
            return
        self.pipeline.close()


class CloudOrchestrator:
    """Publishes requests to ``ingest-requests``; reads nothing and writes no history."""

    mode = "cloud"
    submitted_state = "PUBLISHED"

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def submit_run(self, dataset: Dataset, month: Month) -> str:
        run = RunIdentity(new_run_id(dataset, month), dataset, month, UI_LABELS)
        request = IngestRequest(
            dataset=dataset, month=str(month), run_id=run.run_id, labels=UI_LABELS
        )
        self.bus.publish(Topic.INGEST_REQUESTS, request.to_bytes(), run.attributes())
        return run.run_id

    def submit_backfill(self, plan: BackfillPlan) -> dict[Month, str]:
        return publish_backfill(self.bus, plan, extra_labels={"via": UI_LABELS["via"]})

    def actions(self, run: Run) -> Sequence[RunAction]:
        return ()

    def perform(self, action: str, run: Run) -> str:
        raise LookupError(f"{action!r} is not offered for run {run.run_id}")

    def close(self) -> None:
        """Nothing to release: the publisher is the process's own (``PubSubBus``)."""


@dataclass
class UiBackend:
    """The history the pages read and the orchestrator the forms submit to."""

    history: HistoryCache
    orchestrator: Orchestrator
    warehouse_url: str
    warehouse: Warehouse

    def close(self) -> None:
        self.orchestrator.close()
        if isinstance(self.orchestrator, CloudOrchestrator):
            # Locally the orchestrator's pipeline owns (and has closed) the warehouse.
            self.warehouse.close()


# BigQuery: DML inserts may commit well after their lines were stamped, and every refresh is a
# billed query of about a second, so read back further and less often than DuckDB.
_CLOUD_OVERLAP: Final = timedelta(minutes=10)
_CLOUD_MIN_INTERVAL: Final = 5.0
_LOCAL_OVERLAP: Final = timedelta(minutes=2)
_LOCAL_MIN_INTERVAL: Final = 0.25


def open_backend(settings: Settings) -> UiBackend:
    """Local pipeline or cloud publisher, by the warehouse URL (see the module docstring)."""
    url = redact(settings.resolved_warehouse_url)  # shown on every page
    if warehouse_is_cloud(settings):
        warehouse = build_warehouse(settings)
        try:
            bus = build_bus(settings)
        except Exception:
            warehouse.close()
            raise
        cache = HistoryCache(warehouse, overlap=_CLOUD_OVERLAP, min_interval=_CLOUD_MIN_INTERVAL)
        return UiBackend(cache, CloudOrchestrator(bus), url, warehouse)
    pipeline = build_local(settings)
    cache = HistoryCache(
        pipeline.ports.warehouse, overlap=_LOCAL_OVERLAP, min_interval=_LOCAL_MIN_INTERVAL
    )
    orchestrator = LocalOrchestrator(pipeline, workers=settings.max_concurrent_runs_per_dataset)
    return UiBackend(cache, orchestrator, url, pipeline.ports.warehouse)
