"""The embedded default as a local orchestrator: the real CLI in several processes on one home.

Every command runs as a subprocess of ``taxi-pipeline`` (``python -m taxi_pipeline.cli.app``)
over generated months served by the local source server; a run is held in a phase by the
server's throttled stream (download) or caught in it through the progress its process records
(stage, merge). Every wait is on a condition, with a timeout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.e2e import Source, serve_months
from taxi_pipeline.adapters.filelock.locks import FileLocks
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month, file_name
from taxi_pipeline.domain.history import Run, derive_runs
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.local.process import this_process

pytestmark = pytest.mark.slow

GREEN, YELLOW = Dataset.GREEN, Dataset.YELLOW
SMALL = {(GREEN, Month(2019, m)): 20_000 + 1_000 * m for m in (1, 2, 3, 4)}
LARGE = (YELLOW, Month(2019, 1))
"""A month whose staging and merge last a few seconds (one DuckDB thread)."""
MONTHS = {**SMALL, LARGE: 400_000}
SLOW = {GREEN: 100_000, YELLOW: 1_500_000}
"""Bytes per second of a throttled download: a run stays in its download for seconds."""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    with serve_months(tmp_path_factory.mktemp("orchestrator"), MONTHS) as served:
        yield served
        served.server.clear_faults()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Home:
    """One home, and the CLI run against it in as many processes as a test wants."""

    path: Path
    source: Source

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TAXI_PIPELINE_HOME": str(self.path),
            "TAXI_PIPELINE_SOURCE_URL": self.source.url,
            "TAXI_PIPELINE_DUCKDB_THREADS": "1",
            "COLUMNS": "200",
        }

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "taxi_pipeline.cli.app", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cli(self, *args: str, timeout: float = 120) -> tuple[int, str, str, float]:
        """Run a command to its end: exit status, stdout, stderr, seconds."""
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "taxi_pipeline.cli.app", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr, time.monotonic() - started

    def runs(self) -> list[Run]:
        path = self.path / "runs.sqlite"
        if not path.exists():
            return []
        store = SqliteHistory(path, create=False)
        try:
            return derive_runs(store.run_events(), store.liveness())
        finally:
            store.close()

    def run_of(self, dataset: Dataset, month: Month) -> Run | None:
        found = [r for r in self.runs() if (r.dataset, r.month) == (dataset.value, str(month))]
        return found[-1] if found else None

    def phase(self, run_id: str) -> set[str]:
        """The phases the run's process is in now (as it records its progress)."""
        store = SqliteHistory(self.path / "runs.sqlite", create=False)
        try:
            return {p.phase for p in store.progress(run_id) if not p.finished}
        finally:
            store.close()

    def started(self, dataset: Dataset, month: Month, phase: str, timeout: float = 60) -> Run:
        """Wait until the month's run is in ``phase``; returns the run."""
        found: list[Run] = []

        def inside() -> bool:
            run = self.run_of(dataset, month)
            if run is None or phase not in self.phase(run.run_id):
                return False
            found.append(run)
            return True

        wait_for(inside, timeout, f"{dataset.value} {month} to be in its {phase} phase")
        return found[-1]

    def waits_for_the_warehouse(self, timeout: float, who: str) -> None:
        """Wait until a process waits for the warehouse lock (which the test holds)."""
        waiting = self.path / "locks" / "warehouse.lock.waiting"
        wait_for(lambda: waiting.exists() and any(waiting.iterdir()), timeout, f"{who} to wait")

    def rows(self, dataset: Dataset) -> dict[str, tuple[int, int]]:
        """Per file: rows, distinct ids, in the final table (``taxi-pipeline sql``)."""
        code, out, err, _ = self.cli(
            "sql",
            f"SELECT filename, count(*), count(DISTINCT unique_row_id) FROM {dataset.final_table}"
            " GROUP BY 1 ORDER BY 1",
            "--format",
            "csv",
        )
        if code != 0 and "does not exist" in err:
            return {}
        assert code == 0, err
        lines = out.splitlines()[1:]
        return {f: (int(n), int(d)) for f, n, d in (line.split(",") for line in lines)}

    def assert_loaded_once(self, dataset: Dataset, months: list[Month]) -> None:
        files = [self.source.files[(dataset, m)] for m in months]
        expected = {
            file_name(dataset, f.month).removesuffix(".gz"): (f.rows, f.rows - f.duplicate_rows)
            for f in files
        }
        assert self.rows(dataset) == expected


