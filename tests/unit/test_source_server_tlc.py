"""The local source in the TLC's layout: Parquet files with S3's validators, 403 for a missing key,
the same fault injection as the CSV mirror."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from taxi_pipeline.devkit.generator import generate_month
from taxi_pipeline.devkit.parquet_generator import generate_parquet_month
from taxi_pipeline.devkit.source_server import (
    Fault,
    SourceServer,
    s3_etag,
    serve_directory,
)
from taxi_pipeline.domain.datasets import Dataset, Month, file_name
from taxi_pipeline.domain.tlc_schemas import tlc_file_name

JAN = Month(2024, 1)
NAME = tlc_file_name("yellow", JAN)
PATH = f"/trip-data/{NAME}"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tlc")
    generate_parquet_month(directory, "yellow", JAN, 3000, seed=5)  # flat, as generated
    generate_parquet_month(directory / "trip-data", "green", JAN, 500, seed=5)
    generate_month(directory, Dataset.YELLOW, Month(2019, 1), 300, seed=5)  # the CSV mirror's
    return directory


@pytest.fixture
def server(lake: Path) -> Iterator[SourceServer]:
    with serve_directory(lake) as running:
        yield running


def get(server: SourceServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(server.base_url + path, timeout=5, **kwargs)  # type: ignore[arg-type]


def test_serves_the_parquet_file_with_s3s_headers(server: SourceServer, lake: Path) -> None:
    expected = (lake / NAME).read_bytes()
    assert server.tlc_base_url == f"{server.base_url}/trip-data"
    assert server.tlc_url("yellow", JAN) == server.base_url + PATH
    response = httpx.get(server.tlc_url("yellow", JAN), timeout=5)
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["Content-Length"] == str(len(expected))
    assert response.headers["Content-Type"] == "binary/octet-stream"
    assert response.headers["ETag"] == f'"{hashlib.md5(expected).hexdigest()}"', "single part"
    modified = parsedate_to_datetime(response.headers["Last-Modified"])
    assert int(modified.timestamp()) == int((lake / NAME).stat().st_mtime)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert server.requests == [(PATH, 200)]


def test_serves_files_from_a_trip_data_folder(server: SourceServer, lake: Path) -> None:
    name = tlc_file_name("green", JAN)
    response = get(server, f"/trip-data/{name}")
    assert response.status_code == 200
    assert response.content == (lake / "trip-data" / name).read_bytes()


def test_head_gives_length_and_validators_without_a_body(server: SourceServer, lake: Path) -> None:
    response = httpx.head(server.base_url + PATH, timeout=5)
    assert response.status_code == 200
    assert response.content == b""
    size = (lake / NAME).stat().st_size
    assert response.headers["Content-Length"] == str(size)
    assert response.headers["ETag"] == s3_etag(lake / NAME)
    assert response.headers["Last-Modified"] == formatdate(
        (lake / NAME).stat().st_mtime, usegmt=True
    )
    (answered,) = server.served
    assert (answered.method, answered.bytes_sent) == ("HEAD", 0)


@pytest.mark.parametrize(
    "path",
    [
        f"/trip-data/{tlc_file_name('yellow', Month(2031, 1))}",
        f"/trip-data/{tlc_file_name('fhvhv', JAN)}",
        f"/trip-data/{file_name(Dataset.YELLOW, Month(2019, 1))}",  # a CSV name is no TLC key
        "/trip-data/..%2Fyellow_tripdata_2024-01.parquet",
        "/trip-data/",
        f"/trip-data/x/{NAME}",
    ],
    ids=["unpublished-month", "other-dataset", "csv-name", "traversal", "no-name", "nested"],
)
def test_a_missing_key_answers_403_access_denied_like_cloudfront(
    server: SourceServer, path: str
) -> None:
    response = get(server, path)
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/xml"
    assert b"<Code>AccessDenied</Code>" in response.content
    head = httpx.head(server.base_url + path, timeout=5)
    assert (head.status_code, head.content) == (403, b"")
    assert [(s.method, s.status) for s in server.served] == [("GET", 403), ("HEAD", 403)]


def test_a_missing_key_can_answer_404_instead(lake: Path) -> None:
    with serve_directory(lake, tlc_missing_status=404) as server:
        response = httpx.get(server.tlc_url("yellow", Month(2031, 1)), timeout=5)
        assert (response.status_code, response.content) == (404, b"")


def test_a_multipart_upload_gets_s3s_dash_n_etag(lake: Path) -> None:
    part = 32 << 10
    content = (lake / NAME).read_bytes()
    parts = [content[i : i + part] for i in range(0, len(content), part)]
    assert len(parts) > 2
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    with serve_directory(lake, multipart_part_bytes=part) as server:
        response = httpx.head(server.tlc_url("yellow", JAN), timeout=5)
    assert response.headers["ETag"] == f'"{digest}-{len(parts)}"'
    assert s3_etag(lake / NAME, part) == response.headers["ETag"]


def test_a_republished_file_changes_etag_last_modified_and_size(tmp_path: Path) -> None:
    generate_parquet_month(tmp_path, "green", JAN, 800, seed=1)
    path = tmp_path / tlc_file_name("green", JAN)
    os.utime(path, (1_650_000_000, 1_650_000_000))
    with serve_directory(tmp_path) as server:
        before = httpx.head(server.tlc_url("green", JAN), timeout=5).headers
        generate_parquet_month(tmp_path, "green", JAN, 900, seed=2)
        os.utime(path, (1_700_000_000, 1_700_000_000))
        after = httpx.head(server.tlc_url("green", JAN), timeout=5).headers
    assert before["Last-Modified"] == "Fri, 15 Apr 2022 05:20:00 GMT"
    assert after["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert before["ETag"] != after["ETag"]
    assert before["Content-Length"] != after["Content-Length"]


def test_range_requests_resume_with_the_same_validators(server: SourceServer, lake: Path) -> None:
    expected = (lake / NAME).read_bytes()
    response = get(server, PATH, headers={"Range": "bytes=1000-"})
    assert response.status_code == 206
    assert response.content == expected[1000:]
    assert response.headers["ETag"] == s3_etag(lake / NAME)


def test_faults_apply_to_tlc_files_too(server: SourceServer, lake: Path) -> None:
    expected = (lake / NAME).read_bytes()
    server.inject(NAME, Fault.unavailable(times=1, status=503, retry_after=2))
    server.inject(NAME, Fault.cut(after_bytes=500))
    server.inject(NAME, Fault.corrupt(at=len(expected) - 100))
    unavailable = get(server, PATH)
    assert (unavailable.status_code, unavailable.headers["Retry-After"]) == (503, "2")
    with pytest.raises(httpx.RemoteProtocolError):
        get(server, PATH)
    assert server.served[-1].bytes_sent == 500
    corrupted = get(server, PATH)
    assert len(corrupted.content) == len(expected)
    assert corrupted.content != expected
    assert corrupted.content[:-100] == expected[:-100], "the footer is damaged, the rest intact"
    assert get(server, PATH).content == expected, "the faults are used up"


def test_the_csv_mirror_layout_is_unchanged(server: SourceServer, lake: Path) -> None:
    name = file_name(Dataset.YELLOW, Month(2019, 1))
    response = get(server, f"/yellow/{name}")
    assert response.status_code == 200
    assert response.content == (lake / name).read_bytes()
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert "ETag" not in response.headers
    assert get(server, f"/yellow/{file_name(Dataset.YELLOW, Month(2030, 1))}").status_code == 404
