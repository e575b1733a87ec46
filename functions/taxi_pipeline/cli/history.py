"""``taxi-pipeline runs``, ``runs show`` and ``status``: the run history and the coverage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taxi_pipeline.cli.common import (
    CliError,
    HomeOption,
    load_settings,
    open_warehouse,
    parse_when,
    print_line,
)
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, published_months
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.logs import redact
from taxi_pipeline.render import html as report_html
from taxi_pipeline.render import text as render_text

runs_app = typer.Typer(
    help="Runs and their states (derived from the pipeline_runs history).",
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(runs_app, name="runs")
    app.command()(status)


# -- runs ---------------------------------------------------------------------------------------


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    dataset: Annotated[
        Dataset | None,
        typer.Option(metavar="DATASET", case_sensitive=False, help="Only this dataset."),
    ] = None,
    state: Annotated[
        list[RunState] | None,
        typer.Option(
            metavar="STATE",
            case_sensitive=False,
            help="Only runs in this state (repeatable): "
            + ", ".join(s.value.lower() for s in RunState)
            + ".",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="Only runs that began after this: 2h, 3d, 2019-01-31."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(metavar="KEY=VALUE", help="Only runs with this label (repeatable)."),
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=0, help="Show at most the latest N runs (0: all).")
    ] = 50,
    home: HomeOption = None,
) -> None:
    """One line per run: state, start, duration, rows, labels (and the error of failed runs)."""
    if ctx.invoked_subcommand is not None:
        return
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--label")
        labels[key] = value
    after = parse_when(since, "--since")
    settings = load_settings(home)
    with open_warehouse(settings) as warehouse:
        events = warehouse.run_events(dataset=dataset.value if dataset else None)
    found = history.filter_runs(
        history.derive_runs(events),
        states=state or (),
        since=after,
        labels=labels,
    )
    if not found:
        if dataset or state or after or labels:
            print_line("no runs match", err=True)
        else:
            print_line(
                f"no runs recorded yet in {redact(settings.resolved_warehouse_url)}"
                " (start one with `taxi-pipeline run DATASET YYYY-MM`)",
                err=True,
            )
        return
    shown = found[-limit:] if limit > 0 else found
    for line in render_text.runs_table(shown):
        print_line(line)
    if len(shown) < len(found):
        hidden = render_text.plural(len(found) - len(shown), "older run")
        print_line(f"({hidden} not shown; use --limit 0)", err=True)


@runs_app.command("show")
def show(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN_ID", help="The run id (as `runs` lists it).")
    ],
    width: Annotated[int, typer.Option(metavar="COLUMNS", help="Width of the timeline bars.")] = 50,
    home: HomeOption = None,
) -> None:
    """A run's steps with their timings drawn as a timeline (Gantt), rows, and the error."""
    settings = load_settings(home)
    with open_warehouse(settings) as warehouse:
        events = warehouse.run_events(run_id=run_id)
    if not events:
        raise CliError(f"no run {run_id!r} in {redact(settings.resolved_warehouse_url)}")
    for line in render_text.describe_run(history.derive_run(events), width=max(width, 10)):
        print_line(line)


# -- status -------------------------------------------------------------------------------------


def status(
    html: Annotated[
        Path | None,
        typer.Option("--html", metavar="FILE", help="Also write the matrix and a timeline here."),
    ] = None,
    dataset: Annotated[
        Dataset | None,
        typer.Option(metavar="DATASET", case_sensitive=False, help="Only this dataset."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Coverage: dataset x month matrix of loaded, missing, failed and running months.

    The months are the range published upstream (2019-01 .. 2021-07)."""
    settings = load_settings(home)
    datasets = [dataset] if dataset else list(Dataset)
    months = published_months()
    with open_warehouse(settings) as warehouse:
        loads = warehouse.loads()
        events = warehouse.run_events()
    all_runs = history.derive_runs(events)
    cells = history.coverage(datasets, months, loads, all_runs)
    for line in render_text.coverage_table(datasets, months, cells):
        print_line(line)
    print_line(f"read {redact(settings.resolved_warehouse_url)}")
    if html is not None:
        shown = [r for r in all_runs if dataset is None or r.dataset == dataset.value]
        page = report_html.render(datasets, months, cells, shown)
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write --html {html}: {exc.strerror or exc}") from exc
        print_line(f"wrote {html}", err=True)
