"""The Parquet verifier: what it accepts, what it refuses and with which message, its memory."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from taxi_pipeline.devkit.parquet_generator import GeneratedParquet, generate_parquet_month
from taxi_pipeline.devkit.source_server import Fault, serve_directory
from taxi_pipeline.domain.datasets import Month
from taxi_pipeline.domain.tlc_schemas import PERIODS, SchemaPeriod
from taxi_pipeline.errors import UnsupportedMonth, VerificationFailed
from taxi_pipeline.pipeline.verify import VerifiedFile
from taxi_pipeline.pipeline.verify_parquet import (
    ParquetVerifier,
    VerifiedParquet,
    md5_of_etag,
    verify_parquet_object,
)

ROOT = Path(__file__).resolve().parents[2]
MONTH = Month(2024, 1)
CHUNK = 4096


def stream(
    data: bytes,
    dataset: str = "yellow",
    month: Month = MONTH,
    *,
    expected_length: int | None = -1,
    chunk: int = CHUNK,
    **options: Any,
) -> VerifiedParquet:
    """Feed ``data`` in chunks; ``expected_length`` -1: announce its real length."""
    length = len(data) if expected_length == -1 else expected_length
    verifier = ParquetVerifier(dataset, month, length, **options)
    for start in range(0, len(data), chunk):
        verifier.feed(data[start : start + chunk])
    return verifier.finish()


def refused(data: bytes, **options: Any) -> str:
    """The message :func:`stream` fails with (``options`` as its)."""
    with pytest.raises(VerificationFailed) as raised:
        stream(data, **options)
    return str(raised.value)


@pytest.fixture(scope="module")
def yellow(tmp_path_factory: pytest.TempPathFactory) -> GeneratedParquet:
    directory = tmp_path_factory.mktemp("verify")
    return generate_parquet_month(directory, "yellow", MONTH, 3000, seed=2, row_group_rows=1000)


@pytest.fixture(scope="module")
def data(yellow: GeneratedParquet) -> bytes:
    return yellow.path.read_bytes()


FIRST_MONTHS = [(p, p.first) for periods in PERIODS.values() for p in periods]


@pytest.mark.parametrize(
    ("period", "month"), FIRST_MONTHS, ids=[f"{p.dataset}-{m}" for p, m in FIRST_MONTHS]
)
def test_each_periods_file_is_verified_with_its_footer_row_count(
    tmp_path: Path, period: SchemaPeriod, month: Month
) -> None:
    generated = generate_parquet_month(tmp_path, period.dataset, month, 1500, row_group_rows=500)
    verified = stream(generated.path.read_bytes(), period.dataset, month, chunk=777)
    assert isinstance(verified, VerifiedFile), "the download step's result type"
    assert verified.rows == 1500 == pq.read_table(generated.path).num_rows
    assert verified.row_groups == 3
    assert verified.bytes_compressed == generated.size_bytes
    assert verified.bytes_uncompressed > 0
    assert verified.recognition.period == period
    assert verified.recognition.new_columns == ()
    assert verified.created_by.startswith("parquet-cpp-arrow")


def test_the_whole_object_verifier_reads_only_the_two_ends(
    yellow: GeneratedParquet, data: bytes
) -> None:
    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, size: int | None = -1) -> bytes:
            out = super().read(size)
            Counting.read_bytes += len(out)
            return out

    source = Counting(data)
    verified = verify_parquet_object(source, "yellow", MONTH, max_footer_bytes=16 << 10)
    assert verified.rows == 3000
    assert Counting.read_bytes <= 4 + (16 << 10) + 8 < len(data)
    assert verify_parquet_object(yellow.path, "yellow", MONTH).rows == 3000
    with pytest.raises(VerificationFailed, match=f"object holds {len(data)} bytes, expected 10"):
        verify_parquet_object(yellow.path, "yellow", MONTH, expected_length=10)


def test_the_whole_object_verifier_streams_what_it_cannot_seek(data: bytes) -> None:
    class Pipe(io.RawIOBase):
        """A readable, unseekable stream (a socket, a download)."""

        def __init__(self, payload: bytes) -> None:
            self._source = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            chunk = self._source.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    pipe = io.BufferedReader(Pipe(data))
    assert not pipe.seekable()
    assert verify_parquet_object(pipe, "yellow", MONTH).rows == 3000
    with pytest.raises(VerificationFailed, match="no Parquet footer"):
        verify_parquet_object(io.BufferedReader(Pipe(data[:-10])), "yellow", MONTH)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-1], "no Parquet footer: the file ends with b'\\x00PAR', not b'PAR1'"),
        (lambda d: d[: len(d) // 2], "no Parquet footer"),
        (lambda d: b"XXXX" + d[4:], "not a Parquet file: it starts with b'XXXX', not b'PAR1'"),
        (lambda d: b"<html><body>503</body></html>", "it starts with b'<htm'"),
        (lambda d: d[:-8] + (10**6).to_bytes(4, "little") + b"PAR1",
         "Parquet footer length 1000000 is more than the"),
        (lambda d: d[:-8] + (1 << 30).to_bytes(4, "little") + b"PAR1",
         "Parquet footer of 1073741824 bytes exceeds the 16777216-byte limit"),
        (lambda d: d[: len(d) // 2] + d[-30_000:], "Parquet footer does not fit the file"),
        (lambda d: d[:-400] + bytes(b ^ 0xFF for b in d[-400:-300]) + d[-300:],
         "Parquet footer does not parse"),
        (lambda d: b"PAR1PAR1", "too short for a Parquet file: 8 bytes"),
    ],
    ids=["last-byte-missing", "half", "no-head-magic", "html", "footer-longer-than-file",
         "footer-over-limit", "footer-of-a-longer-file", "footer-corrupt", "tiny"],
)  # fmt: skip
def test_a_damaged_file_is_refused_with_a_clear_message(
    data: bytes, damage: Callable[[bytes], bytes], message: str
) -> None:
    damaged = damage(data)
    assert message in refused(damaged)
    assert message in refused(damaged, expected_length=None), "the same without a length"


def test_a_short_or_long_download_is_refused(data: bytes) -> None:
    assert refused(data[:-100], expected_length=len(data)) == (
        f"download cut short: {len(data) - 100} of {len(data)} bytes"
    )
    assert refused(data, expected_length=len(data) - 1) == (
        f"received more than the announced {len(data) - 1} bytes"
    )
    assert refused(b"", expected_length=None) == "empty download"


def test_an_error_page_is_refused_at_its_first_chunk(data: bytes) -> None:
    verifier = ParquetVerifier("yellow", MONTH, None)
    with pytest.raises(VerificationFailed, match="not a Parquet file"):
        verifier.feed(b"<?xml version")
    verifier = ParquetVerifier("yellow", MONTH, None)
    verifier.feed(b"PA")  # the magic may straddle chunks
    verifier.feed(data[2:])
    assert verifier.finish().rows == 3000


def test_a_schema_of_another_period_is_refused(tmp_path: Path, data: bytes) -> None:
    assert refused(data, month=Month(2019, 1)) == (
        "schema not recognised: yellow 2019-01: column 'VendorID' is int32, expected int64 in"
        " yellow 2018-07..2023-01 files"
    )
    mistyped = generate_parquet_month(
        tmp_path / "a", "yellow", Month(2019, 5), 500, retype={"passenger_count": "int64"}
    )
    assert "column 'passenger_count' is int64, expected double" in refused(
        mistyped.path.read_bytes(), month=Month(2019, 5)
    )
    missing = generate_parquet_month(
        tmp_path / "b", "green", Month(2025, 2), 500, omit_columns=["cbd_congestion_fee"]
    )
    assert "column 'cbd_congestion_fee' is missing" in refused(
        missing.path.read_bytes(), dataset="green", month=Month(2025, 2)
    )
    zoned = generate_parquet_month(
        tmp_path / "c", "yellow", MONTH, 500, retype={"tpep_dropoff_datetime": "timestamp[ns]"}
    )
    assert "'tpep_dropoff_datetime' is timestamp[ns], expected timestamp[us]" in refused(
        zoned.path.read_bytes()
    )


def test_a_new_column_passes_and_is_reported(tmp_path: Path) -> None:
    generated = generate_parquet_month(
        tmp_path, "yellow", MONTH, 500, extra_columns={"rider_rating": "double"}
    )
    verified = stream(generated.path.read_bytes())
    assert verified.recognition.new_column_messages == (
        "new column rider_rating (double) not loaded",
    )


def test_too_few_rows_are_refused(tmp_path: Path) -> None:
    empty = generate_parquet_month(tmp_path, "green", MONTH, 0).path.read_bytes()
    assert refused(empty, dataset="green") == (
        "file has 0 rows, fewer than the plausible minimum 1"
    )
    assert stream(empty, "green", min_rows=0).rows == 0


def test_memory_stays_bounded_by_the_footer_limit(data: bytes) -> None:
    limit = 32 << 10
    footer = int.from_bytes(data[-8:-4], "little")
    assert footer < limit < len(data) // 2
    verifier = ParquetVerifier("yellow", MONTH, len(data), max_footer_bytes=limit)
    peak = 0
    for start in range(0, len(data), 1000):
        verifier.feed(data[start : start + 1000])
        peak = max(peak, verifier.buffered_bytes)
    assert verifier.finish().rows == 3000
    assert peak <= 4 + limit + 8 + 1000
    assert "exceeds the 1024-byte limit" in refused(data, max_footer_bytes=1024)


def test_a_single_part_etag_is_checked_as_the_contents_md5(data: bytes) -> None:
    md5 = hashlib.md5(data).hexdigest()
    assert stream(data, etag=f'"{md5}"').rows == 3000
    other = "0" * 32
    assert refused(data, etag=f'"{other}"') == (
        f"content MD5 {md5} differs from the source's ETag {other}"
    )
    assert stream(data, etag=f'"{other}-12"').rows == 3000, "a multipart ETag is no MD5"
    assert md5_of_etag(f'"{md5.upper()}"') == md5
    assert md5_of_etag(f'W/"{md5}"') == md5
    assert md5_of_etag(None) is None
    assert md5_of_etag('"abc-3"') is None
    with pytest.raises(VerificationFailed, match="differs from the source's ETag"):
        verify_parquet_object(io.BytesIO(data), "yellow", MONTH, etag=f'"{other}"')


def test_a_month_without_a_schema_period_is_refused_up_front() -> None:
    with pytest.raises(UnsupportedMonth, match="yellow 2010-12"):
        ParquetVerifier("yellow", Month(2010, 12), None)
    with pytest.raises(UnsupportedMonth, match="green trip data starts 2013-08"):
        verify_parquet_object(io.BytesIO(b"PAR1"), "green", Month(2013, 1))


def _download(url: str) -> Iterator[bytes]:
    with httpx.stream("GET", url, timeout=5) as response:
        assert response.status_code == 200
        yield from response.iter_raw(CHUNK)


def _verify_download(url: str, length: int) -> VerifiedParquet:
    verifier = ParquetVerifier("yellow", MONTH, length)
    try:
        for chunk in _download(url):
            verifier.feed(chunk)
    except httpx.RemoteProtocolError:
        pass  # the cut connection: the verifier must notice on its own
    return verifier.finish()


def test_downloads_from_the_local_tlc_source(yellow: GeneratedParquet, data: bytes) -> None:
    with serve_directory(yellow.path.parent) as server:
        url = server.tlc_url("yellow", MONTH)
        assert _verify_download(url, len(data)).rows == 3000
        server.inject(yellow.name, Fault.cut(after_bytes=len(data) - 10))
        with pytest.raises(VerificationFailed, match="download cut short"):
            _verify_download(url, len(data))
        server.inject(yellow.name, Fault.corrupt(at=len(data) - 400))
        with pytest.raises(VerificationFailed, match="Parquet footer does not parse"):
            _verify_download(url, len(data))


def test_importing_the_verifier_does_not_import_pyarrow() -> None:
    code = (
        "import sys\n"
        "import taxi_pipeline.pipeline.verify_parquet\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'numpy')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "functions",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "period", [p for ps in PERIODS.values() for p in ps], ids=lambda p: f"{p.dataset}-{p.first}"
)
def test_the_text_batches_hold_the_texts_the_csv_feed_writes(
    tmp_path: Path, period: SchemaPeriod
) -> None:
    """PostgreSQL's client types the text batches where a text landing types the CSV feed's
    output: both must be the same texts, NULL where the CSV has an empty field."""
    import csv

    from taxi_pipeline.adapters.postgres.warehouse import landed_columns
    from taxi_pipeline.domain.datasets import Dataset
    from taxi_pipeline.domain.formats import PARQUET

    generated = generate_parquet_month(tmp_path, period.dataset, period.first, 3_000, seed=4)
    dataset = Dataset(period.dataset)
    columns = [(c.name, n) for c, n in landed_columns(dataset, period.first, PARQUET)]
    written = io.BytesIO()
    with generated.path.open("rb") as handle:
        PARQUET.write_csv(handle, columns, written)
    fed = list(csv.reader(io.StringIO(written.getvalue().decode())))
    with generated.path.open("rb") as handle:
        batches = list(PARQUET.text_batches(handle, columns))
    assert all(b.schema.names == [final for final, _ in columns] for b in batches)
    texts = [
        ["" if value is None else value for value in row]
        for batch in batches
        for row in zip(*(column.to_pylist() for column in batch.columns), strict=True)
    ]
    assert len(texts) == generated.spec.rows
    assert texts == fed
