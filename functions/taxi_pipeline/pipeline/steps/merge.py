"""Step 3, merge: stage the month with ``unique_row_id`` and ``filename``, then insert the rows
whose id the final table does not hold yet (the reference's insert-only MERGE).

Exactly-once effect: the insert is keyed on ``unique_row_id``, so a redelivered or repeated merge
inserts nothing twice; a completed load of an object generation is remembered so a re-run does
not even stage again. The target is read only on the pickup dates the staging data has.

One month, one source: a month whose rows came from another source's file is refused unless the
request replaces it; a replacing merge deletes the month's rows (every source's file name, on
the dates those loads recorded) and inserts the staged ones in one transaction. A file that
states its row count (a Parquet footer) must stage exactly that many rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date, timedelta

from taxi_pipeline.domain.datasets import (
    Dataset,
    Month,
    csv_name,
    parse_object,
    upstream_of_object,
)
from taxi_pipeline.domain.formats import SourceFormat, VerifiedFile
from taxi_pipeline.domain.messages import IngestResult, MergeRequest, RunState
from taxi_pipeline.domain.runs import LoadRecord, RunIdentity
from taxi_pipeline.errors import (
    DataQualityError,
    InvalidMessage,
    PermanentError,
    RunCancelled,
    VerificationFailed,
)
from taxi_pipeline.pipeline.ports import (
    DateRange,
    JobContext,
    MergePlan,
    ObjectInfo,
    Ports,
    Replacement,
    StagingSummary,
)
from taxi_pipeline.pipeline.recorder import StepRecorder, utcnow
from taxi_pipeline.pipeline.steps.common import (
    check_one_source,
    describe_upstream,
    publish_result,
    verify_lake_object,
)

PICKUP_DATES_KEY = "pickup_dates"
"""Merge details: the dates the month's rows sit on (``start/end`` ranges), which a later
replacing merge deletes on."""
_MAX_DATES_TEXT = 20_000

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


def ranges_text(ranges: Iterable[DateRange]) -> str:
    """``2019-03-01/2019-04-01,2008-12-31/2009-01-01`` (half-open ranges)."""
    return ",".join(f"{r.start.isoformat()}/{r.end.isoformat()}" for r in ranges)


def parse_ranges(text: str) -> list[DateRange]:
    """Reverse of :func:`ranges_text`; raises ``ValueError`` on anything else."""
    ranges = []
    for item in filter(None, text.split(",")):
        start, end = item.split("/")
        ranges.append(DateRange(date.fromisoformat(start), date.fromisoformat(end)))
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


def _object_format(request: MergeRequest) -> SourceFormat:
    """The format of the request's object, which must be a lake object of its month."""
    dataset, month = request.dataset, request.parsed_month
    try:
        named_dataset, named_month, fmt = parse_object(request.object_name)
    except ValueError:
        named_dataset, named_month, fmt = dataset, month, None
    if fmt is None or (named_dataset, named_month) != (dataset, month):
        raise InvalidMessage(
            f"object {request.object_name!r} is not a lake object of {dataset.value} {month}"
        )
    return fmt


