"""The local orchestrator's logic: CANCELLED and ABANDONED derived from the history, the
cancellation registry, admission with withdrawn runs and slots held elsewhere, cancel and
restart, and a home's history taken over from the warehouse file of an earlier version."""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from taxi_pipeline import bootstrap
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.cli.live import cancel_summary
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import Liveness
from taxi_pipeline.domain.messages import IngestRequest, IngestResult, RunState
from taxi_pipeline.domain.runs import RunEvent, RunIdentity
from taxi_pipeline.errors import RunCancelled
from taxi_pipeline.local import control
from taxi_pipeline.local.admission import MemorySlots, RunGate, Slot, Ticket
from taxi_pipeline.pipeline.cancellation import Cancellation, current_run_id, run_scope
from taxi_pipeline.pipeline.recorder import cancel_event, queued_event
from taxi_pipeline.render import text as render_text
from taxi_pipeline.settings import Settings

T0 = datetime(2024, 3, 1, 9, 0, 0, tzinfo=UTC)
RUN = "green-201901-aaaa0000"
QUEUED_RUN = RunIdentity(RUN, Dataset.GREEN, Month(2019, 1))
ME = "laptop:100:abc"


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _line(
    step: str, state: RunState, at: float, *, process: str | None = ME, error: str | None = None
) -> RunEvent:
    return RunEvent(
        run_id=RUN,
        dataset="green",
        month="2019-01",
        step=step,
        state=state,
        started_at=_at(at),
        finished_at=None if state is RunState.RUNNING else _at(at),
        labels={"trigger": "manual"},
        error=error,
        recorded_at=_at(at),
        process=process,
    )


def _cancel(at: float, reason: str = "cancelled by Ctrl-C (SIGINT)") -> RunEvent:
    line = cancel_event(RUN, "green", "2019-01", reason)
    return replace(line, started_at=_at(at), finished_at=_at(at), recorded_at=_at(at))


def _local(now: float, *alive: str) -> Liveness:
    return Liveness(_at(now), live_processes=frozenset(alive), last_beats={ME: _at(now - 1)})


# -- CANCELLED ---------------------------------------------------------------------------------


def test_a_cancel_line_makes_the_run_cancelled_with_its_reason() -> None:
    events = [
        _line("download", RunState.RUNNING, 0),
        _cancel(3),
        _line("download", RunState.CANCELLED, 4, error="cancelled by Ctrl-C (SIGINT)"),
    ]
    run = history.derive_run(events, _local(5, ME))
    assert run.state is RunState.CANCELLED
    assert run.error == "cancelled by Ctrl-C (SIGINT)"
    assert run.finished_at == _at(4)
    assert not run.is_active
    gantt = "\n".join(render_text.gantt(run, width=20))
    assert "CANCELLED" in gantt
    assert "C" in gantt.splitlines()[1]


def test_a_merge_that_committed_before_the_cancel_reached_it_is_success() -> None:
    events = [
        _line("merge", RunState.RUNNING, 0),
        _cancel(1),
        replace(_line("merge", RunState.SUCCESS, 2), rows=10),
    ]
    assert history.derive_run(events).state is RunState.SUCCESS


def test_a_queued_run_cancelled_never_started() -> None:
    events = [replace(queued_event(QUEUED_RUN), recorded_at=T0)]
    events.append(_cancel(2))
    run = history.derive_run(events)
    assert run.state is RunState.CANCELLED
    assert [s.step for s in run.steps] == ["cancel"]
    assert run.started_at is None  # the cancel is not a step that began


# -- ABANDONED ---------------------------------------------------------------------------------


def test_a_run_whose_process_is_gone_is_abandoned_when_its_process_last_beat() -> None:
    events = [_line("download", RunState.RUNNING, 0)]
    assert history.derive_run(events, _local(60, ME)).state is RunState.RUNNING
    run = history.derive_run(events, _local(60))  # ME no longer beats
    assert run.state is RunState.ABANDONED
    assert run.error == "its process (pid 100 on laptop) is gone"
    assert run.finished_at == _at(59)  # its last heartbeat, not the first line
    assert run.duration() == timedelta(seconds=59)


