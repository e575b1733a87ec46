"""Step 3, merge: stage the month with ``unique_row_id`` and ``filename``, then insert the rows
whose id the final table does not hold yet (the reference's insert-only MERGE).

Exactly-once effect: the insert is keyed on ``unique_row_id``, so a redelivered or repeated merge
inserts nothing twice; a completed load of an object generation is remembered so a re-run does
not even stage again. The target is read only on the pickup dates the staging data has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, timedelta

from taxi_pipeline.domain.datasets import Dataset, Month, object_name
from taxi_pipeline.domain.messages import IngestResult, MergeRequest, RunState
from taxi_pipeline.errors import (
    DataQualityError,
    InvalidMessage,
    PermanentError,
    RunCancelled,
    VerificationFailed,
)
from taxi_pipeline.pipeline.ports import DateRange, JobContext, LoadRecord, Ports, StagingSummary
from taxi_pipeline.pipeline.recorder import StepRecorder, utcnow
from taxi_pipeline.pipeline.steps.common import Invocation, publish_result

log = logging.getLogger(__name__)


def pickup_ranges(dates: Iterable[date]) -> list[DateRange]:
    """Consecutive days folded into half-open ranges, so stray dates years away add a range of
    their own instead of widening one range over everything in between."""
    ranges: list[DateRange] = []
    for day in sorted(set(dates)):
        if ranges and ranges[-1].end == day:
            ranges[-1] = DateRange(ranges[-1].start, day + timedelta(days=1))
        else:
            ranges.append(DateRange(day, day + timedelta(days=1)))
    return ranges


def _reads_null_pickups(staged: StagingSummary) -> bool:
    """Whether the target's rows without a pickup may hold one of the staged ids: a staged row
    without a pickup, or one without a dropoff (its id is that of a row with only that dropoff:
    README, "Row ids")."""
    return staged.rows_without_pickup > 0 or staged.rows_without_dropoff > 0


def _check_staged(staged: StagingSummary, name: str, ports: Ports) -> None:
    """Refuse a month with no rows or too many values that do not fit the column types."""
    minimum = ports.settings.min_rows_per_file
    if staged.rows < minimum:
        # Downloads are verified before raw/; a hand upload is only checked at its head.
        raise VerificationFailed(
            f"{name} has no data rows"
            if staged.rows == 0
            else f"{name} has {staged.rows} data rows, fewer than the plausible minimum {minimum}"
        )
    limit = ports.settings.bad_row_threshold * staged.rows
    if staged.rows_bad > limit:
        samples = " | ".join(staged.bad_samples[:3])
        raise DataQualityError(
            f"{staged.rows_bad} of {staged.rows} rows have values that do not fit the column"
            f" types (threshold {ports.settings.bad_row_threshold:.4%}); nothing was merged."
            f" Samples: {samples}"
        )


def _drop_quietly(ports: Ports, dataset: Dataset, month: Month) -> None:
    try:
        ports.warehouse.drop_month_objects(dataset, month)
    except Exception:
        log.warning("could not drop the %s %s month tables", dataset.value, month, exc_info=True)


def run(request: MergeRequest, invocation: Invocation, ports: Ports) -> IngestResult:
    """Stage and merge one lake object; publishes and returns the run's result."""
    dataset, month = request.dataset, request.parsed_month
    invocation.run_id, invocation.dataset, invocation.month = request.run_id, dataset, month
    invocation.labels = dict(request.labels)
    if request.object_name != object_name(dataset, month):
        raise InvalidMessage(
            f"object {request.object_name!r} is not the lake object of {dataset.value} {month}"
        )
    ports.cancellation.check(request.run_id, recorded=True)
    recorder = StepRecorder(
        ports.warehouse, request.run_id, dataset, month, "merge", invocation.attempt, request.labels
    )
    with ports.locks.hold(f"merge-{dataset.value}-{month}"):
        ports.cancellation.check(request.run_id)
        recorder.running()
        source = ports.lake.stat(request.object_name)
        if source is None:
            raise PermanentError(f"{request.object_name} is not in the lake any more")
        context = JobContext(request.run_id, dataset, month, "merge", source.generation)
        done = ports.warehouse.find_load(source.name, source.generation)
        if done is not None and not request.force:
            log.info(
                "%s generation %s was loaded by run %s; nothing to do",
                source.name,
                source.generation,
                done.run_id,
            )
            # A duplicate object event re-creates the external table after the load finished;
            # this is the merge request that follows it, so clear the month's objects here too.
            ports.warehouse.drop_month_objects(dataset, month)
            # The run's own merge redelivered (say, killed before it published its result): it
            # reports the figures of its load again instead of overwriting them with zero.
            own = done.run_id == request.run_id
            inserted = done.rows_inserted if own else 0
            result = IngestResult(
                run_id=request.run_id,
                dataset=dataset,
                month=str(month),
                state=RunState.SUCCESS,
                rows_in_file=done.rows_in_file,
                rows_inserted=inserted,
                rows_already_present=done.rows_in_file - inserted,
                labels=request.labels,
            )
            reason = (
                "redelivered after this run loaded it"
                if own
                else f"already loaded by {done.run_id}"
            )
            recorder.finish(RunState.SUCCESS, rows=inserted, details={"reason": reason})
            publish_result(ports, result)
            return result

        ports.warehouse.ensure_final_table(dataset)
        try:
            # Recreated here too: a crash between register and merge must not strand the run.
            ports.warehouse.create_external_table(dataset, month, source, ports.lake)
            staged = ports.warehouse.stage(dataset, month, source, ports.lake, context)
            _check_staged(staged, source.name, ports)
            ranges = pickup_ranges(staged.pickup_dates)
            load = LoadRecord(
                dataset,
                month,
                source.name,
                source.generation,
                request.run_id,
                staged.rows,
                0,  # the warehouse records what it inserted
                utcnow(),
            )
            with ports.locks.hold(f"insert-{dataset.value}"):
                # The last moment to stop: once the insert commits, the month is loaded.
                ports.cancellation.check(request.run_id)
                inserted = ports.warehouse.merge_staged(
                    dataset, month, ranges, _reads_null_pickups(staged), context, load=load
                )
        except Exception as exc:
            # A refused or cancelled month leaves no external or staging table behind. (After
            # a transient failure they stay: the redelivery replaces them.)
            if isinstance(exc, PermanentError | RunCancelled) or ports.cancellation.reason(
                request.run_id
            ):
                _drop_quietly(ports, dataset, month)
            raise
        ports.warehouse.drop_month_objects(dataset, month)
    result = IngestResult(
        run_id=request.run_id,
        dataset=dataset,
        month=str(month),
        state=RunState.SUCCESS,
        rows_in_file=staged.rows,
        rows_inserted=inserted,
        rows_already_present=staged.rows - inserted,
        rows_out_of_month=staged.rows_out_of_month,
        rows_bad=staged.rows_bad,
        labels=request.labels,
    )
    recorder.finish(
        RunState.SUCCESS,
        rows=inserted,
        details={
            "rows_in_file": str(staged.rows),
            "rows_out_of_month": str(staged.rows_out_of_month),
            "rows_bad": str(staged.rows_bad),
            "pickup_ranges": str(len(ranges)),
            "bad_samples": " | ".join(staged.bad_samples)[:1000],
        },
    )
    publish_result(ports, result)
    log.info(
        "merged %s %s: %d rows in file, %d inserted", dataset.value, month, staged.rows, inserted
    )
    return result
