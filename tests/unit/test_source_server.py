"""The local download source: GitHub-release paths, exact bytes, 404s and injected faults."""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taxi_pipeline.devkit.generator import generate_month
from taxi_pipeline.devkit.source_server import Fault, SourceServer, serve_directory
from taxi_pipeline.domain.datasets import Dataset, Month, file_name

JAN = Month(2019, 1)
NAME = file_name(Dataset.YELLOW, JAN)
PATH = f"/yellow/{NAME}"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("source")
    generate_month(directory, Dataset.YELLOW, JAN, 3000, seed=5)
    nested = directory / "green"
    generate_month(nested, Dataset.GREEN, JAN, 500, seed=5)
    return directory


@pytest.fixture
def server(lake: Path) -> Iterator[SourceServer]:
    with serve_directory(lake) as running:
        yield running


def get(server: SourceServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(server.base_url + path, timeout=5, **kwargs)  # type: ignore[arg-type]


def test_serves_the_file_bytes_with_content_length(server: SourceServer, lake: Path) -> None:
    expected = (lake / NAME).read_bytes()
    response = httpx.get(server.url(Dataset.YELLOW, JAN), timeout=5)
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["Content-Length"] == str(len(expected))
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.requests == [(PATH, 200)]
    assert server.bytes_sent == len(expected)


def test_serves_files_in_per_tag_folders(server: SourceServer, lake: Path) -> None:
    name = file_name(Dataset.GREEN, JAN)
    response = get(server, f"/green/{name}")
    assert response.content == (lake / "green" / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        f"/yellow/{file_name(Dataset.YELLOW, Month(2030, 1))}",
        f"/green/{NAME}",  # a yellow file is not in the green release
        f"/{NAME}",
        "/yellow/..%2Fsecret",
        "/",
    ],
    ids=["unpublished-month", "wrong-tag", "no-tag", "traversal", "root"],
)
def test_missing_files_answer_404(server: SourceServer, path: str) -> None:
    response = get(server, path)
    assert response.status_code == 404
    assert server.bytes_sent == 0


def test_head_gives_the_length_without_a_body(server: SourceServer, lake: Path) -> None:
    response = httpx.head(server.base_url + PATH, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str((lake / NAME).stat().st_size)
    assert server.bytes_sent == 0


def test_range_requests_resume_a_download(server: SourceServer, lake: Path) -> None:
    expected = (lake / NAME).read_bytes()
    response = get(server, PATH, headers={"Range": "bytes=1000-"})
    assert response.status_code == 206
    assert response.content == expected[1000:]
    assert response.headers["Content-Range"] == f"bytes 1000-{len(expected) - 1}/{len(expected)}"
    assert server.served[-1].range_start == 1000
    beyond = get(server, PATH, headers={"Range": f"bytes={len(expected)}-"})
    assert beyond.status_code == 416


def test_unavailable_answers_503_the_first_times_then_the_file(
    server: SourceServer, lake: Path
) -> None:
    server.inject(NAME, Fault.unavailable(times=2, retry_after=1))
    first, second, third = (get(server, PATH) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.headers["Retry-After"] == "1"
    assert third.content == (lake / NAME).read_bytes()
    assert server.requests == [(PATH, 503), (PATH, 503), (PATH, 200)]


def test_cut_closes_the_connection_after_k_bytes(server: SourceServer, lake: Path) -> None:
    server.inject(NAME, Fault.cut(after_bytes=1234))
    with pytest.raises(httpx.RemoteProtocolError):
        get(server, PATH)
    assert server.served[-1].bytes_sent == 1234
    assert get(server, PATH).content == (lake / NAME).read_bytes()  # the fault was used up
    assert server.bytes_sent == 1234 + (lake / NAME).stat().st_size


def test_cut_is_visible_to_a_raw_client(server: SourceServer, lake: Path) -> None:
    # What a streaming downloader sees: the announced length, then EOF early.
    server.inject(NAME, Fault.cut(after_bytes=100))
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    size = (lake / NAME).stat().st_size
    assert f"Content-Length: {size}".encode() in head
    assert body == (lake / NAME).read_bytes()[:100]


def test_corrupt_serves_same_length_bytes_that_fail_to_decompress(
    server: SourceServer, lake: Path
) -> None:
    server.inject(NAME, Fault.corrupt(at=2000))
    response = get(server, PATH)
    original = (lake / NAME).read_bytes()
    assert response.status_code == 200
    assert len(response.content) == len(original)
    assert response.content != original
    with pytest.raises((gzip.BadGzipFile, zlib.error, EOFError)):
        gzip.decompress(response.content)


def test_replace_body_serves_other_bytes(server: SourceServer) -> None:
    server.inject(NAME, Fault.replace_body(b"<html>rate limited</html>", times=None))
    for _ in range(2):
        assert get(server, PATH).content == b"<html>rate limited</html>"
    server.clear_faults(NAME)
    assert get(server, PATH).content.startswith(b"\x1f\x8b")


def test_slow_delays_the_answer(server: SourceServer) -> None:
    server.inject(NAME, Fault.slow(0.3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(server.base_url + PATH, timeout=0.05)
    server.inject(NAME, Fault.slow(0.2))
    started = time.monotonic()
    assert get(server, PATH).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_faults_apply_only_to_their_file(server: SourceServer) -> None:
    server.inject(NAME, Fault.unavailable(times=None))
    assert get(server, f"/green/{file_name(Dataset.GREEN, JAN)}").status_code == 200
    assert get(server, PATH).status_code == 503
    assert get(server, PATH).status_code == 503


def test_inject_rejects_a_fault_that_never_applies(server: SourceServer) -> None:
    with pytest.raises(ValueError, match="at least once"):
        server.inject(NAME, Fault.unavailable(times=0))


def test_stops_listening_on_exit(lake: Path) -> None:
    with serve_directory(lake) as running:
        port = int(running.base_url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
