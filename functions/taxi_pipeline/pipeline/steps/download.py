"""Step 1, download: stream the published file from the HTTP source into the lake, verified.

The month's source is chosen first (``auto``: the mirror's CSV for 2019-01..2021-07, the TLC's
Parquet otherwise; :func:`datasets.choose_publication`), and a month already loaded from the
other source is refused unless the request replaces it. Nothing unverified becomes a ``raw/``
object: the lake writer commits only after the whole stream passed the format's verifier
(:class:`GzipCsvVerifier`, :class:`ParquetVerifier`). The object keeps the upstream's ETag,
Last-Modified and size in its metadata (``status --check-upstream`` compares them). The
committed object announces itself (GCS finalize event, or the folder store's equivalent),
which triggers the register step.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
)

from taxi_pipeline.domain.datasets import (
    Dataset,
    Month,
    Publication,
    Upstream,
    choose_publication,
    file_name,
    object_name,
)
from taxi_pipeline.domain.formats import VerifiedFile
from taxi_pipeline.domain.messages import IngestRequest, RunState
from taxi_pipeline.domain.runs import RunIdentity
from taxi_pipeline.domain.sources import INSECURE_OPT_IN, display_url, is_loopback
from taxi_pipeline.errors import (
    ConfigurationError,
    NotPublished,
    PermanentError,
    SourceConflict,
    TransientError,
)
from taxi_pipeline.pipeline.ports import ObjectInfo, Ports, UpstreamVersion
from taxi_pipeline.pipeline.recorder import StepRecorder
from taxi_pipeline.pipeline.steps.common import (
    check_one_source,
    current_load,
    request_merge,
    verify_target,
)
from taxi_pipeline.pipeline.verify import BackgroundVerifier, TruncatedStream
from taxi_pipeline.settings import Settings

log = logging.getLogger(__name__)

REPLACE_KEY = "replace"
"""Object metadata of a download made by a ``replace`` run: its merge replaces the month."""


@dataclass(frozen=True)
class DownloadOutcome:
    """What the download step left in the lake: the verified object (new or reused)."""

    object: ObjectInfo
    downloaded: bool
    verified: VerifiedFile | None


def check_source_base(settings: Settings) -> str:
    """The configured mirror base, refused unless https (plain http only on loopback or
    opt-in)."""
    return _check_base(settings.source_url, settings, "source URL")


def check_tlc_base(settings: Settings) -> str:
    """The configured TLC base, checked like the mirror's."""
    return _check_base(settings.tlc_url, settings, "TLC URL")


def _check_base(url: str, settings: Settings, what: str) -> str:
    base = url.rstrip("/")
    parts = urlsplit(base)
    # First, and without echoing the URL: the messages below quote it, and settings errors
    # reach logs and run records. ";params" in the path are as good a place for a token as a
    # query string (and the file URL appends to the base, so they would reach every request).
    if "@" in parts.netloc or parts.query or parts.fragment or ";" in parts.path:
        raise ConfigurationError(
            f"{what} must not carry a query, fragment, ;parameters or credentials"
        )
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"{what} {base!r} must be an http(s) URL")
    if (
        parts.scheme == "http"
        and not settings.allow_insecure_source
        and not is_loopback(parts.hostname)
    ):
        raise ConfigurationError(
            f"{what} {base!r} is plain http; use https, or set {INSECURE_OPT_IN} to allow it"
        )
    return base


def source_file_url(
    settings: Settings, dataset: Dataset, month: Month, upstream: Upstream = Upstream.MIRROR
) -> str:
    """The file's URL from validated parts only: the mirror's ``{source_url}/{dataset}/{file
    name}``, the TLC's ``{tlc_url}/{file name}`` (:func:`datasets.file_name`)."""
    publication = dataset.spec.publication(upstream)
    name = file_name(dataset, month, publication.source_format)
    if upstream is Upstream.TLC:
        return f"{check_tlc_base(settings)}/{name}"
    return f"{check_source_base(settings)}/{dataset.value}/{name}"


def publication_for(request: IngestRequest, month: Month, settings: Settings) -> Publication:
    """Where the request's month comes from: its ``source``, else ``TAXI_PIPELINE_SOURCE``."""
    return choose_publication(request.dataset, month, request.source or settings.source)


