"""Many processes, one home: lock files, run slots, the shared run history and the warehouse
file, with real second processes (a holder that waits on its stdin, or is killed -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from taxi_pipeline.adapters.duckdb.warehouse import DuckDbWarehouse
from taxi_pipeline.adapters.filelock.locks import FileLocks, FileSlots
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.devkit.generator import generate_month
from taxi_pipeline.domain.datasets import Dataset, Month, object_name
from taxi_pipeline.domain.history import derive_runs
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import RunEvent
from taxi_pipeline.errors import RunCancelled
from taxi_pipeline.local.process import this_process
from taxi_pipeline.pipeline.cancellation import Cancellation
from taxi_pipeline.pipeline.ports import JobContext, MergePlan, ObjectInfo, ProgressTask
from taxi_pipeline.pipeline.steps.merge import pickup_ranges

GREEN, JAN = Dataset.GREEN, Month(2019, 1)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def holder(code: str) -> Iterator[subprocess.Popen[str]]:
    """A second process that runs ``code`` (which prints ``held`` once it holds what it
    takes), then waits for its stdin to close."""
    script = textwrap.dedent(code) + "\nprint('held', flush=True)\nimport sys\nsys.stdin.read()\n"
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(30)


def _hold_lock(directory: Path, key: str) -> str:
    return textwrap.dedent(f"""
        from pathlib import Path
        from taxi_pipeline.adapters.filelock.locks import FileLocks
        hold = FileLocks(Path({str(directory)!r})).hold({key!r}, "merge green 2019-01")
        hold.__enter__()
    """)


def test_a_lock_of_another_process_is_waited_for_naming_its_holder(tmp_path: Path) -> None:
    said: list[str] = []
    locks = FileLocks(tmp_path / "locks", on_wait=said.append)
    entered = threading.Event()

    def take() -> None:
        with locks.hold("merge-green-2019-01"):
            entered.set()

    with holder(_hold_lock(tmp_path / "locks", "merge-green-2019-01")) as other:
        thread = threading.Thread(target=take)
        thread.start()
        wait_for(lambda: said, 10, "the waiting message")
        assert not entered.is_set()
        (message,) = said
        assert message.startswith("waiting for merge-green-2019-01: held by pid ")
        assert f"pid {other.pid} " in message
        assert "for merge green 2019-01" in message
    # The holder let go (its stdin closed, it exited): the waiter gets in.
    assert entered.wait(10)
    thread.join(10)


def test_a_killed_holder_frees_its_locks_and_slots_at_once(tmp_path: Path) -> None:
    code = _hold_lock(tmp_path / "locks", "download-green-2019-01") + textwrap.dedent(f"""
        from taxi_pipeline.adapters.filelock.locks import FileSlots
        from taxi_pipeline.domain.datasets import Dataset
        slot = FileSlots(Path({str(tmp_path / "slots")!r}), 1).take(Dataset.GREEN, "run-a")
        assert slot is not None
    """)
    slots = FileSlots(tmp_path / "slots", 1)
    with holder(code) as other:
        assert slots.take(GREEN, "run-b") is None
        assert any(f"pid {other.pid} " in h for h in slots.holders(GREEN))
        other.send_signal(signal.SIGKILL)
        other.wait(10)
        # flock locks die with their process: nothing is stale, no timeout to wait out.
        slot = slots.take(GREEN, "run-b")
        assert slot is not None
        slot.release()
        locks = FileLocks(tmp_path / "locks", stop=lambda: "must not wait")
        with locks.hold("download-green-2019-01"):
            pass


def test_a_cancelled_run_stops_waiting_for_a_lock(tmp_path: Path) -> None:
    reason: list[str] = []
    locks = FileLocks(tmp_path / "locks", stop=lambda: reason[0] if reason else None)
    with holder(_hold_lock(tmp_path / "locks", "insert-green")):
        threading.Timer(0.3, lambda: reason.append("cancelled by Ctrl-C (SIGINT)")).start()
        started = time.monotonic()
        with pytest.raises(RunCancelled, match="Ctrl-C"), locks.hold("insert-green"):
            pass
        assert time.monotonic() - started < 5


def test_run_slots_are_counted_over_every_process_of_the_home(tmp_path: Path) -> None:
    code = f"""
        from pathlib import Path
        from taxi_pipeline.adapters.filelock.locks import FileSlots
        from taxi_pipeline.domain.datasets import Dataset
        slots = FileSlots(Path({str(tmp_path)!r}), 3)
        held = [slots.take(Dataset.GREEN, f"green-20190{{i}}-aaaa") for i in (1, 2)]
        assert all(held)
    """
    slots = FileSlots(tmp_path, 3)
    with holder(code) as other:
        mine = slots.take(GREEN, "green-201903-bbbb")
        assert mine is not None
        assert slots.take(GREEN, "green-201904-bbbb") is None
        assert slots.take(Dataset.YELLOW, "yellow-201901-bbbb") is not None  # per dataset
        holders = slots.holders(GREEN)
        assert len(holders) == 2
        assert all(f"pid {other.pid} " in h and "for run green-20190" in h for h in holders)
    assert slots.take(GREEN, "green-201904-bbbb") is not None  # the other process is done


def _event(run_id: str, i: int) -> RunEvent:
    return RunEvent(run_id=run_id, dataset="green", month="2019-01", step=f"s{i}",
                    state=RunState.RUNNING)  # fmt: skip


def test_processes_append_to_one_history_at_once(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    SqliteHistory(path).close()
    code = f"""
        from pathlib import Path
        from taxi_pipeline.adapters.sqlite.history import SqliteHistory
        from taxi_pipeline.domain.messages import RunState
        from taxi_pipeline.domain.runs import RunEvent
        store = SqliteHistory(Path({str(path)!r}))
        for i in range(300):
            store.append_run_events([RunEvent(run_id="other", dataset="green", month="2019-01",
                                              step=f"s{{i}}", state=RunState.RUNNING)])
    """
    others = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)]) for _ in range(2)]
    store = SqliteHistory(path)
    for i in range(300):
        store.append_run_events([_event("mine", i)])
        assert len(store.run_events(run_id="mine")) == i + 1  # reads never wait for writers
    assert [p.wait(60) for p in others] == [0, 0]
    assert len(store.run_events(run_id="other")) == 600
    assert len(store.run_events()) == 900
    store.close()


def test_processes_opening_a_new_history_at_once_all_open_it(tmp_path: Path) -> None:
    """Two backfills started together on a fresh home (CI saw "database is locked"): SQLite
    fails one of two processes switching a new file to WAL at once, without waiting."""
    rounds = [tmp_path / f"home{i}" / "runs.sqlite" for i in range(20)]
    code = f"""
        import sys
        from pathlib import Path
        from taxi_pipeline.adapters.sqlite.history import SqliteHistory
        from taxi_pipeline.errors import ConfigurationError
        print("ready", flush=True)
        for path in {[str(p) for p in rounds]!r}:
            sys.stdin.readline()
            try:
                SqliteHistory(Path(path)).close()
                print("opened", flush=True)
            except ConfigurationError as exc:
                print(exc, flush=True)
    """
    openers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    pipes = [(p.stdin, p.stdout) for p in openers if p.stdin and p.stdout]
    assert [out.readline().strip() for _, out in pipes] == ["ready"] * 4
    for _ in rounds:
        for into, _out in pipes:
            into.write("go\n")
            into.flush()  # all four open the new file within the same few milliseconds
        assert [out.readline().strip() for _, out in pipes] == ["opened"] * 4
    for into, _out in pipes:
        into.close()
    assert [p.wait(30) for p in openers] == [0] * 4


def test_a_dead_process_makes_its_run_abandoned(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    code = f"""
        from pathlib import Path
        from taxi_pipeline.adapters.sqlite.history import SqliteHistory
        from taxi_pipeline.local.process import this_process
        from taxi_pipeline.domain.messages import RunState
        from taxi_pipeline.domain.runs import RunEvent
        store = SqliteHistory(Path({str(path)!r}), process=this_process())
        store.beat()
        store.append_run_events([RunEvent(run_id="green-201901-aaaa", dataset="green",
                                          month="2019-01", step="download",
                                          state=RunState.RUNNING)])
    """
    store = SqliteHistory(path)
    with holder(code) as other:
        (run,) = derive_runs(store.run_events(), store.liveness())
        assert run.state is RunState.RUNNING
        assert run.process is not None
        assert f":{other.pid}:" in run.process
        other.send_signal(signal.SIGKILL)
        other.wait(10)
        (run,) = derive_runs(store.run_events(), store.liveness())
        assert run.state is RunState.ABANDONED
        assert run.error == f"its process (pid {other.pid} on {this_process().host}) is gone"
        assert run.finished_at is not None
    store.close()


# -- the warehouse file --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def month_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_month(tmp_path_factory.mktemp("files"), GREEN, JAN, 30_000, seed=5).path


def _source(path: Path) -> ObjectInfo:
    return ObjectInfo("lake", object_name(GREEN, JAN), "1", path.stat().st_size, path.as_uri())


def _warehouse(
    home: Path, on_wait: Callable[[str], None] = lambda _: None, **options: object
) -> DuckDbWarehouse:
    """As bootstrap wires it: the file taken under the home's ``warehouse`` lock file."""
    locks = FileLocks(home / "locks", on_wait=on_wait)
    return DuckDbWarehouse(
        home / "warehouse.duckdb",
        threads=1,
        guard=lambda purpose: locks.hold("warehouse", purpose),
        on_wait=on_wait,
        **options,  # type: ignore[arg-type]
    )


