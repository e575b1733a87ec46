"""Fixtures for the Cloud Run entry points served by functions-framework's test client.

The functions build their ports from ``TAXI_PIPELINE_*`` variables exactly as deployed; here they
name the local adapters (folder lake, DuckDB warehouse, recording in-process bus) and a local
HTTP source serving a generated month.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import functions_framework
import pytest
from flask import Flask

from support.functions import GREEN_2019_01, MAIN, TARGETS, Functions, Source
from taxi_pipeline import bootstrap
from taxi_pipeline.devkit.generator import generate_month
from taxi_pipeline.devkit.source_server import serve_directory


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    directory = tmp_path_factory.mktemp("source")
    green = generate_month(directory, *GREEN_2019_01, rows=600, seed=3)
    with serve_directory(directory) as server:
        yield Source(server, green)


@pytest.fixture
def functions(
    tmp_path: Path, source: Source, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Functions]:
    env = {
        "TAXI_PIPELINE_LAKE_URL": (tmp_path / "lake").as_uri(),
        "TAXI_PIPELINE_WAREHOUSE_URL": f"duckdb://{tmp_path / 'warehouse.duckdb'}",
        "TAXI_PIPELINE_BUS_URL": "memory://test-project",
        "TAXI_PIPELINE_SOURCE_URL": source.server.base_url,
        # Months past the mirror's range go to the TLC (source auto): the same local server.
        "TAXI_PIPELINE_TLC_URL": source.server.tlc_base_url,
        "TAXI_PIPELINE_HTTP_ATTEMPTS": "1",
        "TAXI_PIPELINE_LOG_FORMAT": "json",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    source.server.clear_faults()
    source.server.reset_log()
    bootstrap.reset_cloud_ports()
    clients = {target: _app(target).test_client() for target in TARGETS}
    yield Functions(clients)
    bootstrap.reset_cloud_ports()


def _app(target: str) -> Flask:
    """The Flask app functions-framework serves for ``target`` (what Cloud Run runs)."""
    app: Flask = functions_framework.create_app(  # type: ignore[no-untyped-call]
        target, str(MAIN), "cloudevent"
    )
    return app
