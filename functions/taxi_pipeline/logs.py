"""Logging: one JSON line per record in the cloud (the shape Cloud Logging indexes), text locally.

The run's context (run id, dataset, month, step) lives in a :class:`ContextVar`, so every record
logged inside a :func:`log_context` block carries it, whichever module logs. A step learns its
run only while it parses the event, so a block can also follow a :class:`RunFields` (the
handlers' ``Invocation``): its ``run_id``, ``dataset`` and ``month`` are read when each record is
written, and every line logged after the step filled them in carries them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, Protocol

from pythonjsonlogger.json import JsonFormatter

from taxi_pipeline.settings import LogFormat


class RunFields(Protocol):
    """What is known so far about the run a block works for (``handlers.Invocation``)."""

    @property
    def run_id(self) -> str | None: ...

    @property
    def dataset(self) -> object | None: ...

    @property
    def month(self) -> object | None: ...


_IDENTITY_FIELDS: Final = ("run_id", "dataset", "month")

_Layer = Mapping[str, str] | RunFields

# One layer per open block, innermost last; a tuple, so a block never changes an outer one.
_CONTEXT: ContextVar[tuple[_Layer, ...]] = ContextVar("taxi_pipeline_log_context", default=())

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


@contextmanager
def log_context(run: RunFields | None = None, /, **fields: str | None) -> Iterator[None]:
    """Add fields to every record logged inside the block (nested blocks merge, inner wins).

    ``run``: an object whose ``run_id``, ``dataset`` and ``month`` are read at each record, so
    the lines logged once they are known carry them (unknown ones are left out).
    """
    layers: list[_Layer] = [] if run is None else [run]
    layers.append({k: v for k, v in fields.items() if v is not None})
    token = _CONTEXT.set((*_CONTEXT.get(), *layers))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _current_context() -> dict[str, str]:
    context: dict[str, str] = {}
    for layer in _CONTEXT.get():
        if isinstance(layer, Mapping):
            context.update(layer)
            continue
        for name in _IDENTITY_FIELDS:
            value = getattr(layer, name, None)
            if value is not None and str(value):
                context[name] = str(value)
    return context


_SECRETS: Final = (
    # Query strings: ours never have one (the source base refuses them), a redirect target
    # does (GitHub release downloads redirect to pre-signed URLs: X-Amz-Signature=...).
    (re.compile(r"(\w://[^\s?'\"]*)\?[^\s'\"]+"), r"\1?<redacted>"),
    # Userinfo in URLs.
    (re.compile(r"(\w://)[^/@\s'\"]+@"), r"\1<redacted>@"),
    # Header values as httpcore's debug lines print them.
    (re.compile(r"(?i)((?:authorization|cookie|x-goog-[\w-]*)'?,\s*b?')[^']*"), r"\1<redacted>"),
)


def redact(text: str) -> str:
    """``text`` without the credentials a URL or an HTTP header line can carry."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_context = _current_context()
        # Every record, whichever library logs it (httpx logs each request's URL at INFO).
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class CloudJsonFormatter(JsonFormatter):
    """``{"severity", "message", "logger", run context..., "logging.googleapis.com/labels"}``."""

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.pop("run_context", None)
        log_record["severity"] = _SEVERITY.get(record.levelno, "DEFAULT")
        log_record["logger"] = record.name
        context: dict[str, str] = getattr(record, "run_context", {})
        log_record.update(context)
        if context:
            log_record["logging.googleapis.com/labels"] = dict(context)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context: dict[str, str] = getattr(record, "run_context", {})
        if context:
            text += "  [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return text


def configure_logging(log_format: LogFormat, level: str = "INFO") -> logging.Handler:
    """Install one handler on the root logger (idempotent); returns it."""
    use_json = log_format is LogFormat.JSON or (
        log_format is LogFormat.AUTO and not sys.stderr.isatty()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if use_json:
        handler.setFormatter(CloudJsonFormatter("%(message)s", timestamp=False))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_taxi_pipeline", False)]:
        root.removeHandler(old)
    handler._taxi_pipeline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