def _open_elsewhere(path: Path) -> int:
    """Open the DuckDB file from another process; its exit status (0: it could)."""
    code = f"import duckdb; duckdb.connect({str(path)!r}).close()"
    return subprocess.run([sys.executable, "-c", code], check=False).returncode


def test_a_query_waits_for_the_merge_of_another_process(tmp_path: Path) -> None:
    said: list[str] = []
    warehouse = _warehouse(tmp_path, on_wait=said.append)
    warehouse.ensure_final_table(GREEN)
    # Between statements the file is not open: another process may open it.
    assert _open_elsewhere(warehouse.path) == 0
    answer: list[object] = []
    with holder(_hold_lock(tmp_path / "locks", "warehouse")) as other:
        asked = threading.Thread(
            target=lambda: answer.append(warehouse.query("SELECT count(*) FROM green_tripdata"))
        )
        asked.start()
        wait_for(lambda: said, 10, "the waiting message")
        assert said[0].startswith(f"waiting for warehouse: held by pid {other.pid} ")
        assert answer == []  # no answer while the other process merges
    asked.join(10)
    assert [r.rows for r in answer] == [[(0,)]]  # type: ignore[attr-defined]
    warehouse.close()


class _CancelOnMerge:
    """A progress display that cancels the run when its merge phase begins."""

    def __init__(self, cancellation: Cancellation, run_id: str) -> None:
        self.cancellation = cancellation
        self.run_id = run_id

    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        if description.startswith("merge"):
            self.cancellation.cancel(self.run_id, "cancelled by the test")
        return _Task()