def run(request: IngestRequest, run: RunIdentity, attempt: int, ports: Ports) -> DownloadOutcome:
    """Download and verify the run's month into the lake (or reuse the verified object already
    there); ``run`` is the request's (:func:`runs.run_of_request`)."""
    dataset, month = run.dataset, run.month
    # A run cancelled while queued (or, in the cloud, between steps) goes no further.
    ports.cancellation.check(run.run_id, recorded=True)

    recorder = StepRecorder(ports.warehouse, run, "download", attempt)
    recorder.running()
    publication = publication_for(request, month, ports.settings)
    fmt = publication.source_format
    url = source_file_url(ports.settings, dataset, month, publication.upstream)
    name = object_name(dataset, month, fmt)
    # One month, one source: refused before anything is downloaded (the merge checks again,
    # under its lock, for hand uploads).
    loaded = current_load(ports.warehouse, dataset, month)
    check_one_source(dataset, month, loaded, name, request.replace)
    # One download of an object at a time: a second run of the month (a schedule firing during
    # a backfill, a duplicate request) waits, then finds the verified object and reuses it
    # instead of writing a second generation that would be staged and merged again.
    with ports.locks.hold(f"download-{dataset.value}-{month}"):
        ports.cancellation.check(run.run_id)
        existing = ports.lake.stat(name)
        fresh = request.force or request.replace
        if existing is not None and existing.metadata.get("source_url") == url and not fresh:
            # Only verified downloads are ever committed with our metadata, so it is safe to
            # reuse; no object event follows (nothing was written), so hand over to merge.
            log.info(
                "%s is already in the lake (generation %s); not downloading again",
                name,
                existing.generation,
            )
            request_merge(ports, run, existing)
            recorder.finish(RunState.SKIPPED, bytes_=0, details={"reason": "already in the lake"})
            return DownloadOutcome(existing, downloaded=False, verified=None)

        # The run's identity travels with the object to the register step.
        metadata = {**run.attributes(), "source_url": url, "source": publication.upstream.value}
        if request.replace:
            # Read by the register step, which hands the object to the merge.
            metadata[REPLACE_KEY] = "true"
        # Loaded from this very object: a forced download of an upstream file that changed
        # since must not be merged insert-only over the old rows (only --replace reloads it).
        guard = (
            UpstreamVersion.from_metadata(existing.metadata)
            if existing is not None and loaded is not None and loaded.object_name == name
            else None
        )
        job = DownloadJob(url, name, metadata, dataset, month, publication, request.replace, guard)
        verified = _download_with_retries(job, ports)
        stored = ports.lake.stat(name)
    if stored is None:
        raise TransientError(f"{name} is not visible in the lake right after its upload")
    recorder.finish(
        RunState.SUCCESS,
        rows=verified.rows,
        bytes_=verified.bytes_compressed,
        details=_notes(verified),
    )
    log.info("downloaded %s: %d bytes, %d rows", name, verified.bytes_compressed, verified.rows)
    return DownloadOutcome(stored, downloaded=True, verified=verified)


def _notes(verified: VerifiedFile) -> dict[str, str]:
    return {"notes": "; ".join(verified.notes)} if verified.notes else {}


@dataclass(frozen=True)
class DownloadJob:
    """One file to download: where from, where to, and what to check it against."""

    url: str
    name: str
    metadata: dict[str, str]
    dataset: Dataset
    month: Month
    publication: Publication
    replace: bool
    loaded_version: UpstreamVersion | None
    """The upstream version of the object the month is loaded from (a forced re-download)."""


def source_retrying(settings: Settings) -> Retrying:
    """The retry policy of a source download: transient failures only, up to
    ``http_attempts`` attempts, none started (or backed off) past the download deadline."""
    return Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(settings.http_attempts)
        | stop_before_delay(settings.download_timeout_seconds),
        wait=wait_exponential(multiplier=0.5, max=8),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


def _download_with_retries(job: DownloadJob, ports: Ports) -> VerifiedFile:
    """Up to ``http_attempts`` attempts, all within one deadline: a source that is slow (or
    trickles bytes, each read well within the read timeout) fails as transient in time for the
    failure to be recorded, before the platform's function timeout kills the instance."""
    settings = ports.settings
    deadline = time.monotonic() + settings.download_timeout_seconds
    retrying = source_retrying(settings)
    try:
        return retrying(download_once, job, ports, deadline)
    except TransientError as exc:
        if time.monotonic() < deadline:
            raise
        raise TransientError(
            f"downloading {display_url(job.url)} took longer than"
            f" {settings.download_timeout_seconds:g} s (TAXI_PIPELINE_DOWNLOAD_TIMEOUT_SECONDS):"
            f" {exc}"
        ) from exc


