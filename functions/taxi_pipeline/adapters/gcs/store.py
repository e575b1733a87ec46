"""GcsStore (the ``Lake`` port on a Cloud Storage bucket) and GcsLocks (``Locks`` on lock objects).

Writes stream straight from the HTTP response into a *resumable* upload, ``upload_chunk_mib`` at a
time, so memory stays bounded whatever the file size and nothing is staged in ``/tmp`` (which is
RAM on Cloud Run). The object only comes into existence when the last chunk is sent on a clean
exit of :meth:`GcsStore.writer`; on an exception the resumable session is cancelled and never
finalized, so no partial or unverified ``raw/`` object (and no finalize event) ever appears.

``google.cloud.storage`` is imported when the first client is built, not at import time: the
function's cold start does not pay for it until an event needs the lake.
"""

# google-cloud-storage ships no py.typed: its objects are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast
from urllib.parse import urlsplit

from taxi_pipeline.adapters.google_credentials import credentials_of
from taxi_pipeline.adapters.google_errors import translate
from taxi_pipeline.domain.datasets import is_safe_object_name
from taxi_pipeline.domain.formats import format_of
from taxi_pipeline.errors import (
    ConfigurationError,
    InvalidMessage,
    PermanentError,
    TransientError,
    VerificationFailed,
)
from taxi_pipeline.pipeline.ports import ObjectInfo
from taxi_pipeline.settings import Settings

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Bucket, Client

log = logging.getLogger(__name__)

_MIB: Final = 1024 * 1024
_SAFE_PREFIX: Final = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9._-]*/?)*$")
_BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_LOCK_KEY: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
# Every function times out after 540 s (infra/resources.py) and takes its locks after it starts,
# so no live holder's lock is older than that. 60 s more covers the clock skew between this
# instance and the lock object's creation time (GCS's clock) and a release sent at the deadline;
# a lock left by a killed instance is then broken within about a minute of its holder's end.
STALE_LOCK_SECONDS: Final = 600.0
# A merge waits for two locks in turn (its dataset-month, then the dataset's insert) around a
# staging job of a minute or two: 2 x 150 s of waiting plus the work stays inside the 540 s
# timeout. A wait that runs out is a transient error: the event comes back after a backoff.
LOCK_WAIT_SECONDS: Final = 150.0
_HOLDER_KEY: Final = "holder"  # lock object metadata: the token of the attempt that created it
# Lake object metadata: a token new for every upload, so that after committing an upload can tell
# its own generation from one another writer (a hand ``gcloud storage cp``) committed meanwhile,
# and never deletes theirs. Internal to this adapter: kept out of ObjectInfo.metadata.
_UPLOAD_TOKEN_KEY: Final = "upload_token"


def check_object_name(name: str) -> str:
    """``name`` if it is a safe lake object name (no ``..``, no leading dot or slash)."""
    if not is_safe_object_name(name):
        raise InvalidMessage(f"object name {name!r} is not a safe lake object name")
    return name


def _content_type(name: str) -> str:
    fmt = format_of(name)
    return fmt.content_type if fmt else "application/octet-stream"


