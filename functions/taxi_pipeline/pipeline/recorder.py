"""The lines every step appends to the run history: a step's own, the QUEUED and cancel lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import CANCEL_STEP, QUEUE_STEP, RunEvent, RunIdentity
from taxi_pipeline.pipeline.ports import RunHistory


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class StepRecorder:
    """Appends a step's RUNNING line at start and its outcome line at the end."""

    history: RunHistory
    run: RunIdentity
    step: str
    attempt: int = 1
    started_at: datetime = field(default_factory=utcnow)

    def _event(self, state: RunState, **values: object) -> RunEvent:
        run = self.run
        base = RunEvent(
            run_id=run.run_id,
            dataset=run.dataset.value,
            month=str(run.month),
            step=self.step,
            state=state,
            attempt=self.attempt,
            started_at=self.started_at,
            labels=dict(run.labels),
            recorded_at=utcnow(),
        )
        return replace(base, **values)  # type: ignore[arg-type]

    def running(self) -> None:
        self.history.append_run_events([self._event(RunState.RUNNING)])

    def finish(
        self,
        state: RunState,
        *,
        rows: int | None = None,
        bytes_: int | None = None,
        error: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        self.history.append_run_events(
            [
                self._event(
                    state,
                    finished_at=utcnow(),
                    rows=rows,
                    bytes=bytes_,
                    error=error,
                    details=dict(details or {}),
                )
            ]
        )


def queued_event(run: RunIdentity) -> RunEvent:
    """The first line of a run: the request was accepted and waits for a slot or a worker."""
    now = utcnow()
    return RunEvent(
        run_id=run.run_id,
        dataset=run.dataset.value,
        month=str(run.month),
        step=QUEUE_STEP,
        state=RunState.QUEUED,
        attempt=0,
        started_at=now,
        labels=dict(run.labels),
        recorded_at=now,
    )


def cancel_event(
    run_id: str, dataset: str, month: str, reason: str, labels: Mapping[str, str] | None = None
) -> RunEvent:
    """The line that cancels a run: its process stops it, and its next step refuses to start."""
    now = utcnow()
    return RunEvent(
        run_id=run_id,
        dataset=dataset,
        month=month,
        step=CANCEL_STEP,
        state=RunState.CANCELLED,
        attempt=0,
        started_at=now,
        finished_at=now,
        labels=dict(labels or {}),
        error=reason[:2000],
        recorded_at=now,
    )


def cancel_reason(events: Sequence[RunEvent]) -> str | None:
    """Why a run was cancelled, from its history lines (None: it was not)."""
    for event in events:
        if event.state is RunState.CANCELLED:
            return event.error or "cancelled"
    return None
