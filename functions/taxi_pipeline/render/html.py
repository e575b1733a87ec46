"""``taxi-pipeline status --html FILE``: the coverage matrix and a run timeline as one page.

Self-contained: inline CSS and an inline SVG, no script and no network asset, so the file can be
mailed, attached to a ticket or opened offline. Every value is HTML-escaped (and its control
characters written out). The page fits a 1400 px window; every colour has a legend entry; every
number is written one way (``1,500``); failure reasons are on the page, not only in tooltips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import Cell, Run, StepRun
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.render.text import cell_title, coverage_summary, format_duration, printable

_CELL_COLOURS: Final = {
    "loaded": "#2e7d32",
    "running": "#1565c0",
    "failed": "#c62828",
    "cancelled": "#8e24aa",
    "abandoned": "#6a1b9a",
    "skipped": "#9e9e9e",
    "missing": "#eeeeee",
    "unpublished": "#ffffff",
}
_STATE_COLOURS: Final = {
    RunState.SUCCESS: "#2e7d32",
    RunState.SKIPPED: "#9e9e9e",
    RunState.FAILED: "#c62828",
    RunState.RETRYING: "#ef6c00",
    RunState.RUNNING: "#1565c0",
    RunState.QUEUED: "#bdbdbd",
    RunState.CANCELLED: "#8e24aa",
    RunState.ABANDONED: "#6a1b9a",
}
_QUEUED_COLOUR: Final = "#e0e0e0"
_LOCK_WAIT_COLOUR: Final = "#90caf9"
_TIMELINE_LEGEND: Final = (
    (_QUEUED_COLOUR, "queued (waiting for a slot)"),
    (_LOCK_WAIT_COLOUR, "merge waiting for the dataset-month lock"),
    (_STATE_COLOURS[RunState.SUCCESS], "step succeeded"),
    (_STATE_COLOURS[RunState.SKIPPED], "step skipped"),
    (_STATE_COLOURS[RunState.RETRYING], "step failed, retried"),
    (_STATE_COLOURS[RunState.FAILED], "step failed"),
    (_STATE_COLOURS[RunState.RUNNING], "step running"),
)
_MONTH_NAMES: Final = tuple(datetime(2000, m, 1).strftime("%b") for m in range(1, 13))

PAGE_WIDTH: Final = 1400
"""The window the page is laid out for (and checked in, headless Chromium)."""
_SVG_WIDTH: Final = 1280

_CSS: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; max-width: 1320px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.matrix { border-collapse: collapse; margin-bottom: 0.5em; }
table.matrix th, table.matrix td { border: 1px solid #fff; padding: 4px 6px; text-align: right;
  min-width: 5.5em; font-variant-numeric: tabular-nums; }
table.matrix td.loaded, table.matrix td.running, table.matrix td.failed { color: #fff; }
table.matrix td.na { background: #fafafa; }
.legend { margin: 0.4em 0; }
.legend span.key { display: inline-block; margin-right: 14px; white-space: nowrap; }
.legend span.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 5px;
  vertical-align: -2px; border: 1px solid #bbb; }
.summary { color: #555; }
ul.reasons { margin: 0.3em 0 1em; padding-left: 1.2em; }
ul.reasons li { overflow-wrap: anywhere; }
table.runs { border-collapse: collapse; font-size: 13px; width: 100%; table-layout: fixed; }
table.runs td, table.runs th { padding: 3px 6px; text-align: left; border-bottom: 1px solid #eee;
  vertical-align: top; overflow-wrap: anywhere; }
table.runs td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.runs td.when { white-space: nowrap; }
svg text { fill: #212121; }
"""


def _text(value: str | None) -> str:
    """A value from data, as HTML text."""
    return escape(printable(value or ""))


def _rows(value: int | None) -> str:
    """Every count on the page is written this one way: ``1,500``, ``7,696,617``."""
    return "" if value is None else f"{value:,}"


def _swatches(entries: Sequence[tuple[str, str]]) -> str:
    return (
        '<p class="legend">'
        + "".join(
            f'<span class="key"><span class="swatch" style="background:{colour}"></span>'
            f"{escape(label)}</span>"
            for colour, label in entries
        )
        + "</p>"
    )


