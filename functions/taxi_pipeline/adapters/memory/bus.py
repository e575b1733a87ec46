"""InProcessBus: Pub/Sub semantics in one process, for the embedded default.

Publishing wraps the message in the same CloudEvent envelope Eventarc delivers, and a worker
pool hands it to the same handlers the Cloud Run functions run. A handler that raises is
redelivered (with ``deliveryAttempt`` counting up, as with a dead-letter policy) until
``max_attempts``; then the message goes to the dead-letter topic, as in the cloud. Pub/Sub
delivers at least once and in no set order: ``copies`` and ``seed`` make this bus do so too
(every message delivered ``copies`` times, the next delivery drawn at random), which the
reliability tests ask for (``adapters/faults``).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cloudevents.http import CloudEvent

from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.pipeline.cloudevents import (
    PUBSUB_PUBLISHED,
    CloudEventLike,
    build_pubsub_event,
    dead_letter_attributes,
    event_time,
)

log = logging.getLogger(__name__)

_WAKE_SECONDS: Final = 0.25
"""How often the draining thread wakes to run a signal handler another thread took."""

Handler = Callable[[CloudEventLike], None]


@dataclass
class _Delivery:
    topic: str
    event: CloudEvent
    body: bytes
    attributes: dict[str, str]
    attempt: int


class InProcessBus:
    """Queue plus worker threads; :meth:`drain` returns when every message has been handled."""

    def __init__(
        self,
        project: str = "local",
        max_attempts: int = 5,
        *,
        copies: int = 1,
        seed: int | None = None,
    ) -> None:
        self.project = project
        self.max_attempts = max_attempts
        self.copies = copies
        self._random = random.Random(seed) if seed is not None else None
        self._handlers: dict[str, Handler] = {}
        self._listeners: dict[str, list[Callable[[bytes, Mapping[str, str]], None]]] = {}
        self._queue: deque[_Delivery] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    def subscribe(self, topic: Topic | str, handler: Handler) -> None:
        """Deliver ``topic``'s messages to ``handler`` (one push subscription per topic)."""
        self._handlers[str(topic)] = handler

    def listen(
        self, topic: Topic | str, listener: Callable[[bytes, Mapping[str, str]], None]
    ) -> None:
        """Observe a topic's messages synchronously at publish time (the CLI's result collector)."""
        self._listeners.setdefault(str(topic), []).append(listener)

    def publish(self, topic: Topic, data: bytes, attributes: Mapping[str, str]) -> str:
        event = build_pubsub_event(self.project, topic, data, attributes)
        with self._cond:
            self.published.append((str(topic), data, dict(attributes)))
        for listener in self._listeners.get(str(topic), []):
            listener(data, attributes)
        if str(topic) in self._handlers:
            self._enqueue(_Delivery(str(topic), event, data, dict(attributes), 1), self.copies)
        return str(event["id"])

    def deliver(
        self,
        topic: str,
        event: CloudEvent,
        attributes: Mapping[str, str],
        body: bytes | None = None,
    ) -> None:
        """Queue a ready-made event (the lake's object-finalized events, a message published
        elsewhere); ``attributes`` go with it to the dead-letter topic if it keeps failing, with
        ``body`` (the Pub/Sub message a redelivery re-wraps; default: the event's data)."""
        data = body if body is not None else json.dumps(event.data).encode()
        self._enqueue(_Delivery(topic, event, data, dict(attributes), 1), self.copies)

    def _enqueue(self, delivery: _Delivery, copies: int = 1) -> None:
        with self._cond:
            self._queue.extend([delivery] * copies)
            self._cond.notify(copies)

    def drain(self, workers: int = 1) -> None:
        """Handle messages with ``workers`` threads until the queue is empty and all are idle.

        Always on worker threads, never the caller's: the CLI's main thread stays free to take
        Ctrl-C at once (Python runs signal handlers there, between bytecodes, which a DuckDB
        statement or a blocked read would hold off)."""
        threads = [
            threading.Thread(target=self._work, name=f"bus-worker-{i}", daemon=True)
            for i in range(max(workers, 1))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                # Woken now and then: a signal the kernel gave another thread (any thread may
                # take it, e.g. once a stopped process continues) runs its handler here.
                thread.join(_WAKE_SECONDS)

    def idle(self) -> bool:
        """Nothing queued and nothing being handled."""
        with self._cond:
            return not self._queue and not self._in_flight

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._in_flight:
                    self._cond.wait()
                if not self._queue:
                    self._cond.notify_all()
                    return
                delivery = self._next()
                self._in_flight += 1
            try:
                self._handle(delivery)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _next(self) -> _Delivery:
        """The next delivery (the lock held): the oldest, or one at random with a seed."""
        if self._random is None:
            return self._queue.popleft()
        index = self._random.randrange(len(self._queue))
        delivery = self._queue[index]
        del self._queue[index]
        return delivery

    def _handle(self, delivery: _Delivery) -> None:
        handler = self._handlers[delivery.topic]
        try:
            handler(delivery.event)
        except Exception as exc:
            if delivery.attempt >= self.max_attempts:
                # A warning: the dead-letter handler records the run FAILED and logs the alert.
                log.warning(
                    "message on %s failed %d times; dead-lettered: %s",
                    delivery.topic,
                    delivery.attempt,
                    exc,
                )
                if delivery.topic != Topic.DEAD_LETTER:
                    self.publish(
                        Topic.DEAD_LETTER,
                        delivery.body,
                        dead_letter_attributes(
                            delivery.event, delivery.attributes, delivery.attempt
                        ),
                    )
                return
            self._enqueue(self._redelivery(delivery))

    def _redelivery(self, delivery: _Delivery) -> _Delivery:
        attempt = delivery.attempt + 1
        if delivery.event["type"] == PUBSUB_PUBLISHED:
            event = build_pubsub_event(
                self.project,
                delivery.topic,
                delivery.body,
                delivery.attributes,
                message_id=str(delivery.event["id"]),
                delivery_attempt=attempt,
                # A redelivery is the same message: same id, same publish time.
                time=event_time(delivery.event),
            )
        else:
            event = delivery.event
        return _Delivery(delivery.topic, event, delivery.body, delivery.attributes, attempt)
