"""``taxi-pipeline backfill``: a range of months, N at a time locally, or published with --cloud."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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

from taxi_pipeline.bootstrap import LocalPipeline, build_bus, history_in_warehouse
from taxi_pipeline.cli.common import (
    CliError,
    DatasetArgument,
    HomeOption,
    SourceOption,
    TlcUrlOption,
    UpstreamOption,
    check_loadable,
    err_console,
    exit_with,
    load_settings,
    open_local,
    open_warehouse,
    parse_month_option,
    print_line,
    result_line,
    source_hint,
)
from taxi_pipeline.cli.live import EXIT_CANCELLED, Interrupts
from taxi_pipeline.domain.datasets import Dataset, Month, Upstream
from taxi_pipeline.domain.messages import IngestResult, RunState, Topic
from taxi_pipeline.errors import RunCancelled
from taxi_pipeline.local.backfill import (
    BackfillPlan,
    BackfillReport,
    plan_backfill,
    publish_backfill,
    run_backfill,
)
from taxi_pipeline.pipeline.ports import Bus
from taxi_pipeline.render.text import plural
from taxi_pipeline.settings import Settings


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(backfill)


# -- backfill -----------------------------------------------------------------------------------


def backfill(
    dataset: DatasetArgument,
    first: Annotated[str, typer.Option("--from", metavar="YYYY-MM", help="First month.")],
    last: Annotated[str, typer.Option("--to", metavar="YYYY-MM", help="Last month.")],
    only_missing: Annotated[
        bool, typer.Option(help="Skip months that already have a completed load.")
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            metavar="N",
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
    source: UpstreamOption = None,
    source_url: SourceOption = None,
    tlc_url: TlcUrlOption = None,
    home: HomeOption = None,
) -> None:
    """Load a range of months, N at a time locally, or publish them with --cloud.

    The source as for `run`: the mirror's CSV for 2019-01..2021-07, the TLC's Parquet otherwise
    (--source).

    --cloud publishes one ingest-requests message per month, labelled backfill=true. The cloud
    has no per-backfill limit: each function's maximum instances (infra/resources.py) bound how
    many steps run at once, so --concurrency is refused with --cloud.

    Exit status as for `run`: 0 all SUCCESS, 1 any FAILED, 3 none failed but some SKIPPED."""
    if cloud and concurrency is not None:
        # Nothing on the publishing side could honour it: every month is published at once.
        raise typer.BadParameter(
            "--concurrency applies to local backfills only; with --cloud every month is"
            " published at once and the functions' maximum instances (infra/resources.py)"
            " bound how many run at a time",
            param_hint="--concurrency",
        )
    first_month, last_month = parse_month_option(first, "--from"), parse_month_option(last, "--to")
    settings = load_settings(home, source_url, tlc_url=tlc_url, source=source)
    check_loadable([first_month], "--from", dataset=dataset, source=settings.source)
    if concurrency is not None:
        settings = settings.model_copy(update={"max_concurrent_runs_per_dataset": concurrency})
    if cloud:
        _backfill_cloud(settings, dataset, first_month, last_month, only_missing)
        return
    pipeline = open_local(settings)
    try:
        try:
            plan = plan_backfill(
                dataset,
                first_month,
                last_month,
                only_missing=only_missing,
                warehouse=pipeline.ports.warehouse,
                source=source,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        report: BackfillReport | None = None
        with (
            Interrupts(pipeline, err_console) as interrupts,
            contextlib.suppress(RunCancelled),  # Ctrl-C while the months were submitted
        ):
            report = _run_with_progress(pipeline, plan, settings.max_concurrent_runs_per_dataset)
    finally:
        pipeline.close()
    if interrupts.interrupted or report is None:
        print_line(interrupts.summary(), err=True)
        raise typer.Exit(EXIT_CANCELLED)
    for line in _backfill_lines(plan, report.run_ids, report.results, settings):
        print_line(line)
    counts = {s: report.count(s) for s in RunState if report.count(s)}
    summary = ", ".join(f"{n} {s.value}" for s, n in counts.items()) or "nothing to run"
    print_line(
        f"backfill {plan.backfill_id}: {dataset.value} {first_month}..{last_month}: {summary};"
        f" {len(plan.already_loaded)} already loaded and skipped;"
        f" {plural(report.rows_inserted, 'row')} inserted;"
        f" at most {plural(report.peak_in_flight, 'run')} at a time"
    )
    exit_with(report.state_of(month) for month in plan.months)


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
    plan: BackfillPlan,
    run_ids: Mapping[Month, str],
    results: Mapping[str, IngestResult],
    settings: Settings,
) -> list[str]:
    lines = []
    for month in plan.months:
        result = results.get(run_ids[month])
        if result is None:
            lines.append(f"{plan.dataset.value} {month} {run_ids[month]}: no result recorded")
        else:
            lines.append(result_line(result) + source_hint(settings, result))
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
    except ImportError as exc:
        raise CliError(f"the cloud bus needs the Google client libraries: {exc}") from exc
    # QUEUED lines go to the cloud warehouse only (BigQuery, or the PostgreSQL the functions use):
    # a local DuckDB would split the history.
    cloud_history = history_in_warehouse(settings)
    if only_missing and not cloud_history:
        raise CliError(
            "--only-missing with --cloud needs the cloud warehouse"
            " (TAXI_PIPELINE_WAREHOUSE_URL=bigquery://project/dataset or postgresql://...)"
        )
    context = open_warehouse(settings, read_only=False) if cloud_history else _no_warehouse()
    with context as warehouse:
        try:
            plan = plan_backfill(
                dataset,
                first,
                last,
                only_missing=only_missing,
                warehouse=warehouse,
                source=settings.source if settings.source is not Upstream.AUTO else None,
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
        print_line(f"{dataset.value} {month} {run_id}: published to {Topic.INGEST_REQUESTS.value}")
    print_line(
        f"backfill {plan.backfill_id}: {len(run_ids)} requests published to"
        f" {_topic_name(bus, Topic.INGEST_REQUESTS)}"
        f" (labels backfill=true, backfill_id={plan.backfill_id});"
        f" {len(plan.already_loaded)} already loaded and skipped"
    )


@contextmanager
def _no_warehouse() -> Iterator[None]:
    yield None