def _matrix(
    dataset: Dataset, months: Sequence[Month], cells: Mapping[tuple[Dataset, Month], Cell]
) -> str:
    years = sorted({m.year for m in months})
    wanted = set(months)
    head = "".join(f"<th>{name}</th>" for name in _MONTH_NAMES)
    body = []
    for year in years:
        tds = []
        for number in range(1, 13):
            month = Month(year, number)
            if month not in wanted:
                tds.append('<td class="na"></td>')
                continue
            cell = cells[(dataset, month)]
            label = {
                "loaded": _rows(cell.loaded_rows),
                "running": "running",
                "failed": "FAILED",
                "cancelled": "cancelled",
                "abandoned": "abandoned",
                "skipped": "skipped",
                "missing": "",
                "unpublished": "",
            }[cell.state]
            tds.append(
                f'<td class="{cell.state}" style="background:{_CELL_COLOURS[cell.state]}"'
                f' title="{_text(cell_title(cell))}">{escape(label)}</td>'
            )
        body.append(f"<tr><th>{year}</th>{''.join(tds)}</tr>")
    summary = coverage_summary(cells, dataset, months)
    reasons = [
        f"<li><b>{month} {cell.state}</b>: {_text(cell.error)}"
        f"{f' <span class=summary>(run {_text(cell.run_id)})</span>' if cell.run_id else ''}</li>"
        for month in months
        if (cell := cells[(dataset, month)]).state in ("failed", "skipped") and cell.error
    ]
    return (
        f"<h2>{escape(dataset.value)}</h2>"
        f'<table class="matrix"><tr><th></th>{head}</tr>{"".join(body)}</table>'
        f'<p class="summary">{escape(summary)}</p>'
        + (f'<ul class="reasons">{"".join(reasons)}</ul>' if reasons else "")
    )


def _extent(run: Run) -> tuple[datetime, datetime] | None:
    """Where a run's bars begin (queued, else started) and end (finished, else its last line:
    a run left RUNNING by a killed process does not stretch the axis to now)."""
    origin = run.queued_at or run.started_at
    if origin is None:
        return None
    end = run.finished_at or run.last_event_at or origin
    for step in run.steps:
        if step.finished_at is not None and step.finished_at > end:
            end = step.finished_at
    return origin, max(end, origin)


