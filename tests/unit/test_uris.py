"""One reading of the paths inside ``file://`` and ``duckdb://`` URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from taxi_pipeline.domain.uris import local_path


@pytest.mark.parametrize(
    ("url", "scheme", "expected"),
    [
        ("file:///srv/lake", "file", Path("/srv/lake")),
        ("file:///srv/my%20lake/raw/a.csv.gz", "file", Path("/srv/my lake/raw/a.csv.gz")),
        ("file://localhost/srv/lake", "file", Path("/srv/lake")),
        ("duckdb:///srv/taxi.duckdb", "duckdb", Path("/srv/taxi.duckdb")),
        ("duckdb://", "duckdb", None),
        ("file://", "file", None),
        ("gs://bucket/raw/a.csv.gz", "file", None),
        ("file:///srv/taxi.duckdb", "duckdb", None),
    ],
)
def test_a_url_names_a_local_path_only_in_its_own_scheme(
    url: str, scheme: str, expected: Path | None
) -> None:
    assert local_path(url, scheme) == expected
