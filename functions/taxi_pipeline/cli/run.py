"""``taxi-pipeline run`` and ``sql``: load months through the event chain, query the warehouse."""

from __future__ import annotations

import csv
import sys
import time
from typing import Annotated, Literal

import typer
from rich import box
from rich.table import Table

from taxi_pipeline.bootstrap import LocalPipeline, build_warehouse
from taxi_pipeline.cli.common import (
    HomeOption,
    SourceOption,
    console,
    err_console,
    load_settings,
    notice,
    open_local,
)
from taxi_pipeline.cli.live import EXIT_CANCELLED, Interrupts, LiveProgress
from taxi_pipeline.domain.datasets import Dataset, Month, parse_month_span
from taxi_pipeline.domain.messages import IngestResult, RunState
from taxi_pipeline.errors import PipelineError


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(run)
    app.command()(sql)


def run_months(
    pipeline: LocalPipeline, dataset: Dataset, months: list[Month], force: bool, workers: int = 1
) -> list[tuple[Month, str, float]]:
    """Submit one run per month and process the bus; returns (month, run id, seconds).
    After Ctrl-C no further month starts."""
    timings = []
    for month in months:
        if pipeline.cancelled:
            break
        started = time.monotonic()
        run_id = pipeline.submit(dataset, month, force=force, labels={"trigger": "manual"})
        pipeline.drain(workers)
        timings.append((month, run_id, time.monotonic() - started))
    return timings


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
    live = LiveProgress(err_console)
    with live.shown():
        pipeline = open_local(settings, live, notice=notice)
        try:
            with Interrupts(pipeline, err_console) as interrupts:
                timings = run_months(pipeline, dataset, month_list, force)
        finally:
            pipeline.close()
    if interrupts.interrupted:
        err_console.print(interrupts.summary(), highlight=False, markup=False)
        raise typer.Exit(EXIT_CANCELLED)
    failed = print_summary(dataset, timings, pipeline.results)
    if failed:
        raise typer.Exit(1)


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
        # Cancelled from another terminal (`runs cancel`): not loaded either.
        failed += state in (RunState.FAILED, RunState.CANCELLED)
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
        warehouse = build_warehouse(settings, notice)
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
