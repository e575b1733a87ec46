"""The run history as text for people: the tables of ``runs`` and ``status``, the Gantt of
``runs show``. Pure: the CLI prints what these return; derivation lives in
:mod:`taxi_pipeline.domain.history`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import Cell, Run
from taxi_pipeline.domain.messages import RunState

# -- values from data -----------------------------------------------------------------------------

# C0 and C1 control characters and DEL (terminal escape sequences start with ESC or CSI, a
# carriage return overwrites the line) and the bidirectional overrides that reorder what a
# terminal shows; tab and newline are harmless and kept unless ``one_line``.
_UNPRINTABLE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_ONE_LINE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` safe to show on a terminal: every control character written out as ``\\x1b``.

    Everything that comes from data (file headers, bad-value samples, query results, labels,
    errors quoting them) passes through here before it is printed: an escape sequence in a file
    must not retitle the window or clear the screen, and is shown rather than silently dropped.
    ``one_line``: newlines and tabs too, so one value stays on one line (a table cell).
    """
    pattern = _UNPRINTABLE_ONE_LINE if one_line else _UNPRINTABLE
    return pattern.sub(_escape, text)


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``1 run``, ``3 runs``, ``1,500 rows``."""
    return f"{count:,} {singular if count == 1 else (many or singular + 's')}"


def rows_phrase(rows_in_file: int | None, rows_inserted: int | None) -> str:
    """The words every command uses for a run's rows: ``1,500 in file, 1,500 inserted``."""
    return f"{_number(rows_in_file) or '-'} in file, {_number(rows_inserted) or '-'} inserted"


# -- text rendering (pure: the CLI prints what these return) -------------------------------------


def aligned(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: set[int] | frozenset[int] = frozenset(),
) -> list[str]:
    """Columns padded to their widest cell (``right``: right-aligned), two spaces apart, each
    line stripped at its end. Nothing is cut or wrapped: a wide result stays one line per row."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return [line(header), *(line(row) for row in rows)]


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
    return printable(",".join(f"{k}={v}" for k, v in sorted(labels.items())), one_line=True)


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
        "ERROR",
    )
    rows = [
        (
            printable(r.run_id, one_line=True),
            printable(r.dataset, one_line=True) or "-",
            printable(r.month, one_line=True) or "-",
            r.state.value,
            _stamp(r.started_at or r.queued_at),
            format_duration(r.duration(now)),
            _number(r.rows_in_file),
            _number(r.rows_inserted),
            format_labels(r.labels),
            _one_line(r.error, 160) if r.error and r.state is not RunState.SUCCESS else "",
        )
        for r in runs
    ]
    # The error is last: its column starts where its header does.
    return aligned(header, rows, right={5, 6, 7})


def _one_line(text: str, limit: int) -> str:
    flat = printable(" ".join(text.split()), one_line=True)
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
                printable(step.step, one_line=True),
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
        f"run       {printable(run.run_id, one_line=True)}",
        f"dataset   {printable(run.dataset, one_line=True) or '-'}"
        f"   month {printable(run.month, one_line=True) or '-'}",
        f"state     {run.state.value}",
        f"labels    {format_labels(run.labels) or '-'}",
        f"queued    {_stamp(run.queued_at) or '-'}"
        + (f"   (waited {format_duration(run.queue_wait)})" if run.queue_wait is not None else ""),
        f"started   {_stamp(run.started_at) or '-'}",
        f"finished  {_stamp(run.finished_at) or '-'}",
        f"duration  {format_duration(run.duration(now)) or '-'}",
    ]
    if run.rows_in_file is not None or run.rows_inserted is not None:
        lines.append(f"rows      {rows_phrase(run.rows_in_file, run.rows_inserted)}")
    lines += ["", *gantt(run, width, now)]
    notes = [
        f"  {printable(s.step)} (try {s.attempt}): {printable(v)}"
        for s in run.steps
        for k, v in sorted(s.details.items())
        if k == "reason" and v
    ]
    if notes:
        lines += ["", "notes", *notes]
    failures = [s for s in run.steps if s.error]
    if failures:
        lines += ["", "errors and reasons"]
        lines += [
            f"  {printable(s.step)} (try {s.attempt}, {s.state.value}): {printable(s.error or '')}"
            for s in failures
        ]
    return lines


def coverage_summary(
    cells: Mapping[tuple[Dataset, Month], Cell],
    dataset: Dataset,
    months: Sequence[Month],
    *,
    loaded: str = "months loaded",
) -> str:
    """``20/31 months loaded (1,234 rows), 9 missing, 1 failed, 0 running, 1 skipped``; a
    month no upstream publishes for the dataset (fhvhv 2019-01) is not counted."""
    states = [cells[(dataset, m)].state for m in months]
    rows = sum(cells[(dataset, m)].loaded_rows or 0 for m in months)
    publishable = len(months) - states.count("unpublished")
    return (
        f"{states.count('loaded')}/{publishable} {loaded} ({rows:,} rows),"
        f" {states.count('missing')} missing, {states.count('failed')} failed,"
        f" {states.count('running')} running, {states.count('skipped')} skipped"
    )


def cell_title(cell: Cell, *, loaded_by: bool = False) -> str:
    """A coverage cell described (its tooltip): ``green 2019-01: loaded, 1,234 rows from the
    mirror, run X`` (``loaded by X`` for a loaded cell, with ``loaded_by``)."""
    title = f"{cell.dataset.value} {cell.month}: {cell.state}"
    if cell.loaded_rows is not None:
        title += f", {cell.loaded_rows:,} rows"
    if cell.source:
        title += f" from the {cell.source}"
    if cell.run_id:
        title += f", {'loaded by' if loaded_by and cell.state == 'loaded' else 'run'} {cell.run_id}"
    return title


def coverage_table(
    datasets: Sequence[Dataset],
    months: Sequence[Month],
    cells: Mapping[tuple[Dataset, Month], Cell],
) -> list[str]:
    """Text matrix, a row per month and a column per dataset, then a count per dataset."""

    def text(cell: Cell) -> str:
        if cell.state == "loaded":
            rows = _number(cell.loaded_rows)
            return f"{rows} {cell.source}" if cell.source else rows
        if cell.state == "running":
            return "running" + (f" ({_number(cell.loaded_rows)})" if cell.loaded_rows else "")
        return {
            "failed": "FAILED",
            "cancelled": "cancelled",
            "abandoned": "abandoned",
            "skipped": "skipped",
            "missing": ".",
            "unpublished": "-",
        }[cell.state]

    width = max([len(d.value) for d in datasets] + [len(text(c)) for c in cells.values()] + [9])
    out = ["MONTH    " + "  ".join(d.value.rjust(width) for d in datasets)]
    for month in months:
        out.append(f"{month}  " + "  ".join(text(cells[(d, month)]).rjust(width) for d in datasets))
    out.append("")
    for dataset in datasets:
        states = [cells[(dataset, m)].state for m in months]
        out.append(
            f"{dataset.value}: {coverage_summary(cells, dataset, months, loaded='loaded')}"
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
