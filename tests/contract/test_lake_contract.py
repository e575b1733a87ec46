"""The ``Lake`` contract, run over every adapter: FolderStore and GcsStore (on fake-gcs-server).

An adapter that passes is interchangeable for the steps: nothing visible before commit, nothing
left after an exception, generations change on overwrite, metadata and hashes round-trip.
"""

# google-cloud-storage ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import base64
import gc
import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from emulators import FakeGcs
from google.cloud.storage import Blob
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.fileio import BlobWriter

from taxi_pipeline.adapters.faults.http import HttpFault, faulty_session
from taxi_pipeline.adapters.folder.store import STALE_PART_SECONDS, FolderStore
from taxi_pipeline.adapters.gcs.store import GcsStore, _GcsWriter
from taxi_pipeline.errors import (
    InvalidMessage,
    PermanentError,
    TransientError,
    VerificationFailed,
)
from taxi_pipeline.pipeline.ports import Lake
from taxi_pipeline.settings import Settings

MIB = 1024 * 1024
NAME = "raw/green/green_tripdata_2019-01.csv.gz"
META = {"run_id": "green-2019-01-abc", "dataset": "green", "month": "2019-01",
        "source_url": "http://127.0.0.1:1/green/green_tripdata_2019-01.csv.gz"}  # fmt: skip


@dataclass
class LakeCase:
    name: str
    make: Callable[[pytest.FixtureRequest, Path], Lake]
    uri_scheme: str


