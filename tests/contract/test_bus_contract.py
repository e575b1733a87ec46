"""The ``Bus`` contract over InProcessBus and PubSubBus (the Pub/Sub emulator).

Whatever is published with attributes arrives as the same bytes and attributes, and ``publish``
returns the message id only once the message is accepted.
"""

# google-cloud-pubsub ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from emulators import PubSubEmulator

from taxi_pipeline.adapters.memory.bus import InProcessBus
from taxi_pipeline.adapters.pubsub.bus import PubSubBus
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.errors import PermanentError
from taxi_pipeline.pipeline.cloudevents import parse_pubsub
from taxi_pipeline.pipeline.ports import Bus

Received = list[tuple[bytes, dict[str, str]]]


@dataclass
class BusUnderTest:
    bus: Bus
    receive: Callable[[Topic, int], Received]
    """Wait (bounded) until ``n`` messages arrived on the topic; return them."""


def _in_process(request: pytest.FixtureRequest) -> BusUnderTest:
    bus = InProcessBus(project="contract")
    seen: dict[str, Received] = {}
    for topic in Topic:
        # The handler gets the CloudEvent Eventarc would deliver: decode it like the functions do.
        def handler(event: Any, topic: Topic = topic) -> None:
            envelope, body = parse_pubsub(event)
            seen.setdefault(topic.value, []).append((body, dict(envelope.message.attributes)))

        bus.subscribe(topic, handler)

    def receive(topic: Topic, n: int) -> Received:
        bus.drain()
        return seen.get(topic.value, [])

    return BusUnderTest(bus, receive)


def _pubsub(request: pytest.FixtureRequest) -> BusUnderTest:
    emulator: PubSubEmulator = request.getfixturevalue("pubsub_env")
    # A project per test: the topic names are fixed, so this keeps tests apart.
    project = f"contract-{uuid.uuid4().hex[:8]}"
    publisher, subscriber = emulator.publisher(), emulator.subscriber()
    subscriptions: dict[str, str] = {}
    for topic in Topic:
        path = f"projects/{project}/topics/{topic.value}"
        publisher.create_topic(name=path)
        sub = f"projects/{project}/subscriptions/{topic.value}-contract"
        subscriber.create_subscription(name=sub, topic=path)
        subscriptions[topic.value] = sub
    publisher.transport.close()
    request.addfinalizer(subscriber.close)

    def receive(topic: Topic, n: int) -> Received:
        got: Received = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            response = subscriber.pull(
                subscription=subscriptions[topic.value], max_messages=10, timeout=5
            )
            for m in response.received_messages:
                got.append((bytes(m.message.data), dict(m.message.attributes)))
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=subscriptions[topic.value],
                    ack_ids=[m.ack_id for m in response.received_messages],
                )
        return got

    # The bus under test builds its own publisher from PUBSUB_EMULATOR_HOST, as deployed.
    return BusUnderTest(PubSubBus(project), receive)


@pytest.fixture(params=[_in_process, _pubsub], ids=["in-process", "pubsub"])
def under_test(request: pytest.FixtureRequest) -> BusUnderTest:
    make: Callable[[pytest.FixtureRequest], BusUnderTest] = request.param
    return make(request)


def test_publish_with_attributes_arrives_unchanged(under_test: BusUnderTest) -> None:
    body = b'{"version":1,"dataset":"green","month":"2019-01","object_name":"raw/x"}'
    attributes = {"run_id": "green-2019-01-abc", "dataset": "green", "month": "2019-01"}
    message_id = under_test.bus.publish(Topic.MERGE_REQUESTS, body, attributes)
    assert message_id

    assert under_test.receive(Topic.MERGE_REQUESTS, 1) == [(body, attributes)]
    assert under_test.receive(Topic.INGEST_REQUESTS, 0) == []


def test_many_messages_each_once_with_distinct_ids(under_test: BusUnderTest) -> None:
    bodies = [f'{{"n":{i}}}'.encode() for i in range(5)]
    ids = {under_test.bus.publish(Topic.INGEST_RESULTS, b, {"n": str(i)}) for i, b in
           enumerate(bodies)}  # fmt: skip
    assert len(ids) == len(bodies)
    got = under_test.receive(Topic.INGEST_RESULTS, len(bodies))
    assert sorted(got) == sorted((b, {"n": str(i)}) for i, b in enumerate(bodies))


def test_pubsub_missing_topic_is_a_permanent_error(pubsub_env: PubSubEmulator) -> None:
    bus = PubSubBus(f"nowhere-{uuid.uuid4().hex[:8]}", timeout=10)
    with pytest.raises(PermanentError, match="NotFound"):
        bus.publish(Topic.MERGE_REQUESTS, b"{}", {})
