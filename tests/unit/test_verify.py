"""Streaming verification of downloads (pure)."""

from __future__ import annotations

import gzip

import pytest

from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.errors import VerificationFailed
from taxi_pipeline.pipeline.verify import BackgroundVerifier, GzipCsvVerifier

HEADER = Dataset.GREEN.layout.header
ROW = "2,2019-01-01 00:10:16,2019-01-01 00:16:32,N,1,97,49,1,.86,6,0.5,0.5,0,0,,0.3,7.3,2,1,0"


def _feed(data: bytes, expected: int | None = None, chunk: int = 7) -> int:
    verifier = GzipCsvVerifier(Dataset.GREEN.layout, len(data) if expected is None else expected)
    for start in range(0, len(data), chunk):
        verifier.feed(data[start : start + chunk])
    return verifier.finish().rows


def test_counts_rows_of_a_good_file_fed_in_small_chunks() -> None:
    body = gzip.compress(f"{HEADER}\n{ROW}\n{ROW}\n{ROW}\n".encode())
    assert _feed(body) == 3
    assert _feed(gzip.compress(f"{HEADER}\r\n{ROW}\r\n{ROW}".encode())) == 2


def test_concatenated_gzip_members_are_one_file() -> None:
    body = gzip.compress(f"{HEADER}\n{ROW}\n".encode()) + gzip.compress(f"{ROW}\n".encode())
    assert _feed(body, chunk=1000) == 2


@pytest.mark.parametrize(
    ("data", "expected", "reason"),
    [
        (gzip.compress(f"{HEADER}\n{ROW}\n".encode())[:-9], None, "truncated"),
        (gzip.compress(f"{HEADER}\n{ROW}\n".encode()), 10_000, "cut short"),
        (b"VendorID,lpep\n1,2\n", None, "not a valid gzip"),
        (gzip.compress(f"{HEADER},extra\n{ROW},1\n".encode()), None, "header does not match"),
        (gzip.compress(f"{HEADER}\n".encode()), None, "fewer than the plausible minimum"),
        (gzip.compress(HEADER.encode()), None, "fewer than the plausible minimum"),
        (gzip.compress(b""), None, "empty after decompression"),
        (b"", None, "empty download"),
    ],
    ids=[
        "truncated-gzip",
        "short-length",
        "not-gzip",
        "wrong-header",
        "header-only",
        "header-no-newline",
        "empty-gzip",
        "empty",
    ],
)
def test_refuses_with_a_specific_reason(data: bytes, expected: int | None, reason: str) -> None:
    with pytest.raises(VerificationFailed, match=reason):
        _feed(data, expected)


def test_corrupt_crc_is_detected() -> None:
    body = bytearray(gzip.compress(f"{HEADER}\n{ROW}\n".encode()))
    body[-6] ^= 0xFF  # inside the CRC-32 trailer
    with pytest.raises(VerificationFailed, match="gzip"):
        _feed(bytes(body))


def test_background_verifier_gives_the_same_answer_and_surfaces_failures() -> None:
    body = gzip.compress(f"{HEADER}\n{ROW}\n{ROW}\n".encode())
    background = BackgroundVerifier(GzipCsvVerifier(Dataset.GREEN.layout, len(body)), depth=2)
    for start in range(0, len(body), 5):
        background.feed(body[start : start + 5])
    assert background.finish().rows == 2

    wrong = gzip.compress(f"{HEADER},x\n{ROW}\n".encode()) * 50
    failing = BackgroundVerifier(GzipCsvVerifier(Dataset.GREEN.layout, None), depth=2)

    def feed_all_then_finish() -> None:
        for start in range(0, len(wrong), 3):
            failing.feed(wrong[start : start + 3])
        failing.finish()

    with pytest.raises(VerificationFailed, match="header does not match"):
        feed_all_then_finish()
    failing.close()  # idempotent after the failure
