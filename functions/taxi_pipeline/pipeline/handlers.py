"""What each entry point does with its CloudEvent, independent of the function runtime.

``functions/main.py`` wraps these for Cloud Run; the in-process bus calls the very same ones.
Every handler: parse the real payload shape, drop events older than the maximum age, run the
step, and sort failures: permanent ones are recorded, logged at ERROR and acknowledged (the
function returns normally, so there is no retry storm); transient ones are recorded as RETRYING
and re-raised so Pub/Sub / Eventarc redeliver.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taxi_pipeline.domain.datasets import Dataset, Month, parse_object_name
from taxi_pipeline.domain.history import NOTE, derive_run
from taxi_pipeline.domain.messages import (
    SCHEDULE_TIME_ZONE_ATTRIBUTE,
    GcsObject,
    IngestRequest,
    MergeRequest,
    RunState,
    is_run_id,
    labels_from_attributes,
    parse_model,
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
from taxi_pipeline.pipeline.cloudevents import (
    DEAD_LETTER_DELIVERY_COUNT,
    DEAD_LETTER_PUBLISH_TIME,
    CloudEventLike,
    event_time,
    parse_gcs,
    parse_pubsub,
)
from taxi_pipeline.pipeline.ports import Ports, RunEvent
from taxi_pipeline.pipeline.recorder import utcnow
from taxi_pipeline.pipeline.steps import download, merge, register
from taxi_pipeline.pipeline.steps.common import Invocation, failed_result, publish_result

log = logging.getLogger(__name__)

ALERT_LABEL = "taxi-pipeline-run-failed"
"""Value of the ``alert`` field on the ERROR line a log-based alert matches."""


def handle_ingest_request(event: CloudEventLike, ports: Ports) -> None:
    """Pub/Sub ``ingest-requests`` -> download."""
    invocation = Invocation("download")
    with _handling(event, invocation, ports):
        _check_age(event, ports, invocation)
        envelope, body = parse_pubsub(event)
        invocation.attempt = envelope.delivery_attempt or 1
        message = envelope.message
        invocation.delivery_id = message_identity(message.publish_time, message.message_id, body)
        request = parse_model(IngestRequest, body, "ingest request")
        # Known before the step checks the request: a refusal (a month in the future) is
        # recorded against this run, with its dataset and month, not as a stray rejection.
        invocation.run_id, invocation.dataset = request.run_id, request.dataset
        invocation.month, invocation.labels = request.parsed_month, dict(request.labels)
        when = message.publish_time or event_time(event) or datetime.now(UTC)
        when = _in_time_zone(when, message.attributes.get(SCHEDULE_TIME_ZONE_ATTRIBUTE))
        download.run(request, when, invocation, ports)


def message_identity(published: datetime | None, message_id: str, body: bytes) -> str:
    """What names one published message on each of its deliveries and in its dead-lettered copy.

    The copy Pub/Sub forwards to the dead-letter topic has a new message id but the same body,
    and the original publish time as ``CloudPubSubDeadLetterSourceTopicPublishTime``; so the
    publish time (to the millisecond, the precision both carry) and the body name the message.
    """
    if published is None:
        return f"message {message_id}" if message_id else ""
    stamp = published.astimezone(UTC).isoformat(timespec="milliseconds")
    return f"published {stamp} {hashlib.sha256(body).hexdigest()[:16]}"


def _in_time_zone(when: datetime, zone_name: str | None) -> datetime:
    """A scheduled run loads the month of its fire time as the schedule's time zone reads it (a
    job at 01:00 on the 1st in Asia/Tokyo fires on the last day of the month before in UTC); the
    Cloud Scheduler jobs carry their zone as an attribute."""
    if zone_name is None:
        return when
    try:
        return when.astimezone(ZoneInfo(zone_name))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidMessage(
            f"attribute {SCHEDULE_TIME_ZONE_ATTRIBUTE}={zone_name[:60]!r} is not a known time zone"
        ) from exc


def handle_object_finalized(event: CloudEventLike, ports: Ports) -> None:
    """GCS object finalized in the lake -> register the external table."""
    invocation = Invocation("register")
    with _handling(event, invocation, ports):
        _check_age(event, ports, invocation)
        obj = parse_gcs(event)
        invocation.delivery_id = obj.identity
        register.run(obj, invocation, ports)


def handle_merge_request(event: CloudEventLike, ports: Ports) -> None:
    """Pub/Sub ``merge-requests`` -> stage and merge."""
    invocation = Invocation("merge")
    with _handling(event, invocation, ports):
        _check_age(event, ports, invocation)
        envelope, body = parse_pubsub(event)
        invocation.attempt = envelope.delivery_attempt or 1
        invocation.delivery_id = f"message {envelope.message.message_id}"
        merge.run(parse_model(MergeRequest, body, "merge request"), invocation, ports)


def handle_dead_letter(event: CloudEventLike, ports: Ports) -> None:
    """Dead-letter topic: a message that exhausted its deliveries. Mark the run FAILED, alert;
    unless the run already succeeded (another copy finished it): then only a note is kept."""
    invocation = Invocation("dead-letter")
    with _handling(event, invocation, ports):  # no age limit: a failure must be recorded
        envelope, body = parse_pubsub(event)
        attributes = envelope.message.attributes
        invocation.delivery_id = f"message {envelope.message.message_id}"
        _identify(attributes, invocation)
        if invocation.run_id is None:
            _identify_from_body(body, attributes, invocation, ports)
        events = ports.warehouse.run_events(run_id=invocation.run_id) if invocation.run_id else []
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


def _identify_from_body(
    body: bytes, attributes: Mapping[str, str], invocation: Invocation, ports: Ports
) -> None:
    """The run a dead letter belongs to when its attributes do not say (a request published by
    hand or by Cloud Scheduler, a Cloud Storage event): from the body, read as each message we
    consume; an ingest request without a run id names the run its download derived."""
    merge_request: MergeRequest | None = None
    with suppress(InvalidMessage):
        merge_request = parse_model(MergeRequest, body, "dead letter")
    if merge_request is not None:
        invocation.dataset, invocation.month = merge_request.dataset, merge_request.parsed_month
        invocation.labels = dict(merge_request.labels)
        invocation.run_id = merge_request.run_id
        return
    ingest_request: IngestRequest | None = None
    with suppress(InvalidMessage):
        ingest_request = parse_model(IngestRequest, body, "dead letter")
    if ingest_request is not None:
        published = _parse_time(attributes.get(DEAD_LETTER_PUBLISH_TIME, ""))
        if published is None:
            return
        with suppress(InvalidMessage):
            when = _in_time_zone(published, attributes.get(SCHEDULE_TIME_ZONE_ATTRIBUTE))
            identity = message_identity(published, "", body)
            run_id, month, labels = download.identify_run(
                ingest_request, when, identity, ports.settings
            )
            invocation.dataset, invocation.month = ingest_request.dataset, month
            invocation.run_id, invocation.labels = run_id, labels
        return
    try:
        obj = parse_model(GcsObject, body, "dead letter")
        dataset, month = parse_object_name(obj.name)
    except (InvalidMessage, ValueError):
        return
    invocation.dataset, invocation.month = dataset, month
    invocation.run_id, invocation.labels = register.run_of_object(obj)


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


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


def _identify(attributes: Mapping[str, str], invocation: Invocation) -> None:
    """The run an event belongs to, from the attributes every message of a run carries.

    Only valid values are taken: a failure is recorded against a run (and its result
    published) only when the identity is one our messages could have carried; otherwise it is
    recorded under a ``rejected-...`` id. Attributes are not trusted more than bodies are.
    """
    try:
        dataset = Dataset(attributes.get("dataset", ""))
        month = Month.parse(attributes.get("month", ""))
    except ValueError:
        return
    run_id = attributes.get("run_id", "")
    invocation.dataset, invocation.month = dataset, month
    invocation.run_id = run_id if is_run_id(run_id) else None
    invocation.labels = labels_from_attributes(attributes)


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
            _identify(attributes, invocation)
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
    result = failed_result(invocation, state, reason)
    if result is not None:
        publish_result(ports, result)


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
                    labels=invocation.labels,
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
