"""CloudEvents as Eventarc delivers them: parsing (every entry point) and building (the
in-process bus, the folder store and tests), so local runs exercise the cloud's payload shapes.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from cloudevents.http import CloudEvent

from taxi_pipeline.domain.formats import format_of
from taxi_pipeline.domain.messages import (
    DEAD_LETTER_DELIVERY_COUNT,
    DEAD_LETTER_PUBLISH_TIME,
    GcsObject,
    PubSubEnvelope,
    Topic,
    parse_model,
)
from taxi_pipeline.errors import InvalidMessage
from taxi_pipeline.pipeline.ports import ObjectInfo

PUBSUB_PUBLISHED: Final = "google.cloud.pubsub.topic.v1.messagePublished"
GCS_FINALIZED: Final = "google.cloud.storage.object.v1.finalized"

# Random start: like Pub/Sub's (unique per topic), message ids must not repeat across
# processes, since what is recorded about a message may be keyed by its id (handlers: a
# rejected message's record, a run id when a message has no publish time).
_message_ids = itertools.count(10**15 + secrets.randbelow(8 * 10**15))


class CloudEventLike(Protocol):
    """What the handlers read of a CloudEvent (``cloudevents.http.CloudEvent`` has it)."""

    data: Any

    def get(self, key: str, default: Any = None) -> Any: ...


def event_time(event: CloudEventLike) -> datetime | None:
    raw = event.get("time")
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidMessage(f"event time {raw!r} is not an RFC 3339 timestamp") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def dead_letter_attributes(
    event: CloudEventLike, attributes: Mapping[str, str], deliveries: int
) -> dict[str, str]:
    """The attributes of the copy Pub/Sub forwards to a dead-letter topic: the original's, the
    delivery count and the original publish time (the forwarded copy gets a new message id)."""
    forwarded = dict(attributes) | {DEAD_LETTER_DELIVERY_COUNT: str(deliveries)}
    published = event_time(event)
    if published is not None:
        stamp = published.astimezone(UTC).isoformat(timespec="milliseconds")
        forwarded[DEAD_LETTER_PUBLISH_TIME] = stamp
    return forwarded


def _require_type(event: CloudEventLike, expected: str) -> None:
    actual = event.get("type")
    if actual != expected:
        raise InvalidMessage(f"expected a {expected} event, got type {actual!r}")


def _data_dict(event: CloudEventLike) -> dict[str, Any]:
    data = event.data
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise InvalidMessage("event data is not JSON") from exc
    if not isinstance(data, dict):
        raise InvalidMessage(f"event data must be a JSON object, got {type(data).__name__}")
    return data


def parse_pubsub(event: CloudEventLike) -> tuple[PubSubEnvelope, bytes]:
    """The Pub/Sub envelope and the decoded message body."""
    _require_type(event, PUBSUB_PUBLISHED)
    envelope = parse_model(PubSubEnvelope, _data_dict(event), "Pub/Sub envelope")
    try:
        body = base64.b64decode(envelope.message.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessage("Pub/Sub message.data is not valid base64") from exc
    return envelope, body


def parse_gcs(event: CloudEventLike) -> GcsObject:
    _require_type(event, GCS_FINALIZED)
    return parse_model(GcsObject, _data_dict(event), "Cloud Storage object event")


def build_pubsub_event(
    project: str,
    topic: Topic | str,
    body: bytes,
    attributes: Mapping[str, str],
    *,
    message_id: str | None = None,
    delivery_attempt: int | None = None,
    time: datetime | None = None,
) -> CloudEvent:
    """A ``messagePublished`` CloudEvent shaped exactly like Eventarc's."""
    when = time or datetime.now(UTC)
    message_id = message_id or str(next(_message_ids))
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data: dict[str, Any] = {
        "subscription": f"projects/{project}/subscriptions/eventarc-{topic}-sub",
        "message": {
            "data": base64.b64encode(body).decode(),
            "attributes": dict(attributes),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": stamp,
            "publish_time": stamp,
        },
    }
    if delivery_attempt is not None:
        data["deliveryAttempt"] = delivery_attempt
    return CloudEvent(
        {
            "type": PUBSUB_PUBLISHED,
            "source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
            "id": message_id,
            "time": stamp,
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        data,
    )


def build_gcs_event(info: ObjectInfo, *, time: datetime | None = None) -> CloudEvent:
    """A ``finalized`` CloudEvent for a lake object, shaped like the GCS one."""
    when = (time or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data: dict[str, Any] = {
        "bucket": info.bucket,
        "name": info.name,
        "generation": info.generation,
        "metageneration": "1",
        "size": str(info.size),
        "contentType": fmt.content_type if (fmt := format_of(info.name)) else "",
        "timeCreated": when,
        "updated": when,
        "metadata": dict(info.metadata),
    }
    if info.md5_base64:
        data["md5Hash"] = info.md5_base64
    if info.crc32c_base64:
        data["crc32c"] = info.crc32c_base64
    return CloudEvent(
        {
            "type": GCS_FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{info.bucket}",
            "subject": f"objects/{info.name}",
            "id": f"{info.bucket}/{info.name}/{info.generation}",
            "time": when,
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        data,
    )
