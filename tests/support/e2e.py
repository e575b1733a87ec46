"""Test support for the CLI on the embedded default: generated months served over local HTTP."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner

from taxi_pipeline.cli.app import app
from taxi_pipeline.devkit.generator import GeneratedFile, generate_month
from taxi_pipeline.devkit.parquet_generator import GeneratedParquet, generate_parquet_month
from taxi_pipeline.devkit.source_server import TLC_PREFIX, SourceServer, serve_directory
from taxi_pipeline.domain.datasets import Dataset, Month

MONTHS = {
    (Dataset.GREEN, Month(2019, 1)): 3_000,
    (Dataset.GREEN, Month(2019, 2)): 2_500,
    (Dataset.YELLOW, Month(2019, 1)): 4_000,
    (Dataset.YELLOW, Month(2019, 2)): 3_500,
    (Dataset.YELLOW, Month(2019, 3)): 3_000,
}
TLC_MONTHS = {
    (Dataset.GREEN, Month(2019, 1)): 1_200,
    (Dataset.GREEN, Month(2019, 2)): 1_100,
    (Dataset.YELLOW, Month(2019, 1)): 1_400,
    (Dataset.YELLOW, Month(2019, 2)): 1_300,
    (Dataset.FHV, Month(2019, 1)): 600,
    (Dataset.FHV, Month(2019, 2)): 500,
    (Dataset.FHVHV, Month(2019, 2)): 700,
}
"""The TLC's Parquet files the shipped schedules (source tlc, two months behind) find when they
fire on 2019-03-01 and 2019-04-01 (fhvhv has no 2019-01: its data starts 2019-02); the TLC's
other months answer 403 (not published)."""


@dataclass
class Source:
    server: SourceServer
    files: dict[tuple[Dataset, Month], GeneratedFile]
    parquet: dict[tuple[Dataset, Month], GeneratedParquet]

    @property
    def url(self) -> str:
        return self.server.base_url


@contextmanager
def serve_months(
    directory: Path,
    months: dict[tuple[Dataset, Month], int],
    tlc_months: dict[tuple[Dataset, Month], int] | None = None,
) -> Iterator[Source]:
    """Generate ``months`` (rows each) into ``directory``, the mirror's CSV, and ``tlc_months``
    as the TLC's Parquet files, and serve them over local HTTP (the TLC's at ``/trip-data``)."""
    files = {
        key: generate_month(directory, key[0], key[1], rows, seed=7) for key, rows in months.items()
    }
    parquet = {
        key: generate_parquet_month(directory / TLC_PREFIX, key[0].value, key[1], rows, seed=8)
        for key, rows in (tlc_months or {}).items()
    }
    with serve_directory(directory) as server:
        yield Source(server, files, parquet)


@dataclass
class Cli:
    home: Path
    source_url: str
    runner: CliRunner
    env: dict[str, str] = field(default_factory=dict)
    """More environment (a warehouse URL, its password)."""

    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
        """Run ``taxi-pipeline *args``; the exit status and stdout + stderr as one text."""
        result = self.runner.invoke(
            app,
            list(args),
            env={
                "TAXI_PIPELINE_HOME": str(self.home),
                "TAXI_PIPELINE_SOURCE_URL": self.source_url,
                # The same local server answers the TLC's layout (403 for a missing month).
                "TAXI_PIPELINE_TLC_URL": f"{self.source_url}/{TLC_PREFIX}",
                "COLUMNS": "200",
                **self.env,
                **(env or {}),
            },
            catch_exceptions=False,
        )
        return result.exit_code, result.output

    def rows(self, sql: str) -> list[list[str]]:
        code, out = self("sql", sql, "--format", "csv")
        assert code == 0, out
        lines = [line for line in out.splitlines() if line]
        return [line.split(",") for line in lines[1:]]
