"""The ``Locks`` contract over ThreadLocks, FileLocks (lock files shared by the processes of a
home) and GcsLocks (lock objects on fake-gcs-server)."""

# google-cloud-storage ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from emulators import FakeGcs

from infra.resources import FUNCTIONS
from taxi_pipeline.adapters.faults.http import LOST, RESET, Answer, HttpFault, faulty_session
from taxi_pipeline.adapters.filelock.locks import FileLocks
from taxi_pipeline.adapters.gcs.store import GcsLocks, GcsStore
from taxi_pipeline.adapters.memory.locks import ThreadLocks
from taxi_pipeline.errors import PermanentError, TransientError
from taxi_pipeline.pipeline.ports import Locks
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


def _files(request: pytest.FixtureRequest) -> Locks:
    return FileLocks(request.getfixturevalue("tmp_path") / "locks")


def _gcs(request: pytest.FixtureRequest) -> Locks:
    return GcsLocks(_store(request.getfixturevalue("fake_gcs")), poll_initial=0.01, poll_max=0.1)


@pytest.fixture(
    params=[LocksCase("threads", _threads), LocksCase("files", _files), LocksCase("gcs", _gcs)],
    ids=lambda c: c.name,
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


def test_gcs_lock_waits_of_a_merge_leave_room_for_its_work() -> None:
    """A merge waits for two locks in turn; both full waits must leave minutes of its timeout
    for the staging and the insert, or the function is killed holding the first lock."""
    merge = next(f for f in FUNCTIONS if f.entry_point == "on_merge_request")
    timeout = int(merge.timeout.removesuffix("s"))
    locks = GcsLocks(GcsStore("lake", Settings()))
    assert timeout - 2 * locks.wait_timeout >= 180


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


_CREATE = r"/upload/storage/v1/b/[^/]+/o$"
"""A lock object's create (``upload_from_string``: a multipart upload)."""
_GET = r"/storage/v1/b/[^/]+/o/.+"
"""An object's metadata (``get_blob``)."""


def _faulty_store(fake: FakeGcs, fault: HttpFault) -> GcsStore:
    """A store on a new bucket whose client's requests pass through ``fault``: the SDK raises
    from the answers the fault gives, as it would from GCS's."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    bucket = _store(fake).bucket
    client = Client(
        project=fake.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": fake.url},
        _http=faulty_session([fault]),
    )
    return GcsStore(bucket, Settings(), client=client)


@pytest.mark.parametrize("answer", [429, 503, RESET], ids=["429", "503", "connection-reset"])
def test_gcs_transient_errors_on_the_create_keep_polling(fake_gcs: FakeGcs, answer: Answer) -> None:
    create = HttpFault("POST", _CREATE, [answer] * 3, "backend unavailable")
    store = _faulty_store(fake_gcs, create)
    locks = GcsLocks(store, wait_timeout=30, poll_initial=0.01, poll_max=0.05)
    with locks.hold("merge-green-2019-05"):
        assert store.stat("locks/merge-green-2019-05.lock") is not None
    assert len(create.seen) == 4
    assert store.list("locks/") == []


def test_gcs_a_permanent_error_on_the_create_raises_at_once(fake_gcs: FakeGcs) -> None:
    create = HttpFault("POST", _CREATE, [403] * 9, "no storage.objects.create")
    store = _faulty_store(fake_gcs, create)
    locks = GcsLocks(store, wait_timeout=30, poll_initial=0.01)
    with pytest.raises(PermanentError, match=r"take lock .*Forbidden"):
        locks._acquire(locks._name("merge-green-2019-06"))
    assert len(create.seen) == 1


def test_gcs_transient_errors_that_last_end_at_the_wait_timeout(fake_gcs: FakeGcs) -> None:
    store = _faulty_store(fake_gcs, HttpFault("POST", _CREATE, [429] * 1000, "rate limit"))
    locks = GcsLocks(store, wait_timeout=0.5, poll_initial=0.01, poll_max=0.05)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"not taken within .*TooManyRequests"):
        locks._acquire(locks._name("merge-green-2019-07"))
    assert time.monotonic() - started < 0.5 + 5  # bounded by wait_timeout, not the SDK's retry


def test_gcs_a_create_whose_answer_was_lost_is_recognised_as_ours(fake_gcs: FakeGcs) -> None:
    """The object was created, the answer lost: the lock object carries this attempt's token,
    so it is taken as ours rather than waited on until stale (and released afterwards)."""
    create = HttpFault("POST", _CREATE, [LOST])
    store = _faulty_store(fake_gcs, create)
    locks = GcsLocks(store, wait_timeout=30, poll_initial=0.01)
    started = time.monotonic()
    with locks.hold("merge-green-2019-08"):
        assert time.monotonic() - started < 10
        assert len(create.seen) == 1  # the check after the lost answer found the lock ours
        assert len(store.list("locks/")) == 1
    assert store.list("locks/") == []


def test_gcs_transient_errors_while_checking_a_held_lock_keep_polling(
    fake_gcs: FakeGcs,
) -> None:
    check = HttpFault("GET", _GET, [503, 503], "backend unavailable")
    store = _faulty_store(fake_gcs, check)
    store.blob("locks/merge-green-2019-09.lock").upload_from_string(b"held", if_generation_match=0)
    breaker = GcsLocks(store, stale_after=0.0, wait_timeout=30, poll_initial=0.01)
    with breaker.hold("merge-green-2019-09"):
        held = store.stat("locks/merge-green-2019-09.lock")
        assert held is not None
        assert held.size > len(b"held")  # broken once the check went through, and ours now
    assert len(check.seen) >= 3
