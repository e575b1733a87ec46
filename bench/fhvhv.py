"""Benchmark 9: a full-size fhvhv month end to end on the embedded default.

``python -m bench.fhvhv`` generates an fhvhv month of the TLC's size (20,000,000 rows, its 24
columns, the Parquet generator's row groups of 1,048,576 rows) with
``taxi_pipeline.devkit.parquet_generator``, serves it over local HTTP in the TLC's layout
(``taxi_pipeline.devkit.source_server``: ETag, Last-Modified) and measures, interleaved:

- ours: ``taxi-pipeline run fhvhv 2024-01 --tlc-url URL --home DIR`` (a subprocess, fresh
  home): download with the streaming Parquet verification, register, typed staging, the
  insert-only merge; wall and peak RSS (target: at most 1 GiB), rows counted afterwards;
- the re-run of the loaded month: wall and the body bytes the server sent for it (must be 0);
- limit: DuckDB alone, one ``INSERT INTO final SELECT ... FROM read_parquet`` of the same local
  file (``bench.limit_duckdb --parquet``), with DuckDB's default memory limit.

Results go to ``bench/results/fhvhv.json``; ``python -m bench.report`` renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import (
    GIB,
    PYTHON,
    Measured,
    child_env,
    measure,
    say,
    scratch,
    summarize,
    taxi_pipeline_bin,
    write_results,
)
from taxi_pipeline.devkit.source_server import TLC_PREFIX, SourceServer, serve_directory

FULL_FHVHV_ROWS = 20_000_000
"""About the rows of a published fhvhv month (~20M, ~450 MB)."""
MONTH = "2024-01"
TARGET_RSS_BYTES = 1 * GIB


def _generate(folder: Path, rows: int) -> tuple[Path, float]:
    started = time.perf_counter()
    subprocess.run(
        [PYTHON, "-m", "taxi_pipeline.devkit.parquet_generator", "--dataset", "fhvhv",
         "--month", MONTH, "--rows", str(rows), "--seed", "1", "--out", str(folder)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return folder / f"fhvhv_tripdata_{MONTH}.parquet", time.perf_counter() - started


def _count_rows(home: Path) -> int:
    out = subprocess.run(
        [taxi_pipeline_bin(), "sql", "SELECT count(*) FROM fhvhv_tripdata", "--format", "csv",
         "--home", str(home)],
        capture_output=True, text=True, check=True, env=child_env(),
    ).stdout  # fmt: skip
    return int(out.strip().splitlines()[-1])


def _ours(server: SourceServer, home: Path, log: Path) -> tuple[Measured, int]:
    server.reset_log()
    argv = [taxi_pipeline_bin(), "run", "fhvhv", MONTH, "--tlc-url", server.tlc_base_url,
            "--home", str(home)]  # fmt: skip
    result = measure(argv, env=child_env(), log=log)
    return result, server.bytes_sent


def _limit(source: Path, work: Path, log: Path) -> tuple[Measured, int]:
    database = work / "limit.duckdb"
    database.unlink(missing_ok=True)
    result = measure(
        [PYTHON, "-m", "bench.limit_duckdb", "--parquet", str(source), str(database)], log=log
    )
    rows = json.loads(log.read_text().strip().splitlines()[-1])["rows"]
    database.unlink(missing_ok=True)
    return result, int(rows)


def _expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise RuntimeError(f"{what}: {got:,} rows loaded, expected {want:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=FULL_FHVHV_ROWS)
    parser.add_argument("--runs", type=int, default=1, help="runs of ours and of the limit")
    parser.add_argument("--no-limit", action="store_true", help="skip the DuckDB-alone limit")
    parser.add_argument("--name", default="fhvhv", help="results file bench/results/NAME.json")
    args = parser.parse_args(argv)

    with scratch("fhvhv") as work:
        say(f"generating an fhvhv month of {args.rows:,} rows")
        source, generated_seconds = _generate(work / "source" / TLC_PREFIX, args.rows)
        size = source.stat().st_size
        say(f"generated {size / 2**20:,.0f} MiB in {generated_seconds:.0f} s")
        firsts, reruns, limits, first_bytes, rerun_bytes = [], [], [], [], []
        with serve_directory(work / "source") as server:
            for i in range(args.runs):
                home = work / f"home-{i}"
                first, sent = _ours(server, home, work / f"ours-{i}.log")
                _expect(_count_rows(home), args.rows, "taxi-pipeline run fhvhv")
                firsts.append(first)
                first_bytes.append(sent)
                say(
                    f"ours #{i + 1}: {first.wall_seconds:.1f} s,"
                    f" {first.peak_rss_bytes / 2**20:.0f} MiB, {sent:,} bytes downloaded"
                )
                again, sent = _ours(server, home, work / f"rerun-{i}.log")
                reruns.append(again)
                rerun_bytes.append(sent)
                say(f"re-run #{i + 1}: {again.wall_seconds:.1f} s, {sent:,} bytes downloaded")
                shutil.rmtree(home, ignore_errors=True)
                if not args.no_limit:
                    limit, rows = _limit(source, work, work / f"limit-{i}.log")
                    _expect(rows, args.rows, "limit")
                    limits.append(limit)
                    say(
                        f"limit #{i + 1}: {limit.wall_seconds:.1f} s,"
                        f" {limit.peak_rss_bytes / 2**20:.0f} MiB"
                    )

    ours = summarize(firsts)
    payload = {
        "rows": args.rows,
        "month": MONTH,
        "file_bytes": size,
        "generated_seconds": generated_seconds,
        "ours": ours | {"bytes_downloaded": first_bytes},
        "rerun": summarize(reruns) | {"bytes_downloaded": rerun_bytes},
        "limit": summarize(limits) if limits else None,
        "targets": {"peak_rss_bytes_max": TARGET_RSS_BYTES},
    }
    path = write_results(args.name, payload)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
