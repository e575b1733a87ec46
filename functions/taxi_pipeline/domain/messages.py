"""The pipeline's own messages (strict) and parsers for Google's payloads (lenient).

Our messages are frozen pydantic models with ``extra="forbid"`` and a version, so a malformed or
foreign message is rejected with a specific reason. Google's envelopes grow fields, so they are
parsed with ``extra="ignore"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from taxi_pipeline.domain.datasets import Dataset, Month, Upstream
from taxi_pipeline.errors import InvalidMessage

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Our messages are a few hundred bytes; anything far larger is refused before parsing."""

_RUN_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,62}$"
_LABEL_KEY_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,62}$"
_LABEL_VALUE_PATTERN: Final = r"^[a-z0-9_-]{0,63}$"
RunId = Annotated[str, StringConstraints(pattern=_RUN_ID_PATTERN)]
LabelKey = Annotated[str, StringConstraints(pattern=_LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(pattern=_LABEL_VALUE_PATTERN)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=16)]
"""Labels follow BigQuery's job-label rules so they can be copied onto jobs unchanged."""

M = TypeVar("M", bound=BaseModel)


_RUN_ID_RE: Final = re.compile(_RUN_ID_PATTERN)
_LABEL_KEY_RE: Final = re.compile(_LABEL_KEY_PATTERN)
_LABEL_VALUE_RE: Final = re.compile(_LABEL_VALUE_PATTERN)
LABEL_PREFIX: Final = "label_"
"""Labels travel as ``label_<key>`` message attributes and object metadata."""


def is_run_id(text: str) -> bool:
    """Whether ``text`` is a run id our messages could carry."""
    return bool(_RUN_ID_RE.fullmatch(text))


