"""Cancel and restart a run, from any process: what ``taxi-pipeline runs cancel`` and ``runs
restart`` (and the web UI) call.

Cancelling appends a cancel line to the run's history. The process running the run polls for
such lines (``local.orchestrator.Watcher``) and interrupts it; in the cloud, nothing interrupts
a running step, but the run's next step finds the line and refuses to go on. A run whose
process is gone (ABANDONED) is simply recorded CANCELLED.

Restarting submits the month again as a new run (Kestra's restart), with the run's labels and
``restarted_from=<run id>``; only a run that ended without loading (FAILED, CANCELLED,
ABANDONED) can be restarted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import TERMINAL, Liveness, Run, derive_run, describe_process
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.errors import PermanentError
from taxi_pipeline.local.admission import Submitter
from taxi_pipeline.local.process import ProcessInfo
from taxi_pipeline.pipeline.ports import RunHistory
from taxi_pipeline.pipeline.recorder import cancel_event

RESTARTABLE: Final = frozenset({RunState.FAILED, RunState.CANCELLED, RunState.ABANDONED})
RESTARTED_FROM: Final = "restarted_from"
"""The label that links a restarted run to the run it repeats."""


class UnknownRun(PermanentError):
    """No history line names this run."""


class NotRestartable(PermanentError):
    """The run is still going, or it loaded (or was skipped): nothing to restart."""


@dataclass(frozen=True)
class CancelOutcome:
    run: Run
    """The run as it was before the cancel."""
    requested: bool
    """Whether a cancel line was recorded (False: the run had ended already)."""


def current_run(history: RunHistory, run_id: str, liveness: Liveness) -> Run:
    """The run as the history derives it now (heartbeats included)."""
    events = history.run_events(run_id=run_id)
    if not events:
        raise UnknownRun(f"no run {run_id!r} in the history")
    return derive_run(events, liveness)


def cancel_run(
    history: RunHistory, run_id: str, liveness: Liveness, requested_by: ProcessInfo | None = None
) -> CancelOutcome:
    """Record that ``run_id`` must stop (nothing happens to a run that has ended)."""
    run = current_run(history, run_id, liveness)
    if run.state in TERMINAL and run.state is not RunState.ABANDONED:
        return CancelOutcome(run, requested=False)
    who = f" by {requested_by.describe()}" if requested_by is not None else ""
    reason = f"cancelled{who}"
    history.append_run_events(
        [cancel_event(run.run_id, run.dataset, run.month, reason, run.labels)]
    )
    return CancelOutcome(run, requested=True)


def stopped(run: Run) -> bool:
    """Whether a cancelled run's process is done with it: no step is still RUNNING (its step
    recorded CANCELLED, or it never started one), or its process is gone."""
    if run.state is RunState.ABANDONED:
        return True
    latest: dict[str, RunState] = {}
    for step in run.steps:
        latest[step.step] = step.state
    return RunState.RUNNING not in latest.values()


def wait_until_stopped(
    history: RunHistory,
    run_id: str,
    liveness: Callable[[], Liveness],
    *,
    timeout: float,
    poll: float = 0.2,
) -> Run:
    """Poll the history until the cancelled run has stopped (or ``timeout`` seconds passed);
    returns the run as last seen."""
    deadline = time.monotonic() + timeout
    while True:
        run = current_run(history, run_id, liveness())
        if stopped(run) or time.monotonic() >= deadline:
            return run
        time.sleep(poll)


def restart_run(runner: Submitter, history: RunHistory, run_id: str, liveness: Liveness) -> str:
    """Submit the run's month again with its labels plus ``restarted_from``; returns the new
    run id. Raises :class:`NotRestartable` for a run that is active, loaded or skipped."""
    run = current_run(history, run_id, liveness)
    if run.state not in RESTARTABLE:
        hint = (
            "; `taxi-pipeline run --force` loads a month again"
            if run.state is RunState.SUCCESS
            else ""
        )
        raise NotRestartable(
            f"run {run_id} is {run.state.value}: only a FAILED, CANCELLED or ABANDONED run can"
            f" be restarted{hint}"
        )
    try:
        dataset, month = Dataset(run.dataset), Month.parse(run.month)
    except ValueError as exc:
        raise NotRestartable(f"run {run_id} names no dataset-month to load again") from exc
    labels = {**run.labels, RESTARTED_FROM: run.run_id}
    return runner.submit(dataset, month, labels=labels)


def describe_owner(run: Run) -> str:
    """``pid 1234 on host``: who runs (or ran) the run, where the history says."""
    return describe_process(run.process) if run.process else "its process"
