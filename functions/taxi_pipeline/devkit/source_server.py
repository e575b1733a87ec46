"""A local stand-in for the GitHub release downloads and the TLC's CDN, with fault injection.

``serve_directory(d)`` answers ``GET {base_url}/{tag}/{name}`` with the file ``d/{tag}/{name}``,
or ``d/{name}`` when ``name`` starts with ``{tag}_`` (the flat folder ``generate_month`` writes):
the layout of ``https://github.com/DataTalksClub/nyc-tlc-data/releases/download/{tag}/{name}``.
Anything else is a 404, like a month that was never published.

It also answers the TLC's layout, ``{base_url}/trip-data/{dataset}_tripdata_YYYY-MM.parquet``
(so ``TAXI_PIPELINE_TLC_URL={base_url}/trip-data``), from ``d/trip-data/{name}`` or ``d/{name}``
(the flat folder ``generate_parquet_month`` writes), the way CloudFront in front of S3 does:
``ETag`` (S3's: the MD5 of the bytes, or ``"{md5 of the parts' MD5s}-{parts}"`` for a multipart
upload), ``Last-Modified`` (the file's mtime: touch a file to "re-publish" it), and 403 with an
S3 ``AccessDenied`` body for a month that is not there.

Bodies go out with ``socket.sendfile`` (zero-copy on Linux), so benchmarks measure the client,
not this server. Faults are queued per file name and consumed one request at a time::

    with serve_directory(tmp) as server:
        server.inject("yellow_tripdata_2019-01.csv.gz", Fault.unavailable(times=2))
        server.inject("yellow_tripdata_2019-01.csv.gz", Fault.cut(after_bytes=1000))
        # 1st and 2nd GET: 503; 3rd: body cut after 1000 bytes; 4th: the whole file.

Hostile sources too: :meth:`Fault.trickle` (an honest length, then a few bytes now and then),
:meth:`Fault.redirect` (any ``Location``: another scheme, plain http, itself for a loop) and
``Fault.cut(..., announce_length=False)`` (no ``Content-Length``: the cut looks like a clean end).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import unquote, urlsplit

from taxi_pipeline.domain.datasets import Dataset, Month, file_name
from taxi_pipeline.domain.tlc_schemas import TLC_DATASETS, tlc_file_name

_log = logging.getLogger(__name__)

_RANGE_RE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._-]+$")
_CORRUPT_SPAN: Final = 64
_SENDFILE_CHUNK: Final = 8 << 20
# How long the request log waits for requests still being answered (see SourceServer.served).
_SETTLE_SECONDS: Final = 5.0

TLC_PREFIX: Final = "trip-data"
"""The first path segment of the TLC's file URLs."""
_TLC_NAME_RE: Final = re.compile(
    rf"^({'|'.join(TLC_DATASETS)})_tripdata_[0-9]{{4}}-[0-9]{{2}}\.parquet$"
)
# What S3 answers through CloudFront for a key that is not there (no ListBucket permission).
_ACCESS_DENIED: Final = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
)
MULTIPART_PART_BYTES: Final = 8 << 20
"""The part size of the AWS CLI's multipart uploads (and its threshold for using them)."""


def s3_etag(path: Path, part_bytes: int = MULTIPART_PART_BYTES) -> str:
    """The ``ETag`` S3 gives ``path`` uploaded in parts of ``part_bytes`` (quotes included).

    A file of at most one part: the MD5 of its bytes. Larger: the MD5 of the concatenated
    parts' MD5 digests, then ``-`` and the number of parts (the TLC's ``"...-12"``).
    """
    digests = []
    with path.open("rb") as handle:
        while part := handle.read(part_bytes):
            digests.append(hashlib.md5(part).digest())
    if len(digests) <= 1:
        return f'"{(digests[0] if digests else hashlib.md5(b"").digest()).hex()}"'
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


