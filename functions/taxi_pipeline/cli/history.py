"""``taxi-pipeline runs``, ``runs show`` and ``status``: the run history and the coverage."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from taxi_pipeline.bootstrap import (
    HistoryStore,
    build_history,
    build_lake,
    build_source,
    check_embedded_exists,
    liveness_of,
)
from taxi_pipeline.cli import live
from taxi_pipeline.cli.common import (
    CliError,
    ExitStatus,
    HomeOption,
    SourceOption,
    check_home,
    console,
    err_console,
    load_settings,
    open_local,
    parse_when,
    print_line,
    result_line,
    styled_line,
)
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, Month, published_months
from taxi_pipeline.domain.history import Liveness
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import LoadRecord
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.local import control
from taxi_pipeline.local.process import this_process
from taxi_pipeline.logs import redact
from taxi_pipeline.pipeline.upstream import check_upstream as check_upstream_of
from taxi_pipeline.render import html as report_html
from taxi_pipeline.render import text as render_text
from taxi_pipeline.settings import Settings

runs_app = typer.Typer(
    help="Runs and their states (derived from the pipeline_runs history).",
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(runs_app, name="runs")
    app.command()(status)


@contextmanager
def open_history(settings: Settings) -> Iterator[HistoryStore]:
    """The run history (the embedded default's SQLite, never the DuckDB file a merge may
    hold). Reading creates nothing: a missing home or warehouse is a :class:`CliError`."""
    check_home(settings)
    check_embedded_exists(settings)
    store = build_history(settings)
    try:
        yield store
    finally:
        store.close()


def local_history(store: HistoryStore) -> bool:
    """Whether processes of a home run these runs (and can be asked to stop one)."""
    return hasattr(store, "cancel_requests")


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
    watch: Annotated[
        bool, typer.Option(help="Refresh until no run is queued or running any more.")
    ] = False,
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
    with open_history(settings) as store:

        def matching() -> list[history.Run]:
            events = store.run_events(dataset=dataset.value if dataset else None)
            return history.filter_runs(
                history.derive_runs(events, liveness_of(store)),
                states=state or (),
                since=after,
                labels=labels,
            )

        if watch:
            _watch(matching, limit)
            return
        found = matching()
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


def _watch(matching: Callable[[], list[history.Run]], limit: int) -> None:
    def render() -> tuple[list[str], bool]:
        found = matching()
        shown = found[-limit:] if limit > 0 else found
        active = sum(run.is_active for run in found)
        lines = render_text.runs_table(shown)
        lines.append(f"{active} queued or running; refreshed {live.now():%H:%M:%S} UTC")
        return lines, active == 0

    if not live.follow(console, render, style=styled_line):
        raise typer.Exit(live.EXIT_CANCELLED)


@runs_app.command("show")
def show(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN_ID", help="The run id (as `runs` lists it).")
    ],
    width: Annotated[int, typer.Option(metavar="COLUMNS", help="Width of the timeline bars.")] = 50,
    follow: Annotated[
        bool, typer.Option(help="Refresh, with the running phase's progress, until it ends.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """A run's steps with their timings drawn as a timeline (Gantt), rows, and the error."""
    settings = load_settings(home)
    with open_history(settings) as store:
        if not store.run_events(run_id=run_id):
            raise CliError(f"no run {run_id!r} in {redact(settings.resolved_warehouse_url)}")

        def render() -> tuple[list[str], bool]:
            run = history.derive_run(store.run_events(run_id=run_id), liveness_of(store))
            lines = render_text.describe_run(run, width=max(width, 10))
            if run.is_active:
                lines += _phases(store, run_id)
            return lines, not run.is_active

        if follow:
            if not live.follow(console, render, style=styled_line):
                raise typer.Exit(live.EXIT_CANCELLED)
            return
        for line in render()[0]:
            print_line(line)


def _phases(store: HistoryStore, run_id: str) -> list[str]:
    """The progress of the run's phases, as its process records it (the embedded default)."""
    progress = getattr(store, "progress", None)
    if progress is None:
        return []
    lines = ["", "progress"]
    for phase in progress(run_id):
        state = "done" if phase.finished else "running"
        lines.append(
            f"  {phase.description}: {live.amount(phase.done, phase.total, phase.unit)} ({state})"
        )
    return lines if len(lines) > 2 else []


@runs_app.command("cancel")
def cancel(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN_ID", help="The run id of a queued or running run.")
    ],
    wait: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Seconds to wait for the run's process to stop it."),
    ] = 15.0,
    home: HomeOption = None,
) -> None:
    """Cancel a queued or running run, from any terminal: its process stops it (nothing
    partial is kept); in the cloud its next step refuses to go on."""
    settings = load_settings(home)
    with open_history(settings) as store:
        try:
            outcome = control.cancel_run(store, run_id, liveness_of(store), this_process())
        except PipelineError as exc:
            raise CliError(str(exc), ExitStatus.FAILED) from exc
        before = outcome.run
        if not outcome.requested:
            raise CliError(
                f"run {run_id} is {before.state.value} already; nothing to cancel",
                ExitStatus.FAILED,
            )
        if not local_history(store):
            print_line(
                f"cancel of {run_id} recorded in pipeline_runs; its next step will not start"
                " (a step already running finishes)"
            )
            return
        after = control.wait_until_stopped(
            store, run_id, lambda: liveness_of(store), timeout=max(wait, 0.0)
        )
    where = f"{before.dataset} {before.month} (run {run_id})"
    if after.state is RunState.SUCCESS:
        print_line(f"{where} finished SUCCESS before the cancel reached it")
    elif control.stopped(after):
        print_line(f"cancelled {where}")
    else:
        print_line(
            f"cancel of {where} recorded; {control.describe_owner(after)} has not stopped it"
            f" within {wait:.0f} s"
        )


