"""The UI's access rules: loopback by default, a token for anything else, JSON-only writes."""

from __future__ import annotations

import pytest

from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.ui.security import Access, Refused, is_loopback

TOKEN = "s3cret-token-0123456789"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
        ("localhost.evil.example", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_needs_a_long_enough_token() -> None:
    with pytest.raises(ConfigurationError, match="TAXI_PIPELINE_UI_TOKEN"):
        Access.for_bind("0.0.0.0", None)
    with pytest.raises(ConfigurationError, match="too short"):
        Access.for_bind("0.0.0.0", "short")
    access = Access.for_bind("0.0.0.0", TOKEN)
    assert access.token_required
    assert not access.loopback
    assert Access.for_bind("127.0.0.1", None) == Access(loopback=True, token=None)


def _refusal(access: Access, **request: str | None) -> tuple[int, str] | None:
    values: dict[str, str | None] = {
        "content_type": "application/json",
        "origin": None,
        "authorization": None,
    }
    values.update(request)
    try:
        access.check_write(
            content_type=values["content_type"] or "",
            origin=values["origin"],
            authorization=values["authorization"],
        )
    except Refused as exc:
        return exc.status, exc.reason
    return None


def test_writes_take_json_only() -> None:
    loopback = Access.for_bind("127.0.0.1", None)
    assert _refusal(loopback) is None
    assert _refusal(loopback, content_type="application/json; charset=utf-8") is None
    for kind in ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""):
        refused = _refusal(loopback, content_type=kind)
        assert refused is not None
        assert refused[0] == 415


def test_loopback_writes_refuse_other_origins() -> None:
    loopback = Access.for_bind("127.0.0.1", None)
    assert _refusal(loopback, origin="http://127.0.0.1:8765") is None
    assert _refusal(loopback, origin="http://localhost:8765") is None
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        assert _refusal(loopback, origin=origin) == (403, "cross-origin writes are refused")


def test_token_writes_need_the_exact_bearer_token() -> None:
    remote = Access.for_bind("0.0.0.0", TOKEN)
    assert _refusal(remote, authorization=f"Bearer {TOKEN}") is None
    # Through `gcloud run services proxy` the browser's origin is not the server's host.
    assert _refusal(remote, authorization=f"bearer {TOKEN}", origin="http://localhost:8080") is None
    for given in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        refused = _refusal(remote, authorization=given)
        assert refused is not None, given
        assert refused[0] == 401, given


def test_loopback_servers_answer_loopback_hosts_only() -> None:
    loopback = Access.for_bind("127.0.0.1", None)
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "localhost"):
        loopback.check_host(host)
    for host in ("evil.example:8765", "evil.example", "", "192.168.1.10:8765"):
        with pytest.raises(Refused) as refused:
            loopback.check_host(host)
        assert refused.value.status == 400
    Access.for_bind("0.0.0.0", TOKEN).check_host("taxi-ui-abc.a.run.app")
