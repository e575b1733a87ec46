"""``taxi-pipeline runs | runs show | status | schedule | backfill``: history, schedules, backfills.

Registered on the main app by :func:`register` (see :mod:`taxi_pipeline.cli`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from taxi_pipeline import history, report_html
from taxi_pipeline.backfill import (
    BackfillPlan,
    BackfillReport,
    plan_backfill,
    publish_backfill,
    run_backfill,
)
from taxi_pipeline.bootstrap import LocalPipeline, build_bus, build_warehouse
from taxi_pipeline.cli import HomeOption, SourceOption, _open, console, err_console, load_settings
from taxi_pipeline.datasets import Dataset, Month, published_months
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.logs import redact
from taxi_pipeline.messages import IngestResult, RunState, Topic
from taxi_pipeline.ports import Bus, Warehouse
from taxi_pipeline.schedules import load_schedules
from taxi_pipeline.scheduling import Fired, Scheduler, next_fires
from taxi_pipeline.settings import Settings

runs_app = typer.Typer(
    help="Runs and their states (derived from the pipeline_runs history).",
    pretty_exceptions_enable=False,
)

_STATE_STYLES = {
    RunState.SUCCESS: "green",
    RunState.FAILED: "bold red",
    RunState.RETRYING: "yellow",
    RunState.RUNNING: "cyan",
    RunState.QUEUED: "blue",
    RunState.SKIPPED: "dim",
}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(runs_app, name="runs")
    app.command()(status)
    app.command()(schedule)
    app.command()(backfill)


@contextmanager
def _warehouse(settings: Settings) -> Iterator[Warehouse]:
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


def _print(line: str) -> None:
    text = Text(line)
    for state, style in _STATE_STYLES.items():
        text.highlight_regex(rf"\b{state.value}\b", style)
    console.print(text, soft_wrap=True, highlight=False)


def _month(value: str, option: str) -> Month:
    try:
        return Month.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return history.parse_since(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


# -- runs ---------------------------------------------------------------------------------------


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    dataset: Annotated[Dataset | None, typer.Option(help="Only this dataset.")] = None,
    state: Annotated[
        list[RunState] | None,
        typer.Option(help="Only runs in this state (repeatable).", case_sensitive=False),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only runs that began after this: 2h, 3d, 2019-01-31.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Only runs with this label, key=value (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most the latest N runs (0: all).")] = 50,
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
    after = _when(since, "--since")
    settings = load_settings(home)
    with _warehouse(settings) as warehouse:
        events = warehouse.run_events(dataset=dataset.value if dataset else None)
    found = history.filter_runs(
        history.derive_runs(events),
        states=state or (),
        since=after,
        labels=labels,
    )
    if not found:
        if dataset or state or after or labels:
            err_console.print("no runs match")
        else:
            err_console.print(
                f"no runs recorded yet in {redact(settings.resolved_warehouse_url)}"
                " (start one with `taxi-pipeline run DATASET YYYY-MM`)",
                soft_wrap=True,
                highlight=False,
                markup=False,
            )
        return
    shown = found[-limit:] if limit > 0 else found
    for line in history.runs_table(shown):
        _print(line)
    if len(shown) < len(found):
        err_console.print(f"({len(found) - len(shown)} older runs not shown; use --limit 0)")


@runs_app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="The run id (as `runs` lists it).")],
    width: Annotated[int, typer.Option(help="Width of the timeline bars.")] = 50,
    home: HomeOption = None,
) -> None:
    """A run's steps with their timings drawn as a timeline (Gantt), rows, and the error."""
    settings = load_settings(home)
    with _warehouse(settings) as warehouse:
        events = warehouse.run_events(run_id=run_id)
    if not events:
        err_console.print(f"[red]error:[/red] no run {run_id!r}")
        raise typer.Exit(1)
    for line in history.describe_run(history.derive_run(events), width=max(width, 10)):
        _print(line)


# -- status -------------------------------------------------------------------------------------


def status(
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the matrix and a timeline here.")
    ] = None,
    dataset: Annotated[Dataset | None, typer.Option(help="Only this dataset.")] = None,
    home: HomeOption = None,
) -> None:
    """Coverage: dataset x month matrix of loaded, missing, failed and running months.

    The months are the range published upstream (2019-01 .. 2021-07)."""
    settings = load_settings(home)
    datasets = [dataset] if dataset else list(Dataset)
    months = published_months()
    with _warehouse(settings) as warehouse:
        loads = warehouse.loads()
        events = warehouse.run_events()
    all_runs = history.derive_runs(events)
    cells = history.coverage(datasets, months, loads, all_runs)
    for line in history.coverage_table(datasets, months, cells):
        _print(line)
    if html is not None:
        shown = [r for r in all_runs if dataset is None or r.dataset == dataset.value]
        html.write_text(report_html.render(datasets, months, cells, shown), encoding="utf-8")
        err_console.print(f"wrote {html}")


