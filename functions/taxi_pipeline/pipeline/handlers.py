"""What each entry point does with its CloudEvent, independent of the function runtime.

``functions/main.py`` wraps these for Cloud Run; the in-process bus calls the very same ones.
Every handler: parse the real payload shape, drop events older than the maximum age, identify
the run (:mod:`domain.runs`), run the step, and sort failures: permanent ones are recorded,
logged at ERROR and acknowledged (the function returns normally, so there is no retry storm);
transient ones are recorded as RETRYING and re-raised so Pub/Sub / Eventarc redeliver.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import NOTE, derive_run
from taxi_pipeline.domain.messages import (
    DEAD_LETTER_DELIVERY_COUNT,
    SCHEDULE_TIME_ZONE_ATTRIBUTE,
    IngestRequest,
    IngestResult,
    MergeRequest,
    PubSubMessage,
    RunState,
    parse_model,
)
from taxi_pipeline.domain.runs import (
    RunClaim,
    RunEvent,
    RunIdentity,
    claimed_by_request,
    in_time_zone,
    message_delivery,
    object_delivery,
    run_of_attributes,
    run_of_dead_letter,
    run_of_merge_request,
    run_of_object,
    run_of_request,
)
from taxi_pipeline.errors import (
    InvalidMessage,
    NotPublished,
    PermanentError,
    PipelineError,
    RunCancelled,
)
from taxi_pipeline.logs import log_context
from taxi_pipeline.pipeline.cancellation import run_scope
from taxi_pipeline.pipeline.cloudevents import CloudEventLike, event_time, parse_gcs, parse_pubsub
from taxi_pipeline.pipeline.ports import Ports
from taxi_pipeline.pipeline.recorder import utcnow
from taxi_pipeline.pipeline.steps import download, merge, register
from taxi_pipeline.pipeline.steps.common import publish_result

log = logging.getLogger(__name__)

ALERT_LABEL = "taxi-pipeline-run-failed"
"""Value of the ``alert`` field on the ERROR line a log-based alert matches."""


@dataclass
class Invocation:
    """One delivery to a handler and what is known of its run, set by the handler from what
    the event says (:mod:`domain.runs`) as it is parsed. The error handling reads it to record
    a failure against the right run; the log context and the run scope read it at each line."""

    step: str
    attempt: int = 1
    delivery_id: str = ""
    """The identity of the delivered message or object (the same on every redelivery)."""
    run: RunIdentity | RunClaim | None = None

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    @property
    def dataset(self) -> Dataset | None:
        return self.run.dataset if self.run is not None else None

    @property
    def month(self) -> Month | None:
        return self.run.month if self.run is not None else None


def handle_ingest_request(event: CloudEventLike, ports: Ports) -> None:
    """Pub/Sub ``ingest-requests`` -> download."""
    invocation = Invocation("download")
    with _handling(event, invocation, ports):
        _check_age(event, ports, invocation)
        message, body = _delivery(event, invocation)
        invocation.delivery_id = message_delivery(message.publish_time, message.message_id, body)
        request = parse_model(IngestRequest, body, "ingest request")
        # Known before the request is checked: a refusal (a month in the future) is recorded
        # against this run, with its dataset and month, not as a stray rejection.
        invocation.run = claimed_by_request(request)
        when = message.publish_time or event_time(event) or datetime.now(UTC)
        when = in_time_zone(when, message.attributes.get(SCHEDULE_TIME_ZONE_ATTRIBUTE))
        lag = ports.settings.schedule_lag_months
        run = invocation.run = run_of_request(request, when, invocation.delivery_id, lag)
        download.run(request, run, invocation.attempt, ports)


def handle_object_finalized(event: CloudEventLike, ports: Ports) -> None:
    """GCS object finalized in the lake -> register the external table."""
    invocation = Invocation("register")
    with _handling(event, invocation, ports):
        _check_age(event, ports, invocation)
        obj = parse_gcs(event)
        invocation.delivery_id = object_delivery(obj)
        if register.registers(obj):
            run = invocation.run = run_of_object(obj)
            register.run(obj, run, invocation.attempt, ports)


def handle_merge_request(event: CloudEventLike, ports: Ports) -> None:
    """Pub/Sub ``merge-requests`` -> stage and merge."""
    invocation = Invocation("merge")
    with _handling(event, invocation, ports):
        _check_age(event, ports, invocation)
        message, body = _delivery(event, invocation)
        invocation.delivery_id = f"message {message.message_id}"
        request = parse_model(MergeRequest, body, "merge request")
        run = invocation.run = run_of_merge_request(request)
        merge.run(request, run, invocation.attempt, ports)


def _delivery(event: CloudEventLike, invocation: Invocation) -> tuple[PubSubMessage, bytes]:
    """The Pub/Sub message a push delivers and its body; the invocation learns which delivery
    attempt this is."""
    envelope, body = parse_pubsub(event)
    invocation.attempt = envelope.delivery_attempt or 1
    return envelope.message, body


def handle_dead_letter(event: CloudEventLike, ports: Ports) -> None:
    """Dead-letter topic: a message that exhausted its deliveries. Mark the run FAILED, alert;
    unless the run already succeeded (another copy finished it): then only a note is kept."""
    invocation = Invocation("dead-letter")
    with _handling(event, invocation, ports):  # no age limit: a failure must be recorded
        envelope, body = parse_pubsub(event)
        attributes = envelope.message.attributes
        invocation.delivery_id = f"message {envelope.message.message_id}"
        lag = ports.settings.schedule_lag_months
        invocation.run = run_of_dead_letter(body, attributes, lag)
        run_id = invocation.run_id
        events = ports.warehouse.run_events(run_id=run_id) if run_id else []
        last_error = next((e.error for e in reversed(events) if e.error), None)
        # The dead-letter delivery's own ``deliveryAttempt`` counts deliveries of the copy.
        count = attributes.get(DEAD_LETTER_DELIVERY_COUNT, "")
        attempts = count if count.isascii() and count.isdigit() else "all"
        if events and derive_run(events).state is RunState.SUCCESS:
            # At-least-once delivery: a copy of a message can exhaust its deliveries after
            # another copy completed the run. The rows are loaded; nothing failed.
            note = (
                f"a copy of a message of this run was dead-lettered after {attempts} delivery"
                " attempts, after the run had succeeded; nothing to do"
            )
            log.info("dead letter for a run that succeeded: %s", note)
            _record(ports, invocation, RunState.SKIPPED, note, strict=True, as_note=True)
            return
        reason = f"gave up after {attempts} delivery attempts" + (
            f"; last error: {last_error}" if last_error else ""
        )
        # Strict: were the failure not recorded (warehouse unavailable), the dead letter is
        # redelivered rather than acknowledged with the run left looking RETRYING forever.
        _record_failure(ports, invocation, RunState.FAILED, reason, alert=True, strict=True)


@contextmanager
def _handling(event: CloudEventLike, invocation: Invocation, ports: Ports) -> Iterator[None]:
    # Everything that can fail runs inside the block (the age check too): an exception raised
    # before the ``yield`` would be swallowed here and become "generator didn't yield" (a 500).
    with (
        log_context(invocation, step=invocation.step, event_id=str(event.get("id") or "")),
        run_scope(invocation),
    ):
        try:
            yield
        except RunCancelled as exc:
            # The reason given to the run (Ctrl-C, `runs cancel`), not the step's "interrupted".
            reason = ports.cancellation.reason(invocation.run_id) or str(exc)
            _record_failure(ports, invocation, RunState.CANCELLED, reason, alert=False)
        except Exception as exc:
            # Whatever an interrupted step raised (an aborted statement, a closed stream), a
            # cancelled run is recorded CANCELLED and acknowledged: never retried.
            cancelled = ports.cancellation.reason(invocation.run_id)
            if cancelled is not None:
                _record_failure(ports, invocation, RunState.CANCELLED, cancelled, alert=False)
            elif isinstance(exc, NotPublished):
                _record_failure(ports, invocation, RunState.SKIPPED, str(exc), alert=False)
            elif isinstance(exc, PermanentError):
                _record_failure(ports, invocation, RunState.FAILED, str(exc), alert=True)
            elif _raised_by_the_core(exc):
                # A bug or an input our own code cannot handle fails the same way on every
                # delivery: record it and acknowledge instead of retrying until the dead letter.
                log.warning("%s failed in the pipeline's own code", invocation.step, exc_info=True)
                reason = f"{type(exc).__name__}: {exc}"
                _record_failure(ports, invocation, RunState.FAILED, reason, alert=True)
            else:
                # Transient or unknown: let the platform redeliver (bounded by age and attempts).
                _record(ports, invocation, RunState.RETRYING, f"{type(exc).__name__}: {exc}")
                log.warning(
                    "%s attempt %d failed, will be retried: %s",
                    invocation.step,
                    invocation.attempt,
                    exc,
                )
                raise


_CORE_PACKAGES: Final = ("taxi_pipeline.domain.", "taxi_pipeline.pipeline.")


def _raised_by_the_core(exc: Exception) -> bool:
    r"""Whether ``exc`` is unexpected and was raised by the core's own (pure) code: the innermost
    frame is in ``domain/`` or ``pipeline/``. Errors raised in an adapter, an SDK or anything the
    core calls out to (the innermost frame is there) stay transient, as do our own
    :class:`PipelineError`\ s, which say what they are."""
    if isinstance(exc, PipelineError):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.startswith(_CORE_PACKAGES)


def _check_age(event: CloudEventLike, ports: Ports, invocation: Invocation) -> None:
    when = event_time(event)
    if when is None:
        return
    age = (datetime.now(UTC) - when).total_seconds()
    if age > ports.settings.max_event_age_seconds:
        # Dropped unread, but recorded against its run when the attributes say which one.
        message = event.data.get("message") if isinstance(event.data, dict) else None
        attributes = message.get("attributes") if isinstance(message, dict) else None
        if isinstance(attributes, dict) and all(isinstance(v, str) for v in attributes.values()):
            invocation.run = run_of_attributes(attributes) or invocation.run
        raise _TooOld(
            f"event is {age:.0f} s old, past the maximum age of"
            f" {ports.settings.max_event_age_seconds} s; dropped"
        )


class _TooOld(PermanentError):
    pass


def _record_failure(
    ports: Ports,
    invocation: Invocation,
    state: RunState,
    reason: str,
    *,
    alert: bool,
    strict: bool = False,
) -> None:
    with log_context(
        run_id=invocation.run_id,
        dataset=invocation.dataset.value if invocation.dataset else None,
        month=str(invocation.month) if invocation.month else None,
    ):
        if alert:
            log.error("run failed at %s: %s", invocation.step, reason, extra={"alert": ALERT_LABEL})
        else:
            log.info("run %s at %s: %s", state.value.lower(), invocation.step, reason)
    _record(ports, invocation, state, reason, strict=strict)
    run = invocation.run
    if isinstance(run, RunIdentity):
        publish_result(ports, _failed_result(run, state, reason))


def _failed_result(run: RunIdentity, state: RunState, error: str) -> IngestResult:
    return IngestResult(
        run_id=run.run_id,
        dataset=run.dataset,
        month=str(run.month),
        state=state,
        error=error[:2000],
        labels=dict(run.labels),
    )


def _record(
    ports: Ports,
    invocation: Invocation,
    state: RunState,
    reason: str,
    *,
    strict: bool = False,
    as_note: bool = False,
) -> None:
    """Append the outcome; an event we could not even parse is recorded under a stable id.

    Best effort unless ``strict``: a step's own failure must reach the platform even when the
    warehouse (the history's home) is what failed. ``as_note``: ``reason`` is no error, only a
    remark (:data:`history.NOTE`), which no run state is derived from.
    """
    # Per message too: unrelated rejections with the same reason are not one "run".
    rejected = f"{reason} {invocation.delivery_id}".encode()
    run_id = invocation.run_id or "rejected-" + hashlib.sha256(rejected).hexdigest()[:12]
    try:
        ports.warehouse.append_run_events(
            [
                RunEvent(
                    run_id=run_id,
                    dataset=invocation.dataset.value if invocation.dataset else "",
                    month=str(invocation.month) if invocation.month else "",
                    step=invocation.step,
                    state=state,
                    attempt=invocation.attempt,
                    finished_at=utcnow(),
                    labels=dict(invocation.run.labels) if invocation.run else {},
                    error=None if as_note else reason[:2000],
                    details={NOTE: reason[:2000]} if as_note else {},
                    recorded_at=utcnow(),
                )
            ]
        )
    except Exception:
        log.exception("could not record %s for run %s", state, run_id)
        if strict:
            raise


__all__ = [
    "InvalidMessage",
    "handle_dead_letter",
    "handle_ingest_request",
    "handle_merge_request",
    "handle_object_finalized",
]
