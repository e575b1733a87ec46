"""What every command group shares: consoles, options, settings, opening the pipeline or the
warehouse, and printing a line of history. The groups import this module, never each other or
:mod:`taxi_pipeline.cli.app`."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from taxi_pipeline.bootstrap import LocalPipeline, build_local, build_warehouse
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Month
from taxi_pipeline.domain.messages import IngestResult, RunState
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.logs import configure_logging
from taxi_pipeline.pipeline.ports import Progress as ProgressPort
from taxi_pipeline.pipeline.ports import ProgressTask, Warehouse
from taxi_pipeline.settings import LogFormat, Settings


def _width(stream: TextIO) -> int | None:
    """A terminal's own width; piped output (scripts, CI logs) gets at least 120 columns rather
    than rich's 80, so the summary table stays whole."""
    if stream.isatty():
        return None
    return max(shutil.get_terminal_size((120, 24)).columns, 120)


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))

SourceOption = Annotated[
    str | None,
    typer.Option("--source-url", help="Base URL of the source files (TAXI_PIPELINE_SOURCE_URL)."),
]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Folder of the embedded default (TAXI_PIPELINE_HOME)."),
]


def load_settings(home: Path | None = None, source_url: str | None = None) -> Settings:
    """Settings from the environment, with the CLI's flags on top."""
    overrides: dict[str, object] = {}
    if home is not None:
        overrides["home"] = home
    if source_url is not None:
        overrides["source_url"] = source_url
    settings = Settings(**overrides)  # type: ignore[arg-type]
    fmt = settings.log_format if settings.log_format is not LogFormat.AUTO else LogFormat.TEXT
    configure_logging(
        fmt, settings.log_level if "TAXI_PIPELINE_LOG_LEVEL" in os.environ else "WARNING"
    )
    return settings


class _RichTask:
    def __init__(self, progress: Progress, description: str, total: int | None) -> None:
        self._progress = progress
        self._id = progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        self._progress.advance(self._id, amount)

    def close(self) -> None:
        self._progress.update(self._id, visible=False)


@dataclass
class RichProgress:
    """Progress bars on stderr, for the CLI only."""

    progress: Progress

    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        return _RichTask(self.progress, description, total)


def download_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def notice(message: str) -> None:
    """What a waiting process waits for (a lock or the warehouse another process holds)."""
    err_console.print(message, style="yellow", highlight=False, markup=False, soft_wrap=True)


def open_local(
    settings: Settings,
    progress: ProgressPort | None = None,
    notice: Callable[[str], None] | None = notice,
) -> LocalPipeline:
    """The embedded default, or one clear error line and exit status 2."""
    try:
        return build_local(settings, progress, notice)
    except PipelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


STATE_STYLES = {
    RunState.SUCCESS: "green",
    RunState.FAILED: "bold red",
    RunState.RETRYING: "yellow",
    RunState.RUNNING: "cyan",
    RunState.QUEUED: "blue",
    RunState.SKIPPED: "dim",
    RunState.CANCELLED: "magenta",
    RunState.ABANDONED: "bold magenta",
}


@contextmanager
def open_warehouse(settings: Settings) -> Iterator[Warehouse]:
    try:
        warehouse = build_warehouse(settings)
    except PipelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        yield warehouse
    finally:
        close = getattr(warehouse, "close", None)
        if close is not None:
            close()


def styled_line(line: str) -> Text:
    """A history line with its states in colour."""
    text = Text(line)
    for state, style in STATE_STYLES.items():
        text.highlight_regex(rf"\b{state.value}\b", style)
    return text


def print_line(line: str) -> None:
    console.print(styled_line(line), soft_wrap=True, highlight=False)


def parse_month_option(value: str, option: str) -> Month:
    try:
        return Month.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def parse_when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return history.parse_since(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def state_of(result: IngestResult | None) -> RunState:
    return result.state if result else RunState.FAILED


def result_line(result: IngestResult) -> str:
    text = f"{result.dataset.value} {result.month} {result.run_id}: {result.state.value}"
    if result.rows_inserted is not None:
        text += f", {result.rows_inserted:,} of {result.rows_in_file or 0:,} rows inserted"
    if result.error:
        text += f" - {' '.join(result.error.split())[:160]}"
    return text
