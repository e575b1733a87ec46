"""Benchmark 7: the web UI's executions page over 10,000 runs.

``python -m bench.ui`` writes ``--runs`` synthetic runs (``taxi_pipeline.devkit.run_history``:
the lines the recorder appends, about 7 per run, a realistic mix of outcomes, a few still in
flight) into a fresh home's run history (SQLite), starts ``taxi-pipeline ui`` on a free port as its
own process, and times ``GET /`` from a keep-alive client: the first request (which reads and
derives the whole history) apart, then ``--requests`` requests on the warm server, spaced past the
cache's refresh interval so every one of them also asks the warehouse for new lines. Other pages
are timed the same way for comparison. Results go to ``bench/results/ui.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import child_env, free_port, hwm, median, say, scratch, taxi_pipeline_bin
from bench.common import write_results as write
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.devkit.run_history import SyntheticHistory, synthetic_history

TARGET_SECONDS = 0.2
_SPACING = 0.3
"""Seconds between timed requests: past the UI's 0.25 s refresh interval (a refresh each time)."""


def fill_history(path: Path, made: SyntheticHistory) -> int:
    """The history's lines and loads into the home's run history (``runs.sqlite``, which the
    embedded default's ``runs`` and the UI read), in one transaction."""
    store = SqliteHistory(path)
    try:
        store.import_history(made.events, made.loads)
    finally:
        store.close()
    return len(made.events)


def _time(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
    return elapsed, response


def _summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "requests": len(samples),
        "median_seconds": median(samples),
        "p95_seconds": p95,
        "max_seconds": ordered[-1],
        "all_seconds": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--name", default="ui")
    args = parser.parse_args(argv)

    with scratch("ui") as work:
        # Ten minutes old at the newest: outside the refresh overlap, as a day-old history is.
        end = datetime.now(UTC) - timedelta(minutes=10)
        made = synthetic_history(args.runs, end=end, seed=1, in_flight=args.in_flight)
        home = work / "home"
        home.mkdir()
        say(f"writing {len(made.events):,} lines of {args.runs:,} runs")
        lines = fill_history(home / "runs.sqlite", made)
        port = free_port()
        log = work / "ui.log"
        server = subprocess.Popen(
            [taxi_pipeline_bin(), "ui", "--port", str(port), "--home", str(home)],
            env=child_env(),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        try:
            payload = _measure(f"http://127.0.0.1:{port}", server, made, args, log)
        finally:
            server.terminate()
            server.wait(timeout=60)
    payload |= {"runs": args.runs, "lines": lines, "target_seconds": TARGET_SECONDS}
    path = write(args.name, payload)
    say(f"wrote {path}")
    return 0


def _measure(
    url: str,
    server: subprocess.Popen[bytes],
    made: SyntheticHistory,
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=120) as client:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the UI exited:\n{log.read_text()}")
            try:
                client.get("/static/ui.css")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        first, response = _time(client, "/")
        shown = response.text.count('<td class="id">')
        if shown != min(100, args.runs):
            raise RuntimeError(f"the page shows {shown} runs")
        say(f"first GET / (reads and derives the whole history): {first:.2f} s")
        pages = {
            "/": "/",
            "/?page=50": "/?page=50",
            "/?state=FAILED&label=trigger=schedule": "/?state=FAILED&label=trigger%3Dschedule",
            "/api/runs": "/api/runs",
            "/coverage": "/coverage",
            "/runs/{id}": f"/runs/{made.run_ids[len(made.run_ids) // 2]}",
        }
        timings: dict[str, list[float]] = {name: [] for name in pages}
        sizes: dict[str, int] = {}
        for _ in range(args.requests):
            for name, path in pages.items():
                time.sleep(_SPACING)
                elapsed, response = _time(client, path)
                timings[name].append(elapsed)
                sizes[name] = len(response.content)
        home_page = _summary(timings["/"])
        say(
            f"GET / warm: median {home_page['median_seconds'] * 1000:.0f} ms,"
            f" p95 {home_page['p95_seconds'] * 1000:.0f} ms"
        )
        rss = max(hwm(server.pid), psutil.Process(server.pid).memory_info().rss)
    return {
        "first_request_seconds": first,
        "pages": {name: _summary(t) | {"bytes": sizes[name]} for name, t in timings.items()},
        "rows_per_page": shown,
        "server_peak_rss_bytes": rss,
        "spacing_seconds": _SPACING,
    }


if __name__ == "__main__":
    raise SystemExit(main())
