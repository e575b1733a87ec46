"""Run history, derived: a run's state, duration and timeline from its appended ``RunEvent``s.

``pipeline_runs`` only ever grows (QUEUED when a request is submitted, then RUNNING and an
outcome per step and attempt). Nothing is updated in place, so everything a user sees here is
computed from the events, the way Kestra derives an execution's state from its task runs.

How a run's state is derived (first rule that applies):

1. a step whose latest event is FAILED (a permanent error, or the dead-letter path) -> FAILED,
   except the dead-letter step once the merge ended SUCCESS (a late dead-lettered copy under
   at-least-once delivery does not undo loaded rows);
2. the merge step ended SUCCESS -> SUCCESS (also when a cancel came too late to stop it);
3. a CANCELLED line (the cancel request, or the step it stopped) -> CANCELLED;
4. a step ended SKIPPED with a reason (e.g. the month is not published upstream) -> SKIPPED;
   a SKIPPED without an error (download skipped because the file is already in the lake) is a
   skipped *step* and the run goes on;
5. the latest event is RETRYING -> RETRYING (a transient error, a redelivery is coming);
6. only QUEUED events -> QUEUED (waiting for a concurrency slot, or for a worker);
7. otherwise RUNNING;
8. an active run (5-7) whose process is gone is ABANDONED (:class:`Liveness`): locally, the
   process that wrote its latest line no longer beats (or, on this host, its pid is dead); in
   the cloud, where no process beats, a RUNNING step silent past the function timeout.

Lines carrying a :data:`NOTE` (a dead letter for a run that had already succeeded) are remarks:
shown with the run's steps, but no state or end time is derived from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month, upstream_of_object
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import CANCEL_STEP, QUEUE_STEP, LoadRecord, RunEvent

FINAL_STEP: Final = "merge"
"""The step whose SUCCESS completes a run."""
DEAD_LETTER_STEP: Final = "dead-letter"
NOTE: Final = "note"
"""``details`` key of a line that is a remark, not an outcome."""

TERMINAL: Final = frozenset(
    {
        RunState.SUCCESS,
        RunState.FAILED,
        RunState.SKIPPED,
        RunState.CANCELLED,
        RunState.ABANDONED,
    }
)
ACTIVE: Final = frozenset({RunState.QUEUED, RunState.RUNNING, RunState.RETRYING})

CLOUD_STEP_TIMEOUT: Final = timedelta(seconds=540)
"""Every function's timeout (``infra/resources.py``): a step RUNNING longer has no process left."""

_STEP_ORDER: Final = {
    QUEUE_STEP: 0,
    "download": 1,
    "register": 2,
    "merge": 3,
    DEAD_LETTER_STEP: 4,
    CANCEL_STEP: 5,
}


@dataclass(frozen=True)
class StepRun:
    """One attempt of one step, folded from its RUNNING and outcome events."""

    step: str
    attempt: int
    state: RunState
    started_at: datetime | None
    """When the step began (for merge: before waiting for the dataset-month lock)."""
    running_at: datetime | None
    """When its RUNNING line was written (for merge: once the lock was held)."""
    finished_at: datetime | None
    rows: int | None = None
    bytes: int | None = None
    error: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def waited(self) -> timedelta:
        """Time spent before the RUNNING line (the merge waiting for its lock)."""
        if self.started_at is None or self.running_at is None:
            return timedelta(0)
        return max(self.running_at - self.started_at, timedelta(0))


