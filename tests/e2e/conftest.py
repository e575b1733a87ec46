"""Fixtures for the CLI on the embedded default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.e2e import MONTHS, TLC_MONTHS, Cli, Source, serve_months


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    with serve_months(tmp_path_factory.mktemp("source"), MONTHS, TLC_MONTHS) as served:
        yield served


@pytest.fixture
def cli(tmp_path: Path, source: Source) -> Cli:
    return Cli(tmp_path / "home", source.url, CliRunner())
