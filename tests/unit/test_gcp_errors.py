"""The SDK error mapping: real ``google.api_core.exceptions`` in, retry meaning out."""

from __future__ import annotations

import concurrent.futures

import pytest
from google.api_core import exceptions as gexc

from taxi_pipeline.adapters.google_errors import translate
from taxi_pipeline.errors import (
    ConfigurationError,
    PermanentError,
    PipelineError,
    TransientError,
    VerificationFailed,
)


def _api(cls: type[gexc.GoogleAPICallError], message: str, reason: str | None = None) -> Exception:
    """A real api_core error (its constructor is untyped)."""
    errors = [{"reason": reason}] if reason else []
    return cls(message, errors=errors)


def _status(code: int, message: str) -> Exception:
    error: Exception = gexc.from_http_status(code, message)  # type: ignore[no-untyped-call]
    return error


TRANSIENT: list[Exception] = [
    _api(gexc.TooManyRequests, "slow down"),
    _api(gexc.ResourceExhausted, "quota"),
    _api(gexc.InternalServerError, "oops"),
    _api(gexc.BadGateway, "bad gateway"),
    _api(gexc.ServiceUnavailable, "unavailable"),
    _api(gexc.GatewayTimeout, "gateway timeout"),
    _api(gexc.DeadlineExceeded, "deadline"),
    _api(gexc.Aborted, "aborted"),
    gexc.RetryError("gave up", _api(gexc.ServiceUnavailable, "x")),  # type: ignore[no-untyped-call]
    _api(
        gexc.BadRequest,
        "Could not serialize access to table p:d.green_tripdata due to concurrent update",
    ),
    _api(
        gexc.BadRequest,
        "Resources exceeded during query execution: Too many DML statements outstanding"
        " against table p:d.green_tripdata, limit is 20.",
    ),
    _api(gexc.Forbidden, "Exceeded rate limits", "rateLimitExceeded"),
    _status(408, "request timeout"),
    TimeoutError("read timed out"),
    concurrent.futures.TimeoutError(),
    ConnectionResetError("reset by peer"),
    RuntimeError("something nobody foresaw"),
]

PERMANENT: list[Exception] = [
    _api(gexc.BadRequest, "Syntax error: Unexpected keyword"),
    _api(gexc.Forbidden, "Access Denied: Table p:d.t", "accessDenied"),
    _api(gexc.PermissionDenied, "no"),
    _api(gexc.NotFound, "Not found: Dataset p:d"),
    _api(gexc.PreconditionFailed, "conditionNotMet"),
    _api(gexc.Conflict, "Already Exists: Table p:d.t"),
    _api(gexc.Unauthorized, "who are you"),
    ValueError("invalid blob name"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_transient(exc: Exception) -> None:
    error = translate(exc, "merge green 2019-01")
    assert isinstance(error, TransientError)
    assert str(error).startswith("merge green 2019-01: ")


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_permanent(exc: Exception) -> None:
    error = translate(exc, "upload gs://b/raw/x")
    assert isinstance(error, PermanentError)
    assert type(exc).__name__ in str(error)


def test_pipeline_errors_pass_through_unchanged() -> None:
    original = VerificationFailed("gzip CRC mismatch")
    assert translate(original, "download") is original


def test_missing_credentials_are_a_configuration_error() -> None:
    from google.auth.exceptions import DefaultCredentialsError

    error = translate(DefaultCredentialsError("no ADC"), "connect")  # type: ignore[no-untyped-call]
    assert isinstance(error, ConfigurationError)


def test_resumable_media_invalid_response_uses_its_status() -> None:
    from google.resumable_media.common import DataCorruption, InvalidResponse

    class _Response:
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    unavailable = InvalidResponse(_Response(503), "x")  # type: ignore[no-untyped-call]
    precondition = InvalidResponse(_Response(412), "x")  # type: ignore[no-untyped-call]
    corrupt = DataCorruption(_Response(200), "crc")  # type: ignore[no-untyped-call]
    assert isinstance(translate(unavailable, "up"), TransientError)
    assert isinstance(translate(precondition, "up"), PermanentError)
    assert isinstance(translate(corrupt, "up"), TransientError)


def test_result_is_raisable_with_cause() -> None:
    cause = _api(gexc.NotFound, "Not found: bucket b")
    with pytest.raises(PipelineError) as info:
        raise translate(cause, "stat gs://b/x") from cause
    assert info.value.__cause__ is cause
