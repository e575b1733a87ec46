"""Hostile sources (issue 12): a trickle, redirects to elsewhere or in a loop, a body cut
without a length. Each ends the way its cause calls for, in bounded time and requests."""

from __future__ import annotations

import gzip
import time

import httpx
import pytest

from support.reliability import JAN, Rig, RigFactory, Source, assert_exact
from taxi_pipeline.adapters.http.source import MAX_REDIRECTS, HttpxSource
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, file_name, object_name
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.errors import PermanentError

NAME = file_name(Dataset.GREEN, JAN)
PATH = f"/green/{NAME}"
RUN = "green-201901-hostile"


def _last(rig: Rig) -> tuple[RunState, str]:
    event = rig.events(RUN)[-1]
    return event.state, event.error or ""


def _served_trickles(source: Source, count: int) -> list[int]:
    """Bytes sent by each trickled answer, once the server noticed the client left (its next
    write fails, up to one pause after the client closed)."""
    deadline = time.monotonic() + 10
    while len(source.server.served) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [s.bytes_sent for s in source.server.served]


def _assert_nothing_partial(rig: Rig) -> None:
    assert rig.raw_objects() == []
    assert rig.leftovers() == []
    assert rig.warehouse.loads() == []


# A green month is ~60 KB: at 16 bytes every 2 s it would take about two hours. Without a
# deadline these tests hang until pytest-timeout fails them.
TRICKLE = Fault.trickle(every_bytes=16, seconds=2.0, times=None)


@pytest.mark.timeout(60)
def test_a_trickling_source_fails_transiently_at_the_download_deadline(
    rig_factory: RigFactory, source: Source
) -> None:
    rig = rig_factory(
        max_attempts=1, http_attempts=3, download_timeout_seconds=3,
        download_min_bytes_per_second=0,
    )  # fmt: skip
    source.server.inject(NAME, TRICKLE)
    started = time.monotonic()
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    elapsed = time.monotonic() - started

    assert 3 <= elapsed < 15
    assert rig.bus.deliveries[key] == 1  # max_attempts=1: then the dead-letter path
    (sent,) = _served_trickles(source, 1)  # one request: no attempt starts past the deadline
    assert sent <= 16 * 3
    assert any("took longer than 3 s" in f for f in rig.bus.failures)  # raised: transient
    state, error = _last(rig)
    assert state is RunState.FAILED
    assert "gave up after 1 delivery attempts" in error
    assert "TAXI_PIPELINE_DOWNLOAD_TIMEOUT_SECONDS" in error
    _assert_nothing_partial(rig)


@pytest.mark.timeout(60)
def test_a_source_under_the_minimum_speed_fails_transiently_after_the_grace_period(
    rig_factory: RigFactory, source: Source
) -> None:
    rig = rig_factory(
        max_attempts=2, http_attempts=1, download_min_bytes_per_second=1024,
        download_speed_window_seconds=1.0,
    )  # fmt: skip
    source.server.inject(NAME, TRICKLE)
    started = time.monotonic()
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    elapsed = time.monotonic() - started

    assert elapsed < 15  # two deliveries of about 2 s each (one window, then the next chunk)
    assert rig.bus.deliveries[key] == 2
    assert len(_served_trickles(source, 2)) == 2
    state, error = _last(rig)
    assert state is RunState.FAILED
    assert "download too slow: 16 bytes/s over the last 2 s" in error
    assert "under the minimum 1,024 bytes/s" in error
    _assert_nothing_partial(rig)


def test_a_plain_http_hop_elsewhere_is_refused_before_it_is_requested(
    rig: Rig, source: Source
) -> None:
    # The configured loopback base is allowed; a hop to plain http elsewhere is not.
    source.server.inject(NAME, Fault.redirect(f"http://example.invalid{PATH}", times=None))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert rig.bus.deliveries[key] == 1
    assert source.server.requests == [(PATH, 302)]
    state, error = _last(rig)
    assert state is RunState.FAILED
    assert f"redirects to http://example.invalid{PATH}, which is plain http" in error
    assert "TAXI_PIPELINE_ALLOW_INSECURE_SOURCE" in error
    _assert_nothing_partial(rig)


