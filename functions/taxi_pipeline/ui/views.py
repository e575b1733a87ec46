"""What the pages and the JSON API show of a derived run: plain values, no HTML.

The templates escape everything (Jinja autoescape); nothing here builds markup. The Gantt is a
list of bars in the units of the page's SVG ``viewBox``, from the same timings ``runs show``
draws as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import Cell, Run, StepRun
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.render.text import cell_title, coverage_summary, format_duration

GANTT_WIDTH: Final = 1000
"""The SVG's viewBox width: the time axis spans [GANTT_LABEL, GANTT_WIDTH]."""
GANTT_LABEL: Final = 170
GANTT_ROW: Final = 26
GANTT_TOP: Final = 22


def iso(value: datetime | None) -> str | None:
    """``2019-01-31T09:00:00.123Z`` (UTC), or None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamp(value: datetime | None) -> str:
    """``2019-01-31 09:00:00`` UTC for the pages; empty when unknown."""
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def number(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def run_summary(run: Run, now: datetime) -> dict[str, Any]:
    """One run as the JSON API lists it."""
    return {
        "run_id": run.run_id,
        "dataset": run.dataset,
        "month": run.month,
        "state": run.state.value,
        "labels": dict(sorted(run.labels.items())),
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": seconds(run.duration(now)),
        "rows_in_file": run.rows_in_file,
        "rows_inserted": run.rows_inserted,
        "attempts": run.attempts,
        "error": run.error,
    }


def step_detail(step: StepRun) -> dict[str, Any]:
    return {
        "step": step.step,
        "attempt": step.attempt,
        "state": step.state.value,
        "started_at": iso(step.started_at),
        "running_at": iso(step.running_at),
        "finished_at": iso(step.finished_at),
        "duration_seconds": seconds(step.duration),
        "waited_seconds": seconds(step.waited),
        "rows": step.rows,
        "bytes": step.bytes,
        "error": step.error,
        "details": dict(sorted(step.details.items())),
    }


def run_detail(run: Run, now: datetime, actions: Sequence[str]) -> dict[str, Any]:
    """One run with its steps, as ``GET /api/runs/{id}`` answers."""
    return run_summary(run, now) | {
        "queue_wait_seconds": seconds(run.queue_wait),
        "steps": [step_detail(s) for s in run.steps],
        "actions": list(actions),
    }


@dataclass(frozen=True)
class Bar:
    """One row of the Gantt: a step attempt (or the queue) on the run's time axis."""

    label: str
    state: str
    """CSS class: the step's state, lower case (``queued`` for the queue row)."""
    y: int
    x: float
    width: float
    wait_width: float
    """Leading part spent waiting for the dataset-month merge lock."""
    tip: str


@dataclass(frozen=True)
class Gantt:
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]
    """(x, label) of the time axis."""
    height: int
    span: str


