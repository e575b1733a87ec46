"""HTTP faults under a Google client: chosen requests answered with an error, or their
connection dropped, before the server has them or after (the answer lost); every other request
goes to the server.

Given to a client as its transport (``storage.Client(_http=faulty_session(...))``), it tests how
an adapter handles the errors the SDK itself raises from real responses, without patching the
SDK's classes. Only tests and drills build it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import requests
from requests.adapters import HTTPAdapter

Answer = int | Literal["reset", "lost"]
"""An HTTP status to answer with; ``reset``: the connection drops before the server has the
request; ``lost``: the server handles it, then the connection drops before the answer."""

RESET: Final = "reset"
LOST: Final = "lost"


@dataclass
class HttpFault:
    """The requests of ``method`` whose URL path matches ``path`` (a regular expression)
    answered with ``answers``, one per request in turn, then passed to the server."""

    method: str
    path: str
    answers: Sequence[Answer]
    message: str = "injected fault"
    """The error message of an answered status (in Google's JSON error shape)."""
    seen: list[str] = field(default_factory=list)
    """The URLs of every matching request (faulted or not), with their query strings."""

    def matches(self, request: requests.PreparedRequest) -> bool:
        path = re.sub(r"\?.*", "", request.url or "")
        return request.method == self.method and re.search(self.path, path) is not None


class _FaultyAdapter(HTTPAdapter):
    def __init__(self, faults: Sequence[HttpFault]) -> None:
        super().__init__()
        self._faults = faults
        self._lock = threading.Lock()

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        answer: Answer | None = None
        with self._lock:
            fault = next((f for f in self._faults if f.matches(request)), None)
            if fault is not None:
                index = len(fault.seen)
                fault.seen.append(request.url or "")
                if index < len(fault.answers):
                    answer = fault.answers[index]
        if answer is None:
            return super().send(request, **kwargs)
        if answer == RESET:
            raise requests.ConnectionError("connection reset by peer")
        if answer == LOST:
            super().send(request, **kwargs)
            raise requests.ConnectionError("connection reset by peer")
        assert fault is not None
        assert isinstance(answer, int)
        return _error_response(request, answer, fault.message)


def _error_response(
    request: requests.PreparedRequest, status: int, message: str
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.request = request
    response.url = request.url or ""
    response.headers.update({"Content-Type": "application/json; charset=UTF-8"})
    body: Mapping[str, object] = {"error": {"code": status, "message": message, "errors": []}}
    response._content = json.dumps(body).encode()
    return response


def faulty_session(faults: Sequence[HttpFault]) -> requests.Session:
    """A session whose requests pass through ``faults`` (for a client's ``_http``)."""
    session = requests.Session()
    adapter = _FaultyAdapter(faults)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
