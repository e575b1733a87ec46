"""Benchmark 6: a 12-month backfill at concurrency 1, 2 and 4.

``python -m bench.backfill`` generates twelve yellow months of 2019 (``--rows`` each, default
1,000,000: about 1/8 of the largest month, so the whole benchmark fits in a few minutes),
serves them over local HTTP and times ``taxi-pipeline backfill yellow --from 2019-01 --to
2019-12 --concurrency N`` into a fresh home, wall and peak RSS, checking the loaded row count.
Results go to ``bench/results/backfill.json``.
"""

from __future__ import annotations

import argparse
import subprocess

from bench.common import (
    Measured,
    child_env,
    generate,
    measure,
    say,
    scratch,
    summarize,
    taxi_pipeline_bin,
    write_results,
)
from taxi_pipeline.devkit.source_server import serve_directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per month")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--months", type=int, default=12, choices=range(1, 13), metavar="1..12")
    parser.add_argument("--name", default="backfill")
    args = parser.parse_args(argv)
    months = [f"2019-{m:02d}" for m in range(1, args.months + 1)]

    by_level: dict[int, list[Measured]] = {c: [] for c in args.concurrency}
    with scratch("backfill") as work:
        say(f"generating {len(months)} yellow months of {args.rows:,} rows")
        total_bytes = sum(
            generate(work / "source", args.rows, month, seed=1).stat().st_size for month in months
        )
        with serve_directory(work / "source") as server:
            for i in range(args.runs):
                for level in args.concurrency:
                    home = work / f"home-{level}-{i}"
                    argv_ = [
                        taxi_pipeline_bin(), "backfill", "yellow",
                        "--from", months[0], "--to", months[-1],
                        "--concurrency", str(level),
                        "--source-url", server.base_url, "--home", str(home),
                    ]  # fmt: skip
                    run = measure(argv_, env=child_env(), log=work / f"backfill-{level}-{i}.log")
                    count = subprocess.run(
                        [taxi_pipeline_bin(), "sql", "SELECT count(*) FROM yellow_tripdata",
                         "--format", "csv", "--home", str(home)],
                        capture_output=True, text=True, check=True, env=child_env(),
                    ).stdout.strip().splitlines()[-1]  # fmt: skip
                    if int(count) != args.rows * len(months):
                        raise RuntimeError(f"backfill loaded {count} rows")
                    subprocess.run(["rm", "-rf", str(home)], check=True)
                    by_level[level].append(run)
                    say(
                        f"concurrency {level} #{i + 1}: {run.wall_seconds:.1f} s,"
                        f" {run.peak_rss_bytes / 2**20:.0f} MiB"
                    )
    payload = {
        "months": len(months),
        "rows_per_month": args.rows,
        "source_bytes": total_bytes,
        "driver": "taxi-pipeline backfill (CLI, subprocess)",
        "concurrency": {str(level): summarize(runs) for level, runs in by_level.items()},
    }
    path = write_results(args.name, payload)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