@dataclass(frozen=True)
class Run:
    """A run as derived from its events."""

    run_id: str
    dataset: str
    month: str
    state: RunState
    labels: Mapping[str, str]
    queued_at: datetime | None
    started_at: datetime | None
    """First moment any step began."""
    finished_at: datetime | None
    """Set when the run is in a terminal state."""
    last_event_at: datetime | None
    steps: tuple[StepRun, ...]
    error: str | None
    rows_in_file: int | None
    rows_inserted: int | None
    attempts: int
    process: str | None = None
    """The process that wrote the run's latest step line (where the history records it)."""

    @property
    def first_seen(self) -> datetime | None:
        return self.queued_at or self.started_at or self.last_event_at

    def duration(self, now: datetime | None = None) -> timedelta | None:
        """From the first step's start to the end (or to ``now`` while active)."""
        begin = self.started_at or self.queued_at
        if begin is None:
            return None
        end = self.finished_at
        if end is None:
            end = now if now is not None else datetime.now(UTC)
        return max(end - begin, timedelta(0))

    @property
    def queue_wait(self) -> timedelta | None:
        if self.queued_at is None or self.started_at is None:
            return None
        return max(self.started_at - self.queued_at, timedelta(0))

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE


def _when(event: RunEvent) -> datetime | None:
    return event.recorded_at or event.finished_at or event.started_at


def _fold_steps(events: Sequence[RunEvent]) -> list[StepRun]:
    groups: dict[tuple[str, int], list[RunEvent]] = {}
    for event in events:
        if event.step == QUEUE_STEP:
            continue
        groups.setdefault((event.step, event.attempt), []).append(event)
    steps = []
    for (step, attempt), group in groups.items():
        last = group[-1]
        running = [e for e in group if e.state is RunState.RUNNING]
        starts = [e.started_at for e in group if e.started_at is not None]
        started = min(starts) if starts else (_when(running[0]) if running else None)
        finished = None
        if last.state is not RunState.RUNNING:
            finished = last.finished_at or _when(last)
        if started is None:
            started = finished
        rows = next((e.rows for e in reversed(group) if e.rows is not None), None)
        bytes_ = next((e.bytes for e in reversed(group) if e.bytes is not None), None)
        steps.append(
            StepRun(
                step=step,
                attempt=attempt,
                state=last.state,
                started_at=started,
                running_at=_when(running[0]) if running else started,
                finished_at=finished,
                rows=rows,
                bytes=bytes_,
                error=last.error,
                details=dict(last.details),
            )
        )
    far = datetime.max.replace(tzinfo=UTC)
    steps.sort(key=lambda s: (s.started_at or far, _STEP_ORDER.get(s.step, 9), s.attempt))
    return steps


def _derive_state(events: Sequence[RunEvent], steps: Sequence[StepRun]) -> RunState:
    latest_by_step: dict[str, StepRun] = {}
    for step in steps:
        if NOTE not in step.details:
            latest_by_step[step.step] = step
    final = latest_by_step.get(FINAL_STEP)
    succeeded = final is not None and final.state is RunState.SUCCESS
    if any(
        s.state is RunState.FAILED and not (succeeded and s.step == DEAD_LETTER_STEP)
        for s in latest_by_step.values()
    ):
        return RunState.FAILED
    if succeeded:
        return RunState.SUCCESS
    if any(e.state is RunState.CANCELLED for e in events):
        return RunState.CANCELLED
    if any(s.state is RunState.SKIPPED and s.error for s in latest_by_step.values()):
        return RunState.SKIPPED
    if not steps:
        return RunState.QUEUED if events else RunState.RUNNING
    last = events[-1]
    if last.state is RunState.RETRYING:
        return RunState.RETRYING
    return RunState.RUNNING


def derive_run(events: Sequence[RunEvent], liveness: Liveness | None = None) -> Run:
    """Fold one run's events (oldest first) into a :class:`Run`; with ``liveness``, an active
    run whose process is gone is ABANDONED."""
    if not events:
        raise ValueError("a run needs at least one event")
    run = _fold_run(events)
    if liveness is not None and run.is_active:
        reason = liveness.abandoned(run)
        if reason is not None:
            seen = [run.last_event_at, liveness.last_beats.get(run.process or "")]
            last_seen = max((t for t in seen if t is not None), default=None)
            return replace(run, state=RunState.ABANDONED, finished_at=last_seen, error=reason)
    return run


