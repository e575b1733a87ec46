"""``taxi-pipeline schedule``: the schedules of ``infra/schedules.toml`` on the embedded default."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Final

import typer

from taxi_pipeline.cli.common import (
    CliError,
    HomeOption,
    SourceOption,
    err_console,
    exit_with,
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
from taxi_pipeline.errors import RunCancelled
from taxi_pipeline.local.scheduler import Fire, Fired, Scheduler, next_fires
from taxi_pipeline.render.text import plural

ASK_ABOVE: Final = 3
"""More missed fires than this are confirmed first on a terminal (``--yes`` skips it)."""


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command()(schedule)


def schedule(
    dataset: Annotated[
        list[Dataset] | None,
        typer.Option(
            metavar="DATASET",
            case_sensitive=False,
            help="Only the schedules of this dataset (repeatable).",
        ),
    ] = None,
    catchup: Annotated[
        bool, typer.Option(help="Run the fires missed since the last one on start.")
    ] = True,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="DATE", help="With no fire remembered yet, catch up from here (2019-01-01)."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="DATE",
            help="Stop once the next fire is after this (a past date replays up to it).",
        ),
    ] = None,
    once: Annotated[bool, typer.Option(help="Fire what is due now, then exit.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Worker threads (default: the per-dataset limit)."),
    ] = None,
    schedules_file: Annotated[
        Path | None,
        typer.Option("--schedules", metavar="FILE", help="Schedules file (default: packaged)."),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help=f"Catch up more than {ASK_ABOVE} missed fires without asking."
        ),
    ] = False,
    source_url: SourceOption = None,
    home: HomeOption = None,
) -> None:
    """Run the schedules (infra/schedules.toml) on the embedded default until stopped.

    Missed fires are announced first, and on a terminal more than a few are confirmed (--yes
    skips the question). Exit status as for `run`, over the runs fired."""
    start_from, stop_at = parse_when(since, "--since"), parse_when(until, "--until")
    chosen = [s for s in load_schedules(schedules_file) if not dataset or s.dataset in dataset]
    if not chosen:
        raise CliError("no schedule matches")
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
        print_line(
            f"{entry.name}: cron '{entry.cron}' ({entry.time_zone}), next {at:%Y-%m-%d %H:%M} UTC"
            f" -> {entry.dataset.value} {month}",
            err=True,
        )
    try:
        baselines = scheduler.baselines(catchup=catchup, since=start_from)
        now = datetime.now(UTC)
        missed = scheduler.due(baselines, min(now, stop_at) if stop_at else now)
        if missed and not _catch_up_agreed(missed, baselines, ask=not yes and sys.stdin.isatty()):
            print_line("nothing fired (--no-catchup starts from now)", err=True)
            return
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
        print_line(f"stopped; {interrupts.summary()}", err=True)
        raise typer.Exit(EXIT_CANCELLED)
    states = [state_of(pipeline.results.get(f.run_id)) for f in fired]
    failed = sum(s not in (RunState.SUCCESS, RunState.SKIPPED) for s in states)
    skipped = states.count(RunState.SKIPPED)
    print_line(
        f"{plural(len(fired), 'fire')}, {failed} failed"
        + (f", {skipped} skipped" if skipped else ""),
        err=True,
    )
    exit_with(states)


def _catch_up_agreed(
    missed: Sequence[Fire], baselines: Mapping[str, datetime], *, ask: bool
) -> bool:
    """Say what the catch-up is about to fire; on a terminal, ask before more than a few."""
    since = min(baselines[f.schedule.name] for f in missed)
    per_schedule: dict[str, list[Fire]] = {}
    for fire in missed:
        per_schedule.setdefault(fire.schedule.name, []).append(fire)
    detail = "; ".join(
        f"{name} {len(fires)}: {fires[0].dataset.value} {fires[0].month}"
        + (f" .. {fires[-1].month}" if len(fires) > 1 else "")
        for name, fires in per_schedule.items()
    )
    print_line(
        f"catching up {plural(len(missed), 'missed fire')} since {since:%Y-%m-%d %H:%M} UTC"
        f" ({detail})",
        err=True,
    )
    if not ask or len(missed) <= ASK_ABOVE:
        return True
    return typer.confirm(f"Fire all {len(missed)} now?", default=False, err=True)
