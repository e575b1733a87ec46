"""What the steps share: publishing the next message, the one-source rule."""

from __future__ import annotations

from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month, Upstream, upstream_of_object
from taxi_pipeline.domain.formats import SourceFormat, VerifiedFile, VerifyTarget
from taxi_pipeline.domain.messages import IngestResult, MergeRequest, Topic
from taxi_pipeline.domain.runs import LoadRecord, RunIdentity, run_of_result
from taxi_pipeline.errors import SourceConflict
from taxi_pipeline.pipeline.ports import LoadLedger, ObjectInfo, Ports
from taxi_pipeline.settings import Settings

UPSTREAM_NAMES: Final = {
    Upstream.MIRROR: "the DataTalksClub mirror",
    Upstream.TLC: "the TLC",
}


def request_merge(
    ports: Ports, run: RunIdentity, source: ObjectInfo, *, replace: bool = False
) -> None:
    """Hand a verified lake object over to the merge step (``merge-requests``)."""
    request = MergeRequest(
        dataset=run.dataset,
        month=str(run.month),
        run_id=run.run_id,
        object_name=source.name,
        generation=source.generation,
        labels=dict(run.labels),
        replace=replace,
    )
    ports.bus.publish(Topic.MERGE_REQUESTS, request.to_bytes(), run.attributes())


def publish_result(ports: Ports, result: IngestResult) -> None:
    ports.bus.publish(
        Topic.INGEST_RESULTS,
        result.to_bytes(),
        run_of_result(result).attributes() | {"state": result.state.value},
    )


def verify_target(
    settings: Settings,
    dataset: Dataset,
    month: Month,
    expected_length: int | None,
    etag: str | None = None,
) -> VerifyTarget:
    """What a file of the month is checked against, within the settings' bounds."""
    return VerifyTarget(
        dataset=dataset.value,
        month=month,
        layout=dataset.layout,
        expected_length=expected_length,
        min_rows=settings.min_rows_per_file,
        max_inflated=settings.max_inflated_bytes,
        etag=etag,
    )


def verify_lake_object(
    ports: Ports, fmt: SourceFormat, dataset: Dataset, month: Month, info: ObjectInfo
) -> VerifiedFile:
    """The whole lake object verified as its download would have been (its format's object
    verifier, read through the lake)."""
    target = verify_target(ports.settings, dataset, month, info.size)
    with ports.lake.open_read(info.name) as handle:
        return fmt.verify_object(handle, target)


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