@pytest.fixture
def home(tmp_path: Path, source: Source) -> Iterator[Home]:
    yield Home(tmp_path / "home", source)
    source.server.clear_faults()


def _finish(process: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _throttle(source: Source, dataset: Dataset, month: Month, times: int = 1) -> None:
    rate = SLOW[dataset]
    source.server.inject(file_name(dataset, month), Fault.trickle(rate // 10, 0.1, times=times))


# -- many processes, one home --------------------------------------------------------------------


def test_two_overlapping_backfills_in_two_processes_both_load_exactly(home: Home) -> None:
    months = [Month(2019, m) for m in (1, 2, 3, 4)]
    for month in months[1:3]:  # both backfills want these: hold them a moment in download
        _throttle(home.source, GREEN, month)
    first = home.start("backfill", "green", "--from", "2019-01", "--to", "2019-03")
    second = home.start("backfill", "green", "--from", "2019-02", "--to", "2019-04")
    (a_code, a_out, a_err), (b_code, b_out, b_err) = _finish(first), _finish(second)
    assert (a_code, b_code) == (0, 0), a_err + b_err
    assert "3 SUCCESS" in a_out
    assert "3 SUCCESS" in b_out
    home.assert_loaded_once(GREEN, months)
    runs = home.runs()
    assert len(runs) == 6
    assert {r.state for r in runs} == {RunState.SUCCESS}
    # The two processes really overlapped, and each month's rows went in once in all.
    processes = {r.process for r in runs}
    assert len(processes) == 2
    assert any(
        a.process != b.process
        and a.started_at is not None
        and b.finished_at is not None
        and a.started_at < b.finished_at
        and b.started_at is not None
        and a.finished_at is not None
        and b.started_at < a.finished_at
        for a in runs
        for b in runs
    )
    inserted: dict[str, int] = {}
    for run in runs:
        inserted[run.month] = inserted.get(run.month, 0) + (run.rows_inserted or 0)
    assert inserted == {str(m): SMALL[(GREEN, m)] for m in months}


def test_runs_and_status_answer_while_another_process_holds_the_warehouse(home: Home) -> None:
    dataset, month = LARGE
    locks = FileLocks(home.path / "locks")
    # The test holds the warehouse, so the loader's merge waits for it (RUNNING) for as long as
    # the test needs: ``runs`` and ``status`` must not wait for the warehouse.
    with locks.hold("warehouse", "a test"):
        loading = home.start("run", dataset.value, str(month))
        home.waits_for_the_warehouse(60, "the merge")
        run = home.run_of(dataset, month)
        assert run is not None
        code, out, err, took = home.cli("runs")
        assert code == 0, err
        assert f"{run.run_id}  {dataset.value}   {month}  RUNNING" in out
        assert took < 15, f"runs took {took:.1f} s"
        code, out, err, took = home.cli("status", "--dataset", dataset.value)
        assert code == 0, err
        assert f"{month}    running" in out
        assert "1 running" in out
        assert took < 15, f"status took {took:.1f} s"
        assert loading.poll() is None
    code, _, err = _finish(loading)
    assert code == 0, err
    assert "waiting for warehouse: held by pid" in err
    home.assert_loaded_once(dataset, [month])


def test_sql_waits_for_the_process_that_holds_the_warehouse_saying_which(home: Home) -> None:
    dataset, month = GREEN, Month(2019, 1)
    code, _, err, _ = home.cli("run", dataset.value, str(month))
    assert code == 0, err
    locks = FileLocks(home.path / "locks")
    with locks.hold("warehouse", "merge green 2019-02 (run green-201902-test)"):
        query = home.start("sql", "SELECT count(*) AS n FROM green_tripdata", "--format", "csv")
        home.waits_for_the_warehouse(30, "sql")
        assert query.poll() is None
    code, out, err = _finish(query, timeout=30)
    assert code == 0, err
    assert out.splitlines() == ["n", str(SMALL[(dataset, month)])]
    assert f"waiting for warehouse: held by pid {os.getpid()} on {this_process().host}" in err
    assert "for merge green 2019-02 (run green-201902-test)" in err


# -- interrupts -----------------------------------------------------------------------------------


def test_ctrl_c_in_a_run_of_several_months_says_which_never_started(home: Home) -> None:
    months = [Month(2019, m) for m in (1, 2, 3)]
    _throttle(home.source, GREEN, months[1])
    running = home.start("run", "green", f"{months[0]}..{months[-1]}")
    run = home.started(GREEN, months[1], "download")
    running.send_signal(signal.SIGSTOP)  # as above: the Ctrl-C lands in the phase just seen
    running.send_signal(signal.SIGINT)
    running.send_signal(signal.SIGCONT)
    code, _, err = _finish(running, timeout=30)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == (
        f"cancelled green {months[1]} (run {run.run_id}); nothing partial was kept;"
        f" not started: green {months[2]}"
    )
    home.assert_loaded_once(GREEN, months[:1])
    assert home.run_of(GREEN, months[2]) is None


@pytest.mark.parametrize("phase", ["download", "stage", "merge"])
def test_ctrl_c_cancels_in_every_phase_and_a_rerun_is_exact(home: Home, phase: str) -> None:
    dataset, month = LARGE
    if phase == "download":
        _throttle(home.source, dataset, month)
    running = home.start("run", dataset.value, str(month))
    run = home.started(dataset, month, phase)
    # Frozen at once, so the Ctrl-C lands in the phase just seen (a stage lasts a second or
    # two, less than a busy machine may take between two polls and the signal). On SIGCONT
    # any thread may take the SIGINT, not only the main one that runs Python's handler.
    running.send_signal(signal.SIGSTOP)
    interrupted = time.monotonic()
    running.send_signal(signal.SIGINT)
    running.send_signal(signal.SIGCONT)
    code, _, err = _finish(running, timeout=30)
    took = time.monotonic() - interrupted
    assert code == 130, err
    assert took < 10, f"took {took:.1f} s to stop"
    assert err.strip().splitlines()[-1] == (
        f"cancelled {dataset.value} {month} (run {run.run_id}); nothing partial was kept"
    )
    cancelled = home.run_of(dataset, month)
    assert cancelled is not None
    assert cancelled.state is RunState.CANCELLED
    assert cancelled.error == "cancelled by Ctrl-C (SIGINT)"
    stopped = {s.step: s.state for s in cancelled.steps}
    assert stopped[{"download": "download"}.get(phase, "merge")] is RunState.CANCELLED
    # Nothing partial: no rows, no load, no half-written lake object.
    assert home.rows(dataset) == {}
    assert not list((home.path / "lake" / ".tmp").glob("*.part"))
    lake_file = home.path / "lake" / "raw" / dataset.value / file_name(dataset, month)
    assert lake_file.exists() is (phase != "download")
    code, _, err, _ = home.cli("run", dataset.value, str(month))
    assert code == 0, err
    home.assert_loaded_once(dataset, [month])
    # The cancelled run was never retried: one try of each step it reached.
    again = [r for r in home.runs() if r.run_id == run.run_id]
    assert [r.state for r in again] == [RunState.CANCELLED]
    assert max(s.attempt for s in again[0].steps) == 1


def test_a_second_ctrl_c_exits_at_once(home: Home) -> None:
    dataset, month = GREEN, Month(2019, 1)
    home.source.server.inject(file_name(dataset, month), Fault.trickle(2_000, 0.1))
    running = home.start("run", dataset.value, str(month))
    run = home.started(dataset, month, "download")
    running.send_signal(signal.SIGINT)
    wait_for(
        lambda: (r := home.run_of(dataset, month)) is not None and r.state is RunState.CANCELLED,
        10,
        "the cancel to be recorded",
    )
    # The download is stuck between two chunks; a second Ctrl-C does not wait for it.
    again = time.monotonic()
    running.send_signal(signal.SIGINT)
    code, _, err = _finish(running, timeout=10)
    assert code == 130
    assert time.monotonic() - again < 3
    assert "cancelled again: exiting at once" in err
    final = home.run_of(dataset, month)
    assert final is not None
    assert (final.run_id, final.state) == (run.run_id, RunState.CANCELLED)


# -- dead runs --------------------------------------------------------------------------------


def test_a_killed_process_leaves_an_abandoned_run_not_a_running_one(home: Home) -> None:
    dataset, month = GREEN, Month(2019, 2)
    _throttle(home.source, dataset, month)
    running = home.start("run", dataset.value, str(month))
    run = home.started(dataset, month, "download")
    running.send_signal(signal.SIGKILL)
    running.wait(10)
    code, out, err, _ = home.cli("runs")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith(run.run_id))
    assert " ABANDONED " in line
    assert f"its process (pid {running.pid} on " in line
    code, out, err, _ = home.cli("status", "--dataset", "green")
    assert code == 0, err
    assert f"{month}  abandoned" in out
    assert "0 running" in out
    # A later load wins over the abandoned attempt.
    code, _, err, _ = home.cli("run", dataset.value, str(month))
    assert code == 0, err
    code, out, _, _ = home.cli("status", "--dataset", "green")
    assert re.search(rf"^{month}\s+{SMALL[(dataset, month)]:,} mirror$", out, re.MULTILINE), out


# -- cancel and restart from another terminal ------------------------------------------------------


def test_cancel_and_restart_a_running_run_from_another_process(home: Home) -> None:
    dataset, month = GREEN, Month(2019, 3)
    _throttle(home.source, dataset, month)
    running = home.start("run", dataset.value, str(month))
    run = home.started(dataset, month, "download")
    code, out, err, _ = home.cli("runs", "cancel", run.run_id)
    assert code == 0, err
    assert out.strip() == f"cancelled {dataset.value} {month} (run {run.run_id})"
    code, out, err = _finish(running, timeout=30)
    assert code == 1
    assert f"{month} CANCELLED: cancelled by pid " in err
    assert "taxi-pipeline runs cancel" in err
    assert home.rows(dataset) == {}

    code, out, err, _ = home.cli("runs", "restart", run.run_id)
    assert code == 0, err
    rows = SMALL[(dataset, month)]
    assert f"SUCCESS, rows {rows:,} in file, {rows:,} inserted" in out
    assert f"(restarted from {run.run_id})" in out
    home.assert_loaded_once(dataset, [month])
    runs = {r.run_id: r for r in home.runs()}
    (restarted,) = [r for r in runs.values() if r.run_id != run.run_id]
    assert restarted.labels == {"trigger": "manual", "restarted_from": run.run_id}
    assert runs[run.run_id].state is RunState.CANCELLED
    # A run that loaded is not restarted.
    code, _, err, _ = home.cli("runs", "restart", restarted.run_id)
    assert code == 1
    assert "only a FAILED, CANCELLED or ABANDONED run can be restarted" in err


def test_cancel_a_queued_run_from_another_process(home: Home) -> None:
    first, second = Month(2019, 1), Month(2019, 2)
    _throttle(home.source, GREEN, first)
    backfill = home.start("backfill", "green", "--from", "2019-01", "--to", "2019-02",
                          "--concurrency", "1")  # fmt: skip
    home.started(GREEN, first, "download")
    queued = home.run_of(GREEN, second)
    assert queued is not None
    assert queued.state is RunState.QUEUED
    code, out, err, _ = home.cli("runs", "cancel", queued.run_id)
    assert code == 0, err
    assert out.strip() == f"cancelled green {second} (run {queued.run_id})"
    code, out, err = _finish(backfill)
    assert code == 1, err
    assert "1 SUCCESS, 1 CANCELLED" in out
    home.assert_loaded_once(GREEN, [first])
    after = home.run_of(GREEN, second)
    assert after is not None
    assert after.state is RunState.CANCELLED
    assert [s.step for s in after.steps] == ["cancel"]  # it never started


# -- watching from another terminal ---------------------------------------------------------------


def test_runs_show_follow_and_runs_watch_refresh_until_the_run_ends(home: Home) -> None:
    dataset, month = GREEN, Month(2019, 4)
    _throttle(home.source, dataset, month)
    running = home.start("run", dataset.value, str(month))
    run = home.started(dataset, month, "download")
    follow = home.start("runs", "show", run.run_id, "--follow")
    watch = home.start("runs", "--watch")
    assert running.wait(120) == 0
    code, out, err = _finish(follow, timeout=30)
    assert code == 0, err
    assert "state     SUCCESS" in out
    code, out, err = _finish(watch, timeout=30)
    assert code == 0, err
    assert f"{run.run_id}  green    {month}  SUCCESS" in out
    assert "0 queued or running" in out
