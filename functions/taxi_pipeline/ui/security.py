"""Who may change something through the web UI.

- Bound to loopback (the default): only this machine reaches the server. Requests must name a
  loopback host (no DNS rebinding: a page of ``evil.example`` resolving to 127.0.0.1 is turned
  away), and a write must not come from another origin.
- Bound to any other address: every write needs the token (``TAXI_PIPELINE_UI_TOKEN``), sent as
  ``Authorization: Bearer TOKEN``; the server refuses to start without one.
- Writes take JSON only: a browser cannot send a cross-site JSON POST without a CORS preflight,
  which this server never grants, so no other site can post a form here.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from taxi_pipeline.errors import ConfigurationError

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""Our own script and stylesheet only: nothing inline, so data that slipped through escaping
still could not run."""


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost`` (and the rest of 127/8)."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Refused(Exception):
    """A request the access rules turn away: HTTP ``status`` and the reason shown."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Access:
    """The rules for one server: loopback-only, or writes with a token."""

    loopback: bool
    token: str | None = None

    @classmethod
    def for_bind(cls, host: str, token: str | None) -> Access:
        """The rules for a server bound to ``host``; refuses a non-loopback bind without token."""
        if is_loopback(host):
            return cls(loopback=True, token=token or None)
        if not token:
            raise ConfigurationError(
                f"the UI would listen on {host}, reachable from other machines: set"
                " TAXI_PIPELINE_UI_TOKEN (write actions then need it) or bind to 127.0.0.1"
            )
        if len(token) < 16:
            raise ConfigurationError(
                "TAXI_PIPELINE_UI_TOKEN is too short: use 16 characters or more"
            )
        return cls(loopback=False, token=token)

    @property
    def token_required(self) -> bool:
        return self.token is not None

    def check_host(self, host_header: str) -> None:
        """Loopback servers answer only requests that name a loopback host."""
        if self.loopback and not is_loopback(_hostname(host_header)):
            raise Refused(400, "this server answers requests for localhost only")

    def check_write(
        self, *, content_type: str, origin: str | None, authorization: str | None
    ) -> None:
        """A POST: JSON only, from our own origin (loopback), with the token when one is set."""
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise Refused(415, "send JSON (Content-Type: application/json)")
        # "null" is a sandboxed frame or a file:// page: not ours either.
        if self.loopback and origin and not is_loopback(urlsplit(origin).hostname or ""):
            raise Refused(403, "cross-origin writes are refused")
        if self.token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                raise Refused(401, "this action needs the UI token (Authorization: Bearer TOKEN)")


def _hostname(host_header: str) -> str:
    """The host of a Host header: ``[::1]:8765`` -> ``::1``, ``localhost:8765`` -> ``localhost``."""
    return urlsplit(f"//{host_header}").hostname or ""