def _fold_run(events: Sequence[RunEvent]) -> Run:
    first = events[0]
    steps = _fold_steps(events)
    state = _derive_state(events, steps)
    labels: dict[str, str] = {}
    for event in events:
        labels.update(event.labels)
    queued = [_when(e) for e in events if e.state is RunState.QUEUED]
    starts = [s.started_at for s in steps if s.started_at is not None and s.step != CANCEL_STEP]
    ends = [s.finished_at for s in steps if s.finished_at is not None and NOTE not in s.details]
    error = None
    if state in (RunState.FAILED, RunState.SKIPPED, RunState.RETRYING, RunState.CANCELLED):
        error = next((e.error for e in reversed(events) if e.error), None)
    merge = [s for s in steps if s.step == FINAL_STEP and s.state is RunState.SUCCESS]
    download = [s for s in steps if s.step == "download" and s.rows is not None]
    rows_in_file: int | None = None
    if merge and merge[-1].details.get("rows_in_file", "").isdigit():
        rows_in_file = int(merge[-1].details["rows_in_file"])
    elif download:
        rows_in_file = download[-1].rows
    times = [t for t in (_when(e) for e in events) if t is not None]
    return Run(
        run_id=first.run_id,
        dataset=next((e.dataset for e in events if e.dataset), ""),
        month=next((e.month for e in events if e.month), ""),
        state=state,
        labels=labels,
        queued_at=min((q for q in queued if q is not None), default=None),
        started_at=min(starts) if starts else None,
        finished_at=(max(ends) if ends else _when(events[-1])) if state in TERMINAL else None,
        last_event_at=max(times) if times else None,
        steps=tuple(steps),
        error=error,
        rows_in_file=rows_in_file,
        rows_inserted=merge[-1].rows if merge else None,
        attempts=max((s.attempt for s in steps), default=0),
        process=next((e.process for e in reversed(events) if e.step != CANCEL_STEP), None),
    )


def derive_runs(events: Iterable[RunEvent], liveness: Liveness | None = None) -> list[Run]:
    """Group events by run id and derive each run; ordered by first appearance."""
    by_run: dict[str, list[RunEvent]] = {}
    for event in events:
        by_run.setdefault(event.run_id, []).append(event)
    return sort_runs(derive_run(group, liveness) for group in by_run.values())


def sort_runs(runs: Iterable[Run]) -> list[Run]:
    """Runs in history order: by their first event, then run id (``derive_runs``' order)."""
    far = datetime.min.replace(tzinfo=UTC)
    return sorted(runs, key=lambda r: (r.first_seen or far, r.run_id))


def filter_runs(
    runs: Iterable[Run],
    *,
    dataset: str | None = None,
    states: Iterable[RunState] = (),
    since: datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Run]:
    """Runs matching every given filter (``since`` compares with the run's first event)."""
    wanted = set(states)
    out = []
    for run in runs:
        if dataset is not None and run.dataset != dataset:
            continue
        if wanted and run.state not in wanted:
            continue
        if since is not None and (run.first_seen is None or run.first_seen < since):
            continue
        if labels and any(run.labels.get(k) != v for k, v in labels.items()):
            continue
        out.append(run)
    return out


# -- liveness -----------------------------------------------------------------------------------


def describe_process(process: str) -> str:
    """``pid 1234 on host`` from a ``host:pid:token`` process id."""
    host, _, rest = process.partition(":")
    pid = rest.partition(":")[0]
    return f"pid {pid} on {host}" if pid else process