@runs_app.command("restart")
def restart(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN_ID", help="A FAILED, CANCELLED or ABANDONED run.")
    ],
    source_url: SourceOption = None,
    home: HomeOption = None,
) -> None:
    """Run a failed, cancelled or abandoned run's month again, here: a new run with the same
    labels plus restarted_from=RUN_ID."""
    settings = load_settings(home, source_url)
    progress = live.LiveProgress(err_console)
    with progress.shown():
        pipeline = open_local(settings, progress)
        try:
            with live.Interrupts(pipeline, err_console) as interrupts:
                store = pipeline.ports.warehouse
                liveness = pipeline.history.liveness() if pipeline.history else Liveness.cloud()
                try:
                    new_id = control.restart_run(pipeline, store, run_id, liveness)
                except PipelineError as exc:
                    raise CliError(str(exc), ExitStatus.FAILED) from exc
                pipeline.drain()
        finally:
            pipeline.close()
    if interrupts.interrupted:
        print_line(interrupts.summary(), err=True)
        raise typer.Exit(live.EXIT_CANCELLED)
    result = pipeline.results.get(new_id)
    if result is None:
        print_line(f"{new_id}: no result was recorded")
        raise typer.Exit(1)
    print_line(f"{result_line(result)} (restarted from {run_id})")
    if result.state is not RunState.SUCCESS:
        raise typer.Exit(1)


# -- status -------------------------------------------------------------------------------------


def _print_upstream_checks(settings: Settings, loads: Sequence[LoadRecord]) -> None:
    """One line per loaded month whose upstream changed or could not tell, and a count."""
    source = build_source(settings)
    try:
        checks = check_upstream_of(loads, build_lake(settings), source)
    finally:
        source.close()
    changed = [c for c in checks if c.changed]
    asked = [c for c in checks if c.url is not None]
    print_line("")
    print_line(
        f"upstream: {render_text.plural(len(asked), 'loaded month')} asked (HEAD),"
        f" {len(changed)} changed since the load"
    )
    for check in checks:
        if check.changed or check.problem:
            print_line(f"  {check.line()}", style="yellow" if check.changed else None)


def _status_months(
    datasets: Sequence[Dataset], loads: Sequence[LoadRecord], runs: Sequence[history.Run]
) -> list[Month]:
    """The mirror's months, and any other with a load or a run that was not only SKIPPED (the
    TLC's months are open-ended: a matrix from 2011 on would be mostly dots)."""
    names = {d.value for d in datasets}
    months = set(published_months())
    months |= {load.month for load in loads if load.dataset.value in names}
    for each in runs:
        if each.dataset in names and each.state is not RunState.SKIPPED:
            with contextlib.suppress(ValueError):
                months.add(Month.parse(each.month))
    return sorted(months)


def status(
    html: Annotated[
        Path | None,
        typer.Option("--html", metavar="FILE", help="Also write the matrix and a timeline here."),
    ] = None,
    dataset: Annotated[
        Dataset | None,
        typer.Option(metavar="DATASET", case_sensitive=False, help="Only this dataset."),
    ] = None,
    check_upstream: Annotated[
        bool,
        typer.Option(
            "--check-upstream",
            help="Also ask each loaded month's upstream (HEAD requests only) whether its file"
            " changed since the load (ETag, Last-Modified, size); a changed month reloads only"
            " with run --replace.",
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Coverage: dataset x month matrix of loaded, missing, failed and running months, with the
    source of each loaded month (mirror or tlc).

    The months are the mirror's range (2019-01 .. 2021-07) and every other month with a load or
    a run that did not end SKIPPED."""
    settings = load_settings(home)
    datasets = [dataset] if dataset else list(Dataset)
    with open_history(settings) as store:
        loads = store.loads()
        events = store.run_events()
        liveness = liveness_of(store)
    all_runs = history.derive_runs(events, liveness)
    months = _status_months(datasets, loads, all_runs)
    cells = history.coverage(datasets, months, loads, all_runs)
    for line in render_text.coverage_table(datasets, months, cells):
        print_line(line)
    if check_upstream:
        _print_upstream_checks(settings, [load for load in loads if load.dataset in datasets])
    print_line(f"read {redact(settings.resolved_warehouse_url)}")
    if html is not None:
        shown = [r for r in all_runs if dataset is None or r.dataset == dataset.value]
        page = report_html.render(datasets, months, cells, shown)
        try:
            html.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write --html {html}: {exc.strerror or exc}") from exc
        print_line(f"wrote {html}", err=True)
