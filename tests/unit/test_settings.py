"""Settings that cannot work are refused when they are read, with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from taxi_pipeline.settings import Settings


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("http_timeout_seconds", 0),
        ("http_timeout_seconds", -1),
        ("download_timeout_seconds", 0),
        ("download_speed_window_seconds", 0),
        ("download_min_bytes_per_second", -1),
        ("max_inflated_bytes", 0),
    ],
)
def test_times_and_sizes_that_cannot_work_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_a_zero_minimum_speed_turns_the_check_off() -> None:
    assert Settings(download_min_bytes_per_second=0).download_min_bytes_per_second == 0


@pytest.mark.parametrize("value", ["lots", "600", "600 elephants", "1e3MB", "-1GB", "", "80%"])
def test_a_duckdb_memory_limit_that_is_no_size_is_refused_clearly(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAXI_PIPELINE_DUCKDB_MEMORY_LIMIT", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "TAXI_PIPELINE_DUCKDB_MEMORY_LIMIT must be a size like 600MB" in str(refused.value)


@pytest.mark.parametrize("value", ["600MB", "2GB", "1.5GiB", "512 mib", " 4gb "])
def test_duckdb_memory_limits_duckdb_understands_are_accepted(value: str, tmp_path: Path) -> None:
    from taxi_pipeline.adapters.duckdb.warehouse import DuckDbWarehouse

    limit = Settings(duckdb_memory_limit=value).duckdb_memory_limit
    assert limit == value.strip()
    DuckDbWarehouse(tmp_path / "warehouse.duckdb", memory_limit=limit, threads=1).close()


def test_the_download_deadline_stays_below_the_function_timeout() -> None:
    # infra deploys the functions with a 540 s timeout; the deadline is strict (a watchdog cuts
    # a silent connection), so the failure is recorded before the instance is killed.
    assert Settings().download_timeout_seconds < 540


@pytest.mark.parametrize(
    ("warehouse_url", "bus_url", "cloud"),
    [
        (None, None, False),
        ("bigquery://p/taxi", None, True),
        ("postgresql://taxi@localhost/taxi", None, False),
        ("postgresql://taxi@/taxi?host=/cloudsql/p:r:i", "pubsub://p", True),
        ("postgres://taxi@localhost/taxi", "memory://", False),
    ],
)
def test_whose_warehouse_it_is(
    tmp_path: Path, warehouse_url: str | None, bus_url: str | None, cloud: bool
) -> None:
    """BigQuery is the cloud's; PostgreSQL is when a Pub/Sub bus says so (the deployed UI)."""
    from taxi_pipeline.bootstrap import warehouse_is_cloud

    settings = Settings(home=tmp_path, warehouse_url=warehouse_url, bus_url=bus_url)
    assert warehouse_is_cloud(settings) is cloud
