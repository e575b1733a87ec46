"""Every entry point of ``functions/main.py`` through functions-framework's HTTP layer.

CloudEvents of the real shapes, in binary (what Eventarc sends) and structured mode. The ports
are the local adapters named by ``TAXI_PIPELINE_*`` URLs; assertions read what a user would look
at: rows in the final table, the run history, the error text, the next message published.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from support.cloud_events import gcs_event, json_bytes, pubsub_event
from support.functions import GREEN_2019_01, Functions, Source
from taxi_pipeline import bootstrap
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Month, object_name
from taxi_pipeline.domain.messages import RunState, Topic
from taxi_pipeline.errors import TransientError
from taxi_pipeline.pipeline.handlers import ALERT_LABEL
from taxi_pipeline.pipeline.recorder import cancel_event

MODES = ["binary", "structured"]
GREEN_OBJECT = object_name(*GREEN_2019_01)
INGEST = json_bytes({"dataset": "green", "month": "2019-01", "run_id": "green-2019-01-fn"})


def _published(functions: Functions, topic: Topic) -> list[tuple[bytes, dict[str, str]]]:
    return [(data, attrs) for t, data, attrs in functions.bus.published if t == topic.value]


def _states(functions: Functions, run_id: str) -> list[tuple[str, str]]:
    return [(e.step, e.state.value) for e in functions.events() if e.run_id == run_id]


@pytest.mark.parametrize("mode", MODES)
def test_the_chain_through_the_three_functions_then_redelivery_inserts_nothing(
    functions: Functions, source: Source, mode: str
) -> None:
    ingest = pubsub_event(Topic.INGEST_REQUESTS, INGEST, {"origin": "gcloud"})
    assert functions.post("on_ingest_request", ingest, mode=mode).status_code == 200

    stored = functions.ports.lake.stat(GREEN_OBJECT)
    assert stored is not None
    assert stored.size == source.green.size_bytes
    assert stored.metadata["run_id"] == "green-2019-01-fn"

    finalized = gcs_event(
        stored.bucket,
        stored.name,
        stored.generation,
        stored.size,
        md5=stored.md5_base64,
        metadata=stored.metadata,
    )
    assert functions.post("on_object_finalized", finalized, mode=mode).status_code == 200
    (merge_body, merge_attributes), *_ = _published(functions, Topic.MERGE_REQUESTS)
    assert json.loads(merge_body)["generation"] == stored.generation
    assert merge_attributes["run_id"] == "green-2019-01-fn"

    merge = pubsub_event(Topic.MERGE_REQUESTS, merge_body, merge_attributes, message_id="77")
    assert functions.post("on_merge_request", merge, mode=mode).status_code == 200

    assert functions.count("SELECT count(*) FROM green_tripdata") == source.green.rows
    states = _states(functions, "green-2019-01-fn")
    for step in ("download", "register", "merge"):
        assert (step, "SUCCESS") in states
    ((result, _),) = _published(functions, Topic.INGEST_RESULTS)
    assert json.loads(result)["state"] == "SUCCESS"
    assert json.loads(result)["rows_inserted"] == source.green.rows

    # At-least-once delivery: every event again, nothing more in the table.
    for target, event in (
        ("on_ingest_request", ingest),
        ("on_object_finalized", finalized),
        ("on_merge_request", merge),
    ):
        assert functions.post(target, event, mode=mode).status_code == 200
    assert functions.count("SELECT count(*) FROM green_tripdata") == source.green.rows
    gets = [path for path, status in source.server.requests if status == 200]
    assert len(gets) == 1  # the verified object in the lake was not downloaded again


def _rejected(functions: Functions, step: str) -> list[str]:
    return [e.error or "" for e in functions.events(step) if e.state.value == "FAILED"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("event_factory", "expected"),
    [
        (lambda: pubsub_event(Topic.INGEST_REQUESTS, b"not json at all"), "invalid JSON"),
        (lambda: pubsub_event(Topic.INGEST_REQUESTS, b"", raw_data="%%%not-base64"), "base64"),
        (
            lambda: pubsub_event(Topic.INGEST_REQUESTS, json_bytes({"dataset": "purple"})),
            "dataset",
        ),
        (
            lambda: pubsub_event(
                Topic.INGEST_REQUESTS, json_bytes({"dataset": "green", "month": "2019-13"})
            ),
            "month",
        ),
        (
            lambda: gcs_event("lake", GREEN_OBJECT, "1", 10),
            "expected a google.cloud.pubsub.topic.v1.messagePublished event",
        ),
    ],
    ids=["body-not-json", "bad-base64", "unknown-dataset", "bad-month", "wrong-event-type"],
)
def test_malformed_ingest_events_are_acknowledged_and_recorded(
    functions: Functions, mode: str, event_factory: object, expected: str
) -> None:
    assert callable(event_factory)
    response = functions.post("on_ingest_request", event_factory(), mode=mode)
    assert response.status_code == 200  # acknowledged: no redelivery storm
    errors = _rejected(functions, "download")
    assert len(errors) == 1
    assert expected.lower() in errors[0].lower()
    assert functions.ports.lake.list("raw/") == []


def test_event_data_that_is_not_json_is_acknowledged(functions: Functions) -> None:
    headers = {
        "ce-id": "1",
        "ce-source": f"//pubsub.googleapis.com/projects/p/topics/{Topic.MERGE_REQUESTS}",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-specversion": "1.0",
        "Content-Type": "text/plain",
    }
    response = functions.post_raw("on_merge_request", headers, b"{this is not json")
    assert response.status_code == 200
    (error,) = _rejected(functions, "merge")
    assert "not JSON" in error


def test_a_merge_request_with_an_invalid_message_is_recorded(functions: Functions) -> None:
    body = json_bytes({"dataset": "green", "month": "2019-01", "object_name": 5, "extra": 1})
    event = pubsub_event(Topic.MERGE_REQUESTS, body)
    assert functions.post("on_merge_request", event).status_code == 200
    (error,) = _rejected(functions, "merge")
    assert "merge request" in error


@pytest.mark.parametrize("mode", MODES)
def test_a_transient_failure_answers_500_for_redelivery(
    functions: Functions, source: Source, mode: str
) -> None:
    source.server.inject(source.green.name, Fault.unavailable(times=None))
    event = pubsub_event(Topic.INGEST_REQUESTS, INGEST, delivery_attempt=2)
    response = functions.post("on_ingest_request", event, mode=mode)
    assert response.status_code == 500
    retrying = [e for e in functions.events("download") if e.state.value == "RETRYING"]
    assert [(e.run_id, e.attempt) for e in retrying] == [("green-2019-01-fn", 2)]
    assert "503" in (retrying[0].error or "")
    assert functions.ports.lake.stat(GREEN_OBJECT) is None  # nothing half-written

    source.server.clear_faults()
    again = pubsub_event(Topic.INGEST_REQUESTS, INGEST, delivery_attempt=3)
    assert functions.post("on_ingest_request", again, mode=mode).status_code == 200
    assert functions.ports.lake.stat(GREEN_OBJECT) is not None


def test_scheduler_message_without_month_takes_the_event_time_month(
    functions: Functions,
) -> None:
    # Cloud Scheduler's static body: no month. This month is not published: skipped, acked.
    event = pubsub_event(Topic.INGEST_REQUESTS, json_bytes({"dataset": "green"}))
    assert functions.post("on_ingest_request", event).status_code == 200
    now = datetime.now(UTC)
    (skipped,) = [e for e in functions.events("download") if e.state.value == "SKIPPED"]
    assert skipped.month == str(Month(now.year, now.month))
    assert "not published" in (skipped.error or "")


def test_an_event_past_the_maximum_age_is_dropped(functions: Functions) -> None:
    old = (datetime.now(UTC) - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    event = pubsub_event(Topic.INGEST_REQUESTS, INGEST, time=old)
    assert functions.post("on_ingest_request", event).status_code == 200
    (error,) = _rejected(functions, "download")
    assert "maximum age" in error
    assert functions.ports.lake.list("raw/") == []


@pytest.mark.parametrize("mode", MODES)
def test_objects_outside_raw_are_ignored(functions: Functions, mode: str) -> None:
    event = gcs_event("lake", "exports/report.csv", "1700000000000000", 123)
    assert functions.post("on_object_finalized", event, mode=mode).status_code == 200
    assert functions.events() == []
    assert functions.bus.published == []


def test_a_finalized_object_that_is_gone_is_a_recorded_permanent_failure(
    functions: Functions,
) -> None:
    event = gcs_event("lake", GREEN_OBJECT, "1700000000000000", 123)
    assert functions.post("on_object_finalized", event).status_code == 200
    (error,) = _rejected(functions, "register")
    assert "no longer exists" in error


def test_a_gcs_event_with_a_non_numeric_generation_is_rejected(functions: Functions) -> None:
    event = gcs_event("lake", GREEN_OBJECT, "abc", 123)
    assert functions.post("on_object_finalized", event).status_code == 200
    (error,) = _rejected(functions, "register")
    assert "generation" in error


@pytest.mark.parametrize("mode", MODES)
def test_dead_letter_marks_the_run_failed_and_publishes_the_result(
    functions: Functions, mode: str
) -> None:
    # What Pub/Sub forwards to a dead-letter topic: the original attributes plus its own.
    attributes = {
        "run_id": "green-2019-01-dl",
        "dataset": "green",
        "month": "2019-01",
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        "CloudPubSubDeadLetterSourceSubscription": "eventarc-us-central1-merge-sub-1",
        "CloudPubSubDeadLetterSourceSubscriptionProject": "test-project",
        "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-01-01T00:00:00.000Z",
    }
    body = json_bytes({"dataset": "green", "month": "2019-01", "object_name": GREEN_OBJECT})
    event = pubsub_event(Topic.DEAD_LETTER, body, attributes, delivery_attempt=1)
    assert functions.post("on_dead_letter", event, mode=mode).status_code == 200
    (failed,) = functions.events("dead-letter")
    assert (failed.run_id, failed.state.value) == ("green-2019-01-dl", "FAILED")
    assert "gave up after 5 delivery attempts" in (failed.error or "")
    ((result, result_attributes),) = _published(functions, Topic.INGEST_RESULTS)
    assert json.loads(result)["state"] == "FAILED"
    assert result_attributes["state"] == "FAILED"


def test_dead_letter_of_garbage_is_still_acknowledged(functions: Functions) -> None:
    event = pubsub_event(Topic.DEAD_LETTER, b"\x00\xff", {}, delivery_attempt=5)
    assert functions.post("on_dead_letter", event).status_code == 200
    (failed,) = functions.events("dead-letter")
    assert failed.state.value == "FAILED"


def test_import_of_main_reads_no_environment_and_builds_no_client() -> None:
    """``import main`` must not touch the Google SDKs or pyarrow (cold starts)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, main\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('google.cloud.storage',"
        " 'google.cloud.bigquery', 'google.cloud.pubsub', 'grpc', 'duckdb', 'httpx', 'pyarrow')))\n"
        "print(heavy)"
    )
    functions_dir = Path(__file__).resolve().parents[2] / "functions"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=functions_dir,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},  # no TAXI_PIPELINE_* at all: import must not need them
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


