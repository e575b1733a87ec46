"""What the steps share: the invocation context and publishing the next message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import (
    IngestResult,
    MergeRequest,
    RunState,
    Topic,
    labels_to_attributes,
)
from taxi_pipeline.pipeline.ports import ObjectInfo, Ports


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
