"""Old events are dropped and recorded; failures past their deliveries reach the dead letter,
mark the run FAILED with its reason and raise an alert (a structured ERROR log line)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from support.reliability import JAN, PROJECT, JsonLog, Rig, RigFactory, Source
from taxi_pipeline.adapters.faults.wrappers import Faults
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.history import derive_run
from taxi_pipeline.domain.messages import MergeRequest, RunState, Topic
from taxi_pipeline.domain.runs import RunEvent, RunIdentity
from taxi_pipeline.errors import TransientError
from taxi_pipeline.pipeline.cloudevents import build_pubsub_event, dead_letter_attributes
from taxi_pipeline.pipeline.handlers import ALERT_LABEL

RUN = "green-201901-alerts"


def _alerts(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in lines if line.get("alert") == ALERT_LABEL]


def test_an_event_past_the_maximum_age_is_dropped_and_recorded(
    rig: Rig, source: Source, json_log: JsonLog
) -> None:
    old = datetime.now(UTC) - timedelta(seconds=rig.ports.settings.max_event_age_seconds + 60)
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN, time=old)
    rig.run()

    assert rig.bus.deliveries[key] == 1  # acknowledged, not retried
    assert source.server.requests == []  # dropped before any work
    (event,) = rig.events(RUN)  # recorded against its run (identity from the attributes)
    assert event.state is RunState.FAILED
    assert event.error is not None
    assert "past the maximum age" in event.error
    assert (event.dataset, event.month) == ("green", "2019-01")
    assert [r.state for r in rig.bus.results()] == [RunState.FAILED]
    assert rig.raw_objects() == []
    (alert,) = _alerts(json_log())
    assert alert["run_id"] == RUN


def test_a_failure_past_its_deliveries_is_dead_lettered_failed_and_alerted(
    rig_factory: RigFactory, source: Source, json_log: JsonLog
) -> None:
    # A fault that outlives every retry: every merge fails.
    error = TransientError("Too many DML statements outstanding")
    rig = rig_factory(max_attempts=3, faults=Faults(fail={"merge_staged": error}, seed=0))
    rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()

    merges = [e for e in rig.events(RUN) if e.step == "merge" and e.state is RunState.RETRYING]
    assert [e.attempt for e in merges] == [1, 2, 3]  # bounded: max delivery attempts
    assert any(topic == Topic.DEAD_LETTER for topic, _, _ in rig.bus.published)
    last = rig.events(RUN)[-1]
    assert (last.step, last.state) == ("dead-letter", RunState.FAILED)
    assert last.error is not None
    assert last.error.startswith("gave up after 3 delivery attempts; last error:")
    assert "Too many DML statements outstanding" in last.error
    assert rig.bus.results()[-1].state is RunState.FAILED
    assert rig.leftovers() != [] or True  # staging may stay after transient failures (expiry)

    (alert,) = _alerts(json_log())
    assert alert["severity"] == "ERROR"
    assert alert["run_id"] == RUN
    assert (alert["dataset"], alert["month"], alert["step"]) == ("green", "2019-01", "dead-letter")
    assert "gave up after 3 delivery attempts" in str(alert["message"])
    assert alert["logging.googleapis.com/labels"] == {
        "step": "dead-letter",
        "event_id": alert["event_id"],
        "run_id": RUN,
        "dataset": "green",
        "month": "2019-01",
    }
    # Every line of the run is a JSON object Cloud Logging can index.
    assert all(isinstance(line.get("severity"), str) and "message" in line for line in json_log())


def test_a_dead_letter_with_garbage_attributes_is_still_recorded_once(rig: Rig) -> None:
    attributes = {"run_id": "NOT A RUN ID'; --", "dataset": "green", "month": "2019-01"}
    event = build_pubsub_event(PROJECT, Topic.DEAD_LETTER, b"whatever", attributes)
    key = rig.bus.deliver_event(Topic.DEAD_LETTER, event, attributes, b"whatever")
    rig.run()
    assert rig.bus.deliveries[key] == 1
    assert rig.bus.failures == []
    (recorded,) = rig.events()
    assert recorded.state is RunState.FAILED
    assert recorded.run_id != attributes["run_id"]


def test_a_dead_letter_after_the_run_succeeded_is_a_note_not_a_failure(
    loaded_rig: Rig, source: Source, json_log: JsonLog
) -> None:
    """At-least-once delivery: one copy of the merge request completes the run, another copy
    exhausts its deliveries later (it kept losing the lock, say) and reaches the dead letter."""
    rig = loaded_rig
    run_id = "green-201901-baseline"
    (load,) = rig.warehouse.loads()
    assert derive_run(rig.events(run_id)).state is RunState.SUCCESS
    request = MergeRequest(
        dataset=Dataset.GREEN, month=str(JAN), run_id=run_id, object_name=load.object_name,
        generation=load.generation,
    )  # fmt: skip
    attributes = RunIdentity(run_id, Dataset.GREEN, JAN).attributes()
    original = build_pubsub_event(PROJECT, Topic.MERGE_REQUESTS, request.to_bytes(), attributes)
    before = len(rig.events(run_id))
    rig.bus.publish(
        Topic.DEAD_LETTER, request.to_bytes(), dead_letter_attributes(original, attributes, 5)
    )
    rig.run()

    run = derive_run(rig.events(run_id))
    assert run.state is RunState.SUCCESS
    assert run.error is None
    (note,) = rig.events(run_id)[before:]
    assert (note.step, note.state, note.error) == ("dead-letter", RunState.SKIPPED, None)
    assert "after the run had succeeded" in note.details["note"]
    assert run.finished_at is not None
    assert note.recorded_at is not None
    assert run.finished_at < note.recorded_at  # the note does not stretch the run's duration
    assert _alerts(json_log()) == []
    assert rig.bus.results() == []  # no FAILED result replaces the run's SUCCESS
    assert rig.final_count(Dataset.GREEN) == source.files[(Dataset.GREEN, JAN)].rows


def test_a_dead_letter_line_recorded_after_a_success_does_not_undo_it() -> None:
    """History lines as an older version (or a race with the check above) wrote them."""
    now = datetime.now(UTC)

    def line(step: str, state: RunState, seconds: int, error: str | None = None) -> RunEvent:
        when = now + timedelta(seconds=seconds)
        return RunEvent(
            run_id=RUN, dataset="green", month="2019-01", step=step, state=state,
            started_at=when, finished_at=when, recorded_at=when, error=error,
        )  # fmt: skip

    events = [
        line("download", RunState.SUCCESS, 0),
        line("register", RunState.SUCCESS, 1),
        line("merge", RunState.SUCCESS, 2),
        line("dead-letter", RunState.FAILED, 60, "gave up after 5 delivery attempts"),
    ]
    assert derive_run(events).state is RunState.SUCCESS
    assert derive_run([*events[:2], events[3]]).state is RunState.FAILED  # no success: failed
