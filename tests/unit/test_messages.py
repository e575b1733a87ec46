"""Our messages are strict, Google's payloads lenient (pure)."""

from __future__ import annotations

import base64

import pytest
from cloudevents.http import CloudEvent

from taxi_pipeline.domain.datasets import Dataset, Upstream
from taxi_pipeline.domain.messages import (
    IngestRequest,
    IngestResult,
    MergeRequest,
    RunState,
    is_run_id,
    labels_from_attributes,
    parse_model,
)
from taxi_pipeline.errors import InvalidMessage
from taxi_pipeline.pipeline.cloudevents import build_pubsub_event, parse_gcs, parse_pubsub


def test_ingest_request_round_trip_and_scheduler_body() -> None:
    request = parse_model(IngestRequest, b'{"dataset":"green","month":"2019-03"}', "request")
    assert request.parsed_month is not None
    assert str(request.parsed_month) == "2019-03"
    scheduled = parse_model(IngestRequest, b'{"dataset": "yellow"}', "request")
    assert scheduled.month is None
    assert parse_model(IngestRequest, request.to_bytes(), "request") == request


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "invalid request"),
        (b'{"dataset":"bus","month":"2019-01"}', "dataset"),
        (b'{"dataset":"green","month":"2019-13"}', "01..12"),
        (b'{"dataset":"green","month":201901}', "month"),
        (b'{"dataset":"green","month":"2019-01","sql":"DROP"}', "sql"),
        (b'{"dataset":"green","run_id":"../../x"}', "run_id"),
        (b'{"dataset":"green","labels":{"Bad Key":"v"}}', "labels"),
        (b'{"dataset":"green","pad":"' + b"x" * 70_000 + b'"}', "over"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse_model(IngestRequest, body, "request")


def test_pubsub_event_round_trip() -> None:
    body = MergeRequest(
        dataset="green",
        month="2019-01",
        run_id="green-201901-abcd",
        object_name="raw/x",
        generation="12",
    ).to_bytes()
    event = build_pubsub_event("p", "merge-requests", body, {"run_id": "green-201901-abcd"})
    envelope, decoded = parse_pubsub(event)
    assert decoded == body
    assert envelope.message.attributes == {"run_id": "green-201901-abcd"}
    assert base64.b64decode(event.data["message"]["data"]) == body


def test_gcs_event_fields_are_parsed_leniently() -> None:
    data: dict[str, object] = {
        "bucket": "b", "name": "raw/green/green_tripdata_2019-01.csv.gz",
        "generation": "1587627537231057", "metageneration": "1", "size": "352",
        "md5Hash": "kF8MuJ5+CTJxvyhHS1xzRg==", "crc32c": "rTVTeQ==", "newField": 1,
    }  # fmt: skip
    attributes = {
        "type": "google.cloud.storage.object.v1.finalized",
        "source": "//storage.googleapis.com/projects/_/buckets/b",
    }
    obj = parse_gcs(CloudEvent(attributes, data))
    assert obj.size == 352
    assert obj.generation == "1587627537231057"
    with pytest.raises(InvalidMessage, match="generation"):
        parse_gcs(CloudEvent(attributes, data | {"generation": "x1"}))
    # Digits of other scripts and superscripts pass str.isdigit(); GCS generations are ASCII.
    for unicode_digits in ("\u0661\u0662\u0663", "12\u00b2", "\uff11\uff12"):
        with pytest.raises(InvalidMessage, match="generation must be a decimal number"):
            parse_gcs(CloudEvent(attributes, data | {"generation": unicode_digits}))
    with pytest.raises(InvalidMessage, match=r"expected a google\.cloud\.storage"):
        parse_gcs(CloudEvent(attributes | {"type": "other"}, data))


def test_run_ids_and_labels_from_attributes_match_whole_values() -> None:
    assert is_run_id("green-201901-3fa2c1d9")
    assert not is_run_id("green-201901-3fa2c1d9\n")
    assert labels_from_attributes({"label_trigger": "schedule\n", "label_ok": "yes"}) == {
        "ok": "yes"
    }


def test_the_source_fields_are_optional_so_version_1_messages_stay_valid() -> None:
    old = parse_model(IngestRequest, b'{"version":1,"dataset":"green","month":"2019-03"}', "r")
    assert (old.source, old.replace, old.lag_months) == (None, False, None)
    new = parse_model(
        IngestRequest,
        b'{"dataset":"yellow","month":"2024-01","source":"tlc","replace":true}',
        "request",
    )
    assert (new.source, new.replace) == (Upstream.TLC, True)
    assert parse_model(IngestRequest, new.to_bytes(), "request") == new
    scheduled = parse_model(
        IngestRequest, b'{"dataset":"green","source":"tlc","lag_months":2}', "r"
    )
    assert (scheduled.month, scheduled.lag_months) == (None, 2)
    merge = parse_model(
        MergeRequest,
        b'{"dataset":"green","month":"2019-01","run_id":"green-201901-a","object_name":'
        b'"raw/green/green_tripdata_2019-01.parquet","generation":"1"}',
        "merge request",
    )
    assert merge.replace is False
    result = IngestResult(
        run_id="r", dataset=Dataset.GREEN, month="2019-01", state=RunState.SUCCESS
    )
    assert b"notes" not in result.to_bytes(), "absent unless there are notes"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"dataset":"green","source":"s3"}', "source"),
        (b'{"dataset":"green","lag_months":-1}', "lag_months"),
        (b'{"dataset":"green","lag_months":25}', "lag_months"),
    ],
)
def test_a_bad_source_or_lag_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse_model(IngestRequest, body, "request")