@dataclass(frozen=True)
class Fault:
    """What to do to the next ``times`` requests for one file (``times=None``: all of them).

    Effects combine: ``delay`` first, then ``status`` (an error answer with no file bytes), or
    else the body, replaced by ``body`` or damaged by ``flip_at``, cut after ``cut_after``
    bytes. Prefer the constructors: :meth:`unavailable`, :meth:`cut`, :meth:`corrupt`,
    :meth:`replace_body`, :meth:`slow`, :meth:`trickle`, :meth:`redirect`.
    """

    times: int | None = 1
    delay: float = 0.0
    """Seconds to wait before answering."""
    status: int | None = None
    """Answer this status (e.g. 503) instead of the file."""
    retry_after: int | None = None
    """``Retry-After`` seconds to send with ``status``."""
    cut_after: int | None = None
    """Announce the full ``Content-Length``, send this many body bytes, close the connection."""
    body: bytes | None = None
    """Serve these bytes (with their own length) instead of the file."""
    flip_at: int | None = None
    """Invert 64 bytes at this offset: same length, broken gzip (CRC or deflate error)."""
    announce_length: bool = True
    """``False``: no ``Content-Length``; the body ends when the connection closes."""
    trickle_bytes: int | None = None
    """Send the body this many bytes at a time, ``trickle_seconds`` apart."""
    trickle_seconds: float = 0.0
    redirect_to: str | None = None
    """Answer ``redirect_status`` with this ``Location`` instead of the file."""
    redirect_status: int = 302

    @classmethod
    def unavailable(
        cls, times: int | None = 1, status: int = 503, retry_after: int | None = None
    ) -> Fault:
        """Answer ``status`` (default 503) the next ``times`` times."""
        return cls(times=times, status=status, retry_after=retry_after)

    @classmethod
    def cut(cls, after_bytes: int, times: int | None = 1, *, announce_length: bool = True) -> Fault:
        """Close the connection after ``after_bytes`` body bytes (a truncated download).

        ``announce_length=False`` sends no ``Content-Length`` (a body delimited by the end of
        the connection), so the client cannot tell the cut from the end of the file.
        """
        return cls(times=times, cut_after=after_bytes, announce_length=announce_length)

    @classmethod
    def corrupt(cls, at: int = 1024, times: int | None = 1) -> Fault:
        """Serve the file with bytes inverted from offset ``at``: the same size, bad gzip."""
        return cls(times=times, flip_at=at)

    @classmethod
    def replace_body(cls, body: bytes, times: int | None = 1) -> Fault:
        """Serve ``body`` instead of the file (e.g. an HTML error page with status 200)."""
        return cls(times=times, body=body)

    @classmethod
    def slow(cls, seconds: float, times: int | None = 1) -> Fault:
        """Wait ``seconds`` before answering (for timeouts)."""
        return cls(times=times, delay=seconds)

    @classmethod
    def trickle(cls, every_bytes: int, seconds: float, times: int | None = 1) -> Fault:
        """Announce the full ``Content-Length``, then send ``every_bytes`` every ``seconds``:
        each read arrives well within a read timeout, yet the whole file would take hours."""
        if every_bytes < 1 or seconds < 0:
            raise ValueError("a trickle sends at least one byte at a time")
        return cls(times=times, trickle_bytes=every_bytes, trickle_seconds=seconds)

    @classmethod
    def redirect(cls, location: str, times: int | None = 1, status: int = 302) -> Fault:
        """Answer ``status`` (a redirect) to ``location``, whatever its scheme."""
        return cls(times=times, redirect_to=location, redirect_status=status)


@dataclass(frozen=True)
class Served:
    """One answered request."""

    method: str
    path: str
    status: int
    bytes_sent: int
    """Body bytes written to the socket."""
    range_start: int = 0
    """First byte offset requested (non-zero for a ``Range`` resume)."""
    fault: Fault | None = None