class _GcsWriter:
    """What :meth:`GcsStore.writer` yields: feeds the SDK's ``BlobWriter`` and hashes the bytes."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._stream.write(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)

    @property
    def md5_base64(self) -> str:
        return base64.b64encode(self.md5.digest()).decode()


class GcsStore:
    """The lake on a GCS bucket: ``gs://bucket``; objects keep GCS's generations and metadata."""

    def __init__(
        self,
        bucket: str,
        settings: Settings,
        client: Client | None = None,
        on_finalized: Callable[[ObjectInfo], None] | None = None,
    ) -> None:
        """``on_finalized`` hears each object this store committed and verified (in the cloud,
        Eventarc announces commits; an in-process chain has it do so)."""
        if not _BUCKET.match(bucket):
            raise ConfigurationError(f"{bucket!r} is not a valid bucket name")
        self.bucket = bucket
        self.on_finalized = on_finalized
        self.chunk_size = settings.upload_chunk_mib * _MIB  # a multiple of 256 KiB
        self.timeout = settings.http_timeout_seconds
        self._project = settings.gcp_project
        self._credentials = credentials_of(settings)
        self._client = client
        self._client_lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        settings: Settings,
        on_finalized: Callable[[ObjectInfo], None] | None = None,
    ) -> GcsStore:
        """``gs://bucket`` (a trailing slash is fine; a path inside the bucket is refused)."""
        parts = urlsplit(url)
        if parts.scheme != "gs" or not parts.netloc or parts.path.strip("/"):
            raise ConfigurationError(f"lake URL {url!r} must be gs://bucket")
        return cls(parts.netloc, settings, on_finalized=on_finalized)

    # ------------------------------------------------------------------ clients

    @property
    def client(self) -> Client:
        """The storage client, built on first use (honours ``STORAGE_EMULATOR_HOST``)."""
        with self._client_lock:
            if self._client is None:
                from google.cloud import storage

                try:
                    self._client = storage.Client(
                        project=self._project, credentials=self._credentials
                    )
                except Exception as exc:
                    raise translate(exc, "create the Cloud Storage client") from exc
            return self._client

    def _bucket(self) -> Bucket:
        return self.client.bucket(self.bucket)

    def blob(self, name: str) -> Blob:
        """The SDK handle of an object (no request is made)."""
        return self._bucket().blob(check_object_name(name))

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"

    def _info(self, blob: Blob) -> ObjectInfo:
        return ObjectInfo(
            bucket=self.bucket,
            name=str(blob.name),
            generation=str(blob.generation),
            size=int(blob.size or 0),
            uri=self.uri(str(blob.name)),
            md5_base64=blob.md5_hash or None,
            crc32c_base64=blob.crc32c or None,
            metadata={
                str(k): str(v) for k, v in (blob.metadata or {}).items() if k != _UPLOAD_TOKEN_KEY
            },
        )

    # ------------------------------------------------------------------ the Lake port

    def stat(self, name: str) -> ObjectInfo | None:
        """The object's current generation, size, hashes and metadata; ``None`` if absent."""
        blob = self._get_blob(name)
        return None if blob is None else self._info(blob)

    def _get_blob(self, name: str) -> Blob | None:
        check_object_name(name)
        try:
            return self._bucket().get_blob(name, timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, f"stat {self.uri(name)}") from exc

    @contextmanager
    def writer(self, name: str, metadata: Mapping[str, str]) -> Iterator[_GcsWriter]:
        """Stream into a resumable upload; finalized on clean exit, cancelled on an exception.

        The upload is conditional on the generation seen when it starts (``0``: create only), so
        two concurrent writers cannot both win; the loser gets a :class:`TransientError` and its
        redelivery finds the winner's object. After the final chunk the stored size and MD5 are
        compared with the bytes sent (the SDK checks CRC32C itself). The object carries a token of
        this upload (``upload_token``, not shown in :meth:`stat`'s metadata): only a generation
        holding it is ours to delete when it turns out unverified.
        """
        uri = self.uri(name)
        blob = self.blob(name)
        current = self.stat(name)
        expected_generation = int(current.generation) if current is not None else 0
        token = uuid.uuid4().hex
        blob.metadata = {**metadata, _UPLOAD_TOKEN_KEY: token}
        try:
            stream = blob.open(
                "wb",
                chunk_size=self.chunk_size,
                content_type=_content_type(name),
                if_generation_match=expected_generation,
                checksum="crc32c",
                timeout=self.timeout,
            )
        except Exception as exc:
            raise translate(exc, f"start the upload of {uri}") from exc
        writer = _GcsWriter(stream)
        try:
            yield writer
        except BaseException:
            _cancel(stream, uri)
            raise
        try:
            stream.close()  # sends the last chunk: this is what creates the object
        except Exception as exc:
            _cancel(stream, uri)
            if _precondition_failed(exc):
                raise TransientError(
                    f"upload {uri}: another writer replaced the object meanwhile (HTTP 412)"
                ) from exc
            if type(exc).__name__ == "DataCorruption":
                # GCS's CRC32C of the committed object differs from the SDK's of the bytes it
                # sent: the transfer to GCS went wrong, the source (verified) did not, so a new
                # attempt will likely succeed. Transient, once no corrupted generation of ours
                # is left for register to load or a redelivered download to reuse.
                self._remove_corrupted(name, writer, token, exc)
                raise TransientError(
                    f"upload {uri}: corrupted in flight ({exc}); no corrupted object left"
                ) from exc
            raise translate(exc, f"upload {uri}") from exc
        stored = self._check_stored(name, writer, token)
        if self.on_finalized is not None:
            self.on_finalized(stored)

    def _check_stored(self, name: str, writer: _GcsWriter, token: str) -> ObjectInfo:
        blob = self._get_blob(name)
        if blob is None:
            raise TransientError(f"{self.uri(name)} is not visible right after its upload")
        stored = self._info(blob)
        if (blob.metadata or {}).get(_UPLOAD_TOKEN_KEY) != token:
            # Another writer committed after our upload (GCS keeps the last one): their object
            # is not ours to judge or delete, and ours is gone. A new attempt sees theirs.
            raise TransientError(
                f"{self.uri(name)} was replaced by another writer meanwhile (generation"
                f" {stored.generation} is not our upload; left alone)"
            )
        if stored.size != writer.size or (
            stored.md5_base64 is not None and stored.md5_base64 != writer.md5_base64
        ):
            # Already committed (and announced by its finalize event): remove it, so that no
            # unverified object stays in raw/ for register to load or a redelivered download to
            # reuse. Only our generation found mismatching is deleted, never a newer one.
            # Permanent, unlike a corruption in flight: the SDK's CRC32C check passed, so GCS
            # stored what the SDK sent, and that differs from the bytes we wrote and verified.
            # That is a fault on this side (SDK, buffering), which a retry would likely repeat,
            # committing (and announcing) another unverified object each time.
            removed = self._delete_generation(name, stored.generation)
            raise VerificationFailed(
                f"{self.uri(name)} as stored (generation {stored.generation}, {stored.size} bytes,"
                f" md5 {stored.md5_base64}) differs from what was sent ({writer.size} bytes,"
                f" md5 {writer.md5_base64}); "
                + ("deleted" if removed else "could NOT be deleted, remove it by hand")
            )
        return stored

    def _delete_generation(self, name: str, generation: str) -> bool:
        """Delete exactly ``generation`` of ``name``; False (and logged) if it may still be there.

        Conditional deletes are retried by the SDK on transient errors. A 404 or 412 means that
        generation is gone already (deleted, or replaced by a newer one we leave alone).
        """
        from google.api_core.exceptions import NotFound, PreconditionFailed

        uri = f"{self.uri(name)}#{generation}"
        try:
            self.blob(name).delete(if_generation_match=int(generation), timeout=self.timeout)
        except (NotFound, PreconditionFailed):
            log.warning("unverified upload %s was already gone or replaced", uri)
            return True
        except Exception as exc:
            log.error("could not delete the unverified upload %s: %s", uri, exc)
            return False
        log.warning("deleted unverified upload %s", uri)
        return True

    def _remove_corrupted(
        self, name: str, writer: _GcsWriter, token: str, cause: Exception
    ) -> None:
        """Delete our upload that was corrupted in flight, if it is still there.

        Only a generation carrying our ``token`` is ours: another writer's object (even a
        composite one, which has no MD5) is left alone. Ours is kept when its size and MD5 are
        those of the bytes we sent (its content is then the verified one). Raises
        :class:`VerificationFailed` when a corrupted object of ours may still be there (it could
        not be checked or deleted): it would be registered, and reused by a redelivery.
        """
        uri = self.uri(name)
        try:
            blob = self._get_blob(name)
        except Exception as exc:
            raise VerificationFailed(
                f"upload {uri}: corrupted in flight ({cause}), and the object could NOT be"
                f" checked ({exc}); remove it by hand if it is our corrupted upload"
            ) from cause
        if blob is None or (blob.metadata or {}).get(_UPLOAD_TOKEN_KEY) != token:
            return  # gone, or replaced by another writer: nothing of ours is left
        stored = self._info(blob)
        if stored.size == writer.size and stored.md5_base64 == writer.md5_base64:
            log.warning("%s reported corrupted in flight, but stored as sent: kept", uri)
            return
        if not self._delete_generation(name, stored.generation):
            raise VerificationFailed(
                f"upload {uri}: corrupted in flight ({cause}); the stored object (generation"
                f" {stored.generation}) could NOT be deleted, remove it by hand"
            ) from cause

    def read_head(self, name: str, size: int) -> bytes:
        """The first ``size`` bytes (one ranged GET)."""
        if size <= 0:
            return b""
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        try:
            data: bytes = self.blob(name).download_as_bytes(
                start=0, end=size - 1, timeout=self.timeout, checksum=None
            )
        except RequestRangeNotSatisfiable:
            return b""  # an empty object
        except Exception as exc:
            raise translate(exc, f"read {self.uri(name)}") from exc
        return data[:size]

    @contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        """The object as a stream of ranged GETs of ``upload_chunk_mib`` each (bounded memory);
        SDK errors while opening or reading are translated."""
        from google.api_core.exceptions import NotFound

        what = f"read {self.uri(name)}"
        # Fetched first: the blob then carries its generation, and every ranged read asks for
        # that one, so a concurrent overwrite cannot splice two objects together.
        blob = self._get_blob(name)
        if blob is None:
            raise PermanentError(f"{name} is not in the lake")
        try:
            reader = blob.open("rb", chunk_size=self.chunk_size, timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, what) from exc
        try:
            with reader:
                yield cast("BinaryIO", reader)
        except NotFound as exc:
            raise PermanentError(f"{name} is not in the lake any more") from exc
        except Exception as exc:
            # Reads happen in the caller's block; our own errors pass through translate as they are.
            raise translate(exc, what) from exc

    def delete(self, name: str) -> None:
        """Remove the object; no error when it is already gone."""
        from google.api_core.exceptions import NotFound

        try:
            self.blob(name).delete(timeout=self.timeout)
        except NotFound:
            return
        except Exception as exc:
            raise translate(exc, f"delete {self.uri(name)}") from exc

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose name starts with ``prefix``, by name."""
        if not _SAFE_PREFIX.match(prefix) or ".." in prefix.split("/"):
            raise InvalidMessage(f"prefix {prefix!r} is not a safe lake prefix")
        try:
            blobs = list(
                self.client.list_blobs(self.bucket, prefix=prefix or None, timeout=self.timeout)
            )
        except Exception as exc:
            raise translate(exc, f"list {self.uri(prefix)}") from exc
        return sorted((self._info(b) for b in blobs), key=lambda info: info.name)


def _transient_or_raise(exc: Exception, what: str) -> TransientError:
    """``exc`` translated, when it is transient; a permanent error is raised (from ``exc``)."""
    error = translate(exc, what)
    if isinstance(error, TransientError):
        return error
    raise error from exc


def _precondition_failed(exc: Exception) -> bool:
    """HTTP 412, whether from api_core or as a raw resumable-media response."""
    if getattr(exc, "code", None) == 412:
        return True
    return getattr(getattr(exc, "response", None), "status_code", None) == 412


def _cancel(stream: Any, uri: str) -> None:
    """Cancel the resumable session so the object is never finalized.

    ``BlobWriter`` is an ``io`` object: were it merely dropped, its finalizer would call
    ``close()`` and *commit* whatever was buffered. ``terminate()`` deletes the session; if that
    request fails the session just expires (a week) unfinalized, and closing the buffer keeps
    the finalizer from uploading it.
    """
    try:
        stream.terminate()
    except Exception as exc:
        log.warning("could not cancel the upload session of %s (it will expire): %s", uri, exc)
    finally:
        buffer = getattr(stream, "_buffer", None)
        if buffer is not None:
            with contextlib.suppress(Exception):
                buffer.close()


class GcsLocks:
    """Named locks as create-only objects ``locks/<key>.lock`` in the lake bucket.

    Taking a lock is an upload with ``if_generation_match=0`` (a 412 means someone holds it);
    releasing deletes exactly the generation we created. A lock older than ``stale_after`` seconds
    belongs to an instance that died (Cloud Run kills steps at their timeout), so it is removed
    (conditionally on its generation, so two waiters cannot both break it). Waiters poll with
    exponential backoff up to ``wait_timeout`` seconds, through transient GCS errors too (429,
    5xx), then raise :class:`TransientError` so the event is redelivered later; a permanent
    error (403, ...) raises at once.

    The lock objects are tiny and sent as one multipart request, the upload kind on which
    fake-gcs-server also enforces preconditions.
    """

    def __init__(
        self,
        store: GcsStore,
        *,
        prefix: str = "locks/",
        stale_after: float = STALE_LOCK_SECONDS,
        wait_timeout: float = LOCK_WAIT_SECONDS,
        poll_initial: float = 0.05,
        poll_max: float = 2.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.stale_after = stale_after
        self.wait_timeout = wait_timeout
        self.poll_initial = poll_initial
        self.poll_max = poll_max

    def _name(self, key: str) -> str:
        if not _LOCK_KEY.match(key):
            raise InvalidMessage(f"lock key {key!r} is not a safe name")
        return f"{self.prefix}{key}.lock"

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Wait until ``key`` is free, hold it for the block, release it (even on errors)."""
        name = self._name(key)
        generation = self._acquire(name)
        try:
            yield
        finally:
            self._release(name, generation)

    def _acquire(self, name: str) -> int:
        """Create the lock object; poll while it is held or GCS answers with a transient error.

        A transient error on the create (429: GCS takes one write a second per object name,
        which contended lock objects hit; 5xx; a lost connection) is retried here with the same
        backoff, bounded by ``wait_timeout``; a permanent one (403, ...) raises at once. The SDK's
        own retries are off on these calls, so that no request loop runs past ``wait_timeout``.

        A create whose answer was lost may have succeeded: the object carries a token of this
        attempt, and a lock found holding our token is ours.
        """
        from google.api_core.exceptions import PreconditionFailed

        deadline = time.monotonic() + self.wait_timeout
        delay = self.poll_initial
        token = uuid.uuid4().hex
        uri = self.store.uri(name)
        blob = self.store.blob(name)
        blob.metadata = {_HOLDER_KEY: token}
        body = f"held since {datetime.now(UTC).isoformat()}".encode()
        last_error: TransientError | None = None
        while True:
            try:
                blob.upload_from_string(
                    body,
                    content_type="text/plain",
                    if_generation_match=0,
                    timeout=self.store.timeout,
                    retry=None,
                )
                return int(blob.generation)
            except PreconditionFailed:
                last_error = None  # held: by someone else, or by us if a lost answer created it
            except Exception as exc:
                last_error = _transient_or_raise(exc, f"take lock {uri}")
                log.info("lock %s not taken, polling on: %s", uri, last_error)
            ours = self._check_held(name, token)
            if ours is not None:
                return ours
            if time.monotonic() + delay > deadline:
                if last_error is not None:
                    raise TransientError(
                        f"lock {uri} not taken within {self.wait_timeout:.0f} s; last error:"
                        f" {last_error}"
                    ) from last_error
                raise TransientError(f"lock {uri} still held after {self.wait_timeout:.0f} s")
            time.sleep(delay)  # backoff between attempts to take a held lock
            delay = min(delay * 2, self.poll_max)

    def _check_held(self, name: str, token: str) -> int | None:
        """The lock's generation if it holds our ``token``; else break it if stale, and ``None``.

        Transient errors (the lock is checked again at the next poll) and a lock that vanished
        or changed meanwhile give ``None``; a permanent error raises.
        """
        from google.api_core.exceptions import NotFound, PreconditionFailed

        uri = self.store.uri(name)
        try:
            held = self.store._bucket().get_blob(name, timeout=self.store.timeout, retry=None)
            if held is None:
                return None
            if (held.metadata or {}).get(_HOLDER_KEY) == token:
                log.info("lock %s was taken by an attempt whose answer was lost", uri)
                return int(held.generation)
            if held.time_created is None:
                return None
            age = (datetime.now(UTC) - held.time_created).total_seconds()
            if age > self.stale_after:
                log.warning(
                    "breaking stale lock %s (held %.0f s, over %.0f s)", uri, age, self.stale_after
                )
                held.delete(
                    if_generation_match=held.generation, timeout=self.store.timeout, retry=None
                )
        except (NotFound, PreconditionFailed):
            pass  # released or broken by someone else meanwhile
        except Exception as exc:
            error = _transient_or_raise(exc, f"check lock {uri}")
            log.info("lock %s not checked, polling on: %s", uri, error)
        return None

    def _release(self, name: str, generation: int) -> None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self.store.blob(name).delete(if_generation_match=generation, timeout=self.store.timeout)
        except (NotFound, PreconditionFailed):
            # Broken as stale by another instance: our work outlived the lock's timeout.
            log.warning("lock %s was no longer ours at release", self.store.uri(name))
        except Exception as exc:
            # Not fatal for the work already done; the lock goes stale and is broken later.
            log.warning("could not release lock %s: %s", self.store.uri(name), exc)