def test_lines_that_name_no_process_are_abandoned_after_the_silence_bound() -> None:
    events = [_line("download", RunState.RUNNING, 0, process=None)]
    assert history.derive_run(events, _local(500)).state is RunState.RUNNING
    run = history.derive_run(events, _local(541))
    assert run.state is RunState.ABANDONED
    assert run.error == "no sign of life for 541 s"


def test_in_the_cloud_only_a_running_step_past_the_function_timeout_is_abandoned() -> None:
    running = [_line("merge", RunState.RUNNING, 0, process=None)]
    cloud = Liveness.cloud(_at(541))
    assert history.derive_run(running, Liveness.cloud(_at(539))).state is RunState.RUNNING
    assert history.derive_run(running, cloud).state is RunState.ABANDONED
    # Queued in Pub/Sub, or waiting for a redelivery: no process to miss yet.
    queued = [replace(queued_event(QUEUED_RUN), recorded_at=T0)]
    retrying = [*running, _line("merge", RunState.RETRYING, 1, process=None)]
    assert history.derive_run(queued, cloud).state is RunState.QUEUED
    assert history.derive_run(retrying, cloud).state is RunState.RETRYING
    # A redelivery that runs again brings the run back.
    again = [*retrying, _line("merge", RunState.RUNNING, 600, process=None)]
    assert history.derive_run(again, Liveness.cloud(_at(601))).state is RunState.RUNNING


def test_status_prefers_the_latest_load_over_an_abandoned_attempt() -> None:
    from taxi_pipeline.domain.runs import LoadRecord

    months = [Month(2019, 1), Month(2019, 2), Month(2019, 3)]
    abandoned = [_line("download", RunState.RUNNING, 0)]
    cancelled = [replace(e, run_id="green-201902-b", month="2019-02") for e in [*abandoned]]
    cancelled.append(replace(_cancel(1), run_id="green-201902-b", month="2019-02"))
    reload = [replace(e, run_id="green-201903-c", month="2019-03") for e in abandoned]
    runs = history.derive_runs([*abandoned, *cancelled, *reload], _local(60))
    load = LoadRecord(Dataset.GREEN, Month(2019, 3), "o", "1", "green-201903-0", 5, 5, T0)
    cells = history.coverage([Dataset.GREEN], months, [load], runs)
    assert [cells[(Dataset.GREEN, m)].state for m in months] == [
        "abandoned",
        "cancelled",
        "loaded",
    ]
    lines = render_text.coverage_table([Dataset.GREEN], months, cells)
    assert lines[1:4] == ["2019-01  abandoned", "2019-02  cancelled", "2019-03          5"]
    assert lines[5] == (
        "green: 1/3 loaded (5 rows), 0 missing, 0 failed, 0 running, 0 skipped,"
        " 1 cancelled, 1 abandoned"
    )


# -- the cancellation registry -----------------------------------------------------------------


def test_cancellation_stops_one_run_interrupts_its_work_and_asks_the_history_once() -> None:
    asked: list[str] = []

    def recorded(run_id: str) -> str | None:
        asked.append(run_id)
        return "cancelled in the history" if run_id == "b" else None

    cancellation = Cancellation(recorded)
    cancellation.check("a")  # goes on
    interrupted: list[str] = []
    with cancellation.interruptible("a", lambda: interrupted.append("a")):
        cancellation.cancel("a", "cancelled by pid 7")
    assert interrupted == ["a"]
    with pytest.raises(RunCancelled, match="pid 7"):
        cancellation.check("a")
    cancellation.check("b")  # the history is read at a step's start only
    assert asked == []
    with pytest.raises(RunCancelled, match="in the history"):
        cancellation.check("b", recorded=True)
    with pytest.raises(RunCancelled):
        cancellation.check("b")  # remembered
    assert asked == ["b"]
    with pytest.raises(RunCancelled), cancellation.interruptible("a", lambda: None):
        pass  # already cancelled: the work does not begin


