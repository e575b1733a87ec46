"""The command line: ``taxi-pipeline run | sql | ...`` on the embedded default."""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TextIO

import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from taxi_pipeline.bootstrap import LocalPipeline, build_local, build_warehouse
from taxi_pipeline.datasets import Dataset, Month, parse_month_span
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.logs import configure_logging
from taxi_pipeline.messages import IngestResult, RunState
from taxi_pipeline.ports import ProgressTask
from taxi_pipeline.settings import LogFormat, Settings

app = typer.Typer(
    help="Load NYC taxi trip months (zoomcamp module 2) into a warehouse, locally or on GCP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _RichTask(self.progress, description, total)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def run_months(
    pipeline: LocalPipeline, dataset: Dataset, months: list[Month], force: bool, workers: int = 1
) -> list[tuple[Month, str, float]]:
    """Submit one run per month and process the bus; returns (month, run id, seconds)."""
    timings = []
    for month in months:
        started = time.monotonic()
        run_id = pipeline.submit(dataset, month, force=force, labels={"trigger": "manual"})
        pipeline.drain(workers)
        timings.append((month, run_id, time.monotonic() - started))
    return timings


@app.command()
def run(
    dataset: Annotated[Dataset, typer.Argument(help="yellow or green")],
    months: Annotated[str, typer.Argument(help="YYYY-MM or YYYY-MM..YYYY-MM")],
    source_url: SourceOption = None,
    home: HomeOption = None,
    force: Annotated[
        bool, typer.Option(help="Download and merge again even if already loaded.")
    ] = False,
) -> None:
    """Download, register and merge months through the event chain; print a summary."""
    try:
        month_list = parse_month_span(months)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="MONTHS") from exc
    settings = load_settings(home, source_url)
    with _progress() as progress:
        pipeline = _open(settings, RichProgress(progress))
        try:
            timings = run_months(pipeline, dataset, month_list, force)
        finally:
            pipeline.close()
    failed = print_summary(dataset, timings, pipeline.results)
    if failed:
        raise typer.Exit(1)


def _open(settings: Settings, progress: RichProgress | None = None) -> LocalPipeline:
    try:
        return build_local(settings, progress)
    except PipelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


# rows: data rows in the file; present: rows whose id the table already held; outside: pickup
# dates outside the file's month (kept); bad: rows with values that did not fit their types.
_SUMMARY_COLUMNS = (
    "month", "state", "rows", "inserted", "present", "outside", "bad", "seconds", "run id",
)  # fmt: skip


def _count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def print_summary(
    dataset: Dataset, timings: list[tuple[Month, str, float]], results: dict[str, IngestResult]
) -> int:
    """The per-month summary table, then each failure's reason; returns how many failed."""
    table = Table(title=f"{dataset.value} runs", box=box.SIMPLE_HEAD)
    for header in _SUMMARY_COLUMNS:
        justify: Literal["left", "right"] = (
            "left" if header in ("month", "state", "run id") else "right"
        )
        table.add_column(header, justify=justify, no_wrap=True)
    failed = 0
    reasons = []
    for month, run_id, seconds in timings:
        result = results.get(run_id)
        state = result.state if result else RunState.FAILED
        failed += state is RunState.FAILED
        if result is None:
            reasons.append(f"{month} {state.value}: no result was recorded")
        elif result.error:
            reasons.append(f"{month} {state.value}: {result.error}")
        counts = (
            (result.rows_in_file, result.rows_inserted, result.rows_already_present,
             result.rows_out_of_month, result.rows_bad)
            if result else (None,) * 5
        )  # fmt: skip
        table.add_row(
            str(month), state.value, *(_count(c) for c in counts), f"{seconds:.1f}", run_id
        )
    console.print(table)
    for reason in reasons:
        err_console.print(reason, style="red" if "FAILED" in reason else "yellow")
    return failed


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run on the warehouse")],
    output_format: Annotated[
        str, typer.Option("--format", help="table (default) or csv")
    ] = "table",
    home: HomeOption = None,
) -> None:
    """Run a query on the warehouse and print the result."""
    if output_format not in ("table", "csv"):
        raise typer.BadParameter("use table or csv", param_hint="--format")
    settings = load_settings(home)
    try:
        warehouse = build_warehouse(settings)
        result = warehouse.query(query)
    except PipelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    if output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
        return
    table = Table()
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console.print(table)


# runs / runs show / status / schedule / backfill live in their own module, which imports the
# helpers above: registered here, after they exist.
from taxi_pipeline import cli_history  # noqa: E402

cli_history.register(app)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
