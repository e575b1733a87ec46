"""HTTP source adapter (httpx), shared by both modes: streams the published files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from taxi_pipeline.errors import TransientError

_CHUNK = 1024 * 1024


@dataclass
class _Response:
    status_code: int
    content_length: int | None
    _response: httpx.Response

    def iter_bytes(self) -> Iterator[bytes]:
        try:
            yield from self._response.iter_raw(_CHUNK)
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise TransientError(f"download interrupted: {exc}") from exc


class HttpxSource:
    """Streaming GETs with timeouts; transport failures become :class:`TransientError`.

    ``iter_raw``: the ``.csv.gz`` bytes are stored as published, never decoded in transit.
    """

    def __init__(self, timeout_seconds: float = 60.0) -> None:
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=True,  # GitHub release downloads redirect to their CDN
            headers={"User-Agent": "taxi-pipeline"},
        )

    @contextmanager
    def get(self, url: str) -> Iterator[_Response]:
        try:
            with self._client.stream("GET", url) as response:
                length = response.headers.get("content-length")
                encoding = response.headers.get("content-encoding", "identity")
                yield _Response(
                    response.status_code,
                    int(length) if length and length.isdigit() and encoding == "identity" else None,
                    response,
                )
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise TransientError(f"cannot reach {url}: {exc}") from exc

    def close(self) -> None:
        self._client.close()