@dataclass
class _State:
    directory: Path
    tlc_missing_status: int = HTTPStatus.FORBIDDEN
    part_bytes: int = MULTIPART_PART_BYTES
    lock: threading.Lock = field(default_factory=threading.Lock)
    served: list[Served] = field(default_factory=list)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    bytes_sent: int = 0
    etags: dict[tuple[Path, int, int], str] = field(default_factory=dict)
    in_flight: int = 0
    """Requests being answered; the log is complete when it is 0."""
    settled: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.settled = threading.Condition(self.lock)

    def begin(self) -> None:
        with self.lock:
            self.in_flight += 1

    def end(self) -> None:
        with self.settled:
            self.in_flight -= 1
            self.settled.notify_all()

    def wait_settled(self) -> None:
        """Wait (bounded) until no request is being answered; call with ``settled`` held."""
        self.settled.wait_for(lambda: self.in_flight == 0, timeout=_SETTLE_SECONDS)

    def etag(self, path: Path) -> str:
        """:func:`s3_etag` of ``path``, computed once per (size, mtime) of the file."""
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self.lock:
            known = self.etags.get(key)
        if known is None:
            known = s3_etag(path, self.part_bytes)
            with self.lock:
                self.etags[key] = known
        return known

    def take_fault(self, name: str) -> Fault | None:
        """Consume one use of the first queued fault for ``name``."""
        with self.lock:
            queue = self.faults.get(name)
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                if fault.times <= 1:
                    queue.pop(0)
                else:
                    queue[0] = replace(fault, times=fault.times - 1)
            return fault

    def record(self, served: Served) -> None:
        with self.lock:
            self.served.append(served)
            self.bytes_sent += served.bytes_sent


