"""Nothing from a message reaches SQL, a path or an HTTP call unchecked; no credentials leak."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.reliability import JAN, JsonLog, Rig, RigFactory, Source, assert_exact
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.errors import ConfigurationError, InvalidMessage
from taxi_pipeline.pipeline.steps.download import check_source_base
from taxi_pipeline.settings import Settings

SECRET = "s3cr3t-t0ken-4242"


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/DataTalksClub/nyc-tlc-data/releases/download",
        "http://127.0.0.1:8000",
        "http://localhost:8000/base",
        "http://[::1]:8000",
    ],
)
def test_https_and_loopback_sources_are_accepted(url: str) -> None:
    assert check_source_base(Settings(source_url=url)) == url


@pytest.mark.parametrize(
    ("url", "insecure_ok", "reason"),
    [
        ("http://example.com/releases", False, "plain http"),
        ("ftp://example.com/releases", False, r"must be an http\(s\) URL"),
        ("file:///etc", False, r"must be an http\(s\) URL"),
        (f"https://user:{SECRET}@example.com/releases", False, "credentials"),
        (f"http://user:{SECRET}@example.com/releases", False, "credentials"),
        (f"http://user:{SECRET}@example.com/releases", True, "credentials"),
        (f"ftp://{SECRET}@example.com/releases", False, "credentials"),
        (f"https://example.com/releases?token={SECRET}", False, "query"),
        (f"http://127.0.0.1:8000/?sig={SECRET}", False, "query"),
        (f"https://example.com/releases;token={SECRET}", False, ";parameters"),
        (f"https://example.com/releases;{SECRET}/download", False, ";parameters"),
    ],
)
def test_other_sources_are_refused_without_echoing_credentials(
    url: str, insecure_ok: bool, reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=reason) as refused:
        check_source_base(Settings(source_url=url, allow_insecure_source=insecure_ok))
    assert SECRET not in str(refused.value)


def test_plain_http_elsewhere_needs_the_opt_in() -> None:
    url = "http://mirror.internal/releases"
    assert check_source_base(Settings(source_url=url, allow_insecure_source=True)) == url


def test_a_source_url_with_userinfo_is_refused_and_never_recorded(
    rig_factory: RigFactory, source: Source, json_log: JsonLog
) -> None:
    port = source.url.rsplit(":", 1)[1]
    rig = rig_factory()
    # A function whose configured source carries credentials: the composition root refuses
    # such settings up front, so they are given to the built pipeline, and the download step's
    # own check is what refuses the request.
    url = f"http://user:{SECRET}@127.0.0.1:{port}"
    rig.ports.settings = rig.ports.settings.model_copy(update={"source_url": url})
    key = rig.bus.submit(Dataset.GREEN, JAN, "green-201901-creds")
    rig.run()

    assert rig.bus.deliveries[key] == 1
    assert source.server.requests == []  # no HTTP call was made
    (last,) = [e for e in rig.events("green-201901-creds") if e.state is RunState.FAILED]
    assert last.error is not None
    assert "credentials" in last.error
    _assert_no_secret(rig, json_log)


class _SigningRedirect(BaseHTTPRequestHandler):
    """A release server that redirects to a pre-signed CDN URL, as GitHub's does."""

    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header(
            "Location",
            f"{self.target}{self.path}?X-Amz-Credential=AKIA{SECRET}&X-Amz-Signature={SECRET}",
        )
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def signing_redirect(source: Source) -> Iterator[str]:
    class Handler(_SigningRedirect):
        target = source.url

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_signed_redirect_urls_never_reach_logs_or_run_records(
    rig_factory: RigFactory, source: Source, signing_redirect: str, json_log: JsonLog
) -> None:
    rig = rig_factory(source_url=signing_redirect)
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-signed")
    rig.run()

    assert source.server.requests == [("/green/green_tripdata_2019-01.csv.gz", 200)]
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    lines = json_log()
    assert any(line.get("logger") == "httpx" for line in lines), "the HTTP client logs requests"
    _assert_no_secret(rig, json_log)


def _assert_no_secret(rig: Rig, json_log: JsonLog) -> None:
    for line in json_log():
        if str(line.get("logger", "")).startswith("taxi_pipeline.devkit"):
            continue  # the stand-in for the release server, not the pipeline
        assert SECRET not in str(line), line
    for event in rig.events():
        assert SECRET not in repr(event), event
    for _topic, data, attributes in rig.bus.published:
        assert SECRET.encode() not in data
        assert SECRET not in str(attributes)


@pytest.mark.parametrize(
    "name",
    [
        "../outside.csv.gz",
        "raw/../../outside.csv.gz",
        "raw/green/../../../outside",
        "/etc/passwd",
        "raw//green/x.csv.gz",
        ".meta/raw/green/green_tripdata_2019-01.csv.gz.json",
        ".tmp/x.part",
        "raw/green/.hidden.csv.gz",
        "raw\\..\\outside",
        "raw/green/x.csv.gz\x00.txt",
        "",
    ],
)
def test_the_folder_store_refuses_names_that_escape_or_hide(tmp_path: Path, name: str) -> None:
    store = FolderStore(tmp_path / "lake")
    (tmp_path / "outside.csv.gz").write_bytes(b"outside")
    with pytest.raises(InvalidMessage):
        store.stat(name)
    with pytest.raises(InvalidMessage):
        store.read_head(name, 10)
    with pytest.raises(InvalidMessage), store.writer(name, {}) as writer:
        writer.write(b"x")
    with pytest.raises(InvalidMessage):
        store.delete(name)
    assert (tmp_path / "outside.csv.gz").read_bytes() == b"outside"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake", "outside.csv.gz"]


def test_sql_never_sees_a_name_from_a_message(loaded_rig: Rig, source: Source) -> None:
    """Table names come from the Dataset enum and Month integers only: a hostile month or
    dataset is refused by the message model before any step runs."""
    body = b'{"dataset": "green; DROP TABLE green_tripdata", "month": "2019-01"}'
    rig = loaded_rig
    rig.bus.submit(Dataset.GREEN, JAN, "unused", body=body)
    body = b'{"dataset": "green", "month": "2019-01\'; DROP TABLE green_tripdata; --"}'
    rig.bus.submit(Dataset.GREEN, JAN, "unused", body=body)
    rig.run()
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    assert source.server.requests == []
