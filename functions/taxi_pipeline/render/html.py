"""``taxi-pipeline status --html FILE``: the coverage matrix and a run timeline as one page.

Self-contained: inline CSS and an inline SVG, no script and no network asset, so the file can be
mailed, attached to a ticket or opened offline. Every value is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Final

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import Cell, Run
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.render.text import format_duration, format_labels

_CELL_COLOURS: Final = {
    "loaded": "#2e7d32",
    "running": "#1565c0",
    "failed": "#c62828",
    "cancelled": "#8e24aa",
    "abandoned": "#6a1b9a",
    "skipped": "#9e9e9e",
    "missing": "#eeeeee",
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
_MONTH_NAMES: Final = tuple(datetime(2000, m, 1).strftime("%b") for m in range(1, 13))

_CSS: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #212121; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table.matrix { border-collapse: collapse; margin-bottom: 1em; }
table.matrix th, table.matrix td { border: 1px solid #fff; padding: 4px 6px; text-align: right;
  min-width: 4.5em; font-variant-numeric: tabular-nums; }
table.matrix td.loaded, table.matrix td.running, table.matrix td.failed { color: #fff; }
table.matrix td.na { background: #fafafa; }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 6px; color: #fff; }
.summary { color: #555; }
table.runs { border-collapse: collapse; font-size: 13px; }
table.runs td, table.runs th { padding: 2px 8px; text-align: left; border-bottom: 1px solid #eee; }
table.runs td:nth-child(-n+5) { white-space: nowrap; }
"""


def _compact(rows: int | None) -> str:
    if rows is None:
        return ""
    if rows >= 1_000_000:
        return f"{rows / 1_000_000:.1f}M"
    if rows >= 10_000:
        return f"{rows / 1_000:.0f}k"
    return f"{rows:,}"


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
                "loaded": _compact(cell.loaded_rows),
                "running": "running",
                "failed": "FAILED",
                "cancelled": "cancelled",
                "abandoned": "abandoned",
                "skipped": "skipped",
                "missing": "",
            }[cell.state]
            title = f"{dataset.value} {month}: {cell.state}"
            if cell.loaded_rows is not None:
                title += f", {cell.loaded_rows:,} rows"
            if cell.run_id:
                title += f", run {cell.run_id}"
            if cell.error:
                title += f"\n{cell.error}"
            tds.append(
                f'<td class="{cell.state}" style="background:{_CELL_COLOURS[cell.state]}"'
                f' title="{escape(title)}">{escape(label)}</td>'
            )
        body.append(f"<tr><th>{year}</th>{''.join(tds)}</tr>")
    states = [cells[(dataset, m)].state for m in months]
    rows = sum(cells[(dataset, m)].loaded_rows or 0 for m in months)
    summary = (
        f"{states.count('loaded')}/{len(months)} months loaded ({rows:,} rows),"
        f" {states.count('missing')} missing, {states.count('failed')} failed,"
        f" {states.count('running')} running, {states.count('skipped')} skipped"
    )
    return (
        f"<h2>{escape(dataset.value)}</h2>"
        f'<table class="matrix"><tr><th></th>{head}</tr>{"".join(body)}</table>'
        f'<p class="summary">{escape(summary)}</p>'
    )


def timeline_svg(runs: Sequence[Run], now: datetime, width: int = 900) -> str:
    """A Gantt picture: one row per run, one bar per step attempt, coloured by state."""
    timed = [r for r in runs if r.first_seen is not None]
    if not timed:
        return "<p>No runs recorded yet.</p>"
    begin = min(r.queued_at or r.started_at or now for r in timed)
    end = max(r.finished_at or (now if r.is_active else r.last_event_at) or now for r in timed)
    span = max((end - begin).total_seconds(), 1e-3)
    label_w, row_h, top = 230, 18, 24
    plot_w = width - label_w - 10
    height = top + row_h * len(timed) + 10

    def x(moment: datetime) -> float:
        return label_w + (moment - begin).total_seconds() / span * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' font-family="system-ui, sans-serif" font-size="11">',
        f'<text x="{label_w}" y="14">{escape(begin.strftime("%Y-%m-%d %H:%M:%S"))} UTC</text>',
        f'<text x="{width - 10}" y="14" text-anchor="end">+{escape(format_duration(end - begin))}'
        "</text>",
    ]
    for index, run in enumerate(timed):
        y = top + index * row_h
        parts.append(
            f'<text x="4" y="{y + 12}">{escape(run.dataset)} {escape(run.month)}'
            f" · {escape(run.run_id[-8:])}</text>"
        )
        if run.queued_at is not None and run.started_at is not None:
            parts.append(_rect(x(run.queued_at), x(run.started_at), y, "#e0e0e0", "queued"))
        for step in run.steps:
            if step.started_at is None:
                continue
            stop = step.finished_at or (now if run.is_active else step.started_at)
            took = format_duration(stop - step.started_at)
            tip = f"{step.step} try {step.attempt}: {step.state.value} {took}"
            if step.error:
                tip += f" - {step.error[:300]}"
            if step.waited.total_seconds() > 0:
                parts.append(
                    _rect(
                        x(step.started_at),
                        x(step.started_at + step.waited),
                        y,
                        "#90caf9",
                        f"{step.step} waiting for the merge lock",
                    )
                )
            parts.append(
                _rect(x(step.started_at + step.waited), x(stop), y, _STATE_COLOURS[step.state], tip)
            )
    parts.append("</svg>")
    return "".join(parts)


def _rect(x0: float, x1: float, y: int, colour: str, tip: str) -> str:
    w = max(x1 - x0, 1.5)
    return (
        f'<rect x="{x0:.1f}" y="{y + 2}" width="{w:.1f}" height="13" fill="{colour}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _runs_table(runs: Sequence[Run], now: datetime) -> str:
    rows = []
    for run in reversed(runs):
        colour = _STATE_COLOURS[run.state]
        rows.append(
            "<tr>"
            f"<td>{escape(run.run_id)}</td><td>{escape(run.dataset)}</td>"
            f"<td>{escape(run.month)}</td>"
            f'<td style="color:{colour}"><b>{run.state.value}</b></td>'
            f"<td>{escape(format_duration(run.duration(now)))}</td>"
            f"<td>{'' if run.rows_inserted is None else f'{run.rows_inserted:,}'}</td>"
            f"<td>{escape(format_labels(run.labels))}</td>"
            f"<td>{escape((run.error or '')[:200])}</td>"
            "</tr>"
        )
    return (
        '<table class="runs"><tr><th>run</th><th>dataset</th><th>month</th><th>state</th>'
        "<th>duration</th><th>inserted</th><th>labels</th><th>error</th></tr>"
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
    legend = "".join(
        f'<span style="background:{colour};{"color:#555" if state == "missing" else ""}">'
        f"{state}</span>"
        for state, colour in _CELL_COLOURS.items()
    )
    latest = list(runs)[-timeline_runs:]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>taxi-pipeline status</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>taxi-pipeline status</h1>"
        f'<p class="summary">Generated {escape(now.strftime("%Y-%m-%d %H:%M:%S"))} UTC;'
        f" months {escape(str(months[0]))} .. {escape(str(months[-1]))} (published upstream)."
        " Cells show the rows of the latest completed load; hover for the run.</p>"
        f'<p class="legend">{legend}</p>'
        + "".join(_matrix(d, months, cells) for d in datasets)
        + f"<h2>Timeline of the latest {len(latest)} runs</h2>"
        + timeline_svg(latest, now)
        + "<h2>Runs</h2>"
        + _runs_table(latest, now)
        + "</body></html>\n"
    )