def run(request: MergeRequest, run: RunIdentity, attempt: int, ports: Ports) -> IngestResult:
    """Stage and merge one lake object; publishes and returns the run's result. ``run`` is the
    request's (:func:`runs.run_of_merge_request`)."""
    dataset, month = run.dataset, run.month
    fmt = _object_format(request)
    ports.cancellation.check(run.run_id, recorded=True)
    recorder = StepRecorder(ports.warehouse, run, "merge", attempt)
    with ports.locks.hold(f"merge-{dataset.value}-{month}"):
        ports.cancellation.check(run.run_id)
        recorder.running()
        source = ports.lake.stat(request.object_name)
        if source is None:
            raise PermanentError(f"{request.object_name} is not in the lake any more")
        loads = [load for load in ports.warehouse.loads(dataset) if load.month == month]
        loaded = max(loads, key=lambda load: load.loaded_at) if loads else None
        check_one_source(dataset, month, loaded, source.name, request.replace)
        done = ports.warehouse.find_load(source.name, source.generation)
        # A replacing run replaces even a generation another run loaded (the month is being
        # switched back to it); only its own redelivery finds its work done.
        if (
            done is not None
            and not request.force
            and (not request.replace or done.run_id == request.run_id)
        ):
            return _already_loaded(request, done, recorder, ports)
        merged = _stage_and_merge(request, fmt, source, loads, ports)
        ports.warehouse.drop_month_objects(dataset, month)
    result = merged.result(request)
    recorder.finish(RunState.SUCCESS, rows=merged.inserted, details=merged.details())
    publish_result(ports, result)
    log.info(
        "merged %s %s: %d rows in file, %d inserted",
        dataset.value,
        month,
        merged.staged.rows,
        merged.inserted,
    )
    return result


