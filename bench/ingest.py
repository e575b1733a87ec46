"""Benchmarks 1 and 2: a month ingest end to end, and the re-run of the loaded month.

``python -m bench.ingest`` generates a full-size yellow month (7,667,792 rows, ~140 MB gzip),
serves it over local HTTP (``taxi_pipeline.devkit.source_server``) and measures, in one run,
interleaved so that noise hits every contender alike:

- ours: ``taxi-pipeline run yellow 2019-01 --source-url URL --home DIR`` (a subprocess, fresh
  home), wall and peak RSS; then the same command again (the re-run): wall, and the body bytes
  the source server sent for it (must be 0);
- limit: DuckDB alone from the same local file (``bench.limit_duckdb``);
- peer: pandas ``read_csv(chunksize=100000)`` -> PostgreSQL ``to_sql`` (the zoomcamp's style,
  in ``bench/.work/venv``), and ``gzip -dc | psql -c "COPY ... FROM STDIN"`` of the same file,
  against a PostgreSQL server started for the run. The server's own peak RSS is recorded apart.

Results go to ``bench/results/ingest.json``; ``python -m bench.report`` renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from bench.common import (
    FULL_MONTH_ROWS,
    GIB,
    PYTHON,
    Measured,
    RssSampler,
    child_env,
    generate,
    measure,
    say,
    scratch,
    summarize,
    taxi_pipeline_bin,
    write_results,
)
from taxi_pipeline.devkit.source_server import SourceServer, serve_directory

TARGET_WALL_RATIO = 1.3
TARGET_RSS_BYTES = 1 * GIB
TARGET_RERUN_RATIO = 0.15

# The Postgres variant of the reference table (text / timestamp / integer / double precision).
_PG_TABLE = """
CREATE TABLE yellow_copy (
  "VendorID" text, tpep_pickup_datetime timestamp, tpep_dropoff_datetime timestamp,
  passenger_count double precision, trip_distance double precision, "RatecodeID" text,
  store_and_fwd_flag text, "PULocationID" text, "DOLocationID" text,
  payment_type double precision, fare_amount double precision, extra double precision,
  mta_tax double precision, tip_amount double precision, tolls_amount double precision,
  improvement_surcharge double precision, total_amount double precision,
  congestion_surcharge double precision
)"""


def _count_rows(home: Path) -> int:
    out = subprocess.run(
        [taxi_pipeline_bin(), "sql", "SELECT count(*) FROM yellow_tripdata", "--format", "csv",
         "--home", str(home)],
        capture_output=True, text=True, check=True, env=child_env(),
    ).stdout  # fmt: skip
    return int(out.strip().splitlines()[-1])


def _ours(server: SourceServer, home: Path, log: Path) -> tuple[Measured, int]:
    server.reset_log()
    argv = [taxi_pipeline_bin(), "run", "yellow", "2019-01", "--source-url", server.base_url,
            "--home", str(home)]  # fmt: skip
    result = measure(argv, env=child_env(), log=log)
    return result, server.bytes_sent


def _limit(source: Path, work: Path, log: Path) -> tuple[Measured, int]:
    database = work / "limit.duckdb"
    database.unlink(missing_ok=True)
    result = measure([PYTHON, "-m", "bench.limit_duckdb", str(source), str(database)], log=log)
    rows = json.loads(log.read_text().strip().splitlines()[-1])["rows"]
    database.unlink(missing_ok=True)
    return result, int(rows)


def _peers(source: Path, runs: int, work: Path, rows: int, pandas_rows: int) -> dict[str, Any]:
    from bench.postgres import peer_python, peer_versions, postgres_server

    python = peer_python()
    out: dict[str, Any] = {"versions": peer_versions(python)}
    with postgres_server() as pg:
        out["versions"]["postgresql"] = pg.version
        pandas_runs, copy_runs = [], []
        pandas_server_peak, copy_server_peak = 0, 0
        for i in range(runs):
            pg.sql("DROP TABLE IF EXISTS yellow_taxi_data")
            log = work / f"pandas-{i}.log"
            server = RssSampler(pg.postmaster())
            run = measure(
                [str(python), str(Path(__file__).with_name("peer_pandas.py")), str(source),
                 pg.url, str(pandas_rows)],
                log=log,
            )  # fmt: skip
            pandas_server_peak = max(pandas_server_peak, server.stop())
            done = json.loads(log.read_text().strip().splitlines()[-1])
            counted = int(pg.sql("SELECT count(*) FROM yellow_taxi_data"))
            _expect(counted, int(done["rows"]), "pandas to_sql")
            # Linear in rows (a constant per-chunk cost): scaled to the whole file.
            scaled = run.wall_seconds * rows / counted
            say(
                f"peer pandas to_sql #{i + 1}: {run.wall_seconds:.1f} s for {counted:,} rows"
                f" -> {scaled:.0f} s scaled to {rows:,}"
            )
            pandas_runs.append(
                Measured(scaled, run.peak_rss_bytes, run.returncode,
                         {"measured_rows": counted, "measured_seconds": run.wall_seconds})
            )  # fmt: skip
            pg.sql("DROP TABLE yellow_taxi_data")

            pg.sql("DROP TABLE IF EXISTS yellow_copy")
            copy = shlex.join(
                pg.psql_argv("-c", "COPY yellow_copy FROM STDIN WITH (FORMAT csv, HEADER true)")
            )
            server = RssSampler(pg.postmaster())
            pg.sql(_PG_TABLE)
            run = measure(
                ["bash", "-o", "pipefail", "-c", f"gzip -dc {shlex.quote(str(source))} | {copy}"],
                log=work / f"copy-{i}.log",
            )
            copy_server_peak = max(copy_server_peak, server.stop())
            _expect(int(pg.sql("SELECT count(*) FROM yellow_copy")), rows, "COPY")
            say(f"peer COPY #{i + 1}: {run.wall_seconds:.1f} s")
            copy_runs.append(run)
            pg.sql("DROP TABLE yellow_copy")
        out["pandas_to_sql"] = summarize(pandas_runs) | {
            "server_peak_rss_bytes": pandas_server_peak,
            "scaled_from_rows": min(rows, pandas_rows),
        }
        out["postgres_copy"] = summarize(copy_runs) | {"server_peak_rss_bytes": copy_server_peak}
    return out


def _expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise RuntimeError(f"{what}: {got} rows loaded, expected {want}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=FULL_MONTH_ROWS)
    parser.add_argument("--runs", type=int, default=3, help="runs of ours and of the limit")
    parser.add_argument("--peer-runs", type=int, default=1, help="runs of each peer (0: none)")
    parser.add_argument(
        "--pandas-rows",
        type=int,
        default=300_000,
        help="rows pandas loads before its time is scaled to the file (whole 100k chunks)",
    )
    parser.add_argument("--name", default="ingest", help="results file bench/results/NAME.json")
    args = parser.parse_args(argv)

    with scratch("ingest") as work:
        say(f"generating a yellow month of {args.rows:,} rows")
        source = generate(work / "source", args.rows)
        size = source.stat().st_size
        firsts, reruns, limits = [], [], []
        rerun_bytes, first_bytes = [], []
        with serve_directory(work / "source") as server:
            for i in range(args.runs):
                home = work / f"home-{i}"
                first, sent = _ours(server, home, work / f"ours-{i}.log")
                _expect(_count_rows(home), args.rows, "taxi-pipeline run")
                firsts.append(first)
                first_bytes.append(sent)
                say(
                    f"ours #{i + 1}: {first.wall_seconds:.2f} s, "
                    f"{first.peak_rss_bytes / 2**20:.0f} MiB, {sent:,} bytes downloaded"
                )
                again, sent = _ours(server, home, work / f"rerun-{i}.log")
                _expect(_count_rows(home), args.rows, "taxi-pipeline run (re-run)")
                reruns.append(again)
                rerun_bytes.append(sent)
                say(f"re-run #{i + 1}: {again.wall_seconds:.2f} s, {sent:,} bytes downloaded")
                subprocess.run(["rm", "-rf", str(home)], check=True)
                limit, rows = _limit(source, work, work / f"limit-{i}.log")
                _expect(rows, args.rows, "limit")
                limits.append(limit)
                say(
                    f"limit #{i + 1}: {limit.wall_seconds:.2f} s, "
                    f"{limit.peak_rss_bytes / 2**20:.0f} MiB"
                )
        peers = (
            _peers(source, args.peer_runs, work, args.rows, args.pandas_rows)
            if args.peer_runs
            else {}
        )

    ours, limit_s, rerun_s = summarize(firsts), summarize(limits), summarize(reruns)
    payload = {
        "rows": args.rows,
        "file_bytes": size,
        "ours": ours | {"bytes_downloaded": first_bytes},
        "limit": limit_s,
        "rerun": rerun_s | {"bytes_downloaded": rerun_bytes},
        "peers": peers,
        "targets": {
            "wall_ratio_max": TARGET_WALL_RATIO,
            "peak_rss_bytes_max": TARGET_RSS_BYTES,
            "rerun_ratio_max": TARGET_RERUN_RATIO,
        },
        "ratios": {
            "wall_vs_limit": ours["wall_seconds"] / limit_s["wall_seconds"],
            "rerun_vs_first": rerun_s["wall_seconds"] / ours["wall_seconds"],
        },
    }
    path = write_results(args.name, payload)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