def test_an_https_source_redirecting_to_plain_http_is_refused() -> None:
    """The downgrade itself, https -> http, with the answers injected (no TLS server here)."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.scheme == "https":
            return httpx.Response(302, headers={"Location": f"http://cdn.example.com{PATH}?sig=1"})
        return httpx.Response(200, stream=httpx.ByteStream(b"the file"))

    source = HttpxSource(transport=httpx.MockTransport(answer))
    with (
        pytest.raises(PermanentError, match="which is plain http") as refused,
        source.get(f"https://github.com/releases{PATH}"),
    ):
        pass
    assert asked == [f"https://github.com/releases{PATH}"]
    assert "sig=" not in str(refused.value)  # a signed hop is quoted without its query
    allowed = HttpxSource(transport=httpx.MockTransport(answer), allow_insecure=True)
    with allowed.get(f"https://github.com/releases{PATH}") as response:
        assert b"".join(response.iter_bytes()) == b"the file"  # opted in: followed


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("file:///etc/passwd", "which uses the file: scheme"),
        (f"ftp://127.0.0.1{PATH}", "which uses the ftp: scheme"),
        ("gopher://127.0.0.1/", "which uses the gopher: scheme"),
        (PATH, f"redirects more than {MAX_REDIRECTS} times (a redirect loop?)"),
    ],
    ids=["file", "ftp", "gopher", "loop"],
)
def test_a_redirect_that_cannot_work_is_permanent_in_one_burst(
    rig: Rig, source: Source, location: str, message: str
) -> None:
    source.server.inject(NAME, Fault.redirect(location, times=None))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert rig.bus.deliveries[key] == 1  # acknowledged: no redelivery
    expected = MAX_REDIRECTS + 1 if location == PATH else 1
    assert source.server.requests == [(PATH, 302)] * expected  # and no retry in the step
    state, error = _last(rig)
    assert state is RunState.FAILED
    assert message in error
    assert [r.state for r in rig.bus.results()] == [RunState.FAILED]
    _assert_nothing_partial(rig)


def test_a_body_cut_without_a_length_is_retried_like_one_with_a_length(
    rig: Rig, source: Source
) -> None:
    source.server.inject(NAME, Fault.cut(after_bytes=5_000, announce_length=False))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert [s.bytes_sent for s in source.server.served] == [
        5_000,
        source.files[(Dataset.GREEN, JAN)].size_bytes,
    ]
    assert rig.bus.deliveries[key] == 1
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    assert rig.leftovers() == []


def test_a_body_always_cut_without_a_length_is_bounded_then_dead_lettered(
    rig_factory: RigFactory, source: Source
) -> None:
    rig = rig_factory(max_attempts=2, http_attempts=2)
    source.server.inject(NAME, Fault.cut(after_bytes=5_000, times=None, announce_length=False))
    key = rig.bus.submit(Dataset.GREEN, JAN, RUN)
    rig.run()
    assert rig.bus.deliveries[key] == 2
    assert len(source.server.served) == 4  # 2 deliveries x 2 attempts inside the step
    state, error = _last(rig)
    assert state is RunState.FAILED
    assert "gave up after 2 delivery attempts" in error
    assert "download ended early: gzip stream is truncated" in error
    _assert_nothing_partial(rig)


def _bomb() -> bytes:
    """A valid header, then 24 MiB of newlines: about 24 KiB compressed."""
    return gzip.compress(Dataset.GREEN.layout.header.encode() + b"\n" * (24 * 1024 * 1024))


@pytest.mark.parametrize("how", ["download", "hand-upload"])
def test_a_decompression_bomb_fails_verification_clearly_and_at_once(
    rig_factory: RigFactory, source: Source, how: str
) -> None:
    rig = rig_factory(max_inflated_bytes=4 * 1024 * 1024)
    if how == "download":
        source.server.inject(NAME, Fault.replace_body(_bomb(), times=None))
        rig.bus.submit(Dataset.GREEN, JAN, RUN)
    else:
        with rig.lake.writer(object_name(Dataset.GREEN, JAN), {}) as writer:
            writer.write(_bomb())  # announced on commit: the register step sees it first
    rig.run()
    assert set(rig.bus.deliveries.values()) == {1}  # permanent: no retry, no redelivery
    (failed,) = [e for e in rig.events() if e.state is RunState.FAILED]
    assert failed.step == ("download" if how == "download" else "register")
    assert failed.error is not None
    assert "file inflates to more than 4,194,304 bytes" in failed.error
    assert "TAXI_PIPELINE_MAX_INFLATED_BYTES" in failed.error
    assert rig.warehouse.loads() == []
    assert not rig.table_exists(Dataset.GREEN) or rig.final_count(Dataset.GREEN) == 0
