"""The run history as text for people: the tables of ``runs`` and ``status``, the Gantt of
``runs show``. Pure: the CLI prints what these return; derivation lives in
:mod:`taxi_pipeline.domain.history`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import Cell, Run
from taxi_pipeline.domain.messages import RunState

# -- text rendering (pure: the CLI prints what these return) -------------------------------------


def format_duration(value: timedelta | None) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``, ``2h03m``; empty when unknown."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _number(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _stamp(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def runs_table(runs: Sequence[Run], now: datetime | None = None) -> list[str]:
    """One line per run: id, dataset, month, state, start, duration, rows, labels, error.

    The header comes first; no runs give the header alone (the CLI says why there are none).
    """
    header = (
        "RUN ID",
        "DATASET",
        "MONTH",
        "STATE",
        "STARTED (UTC)",
        "DURATION",
        "ROWS IN",
        "INSERTED",
        "LABELS",
    )
    rows = [
        (
            r.run_id,
            r.dataset or "-",
            r.month or "-",
            r.state.value,
            _stamp(r.started_at or r.queued_at),
            format_duration(r.duration(now)),
            _number(r.rows_in_file),
            _number(r.rows_inserted),
            format_labels(r.labels),
        )
        for r in runs
    ]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    right = {5, 6, 7}

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [line(header)]
    for run, row in zip(runs, rows, strict=True):
        text = line(row)
        if run.error and run.state is not RunState.SUCCESS:
            text += f"  {_one_line(run.error, 100)}"
        out.append(text)
    return out


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


_BAR: Final = {
    RunState.SUCCESS: "█",
    RunState.SKIPPED: "▒",
    RunState.FAILED: "X",
    RunState.RETRYING: "R",
    RunState.RUNNING: "▶",
    RunState.QUEUED: "·",
    RunState.CANCELLED: "C",
    RunState.ABANDONED: "?",
}
_WAIT: Final = "░"


def gantt(run: Run, width: int = 50, now: datetime | None = None) -> list[str]:
    """The run's steps as a text timeline: one row per step attempt, bars on a shared axis.

    ``·`` queued (waiting for a slot), ``░`` waiting for the dataset-month merge lock, ``█``
    success, ``▒`` skipped, ``R`` failed with a transient error (retried), ``X`` failed,
    ``C`` cancelled, ``▶`` still running (in an ABANDONED run: when its process vanished).
    """
    now = now or datetime.now(UTC)
    origin = run.queued_at or run.started_at
    if origin is None:
        return ["(no timings recorded)"]
    end = run.finished_at or (now if run.is_active else run.last_event_at) or origin
    for step in run.steps:
        if step.finished_at and step.finished_at > end:
            end = step.finished_at
    span = max((end - origin).total_seconds(), 1e-3)

    def col(moment: datetime) -> int:
        """The column a moment falls in (a bar's first column)."""
        return min(width - 1, max(0, int((moment - origin).total_seconds() / span * width)))

    def edge(moment: datetime) -> int:
        """The first column after a bar that ends at ``moment``."""
        return min(width, max(0, math.ceil((moment - origin).total_seconds() / span * width)))

    rows: list[tuple[str, str, str, str, str, str, str]] = []
    bars: list[str] = []
    if run.queued_at is not None:
        queue_end = run.started_at or end
        rows.append(
            ("queue", "", RunState.QUEUED.value, "+0.00s", _dur(queue_end - origin), "", "")
        )
        bars.append(_bar(col(origin), edge(queue_end), width, _BAR[RunState.QUEUED], 0, 0))
    for step in run.steps:
        start = step.started_at or origin
        stop = step.finished_at or (now if run.is_active else run.last_event_at or start)
        wait_to = col(start + step.waited)
        rows.append(
            (
                step.step,
                str(step.attempt) if step.attempt else "",
                step.state.value,
                "+" + _dur(start - origin),
                _dur(stop - start),
                _number(step.rows),
                _number(step.bytes),
            )
        )
        bars.append(_bar(col(start), edge(stop), width, _BAR[step.state], col(start), wait_to))
    header = ("STEP", "TRY", "STATE", "START", "TOOK", "ROWS", "BYTES")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    right = {1, 3, 4, 5, 6}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        )

    scale = f"0s{format_duration(end - origin).rjust(width - 2)}"
    out = [f"{fmt(header)}  |{scale}|"]
    out += [f"{fmt(row)}  |{bar}|" for row, bar in zip(rows, bars, strict=True)]
    return out


