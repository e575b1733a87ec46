"""What the steps share: the invocation context and publishing the next message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month, Upstream, upstream_of_object
from taxi_pipeline.domain.messages import (
    IngestResult,
    MergeRequest,
    RunState,
    Topic,
    labels_to_attributes,
)
from taxi_pipeline.errors import SourceConflict
from taxi_pipeline.pipeline.ports import LoadLedger, LoadRecord, ObjectInfo, Ports

UPSTREAM_NAMES: Final = {
    Upstream.MIRROR: "the DataTalksClub mirror",
    Upstream.TLC: "the TLC",
}


@dataclass
class Invocation:
    """What is known about the run an event belongs to; filled in as the event is parsed.

    The entry point's error handling reads it to record a failure against the right run.
    """

    step: str
    attempt: int = 1
    run_id: str | None = None
    dataset: Dataset | None = None
    month: Month | None = None
    labels: dict[str, str] = field(default_factory=dict)
    delivery_id: str = ""
    """The identity of the delivered message or object (the same on every redelivery)."""


def run_attributes(
    run_id: str, dataset: Dataset, month: Month, labels: Mapping[str, str]
) -> dict[str, str]:
    """Pub/Sub attributes that carry the run's identity along the chain."""
    return {
        "run_id": run_id,
        "dataset": dataset.value,
        "month": str(month),
        **labels_to_attributes(labels),
    }


def request_merge(
    ports: Ports,
    run_id: str,
    dataset: Dataset,
    month: Month,
    source: ObjectInfo,
    labels: Mapping[str, str],
    *,
    force: bool = False,
    replace: bool = False,
) -> None:
    """Hand a verified lake object over to the merge step (``merge-requests``)."""
    request = MergeRequest(
        dataset=dataset,
        month=str(month),
        run_id=run_id,
        object_name=source.name,
        generation=source.generation,
        labels=dict(labels),
        force=force,
        replace=replace,
    )
    ports.bus.publish(
        Topic.MERGE_REQUESTS, request.to_bytes(), run_attributes(run_id, dataset, month, labels)
    )


def publish_result(ports: Ports, result: IngestResult) -> None:
    ports.bus.publish(
        Topic.INGEST_RESULTS,
        result.to_bytes(),
        run_attributes(result.run_id, result.dataset, Month.parse(result.month), result.labels)
        | {"state": result.state.value},
    )


def failed_result(invocation: Invocation, state: RunState, error: str) -> IngestResult | None:
    if invocation.run_id is None or invocation.dataset is None or invocation.month is None:
        return None
    return IngestResult(
        run_id=invocation.run_id,
        dataset=invocation.dataset,
        month=str(invocation.month),
        state=state,
        error=error[:2000],
        labels=invocation.labels,
    )


def current_load(ledger: LoadLedger, dataset: Dataset, month: Month) -> LoadRecord | None:
    """The month's latest completed load: what its rows in the final table come from."""
    loads = [load for load in ledger.loads(dataset) if load.month == month]
    return max(loads, key=lambda load: load.loaded_at) if loads else None


def describe_upstream(upstream: Upstream | None) -> str:
    return UPSTREAM_NAMES.get(upstream, "an unknown source") if upstream else "an unknown source"


def check_one_source(
    dataset: Dataset, month: Month, loaded: LoadRecord | None, object_name: str, replace: bool
) -> None:
    """One month, one source: a month loaded from another source's file is refused
    (:class:`SourceConflict`) unless the run replaces its rows. The two sources are not the
    same rows (yellow 2019-01: 7,667,792 in the CSV backup, 7,696,617 in Parquet), so loading
    both would count many trips twice."""
    if loaded is None or replace or loaded.object_name == object_name:
        return
    had, wants = upstream_of_object(loaded.object_name), upstream_of_object(object_name)
    file = loaded.object_name.rsplit("/", 1)[-1]
    raise SourceConflict(
        f"{dataset.value} {month} is loaded from {describe_upstream(had)} ({file}, run"
        f" {loaded.run_id}); loading it from {describe_upstream(wants)} too would hold two"
        " sources' rows for one month. Nothing was changed; run it with --replace (message"
        " field replace) to replace the month's rows"
    )