@dataclass(frozen=True)
class Liveness:
    """How to tell an active run whose process is gone (ABANDONED) from one still going."""

    now: datetime
    live_processes: frozenset[str] | None = None
    """Locally: the processes known alive (fresh heartbeat; on this host, pid running). None in
    the cloud, where nothing beats."""
    silence: timedelta = CLOUD_STEP_TIMEOUT
    """Past this without a line, a run is abandoned: in the cloud a RUNNING step (the function
    was stopped at its timeout); locally a run whose lines name no process (older versions)."""
    last_beats: Mapping[str, datetime] = field(default_factory=dict)
    """Each known process's latest heartbeat: when an abandoned run was last seen alive."""

    @classmethod
    def cloud(cls, now: datetime | None = None) -> Liveness:
        return cls(now or datetime.now(UTC))

    def abandoned(self, run: Run) -> str | None:
        """Why an active run is abandoned, or None while it may still be going."""
        silent = self.now - run.last_event_at if run.last_event_at else timedelta(0)
        if self.live_processes is not None and run.process is not None:
            if run.process in self.live_processes:
                return None
            return f"its process ({describe_process(run.process)}) is gone"
        if self.live_processes is None and run.state is not RunState.RUNNING:
            # A queued or retrying cloud run waits for Pub/Sub, which may take long.
            return None
        if silent > self.silence:
            return f"no sign of life for {int(silent.total_seconds())} s"
        return None


# -- parsing user input -------------------------------------------------------------------------

_RELATIVE: Final = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2h`` / ``3d`` / ``1w`` / ``30m`` ago, or an ISO date or datetime (UTC when naive)."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip().lower())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is neither a duration like 2h / 3d nor an ISO date like 2019-01-31"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- coverage ---------------------------------------------------------------------------------


_UNLOADED: Final = {
    RunState.FAILED: "failed",
    RunState.CANCELLED: "cancelled",
    RunState.ABANDONED: "abandoned",
    RunState.SKIPPED: "skipped",
}


@dataclass(frozen=True)
class Cell:
    """One dataset-month of the coverage matrix."""

    dataset: Dataset
    month: Month
    loaded_rows: int | None
    """Rows of the latest completed load (None: never loaded)."""
    state: str
    """``loaded``, ``running``, ``failed``, ``cancelled``, ``abandoned``, ``skipped``,
    ``missing``, or ``unpublished``: no upstream publishes the dataset's month (fhvhv before
    2019-02), so nothing is missing."""
    run_id: str | None = None
    error: str | None = None
    source: str | None = None
    """Where the latest completed load's rows came from (``mirror``, ``tlc``), when known."""


def coverage(
    datasets: Sequence[Dataset],
    months: Sequence[Month],
    loads: Iterable[LoadRecord],
    runs: Iterable[Run],
) -> dict[tuple[Dataset, Month], Cell]:
    """The status matrix: running beats loaded beats the latest run's failed, cancelled,
    abandoned or skipped, which beat missing.

    A loaded month whose latest run failed, was cancelled or abandoned afterwards still shows
    loaded: its rows are there. Derive ``runs`` with a :class:`Liveness`, or a run whose process
    died shows running for ever.
    """
    latest_load: dict[tuple[str, str], LoadRecord] = {}
    for record in loads:
        latest_load[(record.dataset.value, str(record.month))] = record
    latest_run: dict[tuple[str, str], Run] = {}
    active: dict[tuple[str, str], Run] = {}
    for each in runs:
        key = (each.dataset, each.month)
        latest_run[key] = each
        if each.is_active:
            active[key] = each
    cells = {}
    for dataset in datasets:
        for month in months:
            key = (dataset.value, str(month))
            load = latest_load.get(key)
            run = latest_run.get(key)
            rows = load.rows_in_file if load else None
            upstream = upstream_of_object(load.object_name) if load else None
            source = upstream.value if upstream else None
            if key in active:
                cell = Cell(dataset, month, rows, "running", active[key].run_id, source=source)
            elif load is not None:
                cell = Cell(dataset, month, rows, "loaded", load.run_id, source=source)
            elif run is not None and run.state in _UNLOADED:
                cell = Cell(dataset, month, None, _UNLOADED[run.state], run.run_id, run.error)
            elif not dataset.spec.publishes(month):
                cell = Cell(dataset, month, None, "unpublished")
            else:
                cell = Cell(dataset, month, None, "missing")
            cells[(dataset, month)] = cell
    return cells