def _dur(value: timedelta) -> str:
    return f"{max(value.total_seconds(), 0.0):.2f}s"


def _bar(start: int, stop: int, width: int, mark: str, wait_from: int, wait_to: int) -> str:
    cells = [" "] * width
    for i in range(start, max(stop, start + 1)):
        cells[min(i, width - 1)] = _WAIT if wait_from <= i < wait_to else mark
    return "".join(cells)


def describe_run(run: Run, width: int = 50, now: datetime | None = None) -> list[str]:
    """``runs show``: the run's header, its Gantt timeline and its error."""
    lines = [
        f"run       {run.run_id}",
        f"dataset   {run.dataset or '-'}   month {run.month or '-'}",
        f"state     {run.state.value}",
        f"labels    {format_labels(run.labels) or '-'}",
        f"queued    {_stamp(run.queued_at) or '-'}"
        + (f"   (waited {format_duration(run.queue_wait)})" if run.queue_wait is not None else ""),
        f"started   {_stamp(run.started_at) or '-'}",
        f"finished  {_stamp(run.finished_at) or '-'}",
        f"duration  {format_duration(run.duration(now)) or '-'}",
    ]
    if run.rows_in_file is not None or run.rows_inserted is not None:
        lines.append(
            f"rows      {_number(run.rows_in_file) or '-'} in file,"
            f" {_number(run.rows_inserted) or '-'} inserted"
        )
    lines += ["", *gantt(run, width, now)]
    notes = [
        f"  {s.step} (try {s.attempt}): {v}"
        for s in run.steps
        for k, v in sorted(s.details.items())
        if k == "reason" and v
    ]
    if notes:
        lines += ["", "notes", *notes]
    failures = [s for s in run.steps if s.error]
    if failures:
        lines += ["", "errors and reasons"]
        lines += [f"  {s.step} (try {s.attempt}, {s.state.value}): {s.error}" for s in failures]
    return lines


def coverage_table(
    datasets: Sequence[Dataset],
    months: Sequence[Month],
    cells: Mapping[tuple[Dataset, Month], Cell],
) -> list[str]:
    """Text matrix, a row per month and a column per dataset, then a count per dataset."""

    def text(cell: Cell) -> str:
        if cell.state == "loaded":
            return _number(cell.loaded_rows)
        if cell.state == "running":
            return "running" + (f" ({_number(cell.loaded_rows)})" if cell.loaded_rows else "")
        return {
            "failed": "FAILED",
            "cancelled": "cancelled",
            "abandoned": "abandoned",
            "skipped": "skipped",
            "missing": ".",
        }[cell.state]

    width = max([len(d.value) for d in datasets] + [len(text(c)) for c in cells.values()] + [9])
    out = ["MONTH    " + "  ".join(d.value.rjust(width) for d in datasets)]
    for month in months:
        out.append(f"{month}  " + "  ".join(text(cells[(d, month)]).rjust(width) for d in datasets))
    out.append("")
    for dataset in datasets:
        states = [cells[(dataset, m)].state for m in months]
        rows = sum(cells[(dataset, m)].loaded_rows or 0 for m in months)
        out.append(
            f"{dataset.value}: {states.count('loaded')}/{len(months)} loaded ({rows:,} rows),"
            f" {states.count('missing')} missing, {states.count('failed')} failed,"
            f" {states.count('running')} running, {states.count('skipped')} skipped"
            + "".join(
                f", {states.count(state)} {state}"
                for state in ("cancelled", "abandoned")
                if states.count(state)
            )
        )
    failed = [
        c
        for c in cells.values()
        if c.state in ("failed", "cancelled", "abandoned", "skipped") and c.error
    ]
    for cell in failed:
        out.append(
            f"  {cell.dataset.value} {cell.month} {cell.state}: {_one_line(cell.error or '', 110)}"
        )
    return out
