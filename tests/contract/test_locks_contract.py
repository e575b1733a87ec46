"""The ``Locks`` contract over ThreadLocks and GcsLocks (lock objects on fake-gcs-server)."""

# google-cloud-storage ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from emulators import FakeGcs

from infra.resources import FUNCTIONS
from taxi_pipeline.adapters.gcp.gcs import GcsLocks, GcsStore
from taxi_pipeline.adapters.local.locks import ThreadLocks
from taxi_pipeline.errors import TransientError
from taxi_pipeline.ports import Locks
from taxi_pipeline.settings import Settings


def _store(fake: FakeGcs) -> GcsStore:
    client = fake.client()
    bucket = f"locks-{uuid.uuid4().hex[:12]}"
    client.create_bucket(bucket)
    return GcsStore(bucket, Settings(), client=client)


@dataclass
class LocksCase:
    name: str
    make: Callable[[pytest.FixtureRequest], Locks]


def _threads(request: pytest.FixtureRequest) -> Locks:
    return ThreadLocks()


def _gcs(request: pytest.FixtureRequest) -> Locks:
    return GcsLocks(_store(request.getfixturevalue("fake_gcs")), poll_initial=0.01, poll_max=0.1)


@pytest.fixture(
    params=[LocksCase("threads", _threads), LocksCase("gcs", _gcs)], ids=lambda c: c.name
)
def locks(request: pytest.FixtureRequest) -> Locks:
    case: LocksCase = request.param
    return case.make(request)


def test_mutual_exclusion_between_threads(locks: Locks) -> None:
    inside = 0
    most_inside = 0
    entries: list[int] = []
    guard = threading.Lock()

    def work(i: int) -> None:
        nonlocal inside, most_inside
        with locks.hold("merge-green-2019-01"):
            with guard:
                inside += 1
                most_inside = max(most_inside, inside)
            # Give a competitor every chance to get in while we hold the lock.
            threading.Event().wait(0.02)
            with guard:
                entries.append(i)
                inside -= 1

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(12)))
    assert most_inside == 1
    assert sorted(entries) == list(range(12))


def test_different_keys_do_not_block_each_other(locks: Locks) -> None:
    got_other = threading.Event()

    def other() -> None:
        with locks.hold("insert-yellow"):
            got_other.set()

    with locks.hold("insert-green"):
        thread = threading.Thread(target=other)
        thread.start()
        assert got_other.wait(10)
    thread.join(10)


def test_released_after_an_exception(locks: Locks) -> None:
    def fail_inside() -> None:
        with locks.hold("merge-green-2019-02"):
            raise RuntimeError("merge failed")

    with pytest.raises(RuntimeError):
        fail_inside()
    acquired = threading.Event()

    def again() -> None:
        with locks.hold("merge-green-2019-02"):
            acquired.set()

    thread = threading.Thread(target=again)
    thread.start()
    assert acquired.wait(10)
    thread.join(10)


# --------------------------------------------------------------------------- GCS only


def test_gcs_stale_after_default_just_outlives_the_longest_function_timeout() -> None:
    """A live holder is never broken (its function is still inside its timeout), and a lock a
    killed instance left is broken soon after that holder could still have been running."""
    longest = max(int(f.timeout.removesuffix("s")) for f in FUNCTIONS)
    locks = GcsLocks(GcsStore("lake", Settings()))  # no client is built: no request
    assert longest < locks.stale_after <= longest + 120


def test_gcs_held_lock_times_out_as_transient(fake_gcs: FakeGcs) -> None:
    store = _store(fake_gcs)
    holder = GcsLocks(store)
    waiter = GcsLocks(store, wait_timeout=0.3, poll_initial=0.01, poll_max=0.05)
    with holder.hold("merge-green-2019-03"), pytest.raises(TransientError, match="still held"):
        waiter._acquire(waiter._name("merge-green-2019-03"))
    # Released: the lock object is gone, so nothing blocks the next run.
    assert store.list("locks/") == []


def test_gcs_stale_lock_of_a_dead_instance_is_broken(fake_gcs: FakeGcs) -> None:
    store = _store(fake_gcs)
    # An instance died holding the lock: its object stays behind.
    store.blob("locks/merge-green-2019-04.lock").upload_from_string(b"held", if_generation_match=0)
    patient = GcsLocks(store, stale_after=3600, wait_timeout=0.2, poll_initial=0.01)
    with pytest.raises(TransientError):
        patient._acquire(patient._name("merge-green-2019-04"))
    breaker = GcsLocks(store, stale_after=0.0, wait_timeout=10, poll_initial=0.01)
    with breaker.hold("merge-green-2019-04"):
        held = store.stat("locks/merge-green-2019-04.lock")
        assert held is not None
        assert held.size > len(b"held")  # ours now
    assert store.stat("locks/merge-green-2019-04.lock") is None