def test_cancelling_everything_reaches_runs_that_start_later_and_the_scoped_run() -> None:
    cancellation = Cancellation()

    class Invocation:
        run_id: str | None = None

    invocation = Invocation()
    with run_scope(invocation):
        assert current_run_id() is None
        invocation.run_id = "c"
        assert current_run_id() == "c"  # read as the step identifies its run
        cancellation.cancel_everything("cancelled by SIGTERM")
        with pytest.raises(RunCancelled, match="SIGTERM"):
            cancellation.check()
    assert current_run_id() is None
    assert cancellation.reason("not-started-yet") == "cancelled by SIGTERM"


# -- admission -------------------------------------------------------------------------------


class _ElsewhereSlots(MemorySlots):
    """Slots of which ``taken`` are held by another process."""

    def __init__(self, limit: int, taken: int) -> None:
        super().__init__(limit)
        self.elsewhere = [MemorySlots.take(self, Dataset.GREEN, f"other-{i}") for i in range(taken)]

    def holders(self, dataset: Dataset) -> list[str]:
        return [f"held by pid 7 for run other-{i}" for i, _ in enumerate(self.elsewhere)]


def test_runs_wait_for_slots_held_elsewhere_and_withdrawn_runs_never_start() -> None:
    slots = _ElsewhereSlots(2, taken=2)
    gate = RunGate(2, slots)
    published: list[str] = []
    for run_id in ("r1", "r2", "r3"):
        gate.offer(Ticket(run_id, Dataset.GREEN, functools.partial(published.append, run_id)))
    assert (published, gate.waiting()) == ([], 3)
    assert gate.retry() == 0
    assert gate.withdraw("r2") is not None
    assert gate.withdraw("r2") is None
    first: Slot | None = slots.elsewhere.pop()
    assert first is not None
    first.release()  # the other process's run ended
    assert gate.retry() == 1
    assert published == ["r1"]
    assert [t.run_id for t in gate.withdraw_all()] == ["r3"]
    gate.done("r1", Dataset.GREEN)
    assert published == ["r1"]
    assert gate.waiting() == 0


# -- cancel and restart ------------------------------------------------------------------------


def test_cancel_and_restart_from_the_history(tmp_path: Path) -> None:
    store = SqliteHistory(tmp_path / "runs.sqlite")
    store.append_run_events(
        [
            _line("download", RunState.RUNNING, 0),
            replace(_line("download", RunState.RUNNING, 0), run_id="green-201902-b"),
            replace(_line("merge", RunState.SUCCESS, 1), run_id="green-201902-b"),
        ]
    )
    alive = _local(2, ME)
    outcome = control.cancel_run(store, RUN, alive)
    assert (outcome.requested, outcome.run.state) == (True, RunState.RUNNING)
    run = history.derive_run(store.run_events(run_id=RUN), alive)
    assert run.state is RunState.CANCELLED
    assert run.error == "cancelled"
    assert not control.stopped(run)  # its download has not recorded the stop yet
    assert control.cancel_run(store, "green-201902-b", alive).requested is False
    with pytest.raises(control.UnknownRun):
        control.cancel_run(store, "green-209901-x", alive)

    submitted: list[tuple[Dataset, Month, dict[str, str]]] = []

    class Runner:
        def submit(self, dataset: Dataset, month: Month, **options: object) -> str:
            labels = options["labels"]
            assert isinstance(labels, dict)
            submitted.append((dataset, month, labels))
            return "green-201901-new"

    assert control.restart_run(Runner(), store, RUN, alive) == "green-201901-new"
    assert submitted == [
        (Dataset.GREEN, Month(2019, 1), {"trigger": "manual", "restarted_from": RUN})
    ]
    with pytest.raises(control.NotRestartable, match=r"SUCCESS.*run --force"):
        control.restart_run(Runner(), store, "green-201902-b", alive)
    store.close()


