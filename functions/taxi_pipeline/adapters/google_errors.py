"""Google SDK errors translated into the pipeline's retry meaning, at the adapter edge.

Every GCP adapter (GCS, BigQuery, Pub/Sub) wraps its SDK calls and does
``raise translate(exc, "what it was doing") from exc``:

- transient (retry, bounded by the event's age): 408/429/5xx, deadlines, connection resets,
  ``Aborted``, BigQuery's "concurrent update" and "Too many DML statements outstanding" (both come
  back as *400*), ``rateLimitExceeded``/``backendError`` reasons (which BigQuery sends as *403*);
- permanent (record and acknowledge): other 400s, 401/403/404/409/412, validation errors
  (``ValueError``/``TypeError`` raised by the client before any request), missing credentials;
- anything unknown: transient, as STYLE.md asks, so a new failure mode retries rather than
  silently losing a month.

The module imports only ``google.api_core.exceptions`` (light, no gRPC channel); the other SDK
exception types are matched by module and name so that this stays importable without them.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterable, Mapping

from google.api_core import exceptions as gexc

from taxi_pipeline.errors import ConfigurationError, PermanentError, PipelineError, TransientError

# BigQuery answers these with 400 or 403 although waiting and retrying is exactly what helps.
_TRANSIENT_TEXT = re.compile(
    r"too many dml statements|concurrent update|could not serialize access"
    r"|rate ?limit|exceeded rate limits|backend ?error|internal error encountered"
    r"|try again|retry",
    re.IGNORECASE,
)
_TRANSIENT_REASONS = frozenset(
    {"rateLimitExceeded", "backendError", "internalError", "jobBackendError", "jobInternalError"}
)
_TRANSIENT_STATUS = frozenset({408, 429})
# Errors from libraries we do not import here (requests, urllib3, google.auth,
# google.resumable_media), matched by class name along the MRO.
_TRANSIENT_NAMES = frozenset(
    {
        "ConnectionError",  # requests / builtins
        "ChunkedEncodingError",
        "ReadTimeout",
        "ConnectTimeout",
        "Timeout",
        "ProtocolError",  # urllib3
        "TransportError",  # google.auth.exceptions
        "DataCorruption",  # google.resumable_media: checksum mismatch in flight
        "SSLError",
    }
)
_PERMANENT_NAMES = frozenset({"DefaultCredentialsError", "RefreshError", "MalformedError"})


def translate(exc: Exception, what: str) -> PipelineError:
    """Map an exception raised by a Google client into a Transient or Permanent pipeline error.

    ``what`` names the operation ("upload gs://b/raw/x.csv.gz") and starts the message. A
    :class:`PipelineError` is returned unchanged. Use as ``raise translate(exc, what) from exc``.
    """
    if isinstance(exc, PipelineError):
        return exc
    detail = f"{what}: {type(exc).__name__}: {exc}"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _PERMANENT_NAMES:
        return ConfigurationError(detail)
    if isinstance(exc, gexc.GoogleAPICallError):
        return _from_call_error(exc, detail)
    if isinstance(exc, gexc.RetryError):  # the client's own retry budget ran out
        return TransientError(detail)
    status = _status_of(exc)  # google.resumable_media.InvalidResponse carries a response
    if status is not None:
        return _by_status(status, detail)
    if isinstance(exc, TimeoutError | concurrent.futures.TimeoutError | ConnectionError):
        return TransientError(detail)
    if names & _TRANSIENT_NAMES:
        return TransientError(detail)
    if isinstance(exc, ValueError | TypeError | KeyError):
        return PermanentError(detail)
    return TransientError(detail)


def _from_call_error(exc: gexc.GoogleAPICallError, detail: str) -> PipelineError:
    """Classify an HTTP/gRPC API error by its code, then by BigQuery's reasons and text."""
    if isinstance(exc, gexc.ServerError | gexc.TooManyRequests | gexc.Aborted | gexc.Cancelled):
        return TransientError(detail)
    if _reasons(exc.errors) & _TRANSIENT_REASONS or _TRANSIENT_TEXT.search(str(exc.message)):
        return TransientError(detail)
    code = exc.code
    if isinstance(code, int):
        return _by_status(code, detail)
    return TransientError(detail)


def _by_status(status: int, detail: str) -> PipelineError:
    if status in _TRANSIENT_STATUS or status >= 500:
        return TransientError(detail)
    if 400 <= status < 500:
        return PermanentError(detail)
    return TransientError(detail)


def _status_of(exc: Exception) -> int | None:
    """The HTTP status of a non-api_core error that carries a response (resumable media)."""
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if isinstance(code, int) and type(exc).__name__ == "InvalidResponse":
        return code
    return None


def _reasons(errors: Iterable[object]) -> set[str]:
    found: set[str] = set()
    for err in errors or ():
        if isinstance(err, Mapping):
            reason = err.get("reason")
            if isinstance(reason, str):
                found.add(reason)
    return found