def gantt(run: Run, now: datetime) -> Gantt | None:
    """The run's queue wait and step attempts on one time axis (None: no timings)."""
    origin = run.queued_at or run.started_at
    if origin is None:
        return None
    end = run.finished_at or (now if run.is_active else run.last_event_at) or origin
    for step in run.steps:
        if step.finished_at is not None and step.finished_at > end:
            end = step.finished_at
    span = max((end - origin).total_seconds(), 1e-3)
    plot = GANTT_WIDTH - GANTT_LABEL - 10

    def x(moment: datetime) -> float:
        return GANTT_LABEL + max(0.0, (moment - origin).total_seconds()) / span * plot

    bars: list[Bar] = []
    if run.queued_at is not None:
        queue_end = run.started_at or end
        bars.append(
            Bar(
                "queue",
                "queued",
                GANTT_TOP,
                x(origin),
                _width(x(origin), x(queue_end)),
                0.0,
                f"queued {format_duration(queue_end - origin)}",
            )
        )
    for step in run.steps:
        start = step.started_at or origin
        stop = step.finished_at or (now if run.is_active else start)
        left = x(start)
        width = _width(left, x(stop))
        wait = min(width, x(start + step.waited) - left) if step.waited else 0.0
        tip = f"{step.step} try {step.attempt}: {step.state.value}, {format_duration(stop - start)}"
        if step.waited:
            tip += f" (waited {format_duration(step.waited)} for the merge lock)"
        bars.append(
            Bar(
                f"{step.step} #{step.attempt}",
                step.state.value.lower(),
                GANTT_TOP + len(bars) * GANTT_ROW,
                left,
                width,
                max(wait, 0.0),
                tip,
            )
        )
    ticks = tuple(
        (
            GANTT_LABEL + plot * share,
            "0s" if share == 0 else format_duration(timedelta(seconds=span * share)),
        )
        for share in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return Gantt(
        tuple(bars),
        ticks,
        GANTT_TOP + len(bars) * GANTT_ROW + 8,
        format_duration(timedelta(seconds=span)),
    )


def _width(left: float, right: float) -> float:
    return max(right - left, 2.0)


# -- coverage -----------------------------------------------------------------------------------

MONTH_NAMES: Final = tuple(datetime(2000, m, 1).strftime("%b") for m in range(1, 13))


@dataclass(frozen=True)
class CalendarCell:
    month: str
    state: str
    """``loaded``, ``running``, ``failed``, ``skipped``, ``missing``; ``na``: not published."""
    text: str
    run_id: str | None
    title: str


@dataclass(frozen=True)
class Calendar:
    dataset: str
    years: tuple[tuple[int, tuple[CalendarCell, ...]], ...]
    summary: str


def latest_runs(runs: Iterable[Run]) -> dict[tuple[str, str], str]:
    """The latest run id of each (dataset, month), from runs in history order."""
    return {(run.dataset, run.month): run.run_id for run in runs}


def calendars(
    datasets: Sequence[Dataset],
    months: Sequence[Month],
    cells: Mapping[tuple[Dataset, Month], Cell],
    latest: Mapping[tuple[str, str], str],
) -> list[Calendar]:
    """A year x month grid per dataset; a cell opens the month's latest run."""
    wanted = set(months)
    out = []
    for dataset in datasets:
        years = []
        for year in sorted({m.year for m in months}):
            row = []
            for number_ in range(1, 13):
                month = Month(year, number_)
                if month not in wanted:
                    row.append(CalendarCell(str(month), "na", "", None, f"{month}: not published"))
                    continue
                cell = cells[(dataset, month)]
                if cell.state == "unpublished":
                    title = f"{dataset.value} {month}: not published"
                    row.append(CalendarCell(str(month), "na", "", None, title))
                    continue
                row.append(_calendar_cell(cell, latest.get((dataset.value, str(month)))))
            years.append((year, tuple(row)))
        summary = coverage_summary(cells, dataset, months)
        out.append(Calendar(dataset.value, tuple(years), summary))
    return out


def _calendar_cell(cell: Cell, latest_run: str | None) -> CalendarCell:
    text = {
        "loaded": _compact(cell.loaded_rows),
        "running": "running",
        "failed": "failed",
        "skipped": "skipped",
        "missing": "",
    }[cell.state]
    title = cell_title(cell, loaded_by=True)
    if latest_run and latest_run != cell.run_id:
        title += f"; latest run {latest_run}"
    if cell.error:
        title += f" - {cell.error[:300]}"
    return CalendarCell(str(cell.month), cell.state, text, latest_run or cell.run_id, title)


def _compact(rows: int | None) -> str:
    if rows is None:
        return ""
    if rows >= 1_000_000:
        return f"{rows / 1_000_000:.1f}M"
    if rows >= 10_000:
        return f"{rows / 1_000:.0f}k"
    return f"{rows:,}"


def coverage_json(
    datasets: Sequence[Dataset],
    months: Sequence[Month],
    cells: Mapping[tuple[Dataset, Month], Cell],
) -> dict[str, Any]:
    return {
        "datasets": [d.value for d in datasets],
        "months": [str(m) for m in months],
        "cells": [
            {
                "dataset": d.value,
                "month": str(m),
                "state": cells[(d, m)].state,
                "loaded_rows": cells[(d, m)].loaded_rows,
                "source": cells[(d, m)].source,
                "run_id": cells[(d, m)].run_id,
                "error": cells[(d, m)].error,
            }
            for d in datasets
            for m in months
        ],
    }


STATES: Final = tuple(RunState)


def state_counts(runs: Iterable[Run]) -> dict[str, int]:
    counts = {s.value: 0 for s in STATES}
    for run in runs:
        counts[run.state.value] += 1
    return counts
