"""Backfills: replay a range of months, locally with bounded concurrency or onto Pub/Sub.

Every run of a backfill is labelled ``trigger=manual, backfill=true, backfill_id=<id>``.
Re-running a backfill over loaded months is safe and cheap: the download is skipped when the
verified file is already in the lake, and the merge finds the object generation in
``pipeline_loads`` and inserts nothing. ``only_missing`` goes further and does not even start
runs for months that have a completed load (Kestra #13873).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from taxi_pipeline.domain.datasets import Dataset, Month, Upstream, month_range
from taxi_pipeline.domain.messages import IngestRequest, IngestResult, RunState, Topic
from taxi_pipeline.domain.runs import RunIdentity, new_run_id
from taxi_pipeline.local.admission import Runner
from taxi_pipeline.pipeline.ports import Bus, Warehouse
from taxi_pipeline.pipeline.recorder import queued_event


class ResultFeed(Protocol):
    """Where a local run's ``IngestResult`` can be observed (the in-process bus)."""

    def listen(
        self, topic: Topic | str, listener: Callable[[bytes, Mapping[str, str]], None]
    ) -> None: ...


class PeakGauge(Protocol):
    """The most runs of each dataset that held a slot at once (``admission.RunGate``)."""

    @property
    def peak(self) -> Mapping[Dataset, int]: ...


class LocalRunner(Runner, Protocol):
    """What a local backfill needs from the pipeline (``bootstrap.LocalPipeline`` has it)."""

    @property
    def bus(self) -> ResultFeed: ...

    @property
    def gate(self) -> PeakGauge: ...


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill will run, and what it leaves alone."""

    dataset: Dataset
    months: tuple[Month, ...]
    """Months to run, oldest first."""
    already_loaded: tuple[Month, ...] = ()
    """Months skipped by ``only_missing``."""
    backfill_id: str = field(default_factory=lambda: secrets.token_hex(4))
    source: Upstream | None = None
    """Where its runs download from (``None``: ``TAXI_PIPELINE_SOURCE``, ``auto``)."""

    @property
    def labels(self) -> dict[str, str]:
        return {"trigger": "manual", "backfill": "true", "backfill_id": self.backfill_id}


def plan_backfill(
    dataset: Dataset,
    first: Month,
    last: Month,
    *,
    only_missing: bool = False,
    warehouse: Warehouse | None = None,
    today: datetime | None = None,
    source: Upstream | None = None,
) -> BackfillPlan:
    """The months ``first..last``; raises ``ValueError`` for an empty or future range."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    now = today or datetime.now(UTC)
    current = Month(now.year, now.month)
    if current < last:
        raise ValueError(f"--to {last} is in the future (this is {current})")
    months = month_range(first, last)
    loaded: set[Month] = set()
    if only_missing:
        if warehouse is None:
            raise ValueError("only_missing needs the warehouse")
        loaded = {load.month for load in warehouse.loads(dataset)}
    return BackfillPlan(
        dataset,
        tuple(m for m in months if m not in loaded),
        tuple(m for m in months if m in loaded),
        source=source,
    )


@dataclass
class BackfillReport:
    """The outcome of a local backfill: one result per run (None if no result came back)."""

    plan: BackfillPlan
    run_ids: dict[Month, str]
    results: dict[str, IngestResult]
    peak_in_flight: int

    def state_of(self, month: Month) -> RunState:
        result = self.results.get(self.run_ids[month])
        return result.state if result else RunState.FAILED

    def count(self, state: RunState) -> int:
        return sum(1 for month in self.run_ids if self.state_of(month) is state)

    @property
    def rows_inserted(self) -> int:
        return sum(r.rows_inserted or 0 for r in self.results.values())


def run_backfill(
    pipeline: LocalRunner,
    plan: BackfillPlan,
    *,
    workers: int,
    on_result: Callable[[IngestResult], None] | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> BackfillReport:
    """Submit every month (the pipeline's gate admits N per dataset) and process the bus.

    ``on_result`` is called from a worker thread as each run ends (the CLI's progress bar).
    """
    labels = plan.labels | dict(extra_labels or {})
    mine: set[str] = set()
    results: dict[str, IngestResult] = {}
    lock = threading.Lock()

    def collect(data: bytes, attributes: Mapping[str, str]) -> None:
        run_id = attributes.get("run_id", "")
        with lock:
            if run_id not in mine or run_id in results:
                return
            result = IngestResult.model_validate_json(data)
            results[run_id] = result
        if on_result is not None:
            on_result(result)

    pipeline.bus.listen(Topic.INGEST_RESULTS, collect)
    run_ids: dict[Month, str] = {}
    for month in plan.months:
        run_id = new_run_id(plan.dataset, month)
        with lock:
            mine.add(run_id)
        run_ids[month] = pipeline.submit(
            plan.dataset, month, labels=labels, run_id=run_id, source=plan.source
        )
    pipeline.drain(workers)
    return BackfillReport(plan, run_ids, results, pipeline.gate.peak.get(plan.dataset, 0))


def publish_backfill(
    bus: Bus,
    plan: BackfillPlan,
    *,
    warehouse: Warehouse | None = None,
    on_published: Callable[[Month, str], None] | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[Month, str]:
    """``--cloud``: one ``ingest-requests`` message per month, labelled ``backfill=true``.

    The run ids travel in the message body and attributes; with ``warehouse`` each run is
    recorded QUEUED first, so ``taxi-pipeline runs`` lists it before a function picks it up.
    """
    labels = plan.labels | dict(extra_labels or {})
    run_ids: dict[Month, str] = {}
    for month in plan.months:
        run = RunIdentity(new_run_id(plan.dataset, month), plan.dataset, month, labels)
        request = IngestRequest(
            dataset=plan.dataset,
            month=str(month),
            run_id=run.run_id,
            labels=labels,
            source=plan.source,
        )
        if warehouse is not None:
            warehouse.append_run_events([queued_event(run)])
        bus.publish(Topic.INGEST_REQUESTS, request.to_bytes(), run.attributes())
        run_ids[month] = run.run_id
        if on_published is not None:
            on_published(month, run.run_id)
    return run_ids
