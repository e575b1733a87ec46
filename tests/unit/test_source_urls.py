"""The rules every source URL and redirect hop obey (domain/sources.py)."""

from __future__ import annotations

import pytest

from taxi_pipeline.domain.sources import display_url, hop_problem, is_loopback


@pytest.mark.parametrize(
    "url",
    [
        "https://objects.githubusercontent.com/x?X-Amz-Signature=abc",
        "http://127.0.0.1:8000/green/x.csv.gz",
        "http://localhost/x",
        "http://[::1]:9/x",
        "HTTPS://example.com/x",
    ],
)
def test_https_and_loopback_hops_may_be_followed(url: str) -> None:
    assert hop_problem(url, allow_insecure=False) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://cdn.example.com/x", "is plain http"),
        ("file:///etc/passwd", "uses the file: scheme"),
        ("ftp://example.com/x", "uses the ftp: scheme"),
        ("data:text/plain,hi", "uses the data: scheme"),
        ("https://user:token@example.com/x", "carries credentials"),
        ("https:///x", "has no host"),
        ("https://example.com:99999999/x", "is not a valid URL"),
    ],
)
def test_other_hops_are_refused(url: str, problem: str) -> None:
    assert problem in (hop_problem(url, allow_insecure=False) or "")


def test_plain_http_elsewhere_only_with_the_opt_in() -> None:
    assert hop_problem("http://mirror.internal/x", allow_insecure=True) is None
    assert hop_problem("ftp://mirror.internal/x", allow_insecure=True) is not None


def test_messages_quote_urls_without_secrets() -> None:
    shown = display_url("https://u:p@cdn.example.com:8443/a/b;sig=1?X-Amz-Signature=2#f")
    assert shown == "https://cdn.example.com:8443/a/b"
    assert is_loopback("127.5.0.1")
    assert not is_loopback("example.com")
