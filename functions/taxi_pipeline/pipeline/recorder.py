"""Run identity and the append-only run history that every step writes to."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.pipeline.ports import RunEvent, Warehouse


def new_run_id(dataset: Dataset, month: Month, *, derived_from: str = "") -> str:
    """``green-201901-3fa2c1d9``: readable, unique, valid as a BigQuery label value.

    ``derived_from`` names the delivery that starts the run (a Pub/Sub message, an object
    generation): the suffix is then its hash, so every redelivery of that one message or object
    belongs to the same run instead of starting a new one each time.
    """
    suffix = (
        hashlib.sha256(derived_from.encode()).hexdigest()[:8]
        if derived_from
        else secrets.token_hex(4)
    )
    return f"{dataset.value}-{month.year:04d}{month.month:02d}-{suffix}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class StepRecorder:
    """Appends a step's RUNNING line at start and its outcome line at the end."""

    warehouse: Warehouse
    run_id: str
    dataset: Dataset
    month: Month
    step: str
    attempt: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    started_at: datetime = field(default_factory=utcnow)

    def _event(self, state: RunState, **values: object) -> RunEvent:
        base = RunEvent(
            run_id=self.run_id,
            dataset=self.dataset.value,
            month=str(self.month),
            step=self.step,
            state=state,
            attempt=self.attempt,
            started_at=self.started_at,
            labels=dict(self.labels),
            recorded_at=utcnow(),
        )
        return replace(base, **values)  # type: ignore[arg-type]

    def running(self) -> None:
        self.warehouse.append_run_events([self._event(RunState.RUNNING)])

    def finish(
        self,
        state: RunState,
        *,
        rows: int | None = None,
        bytes_: int | None = None,
        error: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        self.warehouse.append_run_events(
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


QUEUE_STEP = "queue"
"""The pseudo-step of the QUEUED line written when a request is submitted."""


def queued_event(
    run_id: str, dataset: Dataset, month: Month, labels: Mapping[str, str]
) -> RunEvent:
    """The first line of a run: the request was accepted and waits for a slot or a worker."""
    now = utcnow()
    return RunEvent(
        run_id=run_id,
        dataset=dataset.value,
        month=str(month),
        step=QUEUE_STEP,
        state=RunState.QUEUED,
        attempt=0,
        started_at=now,
        labels=dict(labels),
        recorded_at=now,
    )


CANCEL_STEP = "cancel"
"""The pseudo-step of the line that asks a run to stop (Ctrl-C, ``runs cancel``)."""


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