def test_the_cancel_line_names_the_runs_cancelled_or_how_many() -> None:
    one = IngestRequest(dataset=Dataset.GREEN, month="2019-01", run_id=RUN)
    two = IngestRequest(dataset=Dataset.GREEN, month="2019-02", run_id="green-201902-b")
    assert cancel_summary([one], {}) == (
        f"cancelled green 2019-01 (run {RUN}); nothing partial was kept"
    )
    loaded = IngestResult(run_id=RUN, dataset=Dataset.GREEN, month="2019-01",
                          state=RunState.SUCCESS)  # fmt: skip
    assert cancel_summary([one, two], {RUN: loaded}) == (
        "cancelled green 2019-02 (run green-201902-b); nothing partial was kept;"
        " 1 finished before the cancel reached it"
    )
    assert cancel_summary([one, two], {}).startswith("cancelled 2 runs (green 2019-01, green")
    # A run of several months: the ones it never submitted, said as such.
    assert cancel_summary([one], {}, ["green 2019-02", "green 2019-03"]) == (
        f"cancelled green 2019-01 (run {RUN}); nothing partial was kept;"
        " not started: green 2019-02, green 2019-03"
    )
    assert cancel_summary([one], {RUN: loaded}, ["green 2019-02"]) == (
        "cancelled between runs; 1 finished before the cancel reached it;"
        " not started: green 2019-02"
    )
    assert cancel_summary([], {}, ["green 2019-02"]) == (
        "cancelled between runs; not started: green 2019-02"
    )
    assert cancel_summary([], {}) == "cancelled: no run was in flight; nothing partial was kept"


# -- a home from before the history moved to SQLite ----------------------------------------------


def test_a_home_of_an_earlier_version_has_its_history_taken_over_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    old = duckdb.connect(str(home / "warehouse.duckdb"))
    old.execute(
        "CREATE TABLE pipeline_runs (run_id VARCHAR NOT NULL, dataset VARCHAR, month VARCHAR,"
        " step VARCHAR NOT NULL, state VARCHAR NOT NULL, attempt INTEGER, started_at TIMESTAMP,"
        " finished_at TIMESTAMP, rows BIGINT, bytes BIGINT, labels VARCHAR, error VARCHAR,"
        " details VARCHAR, recorded_at TIMESTAMP NOT NULL)"
    )
    old.execute(
        "INSERT INTO pipeline_runs VALUES ('green-201901-old', 'green', '2019-01', 'merge',"
        " 'SUCCESS', 1, '2024-01-01 10:00:00', '2024-01-01 10:00:05', 7, NULL,"
        """ '{"trigger": "manual"}', NULL, '{"rows_in_file": "7"}', '2024-01-01 10:00:05')"""
    )
    old.execute(
        "CREATE TABLE pipeline_loads (dataset VARCHAR NOT NULL, month VARCHAR NOT NULL,"
        " object_name VARCHAR NOT NULL, generation VARCHAR NOT NULL, run_id VARCHAR NOT NULL,"
        " rows_in_file BIGINT NOT NULL, rows_inserted BIGINT NOT NULL,"
        " loaded_at TIMESTAMP NOT NULL)"
    )
    old.execute(
        "INSERT INTO pipeline_loads VALUES ('green', '2019-01', 'raw/green/x.csv.gz', '5',"
        " 'green-201901-old', 7, 7, '2024-01-01 10:00:05')"
    )
    old.close()
    settings = Settings(home=home)
    store = bootstrap.build_history(settings)
    (run,) = history.derive_runs(store.run_events())
    assert (run.run_id, run.state, run.rows_inserted) == ("green-201901-old", RunState.SUCCESS, 7)
    assert [load.run_id for load in store.loads()] == ["green-201901-old"]
    assert isinstance(store, SqliteHistory)
    assert store.find_load("raw/green/x.csv.gz", "5") is not None
    store.close()
    # The old tables are gone from the warehouse file; a second open takes nothing twice.
    tables = duckdb.connect(str(home / "warehouse.duckdb")).execute("SHOW TABLES").fetchall()
    assert tables == []
    again = SqliteHistory(home / "runs.sqlite")
    assert len(again.run_events()) == 1
    assert again.import_history([], []) is False
    again.close()


def test_read_only_commands_create_no_history(tmp_path: Path) -> None:
    store = bootstrap.build_history(Settings(home=tmp_path / "nowhere"))
    assert store.run_events() == []
    assert not (tmp_path / "nowhere").exists()