# -- schedule -----------------------------------------------------------------------------------


def schedule(
    dataset: Annotated[
        list[Dataset] | None, typer.Option(help="Only the schedules of this dataset (repeatable).")
    ] = None,
    catchup: Annotated[
        bool, typer.Option(help="Run the fires missed since the last one on start.")
    ] = True,
    since: Annotated[
        str | None,
        typer.Option(help="With no fire remembered yet, catch up from here (2019-01-01)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Stop once the next fire is after this (a past date replays up to it)."),
    ] = None,
    once: Annotated[bool, typer.Option(help="Fire what is due now, then exit.")] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker threads (default: the per-dataset limit).")
    ] = None,
    schedules_file: Annotated[
        Path | None, typer.Option("--schedules", help="Schedules file (default: packaged).")
    ] = None,
    source_url: SourceOption = None,
    home: HomeOption = None,
) -> None:
    """Run the schedules (infra/schedules.toml) on the embedded default until stopped."""
    start_from, stop_at = _when(since, "--since"), _when(until, "--until")
    try:
        chosen = [s for s in load_schedules(schedules_file) if not dataset or s.dataset in dataset]
    except PipelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if not chosen:
        err_console.print("[red]error:[/red] no schedule matches")
        raise typer.Exit(2)
    settings = load_settings(home, source_url)
    pipeline = _open(settings)
    lock = threading.Lock()

    def on_result(data: bytes, attributes: Mapping[str, str]) -> None:
        if attributes.get("label_trigger") != "schedule":
            return
        result = IngestResult.model_validate_json(data)
        with lock:
            _print(f"  {_result_line(result)}")

    def on_fire(fired: Fired) -> None:
        with lock:
            _print(
                f"fire {fired.fire.schedule.name} at {fired.fire.at:%Y-%m-%d %H:%M} UTC ->"
                f" {fired.fire.dataset.value} {fired.fire.month} (run {fired.run_id})"
            )

    pipeline.bus.listen(Topic.INGEST_RESULTS, on_result)
    scheduler = Scheduler(
        pipeline,
        chosen,
        history=pipeline.ports.warehouse.run_events,
        lag_months=settings.schedule_lag_months,
        workers=workers or settings.max_concurrent_runs_per_dataset,
        on_fire=on_fire,
    )
    for entry, at, month in next_fires(chosen, datetime.now(UTC), settings.schedule_lag_months):
        err_console.print(
            f"{entry.name}: cron '{entry.cron}' ({entry.time_zone}), next {at:%Y-%m-%d %H:%M} UTC"
            f" -> {entry.dataset.value} {month}"
        )
    try:
        fired = scheduler.run(until=stop_at, once=once, catchup=catchup, since=start_from)
    except KeyboardInterrupt:
        err_console.print("stopped")
        fired = scheduler.fired
    finally:
        pipeline.close()
    failed = [f for f in fired if _state(pipeline.results.get(f.run_id)) is RunState.FAILED]
    err_console.print(f"{len(fired)} fires, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


def _state(result: IngestResult | None) -> RunState:
    return result.state if result else RunState.FAILED


def _result_line(result: IngestResult) -> str:
    text = f"{result.dataset.value} {result.month} {result.run_id}: {result.state.value}"
    if result.rows_inserted is not None:
        text += f", {result.rows_inserted:,} of {result.rows_in_file or 0:,} rows inserted"
    if result.error:
        text += f" - {' '.join(result.error.split())[:160]}"
    return text


# -- backfill -----------------------------------------------------------------------------------


def backfill(
    dataset: Annotated[Dataset, typer.Argument(help="yellow or green")],
    first: Annotated[str, typer.Option("--from", help="First month, YYYY-MM.")],
    last: Annotated[str, typer.Option("--to", help="Last month, YYYY-MM.")],
    only_missing: Annotated[
        bool, typer.Option(help="Skip months that already have a completed load.")
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Runs at a time, local backfills only"
            " (default: TAXI_PIPELINE_MAX_CONCURRENT_RUNS_PER_DATASET).",
        ),
    ] = None,
    cloud: Annotated[
        bool,
        typer.Option(
            help="Publish the requests to Pub/Sub ingest-requests instead (not with"
            " --concurrency: the functions' maximum instances bound the cloud)."
        ),
    ] = False,
    source_url: SourceOption = None,
    home: HomeOption = None,
) -> None:
    """Load a range of months, N at a time locally, or publish them with --cloud.

    --cloud publishes one ingest-requests message per month, labelled backfill=true. The
    cloud has no per-backfill limit: each function's maximum instances (infra/resources.py)
    bound how many steps run at once, so --concurrency is refused with --cloud."""
    if cloud and concurrency is not None:
        # Nothing on the publishing side could honour it: every month is published at once.
        raise typer.BadParameter(
            "--concurrency applies to local backfills only; with --cloud every month is"
            " published at once and the functions' maximum instances (infra/resources.py)"
            " bound how many run at a time",
            param_hint="--concurrency",
        )
    first_month, last_month = _month(first, "--from"), _month(last, "--to")
    settings = load_settings(home, source_url)
    if concurrency is not None:
        settings = settings.model_copy(update={"max_concurrent_runs_per_dataset": concurrency})
    if cloud:
        _backfill_cloud(settings, dataset, first_month, last_month, only_missing)
        return
    pipeline = _open(settings)
    try:
        try:
            plan = plan_backfill(
                dataset,
                first_month,
                last_month,
                only_missing=only_missing,
                warehouse=pipeline.ports.warehouse,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        report = _run_with_progress(pipeline, plan, settings.max_concurrent_runs_per_dataset)
    finally:
        pipeline.close()
    for line in _backfill_lines(plan, report.run_ids, report.results):
        _print(line)
    counts = {s: report.count(s) for s in RunState if report.count(s)}
    summary = ", ".join(f"{n} {s.value}" for s, n in counts.items()) or "nothing to run"
    _print(
        f"backfill {plan.backfill_id}: {dataset.value} {first_month}..{last_month}: {summary};"
        f" {len(plan.already_loaded)} already loaded and skipped;"
        f" {report.rows_inserted:,} rows inserted; at most {report.peak_in_flight} runs at a time"
    )
    if report.count(RunState.FAILED):
        raise typer.Exit(1)


def _run_with_progress(
    pipeline: LocalPipeline, plan: BackfillPlan, concurrency: int
) -> BackfillReport:
    counts: dict[RunState, int] = {}
    lock = threading.Lock()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(
            f"backfill {plan.dataset.value} ({concurrency} at a time)", total=len(plan.months)
        )

        def on_result(result: IngestResult) -> None:
            with lock:
                counts[result.state] = counts.get(result.state, 0) + 1
                text = " ".join(f"{n} {s.value.lower()}" for s, n in sorted(counts.items()))
            progress.update(
                task,
                advance=1,
                description=f"backfill {plan.dataset.value} ({concurrency} at a time): {text}",
            )

        return run_backfill(pipeline, plan, workers=concurrency, on_result=on_result)


def _backfill_lines(
    plan: BackfillPlan, run_ids: Mapping[Month, str], results: Mapping[str, IngestResult]
) -> list[str]:
    lines = []
    for month in plan.months:
        result = results.get(run_ids[month])
        if result is None:
            lines.append(f"{plan.dataset.value} {month} {run_ids[month]}: no result recorded")
        else:
            lines.append(_result_line(result))
    return lines


def _topic_name(bus: Bus, topic: Topic) -> str:
    """``projects/P/topics/T`` for Pub/Sub, the bare topic for another bus."""
    topic_path = getattr(bus, "topic_path", None)
    return str(topic_path(topic)) if callable(topic_path) else topic.value


def _backfill_cloud(
    settings: Settings, dataset: Dataset, first: Month, last: Month, only_missing: bool
) -> None:
    try:
        # The functions' own bus: Pub/Sub of gcp_project (or the warehouse's project).
        bus = build_bus(settings)
    except (PipelineError, ImportError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    # QUEUED lines go to the cloud warehouse only (BigQuery, or the PostgreSQL the functions use):
    # a local DuckDB would split the history.
    cloud_history = settings.resolved_warehouse_url.startswith(
        ("bigquery://", "postgresql://", "postgres://")
    )
    if only_missing and not cloud_history:
        err_console.print(
            "[red]error:[/red] --only-missing with --cloud needs the cloud warehouse"
            " (TAXI_PIPELINE_WAREHOUSE_URL=bigquery://project/dataset or postgresql://...)"
        )
        raise typer.Exit(2)
    context = _warehouse(settings) if cloud_history else _no_warehouse()
    with context as warehouse:
        try:
            plan = plan_backfill(
                dataset, first, last, only_missing=only_missing, warehouse=warehouse
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
        ) as progress:
            task = progress.add_task(f"publish {dataset.value}", total=len(plan.months))
            run_ids = publish_backfill(
                bus,
                plan,
                warehouse=warehouse,
                on_published=lambda _month, _run: progress.advance(task),
            )
    for month, run_id in run_ids.items():
        _print(f"{dataset.value} {month} {run_id}: published to {Topic.INGEST_REQUESTS.value}")
    _print(
        f"backfill {plan.backfill_id}: {len(run_ids)} requests published to"
        f" {_topic_name(bus, Topic.INGEST_REQUESTS)}"
        f" (labels backfill=true, backfill_id={plan.backfill_id});"
        f" {len(plan.already_loaded)} already loaded and skipped"
    )


@contextmanager
def _no_warehouse() -> Iterator[None]:
    yield None
