"""Which URLs the pipeline may download from: the configured source base and every redirect hop.

Pure rules, shared by the download step (the base, checked before any request) and the HTTP
adapter (each hop, checked before it is requested). Messages name a URL only as
:func:`display_url` prints it: no userinfo, query or fragment, which may carry credentials or
signatures (GitHub's CDN redirects carry ``X-Amz-Signature``).
"""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

INSECURE_OPT_IN: Final = "TAXI_PIPELINE_ALLOW_INSECURE_SOURCE=true"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def display_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: what a message may quote."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    scheme = parts.scheme if parts.scheme.isascii() and parts.scheme.isalnum() else "?"
    return f"{scheme}://{netloc}{parts.path.split(';', 1)[0]}"


def hop_problem(url: str, *, allow_insecure: bool) -> str | None:
    """Why ``url`` may not be requested (``None``: it may): only https, plain http to loopback
    or with the opt-in, never another scheme (``file:``, ``ftp:``, ...), never credentials."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if "@" in parts.netloc:
        return "carries credentials"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        shown = scheme if scheme.isascii() and scheme.isalnum() else "another"
        return f"uses the {shown}: scheme; only https (or http to loopback) is allowed"
    if not parts.hostname:
        return "has no host"
    if scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        return f"is plain http; use https, or set {INSECURE_OPT_IN} to allow it"
    return None