def _already_loaded(
    request: MergeRequest, done: LoadRecord, recorder: StepRecorder, ports: Ports
) -> IngestResult:
    """The object generation was merged completely: nothing to stage or insert."""
    dataset, month = request.dataset, request.parsed_month
    log.info(
        "%s generation %s was loaded by run %s; nothing to do",
        done.object_name,
        done.generation,
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
    reason = "redelivered after this run loaded it" if own else f"already loaded by {done.run_id}"
    recorder.finish(RunState.SUCCESS, rows=inserted, details={"reason": reason})
    publish_result(ports, result)
    return result


@dataclass(frozen=True)
class _Merged:
    """What a merge staged, inserted and replaced."""

    staged: StagingSummary
    inserted: int
    ranges: list[DateRange]
    notes: tuple[str, ...]
    replaced: int | None
    """Rows deleted by a replacing merge (``None``: it did not replace)."""

    def details(self) -> dict[str, str]:
        staged = self.staged
        details = {
            "rows_in_file": str(staged.rows),
            "rows_out_of_month": str(staged.rows_out_of_month),
            "rows_bad": str(staged.rows_bad),
            "pickup_ranges": str(len(self.ranges)),
            "bad_samples": " | ".join(staged.bad_samples)[:1000],
        }
        dates = ranges_text(self.ranges)
        if len(dates) <= _MAX_DATES_TEXT:
            details[PICKUP_DATES_KEY] = dates
        if self.replaced is not None:
            details["rows_replaced"] = str(self.replaced)
        if self.notes:
            details["notes"] = "; ".join(self.notes)[:2000]
        return details

    def result(self, request: MergeRequest) -> IngestResult:
        staged = self.staged
        return IngestResult(
            run_id=request.run_id,
            dataset=request.dataset,
            month=request.month,
            state=RunState.SUCCESS,
            rows_in_file=staged.rows,
            rows_inserted=self.inserted,
            rows_already_present=staged.rows - self.inserted,
            rows_out_of_month=staged.rows_out_of_month,
            rows_bad=staged.rows_bad,
            labels=request.labels,
            rows_replaced=self.replaced,
            notes=self.notes or None,
        )


def _stage_and_merge(
    request: MergeRequest,
    fmt: SourceFormat,
    source: ObjectInfo,
    loads: list[LoadRecord],
    ports: Ports,
) -> _Merged:
    """Stage the object, check it, and insert (or replace the month with) its rows."""
    dataset, month = request.dataset, request.parsed_month
    context = JobContext(request.run_id, dataset, month, "merge", source.generation)
    ports.warehouse.ensure_final_table(dataset)
    replacing = _replacement(ports, dataset, month, loads) if request.replace else None
    # Loads of one dataset take turns at inserting: each checks its ids against what the final
    # table holds. A warehouse that stages into the final table checks them against the table
    # as it was when staging began, so its turn starts there.
    in_final = ports.warehouse.stages_in_final_table
    insert_turn = f"insert-{dataset.value}"
    try:
        declared = _declared(ports, fmt, dataset, month, source)
        with ports.locks.hold(insert_turn) if in_final else nullcontext():
            # Recreated here too: a crash between register and merge must not strand the run.
            ports.warehouse.create_external_table(dataset, month, source, ports.lake)
            staged = ports.warehouse.stage(source, ports.lake, context)
            if declared is not None and staged.rows != declared.rows:
                raise VerificationFailed(
                    f"{source.name}: its footer says {declared.rows} rows, staging read"
                    f" {staged.rows}"
                )
            _check_staged(staged, source.name, ports)
            ranges = pickup_ranges(staged.pickup_dates)
            null_pickups = _reads_null_pickups(staged)
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
            with nullcontext() if in_final else ports.locks.hold(insert_turn):
                # The last moment to stop: once the insert commits, the month is loaded.
                ports.cancellation.check(request.run_id)
                plan = MergePlan(context, ranges, null_pickups, replacing, load)
                outcome = ports.warehouse.merge_staged(plan)
    except Exception as exc:
        # A refused or cancelled month leaves no external or staging table behind, nor rows
        # staged into the final table (rolled back). (After a transient failure a staging
        # table of its own stays: the redelivery replaces it.)
        if (
            in_final
            or isinstance(exc, PermanentError | RunCancelled)
            or ports.cancellation.reason(request.run_id)
        ):
            _drop_quietly(ports, dataset, month)
        raise
    notes = list(declared.notes if declared is not None else ())
    if outcome.deleted is not None:
        notes.append(_replaced_note(outcome.deleted, loads, source.name))
    return _Merged(staged, outcome.inserted, ranges, tuple(notes), outcome.deleted)


def _declared(
    ports: Ports, fmt: SourceFormat, dataset: Dataset, month: Month, source: ObjectInfo
) -> VerifiedFile | None:
    """What a file that states its rows (a Parquet footer) says, read from its two ends (a
    schema its month's period does not have fails here); ``None`` for other formats."""
    if not fmt.declares_rows:
        return None
    return verify_lake_object(ports, fmt, dataset, month, source)


def _replacement(
    ports: Ports, dataset: Dataset, month: Month, loads: list[LoadRecord]
) -> Replacement | None:
    """What a replacing merge deletes: the month's rows of every source's file name, on the
    dates its loads recorded (``None`` dates: a load from before they were recorded, so the
    delete is not bounded by dates). ``None`` when the month was never loaded."""
    if not loads:
        return None
    names = tuple(
        sorted({csv_name(dataset, month, p.source_format) for p in dataset.spec.publications})
    )
    dates: list[DateRange] = []
    for run_id in sorted({load.run_id for load in loads}):
        recorded = _recorded_dates(ports, run_id)
        if recorded is None:
            return Replacement(names, None)
        dates.extend(recorded)
    return Replacement(names, tuple(_merged(dates)))


def _recorded_dates(ports: Ports, run_id: str) -> list[DateRange] | None:
    for event in reversed(ports.warehouse.run_events(run_id=run_id)):
        if event.step == "merge" and event.state is RunState.SUCCESS:
            text = event.details.get(PICKUP_DATES_KEY)
            if text is None:
                return None
            try:
                return parse_ranges(text)
            except ValueError:
                return None
    return None


def _merged(ranges: Iterable[DateRange]) -> list[DateRange]:
    days: set[date] = set()
    for r in ranges:
        day = r.start
        while day < r.end:
            days.add(day)
            day += timedelta(days=1)
    return pickup_ranges(days)


def _replaced_note(replaced: int, loads: list[LoadRecord], name: str) -> str:
    before = sorted({load.object_name for load in loads})
    sources = ", ".join(
        f"{n.rsplit('/', 1)[-1]} ({describe_upstream(upstream_of_object(n))})" for n in before
    )
    return f"replaced {replaced:,} rows of {sources} with {name.rsplit('/', 1)[-1]}"
