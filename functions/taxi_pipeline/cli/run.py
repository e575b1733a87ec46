"""``taxi-pipeline run`` and ``sql``: load months through the event chain, query the warehouse."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

import typer
from rich import box
from rich.table import Table

from taxi_pipeline.bootstrap import LocalPipeline
from taxi_pipeline.cli.common import (
    CliError,
    DatasetArgument,
    ExitStatus,
    HomeOption,
    ReplaceOption,
    SourceOption,
    TlcUrlOption,
    UpstreamOption,
    check_loadable,
    console,
    err_console,
    exit_with,
    load_settings,
    notice,
    open_local,
    open_warehouse,
    print_line,
    source_hint,
    state_of,
)
from taxi_pipeline.cli.live import EXIT_CANCELLED, Interrupts, LiveProgress
from taxi_pipeline.domain.datasets import Dataset, Month, Upstream, parse_month_span
from taxi_pipeline.domain.messages import IngestResult, RunState
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.render.text import aligned, plural, printable
from taxi_pipeline.settings import Settings


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(run)
    app.command()(sql)


def run_months(
    pipeline: LocalPipeline,
    dataset: Dataset,
    months: list[Month],
    force: bool,
    workers: int = 1,
    *,
    source: Upstream | None = None,
    replace: bool = False,
) -> list[tuple[Month, str, float]]:
    """Submit one run per month and process the bus; returns (month, run id, seconds).
    After Ctrl-C no further month starts."""
    timings = []
    for month in months:
        if pipeline.cancelled:
            break
        started = time.monotonic()
        run_id = pipeline.submit(
            dataset,
            month,
            force=force,
            labels={"trigger": "manual"},
            source=source,
            replace=replace,
        )
        pipeline.drain(workers)
        timings.append((month, run_id, time.monotonic() - started))
    return timings


def run(
    dataset: DatasetArgument,
    months: Annotated[
        str, typer.Argument(metavar="MONTHS", help="YYYY-MM or a range YYYY-MM..YYYY-MM")
    ],
    source: UpstreamOption = None,
    source_url: SourceOption = None,
    tlc_url: TlcUrlOption = None,
    home: HomeOption = None,
    force: Annotated[
        bool, typer.Option(help="Download and merge again even if already loaded.")
    ] = False,
    replace: ReplaceOption = False,
) -> None:
    """Download, register and merge months through the event chain; print a summary.

    The source: the DataTalksClub mirror's CSV for 2019-01..2021-07, the TLC's Parquet for
    every other month (--source). A month already loaded from the other source is refused
    unless --replace. Exit status 0 when every month is SUCCESS, 1 when one FAILED, 3 when none
    failed but some were SKIPPED (not published), 2 for bad arguments or settings."""
    try:
        month_list = parse_month_span(months)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="MONTHS") from exc
    settings = load_settings(home, source_url, tlc_url=tlc_url, source=source)
    check_loadable(month_list, "MONTHS", dataset=dataset, source=settings.source)
    live = LiveProgress(err_console)
    # Opened before the bars start: an error line is then printed after nothing else.
    pipeline = open_local(settings, live, notice=notice)
    try:
        with live.shown(), Interrupts(pipeline, err_console) as interrupts:
            timings = run_months(
                pipeline, dataset, month_list, force, source=source, replace=replace
            )
    finally:
        pipeline.close()
    not_started = [f"{dataset.value} {m}" for m in month_list[len(timings) :]]
    if interrupts.interrupted and (not_started or not interrupts.stopped_nothing()):
        print_line(interrupts.summary(not_started), err=True)
        raise typer.Exit(EXIT_CANCELLED)
    states = print_summary(dataset, timings, pipeline.results, settings)
    if interrupts.interrupted:  # the signal came as the last run ended: it cancelled nothing
        print_line(
            f"{interrupts.signal_name} came after the last run had finished: nothing was cancelled",
            err=True,
        )
    exit_with(states)


# rows: data rows in the file; present: rows whose id the table already held; outside: pickup
# dates outside the file's month (kept); bad: rows with values that did not fit their types.
_SUMMARY_COLUMNS = (
    "month", "state", "rows", "inserted", "present", "outside", "bad", "seconds", "run id",
)  # fmt: skip


def _count(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def print_summary(
    dataset: Dataset,
    timings: list[tuple[Month, str, float]],
    results: dict[str, IngestResult],
    settings: Settings,
) -> list[RunState]:
    """The per-month summary table, then one line per month that did not succeed: its reason
    (and a hint when the source could not be reached). Returns the runs' states."""
    table = Table(title=f"{dataset.value} runs", box=box.SIMPLE_HEAD)
    for header in _SUMMARY_COLUMNS:
        justify: Literal["left", "right"] = (
            "left" if header in ("month", "state", "run id") else "right"
        )
        table.add_column(header, justify=justify, no_wrap=True)
    states = []
    reasons = []
    for month, run_id, seconds in timings:
        result = results.get(run_id)
        state = state_of(result)
        states.append(state)
        if result is None:
            reasons.append(f"{month} {state.value}: no result was recorded for {run_id}")
        elif result.error:
            flat = " ".join(result.error.split())
            reasons.append(f"{month} {state.value}: {flat}{source_hint(settings, result)}")
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
        print_line(reason, err=True, style="red" if " FAILED: " in reason else "yellow")
    for month, run_id, _ in timings:
        result = results.get(run_id)
        for note in (result.notes or ()) if result else ():
            print_line(f"{month} note: {note}", err=True, style="yellow")
    return states


