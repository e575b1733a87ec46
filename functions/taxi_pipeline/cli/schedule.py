"""``taxi-pipeline schedule``: the schedules of ``infra/schedules.toml`` on the embedded default."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from taxi_pipeline.cli.common import (
    HomeOption,
    SourceOption,
    err_console,
    load_settings,
    open_local,
    parse_when,
    print_line,
    result_line,
    state_of,
)
from taxi_pipeline.cli.live import EXIT_CANCELLED, Interrupts
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.messages import IngestResult, RunState, Topic
from taxi_pipeline.domain.schedules import load_schedules
from taxi_pipeline.errors import PipelineError, RunCancelled
from taxi_pipeline.local.scheduler import Fired, Scheduler, next_fires


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(schedule)


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
    start_from, stop_at = parse_when(since, "--since"), parse_when(until, "--until")
    try:
        chosen = [s for s in load_schedules(schedules_file) if not dataset or s.dataset in dataset]
    except PipelineError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if not chosen:
        err_console.print("[red]error:[/red] no schedule matches")
        raise typer.Exit(2)
    settings = load_settings(home, source_url)
    pipeline = open_local(settings)
    lock = threading.Lock()

    def on_result(data: bytes, attributes: Mapping[str, str]) -> None:
        if attributes.get("label_trigger") != "schedule":
            return
        result = IngestResult.model_validate_json(data)
        with lock:
            print_line(f"  {result_line(result)}")

    def on_fire(fired: Fired) -> None:
        with lock:
            print_line(
                f"fire {fired.fire.schedule.name} at {fired.fire.at:%Y-%m-%d %H:%M} UTC ->"
                f" {fired.fire.dataset.value} {fired.fire.month} (run {fired.run_id})"
            )

    pipeline.bus.listen(Topic.INGEST_RESULTS, on_result)
    interrupts = Interrupts(pipeline, err_console)
    scheduler = Scheduler(
        pipeline,
        chosen,
        history=pipeline.ports.warehouse.run_events,
        lag_months=settings.schedule_lag_months,
        workers=workers or settings.max_concurrent_runs_per_dataset,
        on_fire=on_fire,
        sleep=interrupts.nap,
    )
    for entry, at, month in next_fires(chosen, datetime.now(UTC), settings.schedule_lag_months):
        err_console.print(
            f"{entry.name}: cron '{entry.cron}' ({entry.time_zone}), next {at:%Y-%m-%d %H:%M} UTC"
            f" -> {entry.dataset.value} {month}"
        )
    try:
        with interrupts:
            fired = scheduler.run(
                until=stop_at,
                once=once,
                catchup=catchup,
                since=start_from,
                should_stop=lambda: interrupts.interrupted,
            )
    except RunCancelled:  # Ctrl-C while a fire was being submitted
        fired = scheduler.fired
    finally:
        pipeline.close()
    if interrupts.interrupted:
        err_console.print(f"stopped; {interrupts.summary()}", highlight=False, markup=False)
        raise typer.Exit(EXIT_CANCELLED)
    failed = [f for f in fired if state_of(pipeline.results.get(f.run_id)) is RunState.FAILED]
    err_console.print(f"{len(fired)} fires, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)