def _tick_step(span: float, most: int = 8) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten seconds) giving at most ``most``."""
    raw = span / most
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def timeline_svg(runs: Sequence[Run], now: datetime, width: int = _SVG_WIDTH) -> str:
    """A Gantt picture: one row per run drawn from its own start, one bar per step attempt.

    All rows share one axis, 0 to the longest run shown, so the bars' lengths compare; when
    each run began is in the table below (a wall-clock axis over runs minutes apart made every
    bar of a sub-second run 1-2 px wide)."""
    extents = [(run, extent) for run in runs if (extent := _extent(run)) is not None]
    if not extents:
        return "<p>No runs recorded yet.</p>"
    span = max(max((end - origin).total_seconds() for _, (origin, end) in extents), 1e-3)
    label_w, row_h, top, right = 330, 20, 30, 70
    plot_w = width - label_w - right
    height = top + row_h * len(extents) + 8

    def x(offset: timedelta) -> float:
        return label_w + max(offset.total_seconds(), 0.0) / span * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' font-family="system-ui, sans-serif" font-size="11" role="img"'
        f' aria-label="run timeline">',
    ]
    step = _tick_step(span)
    ticks = int(span / step + 1e-9)
    for index in range(ticks + 1):
        tick_x = label_w + index * step / span * plot_w
        label = format_duration(timedelta(seconds=index * step)) if index else "0s"
        parts.append(
            f'<line x1="{tick_x:.1f}" y1="{top - 6}" x2="{tick_x:.1f}" y2="{height - 6}"'
            ' stroke="#e8e8e8"/>'
            f'<text x="{tick_x:.1f}" y="{top - 10}" text-anchor="middle">{escape(label)}</text>'
        )
    for index, (run, (origin, end)) in enumerate(extents):
        y = top + index * row_h
        parts.append(
            f'<text x="4" y="{y + 13}">{_text(run.dataset)} {_text(run.month)}'
            f"  {_text(run.run_id)}  {run.state.value}</text>"
        )
        if run.queued_at is not None and run.started_at is not None:
            parts.append(
                _rect(x(timedelta(0)), x(run.started_at - origin), y, _QUEUED_COLOUR, "queued")
            )
        for attempt in run.steps:
            parts.extend(_step_rects(attempt, origin, x, y, now if run.is_active else None))
        parts.append(
            f'<text x="{label_w + plot_w + 6}" y="{y + 13}">'
            f"{escape(format_duration(end - origin))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _step_rects(
    attempt: StepRun,
    origin: datetime,
    x: Callable[[timedelta], float],
    y: int,
    running_until: datetime | None,
) -> list[str]:
    if attempt.started_at is None:
        return []
    stop = attempt.finished_at or running_until or attempt.started_at
    took = format_duration(stop - attempt.started_at)
    tip = f"{attempt.step} try {attempt.attempt}: {attempt.state.value} {took}"
    if attempt.error:
        tip += f" - {attempt.error[:300]}"
    out = []
    begin = attempt.started_at - origin
    if attempt.waited.total_seconds() > 0:
        out.append(
            _rect(
                x(begin),
                x(begin + attempt.waited),
                y,
                _LOCK_WAIT_COLOUR,
                f"{attempt.step} waiting for the merge lock",
            )
        )
    out.append(
        _rect(
            x(begin + attempt.waited),
            x(stop - origin),
            y,
            _STATE_COLOURS[attempt.state],
            tip,
            state=attempt.state.value,
        )
    )
    return out


def _rect(x0: float, x1: float, y: int, colour: str, tip: str, state: str = "") -> str:
    w = max(x1 - x0, 2.0)
    data = f' data-state="{state}"' if state else ""
    return (
        f'<rect class="bar"{data} x="{x0:.1f}" y="{y + 3}" width="{w:.1f}" height="14"'
        f' fill="{colour}"><title>{_text(tip)}</title></rect>'
    )


def _runs_table(runs: Sequence[Run], now: datetime) -> str:
    widths = (15, 5.5, 5.5, 6.5, 12.5, 6, 7, 6.5, 14, 21.5)  # percent of the page width
    head = ("run", "dataset", "month", "state", "started (UTC)", "duration", "rows in file",
            "inserted", "labels", "error or reason")  # fmt: skip
    numeric = {5, 6, 7}
    rows = []
    for run in reversed(runs):
        colour = _STATE_COLOURS[run.state]
        began = run.started_at or run.queued_at
        cells = (
            _text(run.run_id),
            _text(run.dataset),
            _text(run.month),
            f'<b style="color:{colour}">{run.state.value}</b>',
            escape(began.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if began else ""),
            escape(format_duration(run.duration(now))),
            _rows(run.rows_in_file),
            _rows(run.rows_inserted),
            # One label per line: a cell never breaks a label in the middle.
            "<br>".join(_text(f"{k}={v}") for k, v in sorted(run.labels.items())),
            _text((run.error or "")[:600]) if run.state is not RunState.SUCCESS else "",
        )
        rows.append(
            "<tr>"
            + "".join(
                f'<td class="num">{c}</td>'
                if i in numeric
                else (f'<td class="when">{c}</td>' if i == 4 else f"<td>{c}</td>")
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    return (
        '<table class="runs"><colgroup>'
        + "".join(f'<col style="width:{w}%">' for w in widths)
        + "</colgroup><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def render(
    datasets: Sequence[Dataset],
    months: Sequence[Month],
    cells: Mapping[tuple[Dataset, Month], Cell],
    runs: Sequence[Run],
    *,
    now: datetime | None = None,
    timeline_runs: int = 40,
) -> str:
    """The whole page: matrix per dataset, timeline of the latest runs, their table."""
    now = now or datetime.now(UTC)
    latest = list(runs)[-timeline_runs:]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta name="viewport" content="width={PAGE_WIDTH}">'
        "<title>taxi-pipeline status</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>taxi-pipeline status</h1>"
        f'<p class="summary">Generated {escape(now.strftime("%Y-%m-%d %H:%M:%S"))} UTC;'
        f" months {escape(str(months[0]))} .. {escape(str(months[-1]))} (published upstream)."
        " Cells show the rows of the latest completed load.</p>"
        + _swatches([(colour, state) for state, colour in _CELL_COLOURS.items()])
        + "".join(_matrix(d, months, cells) for d in datasets)
        + f"<h2>Timeline of the latest {len(latest)} runs</h2>"
        '<p class="summary">Each run is drawn from the moment it was queued, on one axis'
        " shared by all rows (0 to the longest run shown); the table below says when each"
        " began.</p>"
        + _swatches(_TIMELINE_LEGEND)
        + timeline_svg(latest, now)
        + "<h2>Runs</h2>"
        + _runs_table(latest, now)
        + "</body></html>\n"
    )
