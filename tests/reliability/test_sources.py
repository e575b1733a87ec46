"""Faulty sources: the right outcome for each fault, nothing partial in lake or warehouse."""

from __future__ import annotations

import pytest

from support.reliability import JAN, Rig, RigFactory, Source, assert_exact, gzip_bytes
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month, file_name, object_name
from taxi_pipeline.domain.messages import RunState

NAME = file_name(Dataset.GREEN, JAN)
RUN = "green-201901-source"


def _statuses(source: Source) -> list[int]:
    return [status for _path, status in source.server.requests]


def _assert_nothing_partial(rig: Rig) -> None:
    assert rig.raw_objects() == []
    assert rig.leftovers() == []
    assert not rig.table_exists(Dataset.GREEN) or rig.final_count(Dataset.GREEN) == 0
    assert rig.warehouse.loads() == []


def _last(rig: Rig, run_id: str = RUN) -> tuple[RunState, str]:
    event = rig.events(run_id)[-1]
    return event.state, event.error or ""


def test_503_twice_then_the_file_succeeds_inside_one_delivery(rig: Rig, source: Source) -> None:
    source.server.inject(NAME, Fault.unavailable(times=2))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert _statuses(source) == [503, 503, 200]
    assert rig.bus.deliveries[key] == 1  # retried with backoff inside the step, not redelivered
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    assert [r.state for r in rig.bus.results()] == [RunState.SUCCESS]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_other_transient_answers_are_retried_inside_the_step(
    rig: Rig, source: Source, status: int
) -> None:
    source.server.inject(NAME, Fault.unavailable(times=1, status=status))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert _statuses(source) == [status, 200]
    assert rig.bus.deliveries[key] == 1
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])


def test_body_cut_short_once_is_retried_and_never_stored(rig: Rig, source: Source) -> None:
    source.server.inject(NAME, Fault.cut(after_bytes=5_000))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    served = source.server.served
    assert [s.bytes_sent for s in served] == [5_000, source.files[(Dataset.GREEN, JAN)].size_bytes]
    assert len(served) == 2
    assert rig.bus.deliveries[key] == 1
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    assert rig.leftovers() == []


def test_body_always_cut_short_is_transient_then_dead_lettered(
    rig_factory: RigFactory, source: Source
) -> None:
    rig = rig_factory(max_attempts=2, http_attempts=2)
    source.server.inject(NAME, Fault.cut(after_bytes=5_000, times=None))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert rig.bus.deliveries[key] == 2  # bounded: max delivery attempts, then dead letter
    assert len(source.server.served) == 4  # 2 deliveries x 2 attempts inside the step
    state, error = _last(rig)
    assert state is RunState.FAILED
    assert "gave up after 2 delivery attempts" in error
    assert "download interrupted" in error
    _assert_nothing_partial(rig)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.corrupt(at=3_000, times=None), "not a valid gzip stream"),
        (
            Fault.replace_body(gzip_bytes("a,b,c", ["1,2,3"]), times=None),
            "header does not match the published layout",
        ),
        (
            Fault.replace_body(gzip_bytes(Dataset.YELLOW.layout.header, ["1"] * 3), times=None),
            "header does not match the published layout",
        ),
        (Fault.replace_body(b"<html>rate limited</html>", times=None), "not a valid gzip"),
        (Fault.replace_body(b"", times=None), "empty download"),
        (
            Fault.replace_body(gzip_bytes(Dataset.GREEN.layout.header, ["x"] * 999)[:-40], None),
            "gzip stream is truncated",
        ),
        (Fault.unavailable(status=403, times=None), "answered HTTP 403"),
    ],
    ids=["corrupt-gzip", "wrong-header", "yellow-header", "html", "empty", "truncated", "403"],
)
def test_a_file_that_fails_verification_is_permanent_and_leaves_nothing(
    rig: Rig, source: Source, fault: Fault, message: str
) -> None:
    source.server.inject(NAME, fault)
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert rig.bus.deliveries[key] == 1  # acknowledged: no redelivery
    assert len(source.server.served) == 1  # and no retry inside the step either
    state, error = _last(rig)
    assert state is RunState.FAILED
    assert message in error
    assert [r.state for r in rig.bus.results()] == [RunState.FAILED]
    _assert_nothing_partial(rig)


def test_a_month_not_published_is_skipped_not_retried(rig: Rig, source: Source) -> None:
    month = Month(2019, 5)
    key = rig.bus.submit(Dataset.GREEN, month, "green-201905-missing")
    rig.run()
    assert rig.bus.deliveries[key] == 1
    assert _statuses(source) == [404]
    state, error = _last(rig, "green-201905-missing")
    assert state is RunState.SKIPPED
    assert "not published (HTTP 404)" in error
    assert rig.raw_objects() == []
    assert object_name(Dataset.GREEN, month) not in rig.raw_objects()
