"""HTTP source adapter (httpx), shared by both modes: streams the published files.

Redirects are followed here, one hop at a time, not by httpx: each hop is checked before it is
requested by the rules the configured base obeys (:func:`domain.sources.hop_problem`: https,
plain http only to loopback or with the opt-in, never ``file:``/``ftp:``/..., no credentials),
and at most :data:`MAX_REDIRECTS` are followed. A refused hop and a redirect loop are permanent:
asking again gets the same answer. An optional deadline (a ``time.monotonic()`` instant) bounds
the whole GET, a connection that falls silent included.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

import httpx

from taxi_pipeline.domain.sources import display_url, hop_problem
from taxi_pipeline.errors import PermanentError, TransientError
from taxi_pipeline.pipeline.ports import HeadAnswer, UpstreamVersion

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_MAX_HOLD_SECONDS = 0.5
MAX_REDIRECTS: Final = 10
"""GitHub release downloads redirect once, to their CDN."""
_INVALID_LOCATION = "Invalid URL in location header"


class DeadlineReached(TransientError):
    """The GET ran past the deadline its caller gave."""


@dataclass
class _Watchdog:
    """Shuts the response's socket down at the deadline: a blocked read then returns at once
    (end of stream), where httpx's read timeout would only fire after a whole silent period."""

    deadline: float | None
    fired: bool = False
    _timer: threading.Timer | None = field(default=None, repr=False)

    def arm(self, response: httpx.Response) -> None:
        if self.deadline is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return  # no socket to cut (a transport without one): per-read checks still apply

        def fire() -> None:
            self.fired = True
            with contextlib.suppress(OSError):  # already closed: the download ended meanwhile
                sock.shutdown(socket.SHUT_RDWR)

        self._timer = threading.Timer(max(self.deadline - time.monotonic(), 0.0), fire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def expired(self) -> bool:
        return self.fired or (self.deadline is not None and time.monotonic() >= self.deadline)


@dataclass
class _Response:
    status_code: int
    content_length: int | None
    etag: str | None
    last_modified: str | None
    _response: httpx.Response
    _watchdog: _Watchdog

    def iter_bytes(self) -> Iterator[bytes]:
        """The body in chunks of up to 1 MiB; bytes that trickle in are handed on after at most
        half a second, so the caller's speed check sees a slow source as it happens."""
        buffer = bytearray()
        held_since = 0.0
        try:
            # iter_raw() without a size yields what each read returns (httpx's own chunking
            # would hold a trickle back until a whole chunk arrived).
            for piece in self._response.iter_raw():
                if self._watchdog.expired():
                    raise DeadlineReached("the download ran past its deadline")
                now = time.monotonic()
                if not buffer:
                    held_since = now
                buffer += piece
                if len(buffer) >= _CHUNK or now - held_since >= _MAX_HOLD_SECONDS:
                    yield bytes(buffer)
                    buffer.clear()
            if buffer:
                yield bytes(buffer)
        except (httpx.TransportError, httpx.StreamError) as exc:
            if self._watchdog.expired():
                raise DeadlineReached("the download ran past its deadline") from exc
            raise TransientError(f"download interrupted: {exc}") from exc


class HttpxSource:
    """Streaming GETs with timeouts and checked redirects; transport failures become
    :class:`TransientError`, refused redirects :class:`PermanentError`.

    ``iter_raw``: the ``.csv.gz`` bytes are stored as published, never decoded in transit.
    """

    def __init__(
        self,
        timeout_seconds: float = 60.0,
        *,
        allow_insecure: bool = False,
        max_redirects: int = MAX_REDIRECTS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``transport``: httpx's own, unless a test injects answers (``httpx.MockTransport``)."""
        self._timeout = timeout_seconds
        self._allow_insecure = allow_insecure
        self._max_redirects = max_redirects
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,  # followed by get(), hop by hop, each hop checked
            headers={"User-Agent": "taxi-pipeline"},
            transport=transport,
        )

    @contextmanager
    def get(self, url: str, deadline: float | None = None) -> Iterator[_Response]:
        """Start a streaming GET of ``url``, following checked redirects, within ``deadline``."""
        watchdog = _Watchdog(deadline)
        response = self._follow(url, deadline)
        try:
            watchdog.arm(response)
            yield _Response(
                response.status_code,
                _length(response),
                response.headers.get("etag"),
                response.headers.get("last-modified"),
                response,
                watchdog,
            )
        finally:
            watchdog.disarm()
            response.close()

    def head(self, url: str) -> HeadAnswer:
        """HEAD ``url`` (redirects followed and checked hop by hop, as a GET's)."""
        response = self._follow(url, None, method="HEAD")
        response.close()
        return HeadAnswer(
            response.status_code,
            UpstreamVersion(
                response.headers.get("etag"),
                response.headers.get("last-modified"),
                _length(response),
            ),
        )

    def _follow(self, url: str, deadline: float | None, method: str = "GET") -> httpx.Response:
        """The first answer that is not a redirect; every hop checked before it is requested."""
        current = url
        for hop in range(self._max_redirects + 1):
            if hop:
                problem = hop_problem(current, allow_insecure=self._allow_insecure)
                if problem is not None:
                    raise PermanentError(
                        f"{display_url(url)} redirects to {display_url(current)}, which {problem}"
                    )
            response = self._send(current, deadline, method)
            if response.next_request is None:
                return response
            response.close()
            current = str(response.next_request.url)
            log.debug("redirected (HTTP %d) to %s", response.status_code, display_url(current))
        raise PermanentError(
            f"{display_url(url)} redirects more than {self._max_redirects} times (a redirect loop?)"
        )

    def _send(self, url: str, deadline: float | None, method: str = "GET") -> httpx.Response:
        timeout: float = self._timeout
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineReached("the download ran past its deadline")
            timeout = min(timeout, remaining)
        try:
            request = self._client.build_request(method, url, timeout=httpx.Timeout(timeout))
            return self._client.send(request, stream=True)
        except httpx.RemoteProtocolError as exc:
            if str(exc).startswith(_INVALID_LOCATION):
                raise PermanentError(
                    f"{display_url(url)} redirects to an invalid Location"
                ) from exc
            raise TransientError(f"cannot reach {display_url(url)}: {exc}") from exc
        except httpx.UnsupportedProtocol as exc:
            raise PermanentError(f"cannot request {display_url(url)}: {exc}") from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineReached("the download ran past its deadline") from exc
            raise TransientError(f"cannot reach {display_url(url)}: {exc}") from exc

    def close(self) -> None:
        self._client.close()


def _length(response: httpx.Response) -> int | None:
    """The body's length as announced, when it is the file's (no content encoding)."""
    length = response.headers.get("content-length")
    encoding = response.headers.get("content-encoding", "identity")
    return int(length) if length and length.isdigit() and encoding == "identity" else None
