"""PubSubBus: the ``Bus`` port on Cloud Pub/Sub.

One ``PublisherClient`` per process, built on the first publish (its gRPC channel and batching
threads are expensive; creating one per message leaks them). ``publish`` waits for the server's
confirmation before it returns, so a function never acknowledges its event while the next step's
message could still be lost with the instance.
"""

# google-cloud-pubsub ships no py.typed: its objects are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, Final

from taxi_pipeline.adapters.google_errors import translate
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.errors import ConfigurationError

_PROJECT: Final = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.:-]{1,63}$")

_shared_publisher: Any = None
_shared_lock = threading.Lock()


def _default_publisher() -> Any:
    """The process's publisher (honours ``PUBSUB_EMULATOR_HOST``), created on first use."""
    global _shared_publisher
    with _shared_lock:
        if _shared_publisher is None:
            from google.cloud import pubsub_v1

            # Publish latency matters more than batching: a function sends one message per event.
            _shared_publisher = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(max_latency=0.005)
            )
        return _shared_publisher


class PubSubBus:
    """Publishes to ``projects/<project>/topics/<topic>`` and waits for the message id."""

    def __init__(self, project: str, *, publisher: Any = None, timeout: float = 60.0) -> None:
        if not _PROJECT.match(project):
            raise ConfigurationError(f"{project!r} is not a valid Google Cloud project id")
        self.project = project
        self.timeout = timeout
        self._publisher = publisher

    @property
    def publisher(self) -> Any:
        if self._publisher is None:
            try:
                self._publisher = _default_publisher()
            except Exception as exc:
                raise translate(exc, "create the Pub/Sub publisher") from exc
        return self._publisher

    def topic_path(self, topic: Topic | str) -> str:
        return f"projects/{self.project}/topics/{Topic(topic).value}"

    def publish(self, topic: Topic, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish ``data`` with ``attributes``; returns the server's message id once confirmed."""
        path = self.topic_path(topic)
        try:
            future = self.publisher.publish(path, data, **dict(attributes))
            message_id = future.result(timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, f"publish to {path}") from exc
        return str(message_id)
