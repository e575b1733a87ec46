"""Runs: which run a message, lake object or event belongs to, and the lines its history holds.

A run is named by its id (``green-201901-3fa2c1d9``), its dataset and month, and carries its
labels: :class:`RunIdentity`. Every message of a run carries it along the chain as attributes
(:meth:`RunIdentity.attributes`), a downloaded lake object as metadata. A delivery that names no
run (Cloud Scheduler's static body, a hand publish, a hand upload) starts one whose id is
derived from the delivery (:func:`message_delivery`, :func:`object_delivery`), so every
redelivery of it, and the dead-letter handler given its forwarded copy, name that same run.
Everything that derives a run's identity is here, and only here.

A message whose run cannot be identified (a month refused, attributes that are not ours) is
known only by what it claims (:class:`RunClaim`): its failure is recorded with that, under a
``rejected-...`` id, and no result is published for it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from taxi_pipeline.domain.datasets import Dataset, Month, parse_object
from taxi_pipeline.domain.messages import (
    DEAD_LETTER_PUBLISH_TIME,
    SCHEDULE_TIME_ZONE_ATTRIBUTE,
    GcsObject,
    IngestRequest,
    IngestResult,
    MergeRequest,
    RunState,
    is_run_id,
    labels_from_attributes,
    labels_to_attributes,
    parse_model,
)
from taxi_pipeline.errors import InvalidMessage

EARLIEST_MONTH: Final = Month(2009, 1)
"""The first month of TLC trip records; anything earlier cannot exist upstream."""

QUEUE_STEP: Final = "queue"
"""The pseudo-step of the QUEUED line written when a request is submitted."""
CANCEL_STEP: Final = "cancel"
"""The pseudo-step of the line that asks a run to stop (Ctrl-C, ``runs cancel``)."""


@dataclass(frozen=True)
class RunIdentity:
    """The run a message, lake object or event belongs to."""

    run_id: str
    dataset: Dataset
    month: Month
    labels: Mapping[str, str] = field(default_factory=dict)

    def attributes(self) -> dict[str, str]:
        """Pub/Sub attributes (and lake object metadata) that carry the run along the chain."""
        return {
            "run_id": self.run_id,
            "dataset": self.dataset.value,
            "month": str(self.month),
            **labels_to_attributes(self.labels),
        }


@dataclass(frozen=True)
class RunClaim:
    """What a delivery says of its run when the run is not identified (yet): its failure is
    recorded with these, under a ``rejected-...`` id when ``run_id`` is unknown."""

    dataset: Dataset
    month: Month | None = None
    run_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


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


# -- deliveries -------------------------------------------------------------------------------


def message_delivery(published: datetime | None, message_id: str, body: bytes) -> str:
    """What names one published message on each of its deliveries and in its dead-lettered copy.

    The copy Pub/Sub forwards to the dead-letter topic has a new message id but the same body,
    and the original publish time as ``CloudPubSubDeadLetterSourceTopicPublishTime``; so the
    publish time (to the millisecond, the precision both carry) and the body name the message.
    """
    if published is None:
        return f"message {message_id}" if message_id else ""
    stamp = published.astimezone(UTC).isoformat(timespec="milliseconds")
    return f"published {stamp} {hashlib.sha256(body).hexdigest()[:16]}"


def object_delivery(obj: GcsObject) -> str:
    """What names one object generation on every event about it (GCS's dedup key)."""
    return f"object {obj.bucket}/{obj.name}#{obj.generation}"


def object_event_attributes(name: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """The attributes an object-finalized event goes with (to the dead letter, if it keeps
    failing): the object, and the run its name and metadata say."""
    attributes = {"object": name}
    with suppress(ValueError):
        dataset, month, _ = parse_object(name)
        attributes |= {"dataset": dataset.value, "month": str(month)}
    if "run_id" in metadata:
        attributes["run_id"] = metadata["run_id"]
    return attributes


# -- the month of a request -------------------------------------------------------------------


def in_time_zone(when: datetime, zone_name: str | None) -> datetime:
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


def resolve_month(request: IngestRequest, event_time: datetime, default_lag: int) -> Month:
    """The request's month, or (scheduled runs) the event time's month minus the lag: the
    request's ``lag_months`` (what a schedule asks for), else ``default_lag`` (the setting's)."""
    explicit = request.parsed_month
    if explicit is not None:
        month = explicit
    else:
        lag = request.lag_months if request.lag_months is not None else default_lag
        month = Month(event_time.year, event_time.month).minus(lag)
    latest = Month(event_time.year, event_time.month)
    if month < EARLIEST_MONTH:
        raise InvalidMessage(f"month {month} is before the first published month {EARLIEST_MONTH}")
    if latest < month:
        raise InvalidMessage(f"month {month} is in the future (now {latest})")
    return month


# -- identifying runs -------------------------------------------------------------------------


def claimed_by_request(request: IngestRequest) -> RunIdentity | RunClaim:
    """What an ingest request says of its run before its month is checked: a refusal (a month
    in the future) is recorded against that run, with its dataset and month."""
    month = request.parsed_month
    if request.run_id is not None and month is not None:
        return RunIdentity(request.run_id, request.dataset, month, dict(request.labels))
    return RunClaim(request.dataset, month, request.run_id, dict(request.labels))


def run_of_request(
    request: IngestRequest, event_time: datetime, delivery: str, default_lag: int
) -> RunIdentity:
    """The run an ingest request starts or continues. A request without a run id starts a run
    whose id is derived from ``delivery`` (:func:`message_delivery`)."""
    month = resolve_month(request, event_time, default_lag)
    labels = dict(request.labels)
    labels.setdefault("trigger", "manual" if request.month else "schedule")
    run_id = request.run_id or new_run_id(request.dataset, month, derived_from=delivery)
    return RunIdentity(run_id, request.dataset, month, labels)


def run_of_object(obj: GcsObject) -> RunIdentity:
    """The run a ``raw/`` object belongs to: the one its metadata names (a download), or one
    derived from the object's generation (uploaded by hand, or by a tool that sets no
    metadata), so redelivered events of that generation continue one run. An object not named
    as a month's raises :class:`InvalidMessage`."""
    try:
        dataset, month, _ = parse_object(obj.name)
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from exc
    run_id = obj.metadata.get("run_id", "")
    if is_run_id(run_id):
        return RunIdentity(run_id, dataset, month, labels_from_attributes(obj.metadata))
    derived = new_run_id(dataset, month, derived_from=object_delivery(obj))
    return RunIdentity(derived, dataset, month, {"trigger": "upload"})


def run_of_merge_request(request: MergeRequest) -> RunIdentity:
    return RunIdentity(request.run_id, request.dataset, request.parsed_month, dict(request.labels))


def run_of_result(result: IngestResult) -> RunIdentity:
    return RunIdentity(result.run_id, result.dataset, Month.parse(result.month), result.labels)


def run_of_attributes(attributes: Mapping[str, str]) -> RunIdentity | RunClaim | None:
    """The run an event belongs to, from the attributes every message of a run carries.

    Only valid values are taken: a failure is recorded against a run (and its result
    published) only when the identity is one our messages could have carried; otherwise it is
    recorded under a ``rejected-...`` id. Attributes are not trusted more than bodies are.
    """
    try:
        dataset = Dataset(attributes.get("dataset", ""))
        month = Month.parse(attributes.get("month", ""))
    except ValueError:
        return None
    run_id = attributes.get("run_id", "")
    labels = labels_from_attributes(attributes)
    if is_run_id(run_id):
        return RunIdentity(run_id, dataset, month, labels)
    return RunClaim(dataset, month, None, labels)


def run_of_dead_letter(
    body: bytes, attributes: Mapping[str, str], default_lag: int
) -> RunIdentity | RunClaim | None:
    """The run a dead-lettered message belongs to: the one its attributes name, else (a request
    published by hand or by Cloud Scheduler, a Cloud Storage event) the one its body names,
    read as each message we consume; an ingest request without a run id names the run its
    download derived (from the original publish time the copy carries)."""
    claimed = run_of_attributes(attributes)
    if isinstance(claimed, RunIdentity):
        return claimed
    return _run_of_body(body, attributes, default_lag) or claimed


def _run_of_body(
    body: bytes, attributes: Mapping[str, str], default_lag: int
) -> RunIdentity | None:
    with suppress(InvalidMessage):
        return run_of_merge_request(parse_model(MergeRequest, body, "dead letter"))
    ingest_request: IngestRequest | None = None
    with suppress(InvalidMessage):
        ingest_request = parse_model(IngestRequest, body, "dead letter")
    if ingest_request is not None:
        published = _parse_time(attributes.get(DEAD_LETTER_PUBLISH_TIME, ""))
        if published is None:
            return None
        with suppress(InvalidMessage):
            when = in_time_zone(published, attributes.get(SCHEDULE_TIME_ZONE_ATTRIBUTE))
            delivery = message_delivery(published, "", body)
            return run_of_request(ingest_request, when, delivery, default_lag)
        return None
    with suppress(InvalidMessage):
        return run_of_object(parse_model(GcsObject, body, "dead letter"))
    return None


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


# -- the history's lines ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunEvent:
    """One appended line of the run history (``pipeline_runs``)."""

    run_id: str
    dataset: str
    month: str
    step: str
    state: RunState
    attempt: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows: int | None = None
    bytes: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    recorded_at: datetime | None = None
    process: str | None = None
    """``host:pid:token`` of the process that wrote the line, where the history records it (the
    embedded default's): a run whose process is gone is ABANDONED."""


@dataclass(frozen=True)
class LoadRecord:
    """A lake object that was merged completely into its final table."""

    dataset: Dataset
    month: Month
    object_name: str
    generation: str
    run_id: str
    rows_in_file: int
    rows_inserted: int
    loaded_at: datetime