class SpeedFloor:
    """Fails a download slower than ``min_rate`` bytes/s, averaged over ``window`` seconds.

    The first ``window`` seconds after the answer are a grace period (TCP slow start, a CDN
    warming up); after that, every chunk checks the bytes of the last ``window`` seconds.
    ``min_rate`` 0 turns the check off.
    """

    def __init__(self, min_rate: int, window: float, now: float | None = None) -> None:
        self._min_rate = min_rate
        self._window = window
        start = time.monotonic() if now is None else now
        self._start = start
        self._received = 0
        self._samples: deque[tuple[float, int]] = deque([(start, 0)])

    def received(self, amount: int, now: float | None = None) -> None:
        """Count ``amount`` more bytes; raise :class:`TransientError` when too slow."""
        self._received += amount
        if not self._min_rate:
            return
        now = time.monotonic() if now is None else now
        self._samples.append((now, self._received))
        # Keep the newest sample that is at least a window old: the start of the window.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()
        since, then = self._samples[0]
        if now - self._start < self._window or now - since < self._window:
            return
        rate = (self._received - then) / (now - since)
        if rate < self._min_rate:
            raise TransientError(
                f"download too slow: {rate:,.0f} bytes/s over the last {now - since:.0f} s,"
                f" under the minimum {self._min_rate:,} bytes/s"
                " (TAXI_PIPELINE_DOWNLOAD_MIN_BYTES_PER_SECOND)"
            )


def _not_published(job: DownloadJob, status: int) -> bool:
    """404/410 anywhere; 403 from the TLC, whose CloudFront over S3 answers a missing key so."""
    return status in (404, 410) or (status == 403 and job.publication.upstream is Upstream.TLC)


def download_once(job: DownloadJob, ports: Ports, deadline: float) -> VerifiedFile:
    settings = ports.settings
    url, name, dataset = job.url, job.name, job.dataset
    with ports.source.get(url, deadline=deadline) as response:
        status = response.status_code
        if _not_published(job, status):
            raise NotPublished(f"{url} is not published (HTTP {status})")
        if status in (408, 425, 429) or status >= 500:
            # Timeout, too early, throttled, server trouble: worth another try.
            raise TransientError(f"{url} answered HTTP {status}")
        if status != 200:
            raise PermanentError(f"{url} answered HTTP {status}")
        version = UpstreamVersion(response.etag, response.last_modified, response.content_length)
        _check_unchanged(job, version)
        metadata = {**job.metadata, **version.as_metadata()}
        target = verify_target(settings, dataset, job.month, response.content_length, response.etag)
        verifier = BackgroundVerifier(job.publication.source_format.verifier(target))
        speed = SpeedFloor(
            settings.download_min_bytes_per_second, settings.download_speed_window_seconds
        )
        file = name.rsplit("/", 1)[-1]
        task = ports.progress.task(f"download {file}", response.content_length)
        try:
            with ports.lake.writer(name, metadata) as writer:
                for chunk in response.iter_bytes():
                    # Cancelled (the run of this handler's scope): raising inside the block
                    # discards the upload, as below.
                    ports.cancellation.check()
                    verifier.feed(chunk)
                    writer.write(chunk)
                    task.advance(len(chunk))
                    speed.received(len(chunk))
                task.close()
                # The verifier's thread may lag behind the stream: its own phase from here.
                task = ports.progress.task(f"verify {file}", None)
                # Raising here, before the block ends, discards the upload: no raw/ object.
                return _finish(verifier, response.content_length)
        finally:
            verifier.close()
            task.close()


def _check_unchanged(job: DownloadJob, version: UpstreamVersion) -> None:
    """A forced download of a loaded month whose upstream file changed since its load is
    refused before a byte is written: merged insert-only, the new file's rows would sit beside
    the old file's. ``--replace`` reloads it."""
    if job.loaded_version is None or job.replace:
        return
    changed = job.loaded_version.differences(version)
    if changed:
        raise SourceConflict(
            f"{display_url(job.url)} changed upstream since {job.dataset.value} {job.month} was"
            f" loaded from it ({'; '.join(changed)}). Nothing was changed; run it with --replace"
            " to replace the month's rows with the new file's"
        )


def _finish(verifier: BackgroundVerifier, content_length: int | None) -> VerifiedFile:
    try:
        return verifier.finish()
    except TruncatedStream as exc:
        if content_length is not None:
            raise  # every announced byte arrived: the file itself is cut short
        # No length announced: a connection that closed early looks exactly like the end of
        # the body, so the cut may be in transit. Retried, bounded like a cut with a length.
        raise TransientError(
            f"download ended early: {exc} (the source announced no length, so the connection"
            " may have been cut)"
        ) from exc
