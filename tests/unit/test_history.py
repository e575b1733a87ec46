"""Run state, duration, timeline and coverage derived from appended run events."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.local.admission import RunGate, Ticket
from taxi_pipeline.render import text as render_text

T0 = datetime(2024, 3, 1, 9, 0, 0, tzinfo=UTC)
LABELS = {"trigger": "manual"}


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _event(
    step: str,
    state: RunState,
    start: float | None,
    recorded: float,
    *,
    attempt: int = 1,
    run_id: str = "green-201901-aaaa0000",
    month: str = "2019-01",
    rows: int | None = None,
    error: str | None = None,
    details: dict[str, str] | None = None,
    finished: bool = True,
) -> RunEvent:
    return RunEvent(
        run_id=run_id,
        dataset="green",
        month=month,
        step=step,
        state=state,
        attempt=attempt,
        started_at=None if start is None else _at(start),
        finished_at=_at(recorded) if finished and state is not RunState.RUNNING else None,
        rows=rows,
        labels=LABELS,
        error=error,
        details=details or {},
        recorded_at=_at(recorded),
    )


def _successful_run(run_id: str = "green-201901-aaaa0000", offset: float = 0.0) -> list[RunEvent]:
    def e(*args: object, **kwargs: object) -> RunEvent:
        return _event(*args, run_id=run_id, **kwargs)  # type: ignore[arg-type]

    return [
        e("queue", RunState.QUEUED, offset, offset, attempt=0),
        e("download", RunState.RUNNING, offset + 1, offset + 1),
        e("download", RunState.SUCCESS, offset + 1, offset + 3, rows=3000),
        e("register", RunState.RUNNING, offset + 3, offset + 3),
        e("register", RunState.SUCCESS, offset + 3, offset + 4),
        # merge began at +4, got the dataset-month lock at +6
        e("merge", RunState.RUNNING, offset + 4, offset + 6),
        e(
            "merge",
            RunState.SUCCESS,
            offset + 4,
            offset + 8,
            rows=2990,
            details={"rows_in_file": "3000"},
        ),
    ]


def test_a_complete_chain_is_success_with_duration_queue_wait_and_rows() -> None:
    run = history.derive_run(_successful_run())

    assert run.state is RunState.SUCCESS
    assert run.queued_at == T0
    assert run.started_at == _at(1)
    assert run.finished_at == _at(8)
    assert run.duration() == timedelta(seconds=7)
    assert run.queue_wait == timedelta(seconds=1)
    assert (run.rows_in_file, run.rows_inserted) == (3000, 2990)
    assert [(s.step, s.state) for s in run.steps] == [
        ("download", RunState.SUCCESS),
        ("register", RunState.SUCCESS),
        ("merge", RunState.SUCCESS),
    ]
    merge = run.steps[-1]
    assert merge.waited == timedelta(seconds=2)
    assert merge.duration == timedelta(seconds=4)


def test_steps_in_progress_are_running_and_only_queued_is_queued() -> None:
    events = _successful_run()
    assert history.derive_run(events[:1]).state is RunState.QUEUED
    assert history.derive_run(events[:3]).state is RunState.RUNNING, "between steps"
    assert history.derive_run(events[:6]).state is RunState.RUNNING
    running = history.derive_run(events[:6])
    assert running.finished_at is None
    assert running.duration(now=_at(10)) == timedelta(seconds=9)


def test_not_published_is_skipped_with_its_reason_but_a_reused_download_is_not() -> None:
    reason = "http://x/green/green_tripdata_2030-01.csv.gz is not published (HTTP 404)"
    skipped = [
        _event("queue", RunState.QUEUED, 0, 0, attempt=0),
        _event("download", RunState.RUNNING, 1, 1),
        _event("download", RunState.SKIPPED, None, 2, error=reason),
    ]
    run = history.derive_run(skipped)
    assert run.state is RunState.SKIPPED
    assert run.error == reason

    reused = [
        _event("download", RunState.RUNNING, 1, 1),
        _event("download", RunState.SKIPPED, 1, 1.1, details={"reason": "already in the lake"}),
    ]
    assert history.derive_run(reused).state is RunState.RUNNING, "the merge is still to come"


def test_retrying_then_success_is_success_and_retrying_then_dead_letter_is_failed() -> None:
    base = [
        _event("download", RunState.RUNNING, 1, 1),
        _event("download", RunState.RETRYING, None, 2, error="TransientError: HTTP 503"),
    ]
    assert history.derive_run(base).state is RunState.RETRYING
    assert history.derive_run(base).error == "TransientError: HTTP 503"

    recovered = [
        *base,
        _event("download", RunState.RUNNING, 3, 3, attempt=2),
        _event("download", RunState.SUCCESS, 3, 4, attempt=2, rows=10),
        _event("register", RunState.SUCCESS, 4, 5),
        _event("merge", RunState.SUCCESS, 5, 6, rows=10),
    ]
    run = history.derive_run(recovered)
    assert run.state is RunState.SUCCESS
    assert run.attempts == 2
    assert run.error is None

    dead = [
        *base,
        _event(
            "dead-letter",
            RunState.FAILED,
            None,
            9,
            error="gave up after 5 delivery attempts; last error: TransientError: HTTP 503",
        ),
    ]
    failed = history.derive_run(dead)
    assert failed.state is RunState.FAILED
    assert failed.error is not None
    assert failed.error.startswith("gave up after 5")


def test_a_permanent_failure_is_failed_with_its_reason() -> None:
    events = [
        _event("download", RunState.RUNNING, 1, 1),
        _event("download", RunState.FAILED, None, 2, error="object is not gzip-compressed"),
    ]
    run = history.derive_run(events)
    assert (run.state, run.error) == (RunState.FAILED, "object is not gzip-compressed")
    lines = render_text.runs_table([run])
    assert "FAILED" in lines[1]
    assert lines[1].endswith("object is not gzip-compressed")


def test_runs_are_grouped_filtered_and_listed_one_line_each() -> None:
    events = _successful_run("green-201901-aaaa0000") + _successful_run(
        "green-201902-bbbb0000", offset=100
    )
    runs = history.derive_runs(sorted(events, key=lambda e: e.recorded_at or T0))
    assert [r.run_id for r in runs] == ["green-201901-aaaa0000", "green-201902-bbbb0000"]
    assert len(render_text.runs_table(runs)) == 3
    assert history.filter_runs(runs, since=_at(50)) == [runs[1]]
    assert history.filter_runs(runs, states=[RunState.FAILED]) == []
    assert history.filter_runs(runs, dataset="yellow") == []
    assert history.filter_runs(runs, labels={"trigger": "manual"}) == runs


def test_no_runs_give_the_header_alone() -> None:
    (header,) = render_text.runs_table([])
    assert header.split()[:4] == ["RUN", "ID", "DATASET", "MONTH"]


def test_gantt_draws_a_row_per_step_on_one_axis_with_the_lock_wait() -> None:
    lines = render_text.gantt(history.derive_run(_successful_run()), width=16)
    assert lines[0].startswith("STEP")
    rows = {line.split()[0]: line.rsplit("|", 2)[1] for line in lines[1:]}
    assert list(rows) == ["queue", "download", "register", "merge"]
    assert all(len(bar) == 16 for bar in rows.values())
    # 8 s over 16 columns: 2 columns per second.
    assert rows["queue"] == "··" + " " * 14
    assert rows["download"] == "  ████" + " " * 10
    assert rows["register"] == "      ██" + " " * 8
    assert rows["merge"] == " " * 8 + "░░░░████"


def test_describe_run_shows_the_error_section() -> None:
    events = [
        _event("download", RunState.RUNNING, 1, 1),
        _event("download", RunState.FAILED, None, 2, error="header does not match"),
    ]
    text = "\n".join(render_text.describe_run(history.derive_run(events)))
    assert "state     FAILED" in text
    assert "download (try 1, FAILED): header does not match" in text


def test_coverage_precedence_running_loaded_failed_skipped_missing() -> None:
    months = [Month(2019, m) for m in range(1, 6)]

    def run(month: str, state: RunState, seq: int) -> list[RunEvent]:
        rid = f"green-{month.replace('-', '')}-{seq:08d}"
        if state is RunState.RUNNING:
            return [_event("download", RunState.RUNNING, seq, seq, run_id=rid, month=month)]
        error = None if state is RunState.SUCCESS else f"{state.value.lower()} reason"
        step = "merge" if state is RunState.SUCCESS else "download"
        return [_event(step, state, seq, seq + 1, run_id=rid, month=month, error=error)]

    events = (
        run("2019-01", RunState.SUCCESS, 1)
        + run("2019-01", RunState.FAILED, 2)  # a later failure does not hide the loaded rows
        + run("2019-02", RunState.RUNNING, 3)
        + run("2019-03", RunState.FAILED, 4)
        + run("2019-04", RunState.SKIPPED, 5)
    )
    loads = [
        LoadRecord(Dataset.GREEN, Month(2019, 1), "raw/x", "1", "r", 3000, 3000, T0),
    ]
    cells = history.coverage([Dataset.GREEN], months, loads, history.derive_runs(events))
    states = [cells[(Dataset.GREEN, m)].state for m in months]
    assert states == ["loaded", "running", "failed", "skipped", "missing"]
    assert cells[(Dataset.GREEN, Month(2019, 1))].loaded_rows == 3000
    assert cells[(Dataset.GREEN, Month(2019, 3))].error == "failed reason"
    table = render_text.coverage_table([Dataset.GREEN], months, cells)
    assert "green: 1/5 loaded (3,000 rows), 1 missing, 1 failed, 1 running, 1 skipped" in table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", T0 - timedelta(hours=2)),
        ("3d", T0 - timedelta(days=3)),
        ("2019-01-31", datetime(2019, 1, 31, tzinfo=UTC)),
        ("2019-01-31T10:00:00+01:00", datetime(2019, 1, 31, 9, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert history.parse_since(text, now=T0) == expected


def test_parse_since_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        history.parse_since("yesterday")


def test_gate_admits_n_per_dataset_in_order_and_frees_slots() -> None:
    gate = RunGate(2)
    published: list[str] = []

    def ticket(run_id: str, dataset: Dataset = Dataset.GREEN) -> Ticket:
        return Ticket(run_id, dataset, lambda: published.append(run_id))

    for name in ("g1", "g2", "g3", "g4"):
        gate.offer(ticket(name))
    gate.offer(ticket("y1", Dataset.YELLOW))
    assert published == ["g1", "g2", "y1"], "yellow has its own slots"
    assert gate.waiting(Dataset.GREEN) == 2

    gate.done("g2", Dataset.GREEN)
    assert published[-1] == "g3"
    gate.done("g2", Dataset.GREEN)  # a duplicate result frees nothing more
    assert gate.in_flight(Dataset.GREEN) == 2
    assert published.count("g4") == 0

    assert gate.release(frozenset({"g1"})) == 1
    assert published[-1] == "g4"
    assert gate.holding() == {"g3", "g4", "y1"}
    assert gate.release(frozenset({"g1"})) == 0
    assert gate.peak[Dataset.GREEN] == 2


def test_gate_never_exceeds_its_limit_under_threads() -> None:
    gate = RunGate(3)
    lock = threading.Lock()
    current = peak = 0
    finished = threading.Semaphore(0)

    def publish() -> None:
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)
        finished.release()

    for i in range(40):
        gate.offer(Ticket(f"r{i}", Dataset.GREEN, publish))
    done = 0
    while done < 40:
        finished.acquire()
        with lock:
            current -= 1
        gate.done(f"r{done}", Dataset.GREEN)
        done += 1
    assert peak <= 3