class SourceServer:
    """Handle on a running server: its URL, what it served, and fault injection."""

    def __init__(self, httpd: ThreadingHTTPServer, state: _State) -> None:
        self._httpd = httpd
        self._state = state
        host, port = httpd.server_address[:2]
        self.base_url: str = f"http://{host!s}:{port}"
        """``http://127.0.0.1:PORT``; files live at ``{base_url}/{tag}/{name}``."""

    @property
    def directory(self) -> Path:
        return self._state.directory

    def url(self, dataset: Dataset, month: Month) -> str:
        """URL of a month's file, shaped like the GitHub release download URL."""
        return f"{self.base_url}/{dataset.value}/{file_name(dataset, month)}"

    @property
    def tlc_base_url(self) -> str:
        """``{base_url}/trip-data``: the value for ``TAXI_PIPELINE_TLC_URL``."""
        return f"{self.base_url}/{TLC_PREFIX}"

    def tlc_url(self, dataset: str, month: Month) -> str:
        """URL of a month's Parquet file, shaped like the TLC's."""
        return f"{self.tlc_base_url}/{tlc_file_name(dataset, month)}"

    def inject(self, name: str, fault: Fault) -> None:
        """Queue ``fault`` for requests of the file called ``name`` (after earlier faults)."""
        if fault.times is not None and fault.times < 1:
            raise ValueError("a fault must apply at least once (times >= 1 or None)")
        with self._state.lock:
            self._state.faults.setdefault(name, []).append(fault)

    def clear_faults(self, name: str | None = None) -> None:
        """Drop the queued faults of ``name``, or of every file."""
        with self._state.lock:
            if name is None:
                self._state.faults.clear()
            else:
                self._state.faults.pop(name, None)

    @property
    def served(self) -> list[Served]:
        """Every answered request, in order (a copy).

        Waits (up to 5 s) for requests still being answered: a request is logged after its last
        byte went out, which its client may have seen already.
        """
        with self._state.settled:
            self._state.wait_settled()
            return list(self._state.served)

    @property
    def requests(self) -> list[tuple[str, int]]:
        """``(path, status)`` of every answered request, in order."""
        return [(s.path, s.status) for s in self.served]

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent over all requests (headers excluded); waits like :attr:`served`."""
        with self._state.settled:
            self._state.wait_settled()
            return self._state.bytes_sent

    def reset_log(self) -> None:
        """Forget the served requests and the byte count (faults stay queued)."""
        with self._state.lock:
            self._state.served.clear()
            self._state.bytes_sent = 0


@contextlib.contextmanager
def serve_directory(
    directory: Path,
    *,
    tlc_missing_status: int = HTTPStatus.FORBIDDEN,
    multipart_part_bytes: int = MULTIPART_PART_BYTES,
) -> Iterator[SourceServer]:
    """Serve ``directory`` on ``127.0.0.1`` at a free port until the block exits.

    ``tlc_missing_status``: the answer for a TLC file that is not there (CloudFront over S3 gives
    403; 404 is what a public bucket would say). ``multipart_part_bytes``: the upload part size
    the TLC ETags are computed for (files above it get S3's multipart ``"...-N"`` ETag).
    """
    state = _State(
        directory=directory,
        tlc_missing_status=tlc_missing_status,
        part_bytes=multipart_part_bytes,
    )

    class Handler(_Handler):
        pass

    Handler.state = state
    httpd = _QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True  # a stalled (delayed) request must not hold up shutdown
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="source-server"
    )
    thread.start()
    try:
        yield SourceServer(httpd, state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a 403 it does not read to the end, a cancelled download) is no
    error worth a traceback on stderr."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            _log.debug("client %s went away", client_address)
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"  # keep-alive, like GitHub; clients may reuse connections
    server_version = "taxi-source"

    def do_GET(self) -> None:
        self.state.begin()
        try:
            self._answer(head=False)
        finally:
            self.state.end()

    def do_HEAD(self) -> None:
        self.state.begin()
        try:
            self._answer(head=True)
        finally:
            self.state.end()

    def log_message(self, format: str, *args: object) -> None:
        # The default writes to stderr, which pytest would show as noise.
        _log.debug("%s " + format, self.address_string(), *args)

    def _answer(self, *, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        tlc = path.strip("/").split("/")[0] == TLC_PREFIX
        target = self._resolve_tlc(path) if tlc else self._resolve(path)
        if target is None:
            if tlc:
                self._denied(path, head=head)
            else:
                self._empty(path, HTTPStatus.NOT_FOUND)
            return
        fault = self.state.take_fault(target.name)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            self._empty(path, fault.status, fault, extra)
            return
        if fault is not None and fault.redirect_to is not None:
            self._empty(path, fault.redirect_status, fault, {"Location": fault.redirect_to})
            return
        if fault is not None and fault.body is not None:
            self._send_bytes(path, fault.body, fault, head=head)
            return
        self._send_file(path, target, fault, head=head, tlc=tlc)

    def _resolve_tlc(self, path: str) -> Path | None:
        parts = path.strip("/").split("/")
        if len(parts) != 2 or not _TLC_NAME_RE.match(parts[1]):
            return None
        for candidate in (
            self.state.directory / TLC_PREFIX / parts[1],
            self.state.directory / parts[1],
        ):
            if candidate.is_file():
                return candidate
        return None

    def _denied(self, path: str, *, head: bool) -> None:
        status = self.state.tlc_missing_status
        body = _ACCESS_DENIED if status == HTTPStatus.FORBIDDEN else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0 if head else self._write(body)
        self.state.record(Served(self.command, path, status, sent))

    def _resolve(self, path: str) -> Path | None:
        parts = path.strip("/").split("/")
        if len(parts) != 2 or not all(_NAME_RE.match(p) and p not in {".", ".."} for p in parts):
            return None
        tag, name = parts
        nested = self.state.directory / tag / name
        if nested.is_file():
            return nested
        # The flat folder generate_month writes: yellow files only under the "yellow" tag (and
        # the zone lookup only nested, under "misc/").
        flat = self.state.directory / name
        return flat if name.startswith(f"{tag}_") and flat.is_file() else None

    def _empty(
        self,
        path: str,
        status: int,
        fault: Fault | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.state.record(Served(self.command, path, status, 0, fault=fault))

    def _range(self, size: int) -> tuple[int, int] | None:
        """``(start, end_exclusive)`` of a satisfiable ``Range: bytes=a-b``, else None."""
        header = self.headers.get("Range")
        match = _RANGE_RE.match(header.strip()) if header else None
        if not match or match.group(1) == "":
            return None  # absent, multi-range or suffix ranges: serve the whole file
        start = int(match.group(1))
        end = int(match.group(2)) + 1 if match.group(2) else size
        return (start, min(end, size))

    def _send_file(
        self, path: str, target: Path, fault: Fault | None, *, head: bool, tlc: bool = False
    ) -> None:
        size = target.stat().st_size
        span = self._range(size)
        start, end = span if span else (0, size)
        if span and start >= size:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.state.record(Served(self.command, path, 416, 0, start, fault))
            return
        status = HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK
        self.send_response(status)
        if tlc:
            # S3's type for an object uploaded without one, and its validators.
            self.send_header("Content-Type", "binary/octet-stream")
            self.send_header("ETag", self.state.etag(target))
            self.send_header("Last-Modified", formatdate(target.stat().st_mtime, usegmt=True))
        else:
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if fault is None or fault.announce_length:
            self.send_header("Content-Length", str(end - start))
        else:
            # Delimited by the end of the connection (RFC 9112, 6.3 item 8).
            self.send_header("Connection", "close")
            self.close_connection = True
        if span:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        sent = 0
        if not head:
            limit = end - start
            if fault is not None and fault.cut_after is not None:
                limit = min(limit, fault.cut_after)
            with target.open("rb") as source:
                if fault is not None and fault.flip_at is not None:
                    sent = self._send_flipped(source, start, limit, fault.flip_at)
                elif fault is not None and fault.trickle_bytes is not None:
                    sent = self._send_trickle(source, start, limit, fault)
                else:
                    sent = self._sendfile(source, start, limit)
            if sent < end - start:
                # A short body on a keep-alive connection must end the connection, otherwise
                # the client would wait for the missing bytes forever.
                self.close_connection = True
        self.state.record(Served(self.command, path, int(status), sent, start, fault))

    def _sendfile(self, source: BinaryIO, offset: int, count: int) -> int:
        """Send ``count`` bytes of ``source`` from ``offset``; return how many went out."""
        if not hasattr(os, "sendfile"):
            try:
                return int(self.connection.sendfile(source, offset, count))
            except OSError:
                self.close_connection = True
                return 0
        # os.sendfile in a loop rather than socket.sendfile: on a client abort the count of
        # bytes that did go out is kept (tests assert on bytes_sent).
        out_fd, in_fd = self.connection.fileno(), source.fileno()
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(out_fd, in_fd, offset + sent, min(count - sent, _SENDFILE_CHUNK))
            except OSError:  # client went away
                self.close_connection = True
                break
            if n == 0:
                break
            sent += n
        return sent

    def _send_flipped(self, source: BinaryIO, offset: int, count: int, flip_at: int) -> int:
        # Small test files only: read the range, invert a span, send from memory.
        source.seek(offset)
        data = bytearray(source.read(count))
        lo = max(flip_at - offset, 0)
        for i in range(lo, min(lo + _CORRUPT_SPAN, len(data))):
            data[i] ^= 0xFF
        return self._write(bytes(data))

    def _send_trickle(self, source: BinaryIO, offset: int, count: int, fault: Fault) -> int:
        """A few bytes, a pause, a few bytes...; stops when the client goes away."""
        assert fault.trickle_bytes is not None
        source.seek(offset)
        sent = 0
        while sent < count:
            piece = source.read(min(fault.trickle_bytes, count - sent))
            if not piece or self._write(piece) == 0:
                break
            sent += len(piece)
            if sent < count:
                time.sleep(fault.trickle_seconds)
        return sent

    def _send_bytes(self, path: str, body: bytes, fault: Fault, *, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0
        if not head:
            limit = len(body) if fault.cut_after is None else min(len(body), fault.cut_after)
            sent = self._write(body[:limit])
            if sent < len(body):
                self.close_connection = True
        self.state.record(Served(self.command, path, HTTPStatus.OK, sent, 0, fault))

    def _write(self, data: bytes) -> int:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # client went away
            self.close_connection = True
            return 0
        return len(data)