def _folder(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    return FolderStore(tmp_path / "lake")


def _gcs(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    # 1 MiB chunks: the multi-MiB payloads below go through several resumable requests.
    return _gcs_store(request.getfixturevalue("fake_gcs"))


CASES = [LakeCase("folder", _folder, "file"), LakeCase("gcs", _gcs, "gs")]


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request: pytest.FixtureRequest) -> LakeCase:
    param: LakeCase = request.param
    return param


@pytest.fixture
def lake(case: LakeCase, request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    return case.make(request, tmp_path)


def _write(lake: Lake, name: str, payload: bytes, metadata: dict[str, str] | None = None) -> None:
    with lake.writer(name, metadata or META) as out:
        for start in range(0, len(payload), 300_000):  # not aligned to the upload chunk
            out.write(payload[start : start + 300_000])


def _md5(payload: bytes) -> str:
    return base64.b64encode(hashlib.md5(payload).digest()).decode()


class Boom(Exception):
    pass


def _write_then_fail(lake: Lake, size: int, *, collect: bool = False) -> None:
    """Send ``size`` bytes, then fail inside the block (as a failed verification does)."""
    with lake.writer(NAME, META) as out:
        out.write(os.urandom(size))
        if collect:  # drop our reference: a finalizer must not commit the upload
            del out
            gc.collect()
        raise Boom("verification failed")


def test_write_commits_size_hash_metadata_and_uri(lake: Lake, case: LakeCase) -> None:
    payload = os.urandom(2 * MIB + 12345)
    _write(lake, NAME, payload)

    info = lake.stat(NAME)
    assert info is not None
    assert (info.name, info.size, info.md5_base64) == (NAME, len(payload), _md5(payload))
    assert dict(info.metadata) == META
    assert info.generation.isdigit()
    assert info.uri.startswith(f"{case.uri_scheme}://")
    assert info.uri.endswith(NAME)
    assert lake.read_head(NAME, 100) == payload[:100]


def test_nothing_is_visible_before_the_block_ends(lake: Lake) -> None:
    with lake.writer(NAME, META) as out:
        out.write(os.urandom(2 * MIB))  # past one upload chunk: bytes already sent
        assert lake.stat(NAME) is None
        assert lake.list("raw/") == []
    assert lake.stat(NAME) is not None


@pytest.mark.parametrize("size", [1000, 3 * MIB + 1], ids=["under-a-chunk", "several-chunks"])
def test_an_exception_in_the_block_leaves_no_object(lake: Lake, size: int) -> None:
    with pytest.raises(Boom):
        _write_then_fail(lake, size)
    assert lake.stat(NAME) is None
    assert lake.list("") == []


def test_an_exception_while_replacing_keeps_the_previous_object(lake: Lake) -> None:
    first = b"first version" * 1000
    _write(lake, NAME, first)
    before = lake.stat(NAME)
    with pytest.raises(Boom):
        _write_then_fail(lake, 2 * MIB)
    after = lake.stat(NAME)
    assert after == before
    assert lake.read_head(NAME, len(first) + 10) == first


def test_overwrite_changes_generation_and_metadata(lake: Lake) -> None:
    _write(lake, NAME, b"one")
    first = lake.stat(NAME)
    _write(lake, NAME, b"two!", META | {"run_id": "green-2019-01-second"})
    second = lake.stat(NAME)
    assert first is not None
    assert second is not None
    assert second.generation != first.generation
    assert (second.size, second.metadata["run_id"]) == (4, "green-2019-01-second")
    assert lake.read_head(NAME, 10) == b"two!"


def test_read_head_of_a_short_object_and_of_nothing(lake: Lake) -> None:
    _write(lake, "raw/x/short.bin", b"abc")
    assert lake.read_head("raw/x/short.bin", 1000) == b"abc"
    assert lake.read_head("raw/x/short.bin", 0) == b""


def test_open_read_streams_the_whole_object(lake: Lake) -> None:
    payload = os.urandom(3 * MIB + 12_345)  # several of the GCS store's 1 MiB ranged reads
    _write(lake, NAME, payload)
    pieces = []
    with lake.open_read(NAME) as handle:
        while piece := handle.read(700_000):
            assert len(piece) <= 700_000
            pieces.append(piece)
    assert b"".join(pieces) == payload
    _write(lake, "raw/x/empty.bin", b"")
    with lake.open_read("raw/x/empty.bin") as handle:
        assert handle.read(10) == b""


def test_local_file_is_the_object_or_none_where_the_lake_is_remote(lake: Lake) -> None:
    _write(lake, NAME, b"a,b\n1,2\n")
    info = lake.stat(NAME)
    assert info is not None
    if isinstance(lake, GcsStore):
        assert info.local_file is None
    else:
        assert info.local_file is not None
        assert info.local_file.read_bytes() == b"a,b\n1,2\n"


def test_open_read_of_a_missing_object_is_permanent(lake: Lake) -> None:
    with pytest.raises(PermanentError, match="is not in the lake"), lake.open_read(NAME):
        pass


def test_list_by_prefix_and_delete(lake: Lake) -> None:
    names = ["raw/green/a.csv.gz", "raw/green/b.csv.gz", "raw/yellow/c.csv.gz", "other/d.txt"]
    for name in names:
        _write(lake, name, name.encode())
    assert [i.name for i in lake.list("raw/green/")] == names[:2]
    assert [i.name for i in lake.list("raw/")] == names[:3]
    assert {i.size for i in lake.list("raw/green/")} == {len(names[0])}

    lake.delete("raw/green/a.csv.gz")
    lake.delete("raw/green/a.csv.gz")  # already gone: no error
    assert lake.stat("raw/green/a.csv.gz") is None
    assert [i.name for i in lake.list("raw/green/")] == ["raw/green/b.csv.gz"]


def test_stat_of_a_missing_object_is_none(lake: Lake) -> None:
    assert lake.stat("raw/green/never.csv.gz") is None


UNSAFE = ["../etc/passwd", "raw/../../x", "/abs/path", ".hidden", "raw//x", "", "raw/x/", "a b"]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused(lake: Lake, name: str) -> None:
    with pytest.raises(InvalidMessage):
        lake.stat(name)
    with pytest.raises(InvalidMessage), lake.writer(name, META) as out:
        out.write(b"x")
    with pytest.raises(InvalidMessage):
        lake.delete(name)
    assert lake.list("") == []


# --------------------------------------------------------------------------- GCS only


def test_gcs_cancelled_upload_leaves_no_file_behind_in_the_emulator(
    fake_gcs: FakeGcs, tmp_path: Path
) -> None:
    """Why GcsStore cancels explicitly: an SDK ``BlobWriter`` that is merely dropped commits
    its buffered bytes when garbage-collected; ours leaves neither object nor file."""
    store = _gcs_store(fake_gcs)

    def abandon() -> None:
        raw = store.blob("raw/abandoned.bin").open("wb", chunk_size=256 * 1024)
        raw.write(os.urandom(600_000))

    abandon()
    gc.collect()
    abandoned = store.stat("raw/abandoned.bin")
    assert abandoned is not None  # the trap: a partial object, finalized by the finalizer
    assert abandoned.size == 600_000

    with pytest.raises(Boom):
        _write_then_fail(store, 3 * MIB, collect=True)
    gc.collect()
    assert store.stat(NAME) is None
    assert not (fake_gcs.root / store.bucket / NAME).exists()


class _Altering:
    """A BlobWriter stand-in that changes one byte of every chunk on its way to GCS: the upload
    commits (the SDK's CRC32C covers what it sent) but differs from the bytes we hashed."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, chunk: bytes) -> int:
        return int(self._stream.write(bytes([chunk[0] ^ 1]) + chunk[1:]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _alter_uploads(monkeypatch: pytest.MonkeyPatch) -> None:
    init = _GcsWriter.__init__
    monkeypatch.setattr(_GcsWriter, "__init__", lambda self, stream: init(self, _Altering(stream)))


def test_gcs_an_upload_stored_unlike_what_was_sent_is_deleted(
    fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    deletes = _deletes()
    store = _gcs_store(fake_gcs, deletes)
    _write(store, NAME, b"the previous, verified version")
    _alter_uploads(monkeypatch)
    with pytest.raises(VerificationFailed, match="differs from what was sent") as err:
        _write(store, NAME, os.urandom(2 * MIB + 5))
    # Nothing unverified stays in raw/ (the previous generation was replaced by the upload).
    assert store.stat(NAME) is None
    assert store.list("") == []
    assert str(err.value).endswith("; deleted")
    # Only the generation found unverified: a newer one is never deleted.
    (generation,) = re.findall(r"generation (\d+)", str(err.value))
    assert [_generation_match(url) for url in deletes.seen] == [generation]


def test_gcs_an_unverified_upload_that_cannot_be_deleted_says_so(
    fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _gcs_store(fake_gcs, _refused_deletes())
    _alter_uploads(monkeypatch)
    with pytest.raises(VerificationFailed, match="could NOT be deleted"):
        _write(store, NAME, b"some bytes")


HAND_UPLOAD = b"a user's own file, copied in by hand"


def _on_close(
    monkeypatch: pytest.MonkeyPatch,
    *,
    alter: bool = False,
    hand_upload: GcsStore | None = None,
    corrupted: bool = False,
) -> None:
    """Make the upload's ``close()`` commit it, then (in that order, each if asked): another
    writer commits its own object under the same name (as ``gcloud storage cp`` would: none of
    our metadata), and the SDK reports the CRC32C mismatch of a corruption in flight.
    ``alter``: what reaches GCS differs from what we hashed."""
    if alter:
        _alter_uploads(monkeypatch)
    real_close = BlobWriter.close

    def close(self: BlobWriter) -> None:
        if self.closed:
            return
        real_close(self)  # commits our upload
        if hand_upload is not None:
            hand_upload.blob(NAME).upload_from_string(HAND_UPLOAD)
        if corrupted:
            raise DataCorruption(None, "Checksum mismatch while uploading")

    monkeypatch.setattr(BlobWriter, "close", close)


def test_gcs_each_upload_carries_its_own_token_kept_out_of_the_metadata(
    fake_gcs: FakeGcs,
) -> None:
    store = _gcs_store(fake_gcs)
    tokens = []
    for payload in (b"one", b"two"):
        _write(store, NAME, payload)
        raw = store._bucket().get_blob(NAME)
        tokens.append(raw.metadata["upload_token"])
        assert dict(raw.metadata) == META | {"upload_token": tokens[-1]}
        assert dict(store.list("raw/")[0].metadata) == META
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in tokens)
    assert tokens[0] != tokens[1]


def test_gcs_another_writers_object_found_after_our_upload_is_left_alone(
    fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their object differs in size and MD5 from what we sent: were it taken for our upload, it
    would be deleted as unverified and the download failed for good."""
    deletes = _deletes()
    store = _gcs_store(fake_gcs, deletes)
    _on_close(monkeypatch, hand_upload=store)
    with pytest.raises(TransientError, match="replaced by another writer meanwhile") as err:
        _write(store, NAME, os.urandom(2 * MIB + 5))
    assert not isinstance(err.value, VerificationFailed)
    assert deletes.seen == []
    assert store.read_head(NAME, 1000) == HAND_UPLOAD
    kept = store.stat(NAME)
    assert kept is not None
    assert dict(kept.metadata) == {}


def test_gcs_an_upload_corrupted_in_flight_is_deleted_and_the_error_is_transient(
    fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    deletes = _deletes()
    store = _gcs_store(fake_gcs, deletes)
    _on_close(monkeypatch, alter=True, corrupted=True)
    with pytest.raises(TransientError, match="corrupted in flight") as err:
        _write(store, NAME, os.urandom(MIB + 7))
    assert not isinstance(err.value, VerificationFailed)
    assert store.stat(NAME) is None
    (delete,) = deletes.seen
    assert _generation_match(delete) is not None


@pytest.mark.parametrize("composite", [False, True], ids=["plain", "composite"])
def test_gcs_a_corruption_in_flight_leaves_another_writers_object_alone(
    fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch, composite: bool
) -> None:
    """Composite: GCS gives a composite object (``gcloud storage cp`` of a large file composes
    parallel uploads) no MD5: that alone once made it look corrupted, hence deleted.
    fake-gcs-server computes one even for composed objects, so the missing MD5 is simulated."""
    deletes = _deletes()
    store = _gcs_store(fake_gcs, deletes)
    _on_close(monkeypatch, alter=True, hand_upload=store, corrupted=True)
    if composite:
        monkeypatch.setattr(Blob, "md5_hash", property(lambda self: None))
    with pytest.raises(TransientError, match="corrupted in flight"):
        _write(store, NAME, b"some bytes")
    assert deletes.seen == []
    assert store.read_head(NAME, 1000) == HAND_UPLOAD


def test_gcs_an_upload_corrupted_in_flight_that_cannot_be_deleted_says_so(
    fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left in place it would be registered, and reused by a redelivered download: permanent."""
    store = _gcs_store(fake_gcs, _refused_deletes())
    _on_close(monkeypatch, alter=True, corrupted=True)
    with pytest.raises(VerificationFailed, match="could NOT be deleted"):
        _write(store, NAME, b"some bytes")


def _gcs_store(fake: FakeGcs, *faults: HttpFault) -> GcsStore:
    """A store on a new bucket; with ``faults``, its client's requests pass through them (the
    SDK then raises from the answers they give, as it would from GCS's)."""
    client = fake.client()
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(bucket)
    if faults:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.storage import Client

        client = Client(
            project=fake.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": fake.url},
            _http=faulty_session(faults),
        )
    return GcsStore(bucket, Settings(upload_chunk_mib=1), client=client)


_OBJECT = r"/storage/v1/b/[^/]+/o/.+"
"""An object's own URL (what a delete is sent to)."""


def _deletes() -> HttpFault:
    """Every delete recorded, none refused."""
    return HttpFault("DELETE", _OBJECT, [])


def _refused_deletes() -> HttpFault:
    return HttpFault("DELETE", _OBJECT, [403] * 100, "no storage.objects.delete")


def _generation_match(url: str) -> str | None:
    """The ``ifGenerationMatch`` a request carried (fake-gcs-server ignores it on deletes, so
    the request itself is checked)."""
    (value,) = parse_qs(urlsplit(url).query).get("ifGenerationMatch", [None])
    return value


def test_gcs_from_url() -> None:
    settings = Settings()
    assert GcsStore.from_url("gs://my-lake/", settings).bucket == "my-lake"
    from taxi_pipeline.errors import ConfigurationError

    for bad in ("gs://", "gs://b/path", "s3://bucket", "gs://UPPER"):
        with pytest.raises(ConfigurationError):
            GcsStore.from_url(bad, settings)


def test_folder_store_sweeps_parts_a_killed_process_left(tmp_path: Path) -> None:
    """Only stale parts go: a fresh one may belong to a write still in progress."""
    FolderStore(tmp_path)
    stale, fresh = tmp_path / ".tmp" / "dead.part", tmp_path / ".tmp" / "live.part"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    old = stale.stat().st_mtime - STALE_PART_SECONDS - 60
    os.utime(stale, (old, old))
    FolderStore(tmp_path)
    assert not stale.exists()
    assert fresh.exists()