def test_an_unparseable_event_time_is_rejected_not_retried(functions: Functions) -> None:
    event = pubsub_event(Topic.MERGE_REQUESTS, b"{}", time="yesterday-ish")
    assert functions.post("on_merge_request", event).status_code == 200
    (error,) = _rejected(functions, "merge")
    assert "RFC 3339" in error


def test_an_old_dead_letter_is_still_recorded(functions: Functions) -> None:
    old = (datetime.now(UTC) - timedelta(days=3)).isoformat().replace("+00:00", "Z")
    attributes = {"run_id": "green-2019-01-old", "dataset": "green", "month": "2019-01"}
    event = pubsub_event(Topic.DEAD_LETTER, b"{}", attributes, time=old)
    assert functions.post("on_dead_letter", event).status_code == 200
    (failed,) = functions.events("dead-letter")
    assert (failed.run_id, failed.state.value) == ("green-2019-01-old", "FAILED")


def test_a_request_without_run_id_stays_one_run_across_redeliveries(
    functions: Functions, source: Source
) -> None:
    # A hand publish (or Cloud Scheduler) carries no run id; its redelivery is the same run.
    body = json_bytes({"dataset": "green", "month": "2019-01"})
    source.server.inject(source.green.name, Fault.unavailable(times=None))
    published = datetime.now(UTC)
    stamp = published.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    first = pubsub_event(
        Topic.INGEST_REQUESTS, body, message_id="777", delivery_attempt=1, time=stamp
    )
    assert functions.post("on_ingest_request", first).status_code == 500
    source.server.clear_faults()
    again = pubsub_event(
        Topic.INGEST_REQUESTS, body, message_id="777", delivery_attempt=2, time=stamp
    )
    assert functions.post("on_ingest_request", again).status_code == 200

    download = functions.events("download")
    assert [(e.state.value, e.attempt) for e in download] == [
        ("RUNNING", 1),
        ("RETRYING", 1),
        ("RUNNING", 2),
        ("SUCCESS", 2),
    ]
    (run_id,) = {e.run_id for e in download}
    stored = functions.ports.lake.stat(GREEN_OBJECT)
    assert stored is not None
    assert stored.metadata["run_id"] == run_id
    later = (published + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    other = pubsub_event(Topic.INGEST_REQUESTS, body, message_id="778", time=later)
    assert functions.post("on_ingest_request", other).status_code == 200
    assert len({e.run_id for e in functions.events("download")}) == 2, "a new message, a new run"


def test_a_hand_upload_delivered_twice_is_one_run(functions: Functions, source: Source) -> None:
    with functions.ports.lake.writer(GREEN_OBJECT, {}) as writer:
        writer.write(source.green.path.read_bytes())
    stored = functions.ports.lake.stat(GREEN_OBJECT)
    assert stored is not None
    event = gcs_event("lake", GREEN_OBJECT, stored.generation, stored.size)
    for _ in range(2):
        assert functions.post("on_object_finalized", event).status_code == 200
    register = functions.events("register")
    assert [e.state.value for e in register] == ["RUNNING", "SUCCESS"] * 2
    (run_id,) = {e.run_id for e in register}
    assert run_id.startswith("green-201901-")
    assert {e.labels.get("trigger") for e in register} == {"upload"}


def test_a_dead_letter_without_attributes_is_identified_by_its_body(functions: Functions) -> None:
    # A merge request published by hand, with no attributes, that exhausted its deliveries.
    body = json_bytes(
        {
            "dataset": "green",
            "month": "2019-01",
            "run_id": "green-2019-01-hand",
            "object_name": GREEN_OBJECT,
            "generation": "1",
        }
    )
    event = pubsub_event(Topic.DEAD_LETTER, body, {}, delivery_attempt=1)
    assert functions.post("on_dead_letter", event).status_code == 200
    (failed,) = functions.events("dead-letter")
    assert (failed.run_id, failed.dataset, failed.month) == (
        "green-2019-01-hand",
        "green",
        "2019-01",
    )
    ((result, _attributes),) = _published(functions, Topic.INGEST_RESULTS)
    assert json.loads(result)["run_id"] == "green-2019-01-hand"


def test_a_dead_lettered_hand_upload_fails_the_run_its_register_started(
    functions: Functions, source: Source
) -> None:
    with functions.ports.lake.writer(GREEN_OBJECT, {}) as writer:
        writer.write(source.green.path.read_bytes())
    stored = functions.ports.lake.stat(GREEN_OBJECT)
    assert stored is not None
    finalized = gcs_event("lake", GREEN_OBJECT, stored.generation, stored.size)
    assert functions.post("on_object_finalized", finalized).status_code == 200
    (run_id,) = {e.run_id for e in functions.events("register")}
    # The Cloud Storage event's data, forwarded to the dead-letter topic as the message body.
    body = json.dumps(finalized.data).encode()
    event = pubsub_event(Topic.DEAD_LETTER, body, {}, delivery_attempt=1)
    assert functions.post("on_dead_letter", event).status_code == 200
    (failed,) = functions.events("dead-letter")
    assert (failed.run_id, failed.state.value) == (run_id, "FAILED")
    assert failed.labels == {"trigger": "upload"}


def test_a_dead_letter_that_cannot_be_recorded_is_redelivered(
    functions: Functions, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_args: object, **_kwargs: object) -> None:
        raise TransientError("warehouse unavailable")

    monkeypatch.setattr(functions.ports.warehouse, "append_run_events", unavailable)
    attributes = {"run_id": "green-2019-01-dl", "dataset": "green", "month": "2019-01"}
    event = pubsub_event(Topic.DEAD_LETTER, b"{}", attributes, delivery_attempt=1)
    assert functions.post("on_dead_letter", event).status_code == 500


def test_a_misconfigured_function_alerts_and_keeps_the_event_for_redelivery(
    functions: Functions, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    bootstrap.reset_cloud_ports()
    monkeypatch.setenv("TAXI_PIPELINE_SOURCE_URL", "ftp://mirror.example/trips")
    event = pubsub_event(Topic.INGEST_REQUESTS, INGEST)
    assert functions.post("on_ingest_request", event).status_code == 500
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    (alert,) = [line for line in lines if line.get("alert") == ALERT_LABEL]
    assert alert["severity"] == "ERROR"
    assert "cannot start" in alert["message"]
    assert "must be an http(s) URL" in alert["message"]


@pytest.mark.parametrize(
    ("attributes", "month"),
    [
        ({}, "2026-10"),
        ({"time_zone": "Etc/UTC"}, "2026-10"),
        ({"time_zone": "Asia/Tokyo"}, "2026-11"),
    ],
)
def test_a_scheduled_request_loads_the_month_of_its_schedule_time_zone(
    functions: Functions, monkeypatch: pytest.MonkeyPatch, attributes: dict[str, str], month: str
) -> None:
    # 01:30 on 1 November in Tokyo is still 31 October in UTC.
    monkeypatch.setenv("TAXI_PIPELINE_MAX_EVENT_AGE_SECONDS", str(10 * 365 * 86400))
    bootstrap.reset_cloud_ports()
    body = json_bytes({"dataset": "green"})
    event = pubsub_event(Topic.INGEST_REQUESTS, body, attributes, time="2026-10-31T16:30:00.000Z")
    assert functions.post("on_ingest_request", event).status_code == 200
    (skipped,) = [e for e in functions.events("download") if e.state.value == "SKIPPED"]
    assert skipped.month == month


def test_a_scheduled_request_with_an_unknown_time_zone_is_refused(functions: Functions) -> None:
    body = json_bytes({"dataset": "green"})
    event = pubsub_event(Topic.INGEST_REQUESTS, body, {"time_zone": "../../etc/passwd"})
    assert functions.post("on_ingest_request", event).status_code == 200
    (error,) = _rejected(functions, "download")
    assert "not a known time zone" in error


@pytest.mark.parametrize(
    ("body", "attributes"),
    [
        ({"dataset": "green", "month": "2019-01"}, {}),
        # Cloud Scheduler's static body: the month comes from the publish time in its zone.
        ({"dataset": "green"}, {"trigger": "schedule", "time_zone": "Asia/Tokyo"}),
    ],
)
def test_a_dead_lettered_request_without_run_id_fails_the_run_its_download_started(
    functions: Functions,
    source: Source,
    monkeypatch: pytest.MonkeyPatch,
    body: dict[str, str],
    attributes: dict[str, str],
) -> None:
    monkeypatch.setenv("TAXI_PIPELINE_MAX_EVENT_AGE_SECONDS", str(10 * 365 * 86400))
    bootstrap.reset_cloud_ports()
    source.server.inject(source.green.name, Fault.unavailable(times=None))
    published = "2026-10-31T16:30:00.123Z"
    event = pubsub_event(
        Topic.INGEST_REQUESTS, json_bytes(body), attributes, message_id="41", time=published
    )
    functions.post("on_ingest_request", event)
    (run_id,) = {e.run_id for e in functions.events("download")}

    # The copy Pub/Sub forwards: a new message id, the original's attributes and publish time.
    forwarded = attributes | {
        "CloudPubSubDeadLetterSourceDeliveryCount": "15",
        "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-10-31T16:30:00.123+00:00",
    }
    dead = pubsub_event(Topic.DEAD_LETTER, json_bytes(body), forwarded, message_id="9001")
    assert functions.post("on_dead_letter", dead).status_code == 200
    (failed,) = functions.events("dead-letter")
    assert (failed.run_id, failed.state.value) == (run_id, "FAILED")
    assert "gave up after 15 delivery attempts" in (failed.error or "")


def test_rejected_messages_with_the_same_reason_are_not_one_run(functions: Functions) -> None:
    for message_id in ("1", "2"):
        event = pubsub_event(Topic.DEAD_LETTER, b"{}", {}, message_id=message_id)
        assert functions.post("on_dead_letter", event).status_code == 200
    ids = [e.run_id for e in functions.events("dead-letter")]
    assert len(ids) == len(set(ids)) == 2
    assert all(run_id.startswith("rejected-") for run_id in ids)


def test_a_cancelled_run_goes_no_further_at_its_next_step(functions: Functions) -> None:
    """`taxi-pipeline runs cancel` in the cloud records a cancel line; nothing interrupts the
    step in flight, but the next step of the run reads the line and refuses to go on."""
    ingest = pubsub_event(Topic.INGEST_REQUESTS, INGEST)
    assert functions.post("on_ingest_request", ingest).status_code == 200
    stored = functions.ports.lake.stat(GREEN_OBJECT)
    assert stored is not None
    functions.ports.warehouse.append_run_events(
        [cancel_event("green-2019-01-fn", "green", "2019-01", "cancelled by pid 7 on laptop")]
    )
    finalized = gcs_event(
        stored.bucket, stored.name, stored.generation, stored.size, metadata=stored.metadata
    )
    for _delivery in range(2):  # a redelivery is refused the same way: never retried
        assert functions.post("on_object_finalized", finalized).status_code == 200

    states = _states(functions, "green-2019-01-fn")
    assert states.count(("register", "CANCELLED")) == 2
    assert ("register", "RUNNING") not in states
    assert _published(functions, Topic.MERGE_REQUESTS) == []  # no merge was asked for
    results = [json.loads(data) for data, _ in _published(functions, Topic.INGEST_RESULTS)]
    assert [(r["state"], r["error"]) for r in results] == [
        ("CANCELLED", "cancelled by pid 7 on laptop")
    ] * 2
    (run,) = history.derive_runs(functions.events())
    assert run.state is RunState.CANCELLED