# -- sql ----------------------------------------------------------------------------------------


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


TABLE_ROWS = 100
"""Rows a table shows unless ``--limit`` says otherwise: a ``SELECT *`` of a month is millions."""


def sql(
    query: Annotated[str, typer.Argument(metavar="QUERY", help="SQL to run on the warehouse")],
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            metavar="FORMAT",
            case_sensitive=False,
            help="table (default), csv or json (every row unless --limit).",
        ),
    ] = OutputFormat.TABLE,
    limit: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help=f"Print at most N rows (0: all; default {TABLE_ROWS} for a table, all for csv"
            " and json).",
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Run a query on the warehouse and print the result.

    Queries only (SELECT, SHOW, DESCRIBE, EXPLAIN without ANALYZE). Ids (bytes) print as hex,
    decimals without trailing zeros, every value as it is."""
    settings = load_settings(home)
    with open_warehouse(settings) as warehouse:
        try:
            result = warehouse.query(query)
        except PipelineError as exc:
            # The query's own problem (syntax, a missing table, not a query): the command failed.
            raise CliError(str(exc), ExitStatus.FAILED) from exc
    if limit is None:
        limit = TABLE_ROWS if output_format is OutputFormat.TABLE else 0
    rows = result.rows[:limit] if limit else result.rows
    if output_format is OutputFormat.CSV:
        _write_csv(result.columns, rows)
    elif output_format is OutputFormat.JSON:
        _write_json(result.columns, rows)
    else:
        _print_table(result.columns, rows)
    if len(rows) < len(result.rows):
        print_line(
            f"(showing {len(rows):,} of {plural(len(result.rows), 'row')};"
            " --limit 0 shows all, --format csv or json prints them for another tool)",
            err=True,
        )


def cell_text(value: object) -> str:
    """A value as text, literally: ids (bytes) as hex, decimals without trailing zeros,
    timestamps in ISO form with a space."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        return str(value)
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, Decimal):
        # A JSON number when a float holds it exactly (money, distances); else the digits.
        as_float = float(value)
        return as_float if Decimal(repr(as_float)) == value else _decimal_text(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return cell_text(value)


def _write_csv(columns: Sequence[str], rows: Sequence[tuple[object, ...]]) -> None:
    # Data for another tool, written as it is; only a terminal gets control characters escaped.
    safe = sys.stdout.isatty()
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([printable(c) if safe else c for c in columns])
    for row in rows:
        texts = [cell_text(v) for v in row]
        writer.writerow([printable(t) if safe else t for t in texts])


def _write_json(columns: Sequence[str], rows: Sequence[tuple[object, ...]]) -> None:
    # One object per line (JSON Lines): streams, and each line is valid JSON with control
    # characters escaped by the encoder.
    for row in rows:
        record = {column: _json_value(v) for column, v in zip(columns, row, strict=True)}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


def _print_table(columns: Sequence[str], rows: Sequence[tuple[object, ...]]) -> None:
    numeric = {
        i
        for i in range(len(columns))
        if any(row[i] is not None for row in rows)
        and all(row[i] is None or isinstance(row[i], int | float | Decimal) for row in rows)
    }
    cells = [
        ["NULL" if v is None else printable(cell_text(v), one_line=True) for v in row]
        for row in rows
    ]
    header = [printable(c, one_line=True) for c in columns]
    lines = aligned(header, cells, right=numeric)
    print_line(lines[0], style="bold")
    for line in lines[1:]:
        print_line(line)
