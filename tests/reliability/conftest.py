"""Fixtures of the reliability tier: small generated months behind a local HTTP source."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.reliability import (
    JAN,
    MONTHS,
    JsonLog,
    Rig,
    RigFactory,
    Source,
    make_cloud_rig,
    make_rig,
)
from taxi_pipeline.devkit.generator import GeneratedFile, generate_month
from taxi_pipeline.devkit.source_server import SourceServer, serve_directory
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.logs import configure_logging
from taxi_pipeline.settings import LogFormat


@pytest.fixture(scope="session")
def source_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[Dataset, Month], GeneratedFile]:
    directory = tmp_path_factory.mktemp("reliability-source")
    return {
        key: generate_month(directory, key[0], key[1], rows, seed=11, threads=1)
        for key, rows in MONTHS.items()
    }


@pytest.fixture(scope="session")
def _server(
    source_files: dict[tuple[Dataset, Month], GeneratedFile],
) -> Iterator[SourceServer]:
    directory = next(iter(source_files.values())).path.parent
    with serve_directory(directory) as server:
        yield server


@pytest.fixture
def source(
    _server: SourceServer, source_files: dict[tuple[Dataset, Month], GeneratedFile]
) -> Iterator[Source]:
    """The shared source, with no faults queued and an empty request log."""
    _server.clear_faults()
    _server.reset_log()
    yield Source(_server, source_files)
    _server.clear_faults()


@pytest.fixture
def rig_factory(tmp_path: Path, source: Source) -> Iterator[RigFactory]:
    """``rig_factory(**options)``: a fresh pipeline home per call (see ``make_rig``)."""
    made: list[Rig] = []

    def factory(**options: object) -> Rig:
        options.setdefault("source_url", source.url)
        rig = make_rig(tmp_path / f"home{len(made)}", **options)  # type: ignore[arg-type]
        made.append(rig)
        return rig

    yield factory
    for rig in made:
        rig.close()


@pytest.fixture
def rig(rig_factory: RigFactory) -> Rig:
    return rig_factory()


@pytest.fixture(scope="session")
def baseline_home(
    tmp_path_factory: pytest.TempPathFactory,
    _server: SourceServer,
    source_files: dict[tuple[Dataset, Month], GeneratedFile],
) -> Path:
    """A pipeline home with green 2019-01 loaded (closed; copy it before use)."""
    home = tmp_path_factory.mktemp("baseline") / "home"
    rig = make_rig(home, _server.base_url)
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-baseline")
    rig.run()
    assert rig.final_count(Dataset.GREEN) == source_files[(Dataset.GREEN, JAN)].rows
    rig.close()
    return home


@pytest.fixture
def loaded_rig(tmp_path: Path, baseline_home: Path, source: Source) -> Iterator[Rig]:
    """A pipeline with green 2019-01 already loaded (a copy of the baseline home)."""
    home = tmp_path / "home"
    shutil.copytree(baseline_home, home)
    rig = make_rig(home, source.url)
    yield rig
    rig.close()


@pytest.fixture
def json_log() -> Iterator[JsonLog]:
    """The pipeline's own JSON log lines (what Cloud Logging would index), parsed.

    ``configure_logging`` installs the handler the functions use; its stream is pointed at a
    buffer (``StreamHandler.setStream``) so the test reads exactly what would reach stderr.
    """
    root = logging.getLogger()
    level = root.level
    configure_logging(LogFormat.JSON, "DEBUG")
    buffer = io.StringIO()
    ours = [h for h in root.handlers if getattr(h, "_taxi_pipeline", False)]
    for handler in ours:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield read
    for handler in ours:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def cloud_rig_factory(request: pytest.FixtureRequest, source: Source) -> Iterator[RigFactory]:
    """Like ``rig_factory`` over GcsStore (fake-gcs-server) + BigQueryWarehouse (emulator)."""
    storage = request.getfixturevalue("storage_client")
    bigquery = request.getfixturevalue("bigquery_client")
    endpoint = request.getfixturevalue("bigquery_emulator").url
    request.getfixturevalue("gcs_env")  # the lake's own client finds fake-gcs-server
    made: list[Rig] = []

    def factory(**options: object) -> Rig:
        rig = make_cloud_rig(storage, bigquery, endpoint, source.url, **options)  # type: ignore[arg-type]
        made.append(rig)
        return rig

    yield factory
    for rig in made:
        rig.close()