class _Task:
    def advance(self, amount: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_cancelled_merge_commits_nothing(tmp_path: Path, month_file: Path) -> None:
    cancellation = Cancellation()
    context = JobContext("green-201901-cccc", GREEN, JAN, "merge")
    warehouse = _warehouse(
        tmp_path, cancellation=cancellation, progress=_CancelOnMerge(cancellation, context.run_id)
    )
    source = _source(month_file)
    warehouse.ensure_final_table(GREEN)
    lake = FolderStore(month_file.parent)
    warehouse.create_external_table(GREEN, JAN, source, lake)
    staged = warehouse.stage(source, lake, context)
    with pytest.raises(RunCancelled):
        warehouse.merge_staged(MergePlan(context, pickup_ranges(staged.pickup_dates), False))
    assert warehouse.query("SELECT count(*) FROM green_tripdata").rows == [(0,)]
    assert _open_elsewhere(warehouse.path) == 0  # released again
    warehouse.close()


def test_the_spill_folder_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    spill = tmp_path / "warehouse.duckdb.tmp"
    (spill / f"p{int(dead.stdout)}").mkdir(parents=True)
    (spill / f"p{os.getpid()}").mkdir()
    warehouse = DuckDbWarehouse(tmp_path / "warehouse.duckdb", threads=1)
    assert sorted(p.name for p in spill.iterdir()) == [f"p{os.getpid()}"]
    warehouse.close()
