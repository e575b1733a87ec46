"""Paths inside URLs: one reading of ``file:///abs/path`` and ``duckdb:///abs/path`` for the
lake objects, the lake setting and the warehouse setting alike (percent-escapes decoded)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit


def local_path(url: str, scheme: str = "file") -> Path | None:
    """The path a ``scheme://`` URL names on this machine; ``None`` for another scheme or a URL
    without a path (``duckdb://`` alone: the default warehouse file)."""
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == scheme and parts.path else None