def labels_to_attributes(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels as ``label_*`` message attributes or object metadata."""
    return {f"{LABEL_PREFIX}{key}": value for key, value in labels.items()}


def labels_from_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """The valid ``label_*`` entries of message attributes or object metadata; attributes are
    trusted no more than bodies, so anything that is not a valid label is left out."""
    return {
        key.removeprefix(LABEL_PREFIX): value
        for key, value in attributes.items()
        if key.startswith(LABEL_PREFIX)
        and _LABEL_KEY_RE.fullmatch(key.removeprefix(LABEL_PREFIX))
        and _LABEL_VALUE_RE.fullmatch(value)
    }


SCHEDULE_TIME_ZONE_ATTRIBUTE: Final = "time_zone"
"""Attribute of a scheduled ingest request: the schedule's time zone, in which its month is read."""
DEAD_LETTER_DELIVERY_COUNT: Final = "CloudPubSubDeadLetterSourceDeliveryCount"
"""Attribute Pub/Sub adds to a dead-lettered copy: how many deliveries the original had."""
DEAD_LETTER_PUBLISH_TIME: Final = "CloudPubSubDeadLetterSourceTopicPublishTime"
"""Attribute Pub/Sub adds to a dead-lettered copy: the original's publish time."""


class Topic(StrEnum):
    """Pub/Sub topics of the pipeline (the same names in-process)."""

    INGEST_REQUESTS = "ingest-requests"
    MERGE_REQUESTS = "merge-requests"
    INGEST_RESULTS = "ingest-results"
    DEAD_LETTER = "ingest-dead-letter"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: Literal[1] = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def _month(value: object) -> Month:
    if isinstance(value, Month):
        return value
    if not isinstance(value, str):
        raise ValueError("month must be a string YYYY-MM")
    return Month.parse(value)


class IngestRequest(_Message):
    """Body of an ``ingest-requests`` message: load one dataset-month.

    ``month`` may be absent (Cloud Scheduler's static body): the month then comes from the
    event's time, minus ``lag_months`` (absent: ``TAXI_PIPELINE_SCHEDULE_LAG_MONTHS``).
    ``run_id`` may be absent: the download step assigns one. ``source`` absent:
    ``TAXI_PIPELINE_SOURCE`` (``auto``). ``replace``: a month loaded from the other source (or
    from an upstream file that changed since) has its rows replaced instead of the run being
    refused. Every field added since version 1 is optional, so older messages stay valid.
    """

    dataset: Dataset
    month: str | None = None
    run_id: RunId | None = None
    labels: Labels = Field(default_factory=dict)
    force: bool = False
    source: Upstream | None = None
    replace: bool = False
    lag_months: int | None = Field(default=None, ge=0, le=24)

    @field_validator("month")
    @classmethod
    def _check_month(cls, value: str | None) -> str | None:
        if value is not None:
            _month(value)
        return value

    @property
    def parsed_month(self) -> Month | None:
        return None if self.month is None else Month.parse(self.month)


class MergeRequest(_Message):
    """Body of a ``merge-requests`` message: stage and merge one verified lake object."""

    dataset: Dataset
    month: str
    run_id: RunId
    object_name: str
    generation: str
    labels: Labels = Field(default_factory=dict)
    force: bool = False
    replace: bool = False
    """Replace the month's rows (of either source) instead of refusing another source's."""

    @field_validator("month")
    @classmethod
    def _check_month(cls, value: str) -> str:
        _month(value)
        return value

    @property
    def parsed_month(self) -> Month:
        return Month.parse(self.month)


class RunState(StrEnum):
    """States of a run and of its steps (Kestra's vocabulary)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    CANCELLED = "CANCELLED"
    """Stopped on request (Ctrl-C, SIGTERM, ``runs cancel``): Kestra's KILLED; never retried."""
    ABANDONED = "ABANDONED"
    """Derived, never written: the run was active, but the process running it is gone (or, in
    the cloud, its step outlived the function timeout without an outcome)."""


class IngestResult(_Message):
    """Body of an ``ingest-results`` message: the outcome of one run."""

    run_id: RunId
    dataset: Dataset
    month: str
    state: RunState
    rows_in_file: int | None = None
    rows_inserted: int | None = None
    rows_already_present: int | None = None
    rows_out_of_month: int | None = None
    rows_bad: int | None = None
    bytes_downloaded: int | None = None
    error: str | None = None
    labels: Labels = Field(default_factory=dict)
    rows_replaced: int | None = None
    """Rows of the month deleted by a ``replace`` run (the other source's, or the old file's)."""
    notes: tuple[str, ...] | None = None
    """What the run loaded differently from what the file holds (``new column X not loaded``),
    and what it replaced."""


# ---------------------------------------------------------------------------------------------
# Google's payloads: lenient.


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PubSubMessage(_Lenient):
    data: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    message_id: str = Field(default="", alias="messageId")
    publish_time: datetime | None = Field(default=None, alias="publishTime")


class PubSubEnvelope(_Lenient):
    """``data`` of a ``google.cloud.pubsub.topic.v1.messagePublished`` CloudEvent."""

    message: PubSubMessage
    subscription: str = ""
    delivery_attempt: int | None = Field(default=None, alias="deliveryAttempt")


class GcsObject(_Lenient):
    """``data`` of a ``google.cloud.storage.object.v1.finalized`` CloudEvent."""

    bucket: str
    name: str
    generation: str
    size: int
    md5_hash: str | None = Field(default=None, alias="md5Hash")
    crc32c: str | None = None
    content_type: str | None = Field(default=None, alias="contentType")
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("generation", mode="before")
    @classmethod
    def _generation_digits(cls, value: object) -> str:
        text = str(value)
        # ASCII only: str.isdigit() also accepts "١٢٣" or "²", which GCS never sends and which
        # would reach run ids, SQL parameters and preconditions.
        if not (text.isascii() and text.isdigit()):
            raise ValueError("generation must be a decimal number")
        return text


def parse_model(model: type[M], payload: object, what: str) -> M:
    """Validate ``payload`` into ``model``; a failure becomes a specific :class:`InvalidMessage`."""
    try:
        if isinstance(payload, bytes | str):
            if len(payload) > MAX_MESSAGE_BYTES:
                raise InvalidMessage(f"{what} is {len(payload)} bytes, over {MAX_MESSAGE_BYTES}")
            return model.model_validate_json(payload)
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise InvalidMessage(f"invalid {what}: {problems}") from exc
