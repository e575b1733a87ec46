"""CloudEvents in the exact shapes Eventarc delivers (Pub/Sub messagePublished, GCS finalized).

Built field by field (not with ``taxi_pipeline.pipeline.cloudevents``) so the tests check the
parsing against the platform's shapes, extra fields included: ``@type``, ``message_id``, ``kind``,
``storageClass``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent

from taxi_pipeline.pipeline.cloudevents import GCS_FINALIZED, PUBSUB_PUBLISHED

PROJECT = "test-project"


def now_stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pubsub_event(
    topic: str,
    body: bytes | str,
    attributes: Mapping[str, str] | None = None,
    *,
    time: str | None = None,
    message_id: str = "3103425958877813",
    delivery_attempt: int | None = None,
    raw_data: str | None = None,
) -> CloudEvent:
    """A ``messagePublished`` event as Eventarc sends it (``raw_data`` replaces the base64)."""
    stamp = time or now_stamp()
    payload = body.encode() if isinstance(body, str) else body
    data: dict[str, Any] = {
        "subscription": f"projects/{PROJECT}/subscriptions/eventarc-us-central1-{topic}-sub-1",
        "message": {
            "data": raw_data if raw_data is not None else base64.b64encode(payload).decode(),
            "attributes": dict(attributes or {}),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": stamp,
            "publish_time": stamp,
            "@type": "type.googleapis.com/google.pubsub.v1.PubsubMessage",
        },
    }
    if delivery_attempt is not None:
        data["deliveryAttempt"] = delivery_attempt
    return CloudEvent(
        {
            "type": PUBSUB_PUBLISHED,
            "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/{topic}",
            "id": message_id,
            "time": stamp,
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        data,
    )


def gcs_event(
    bucket: str,
    name: str,
    generation: str,
    size: int,
    *,
    md5: str | None = None,
    metadata: Mapping[str, str] | None = None,
    time: str | None = None,
) -> CloudEvent:
    """A ``storage.object.v1.finalized`` event: generation and size as strings, base64 hashes."""
    stamp = time or now_stamp()
    data: dict[str, Any] = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "bucket": bucket,
        "name": name,
        "generation": generation,
        "metageneration": "1",
        "size": str(size),
        "contentType": "application/gzip",
        "storageClass": "STANDARD",
        "timeCreated": stamp,
        "updated": stamp,
        "crc32c": "rTVTeQ==",
        "metadata": dict(metadata or {}),
    }
    if md5:
        data["md5Hash"] = md5
    return CloudEvent(
        {
            "type": GCS_FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "subject": f"objects/{name}",
            "id": f"{bucket}/{name}/{generation}",
            "time": stamp,
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        data,
    )


def json_bytes(value: object) -> bytes:
    return json.dumps(value).encode()
