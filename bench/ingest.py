"""Benchmarks 1 and 2: a month ingest end to end, and the re-run of the loaded month.

``python -m bench.ingest`` generates a full-size yellow month (7,667,792 rows, ~140 MB gzip) and
a TLC Parquet yellow month (3,000,000 rows, ``devkit.parquet_generator``), serves them over local
HTTP (``taxi_pipeline.devkit.source_server``) and measures, interleaved run by run so that noise
on a shared machine hits every contender alike:

- ours: ``taxi-pipeline run yellow 2019-01 --source-url URL --home DIR`` (a subprocess, fresh
  home), wall, CPU and peak RSS and the time of each phase (below); then the same command again
  (the re-run): wall, and the body bytes the source server sent for it (must be 0); the same for
  the Parquet month, ``taxi-pipeline run yellow 2024-01 --source tlc --tlc-url URL``;
- the limit: DuckDB alone from the same local file, one statement from the file to the final
  table (``bench.limit_duckdb``), and for the CSV month the older two-pass limit (a staging
  table, then an INSERT) as a second, named row;
- peers: pandas ``read_csv(chunksize=100000)`` -> PostgreSQL ``to_sql`` (the zoomcamp's style,
  in ``bench/.work/venv``), and ``gzip -dc | psql -c "COPY ... FROM STDIN"`` of the same file,
  against a PostgreSQL server started for the run. The server's own peak RSS is recorded apart.

Phases of ours, from the run history's step times and the DEBUG line the DuckDB warehouse logs
for each statement (``TAXI_PIPELINE_LOG_LEVEL=DEBUG``, JSON lines): start (process start to the
download step: imports, opening the home), download + verify (the download step), stage (the
pass that writes the rows), summary (counting them), merge (dropping present ids, committing),
and bookkeeping (the rest: register, run history, load ledger, bus, detaching, process exit).
They add up to the run's wall time.

``TAXI_BENCH_DATA=DIR`` keeps the generated months there for the next run (same rows, month and
seed: same bytes). Results go to ``bench/results/ingest.json``; ``python -m bench.report``
renders BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench.common import (
    FULL_MONTH_ROWS,
    GIB,
    PYTHON,
    Measured,
    RssSampler,
    child_env,
    generate,
    generate_parquet,
    measure,
    median,
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
PARQUET_MONTH_ROWS = 3_000_000
"""About a current TLC yellow month (2024-01 has 2,964,624 rows)."""
CSV_MONTH, PARQUET_MONTH = "2019-01", "2024-01"

PHASES: Final = ("start", "download + verify", "stage", "summary", "merge", "bookkeeping")
"""The phases of ours, in order; they add up to the run's wall time."""

STATEMENT_PHASES: Final = {
    "create external table": "stage",
    "begin staging into the final table": "stage",
    "stage into final table": "stage",
    "build staging table": "stage",
    "measure staged rows": "summary",
    "measure staging table": "summary",
    "drop repeated headers": "summary",
    "begin the merge": "merge",
    "delete the month's replaced rows": "merge",
    "drop staged rows already present": "merge",
    "merge into final table": "merge",
    "commit the merge": "merge",
}
"""Which phase each timed warehouse statement belongs to (the others are bookkeeping)."""

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


def _sql(home: Path, query: str) -> list[list[str]]:
    out = subprocess.run(
        [taxi_pipeline_bin(), "sql", query, "--format", "csv", "--home", str(home)],
        capture_output=True, text=True, check=True, env=child_env(),
    ).stdout  # fmt: skip
    return [line.split(",") for line in out.strip().splitlines()[1:]]


def _count_rows(home: Path) -> int:
    return int(_sql(home, "SELECT count(*) FROM yellow_tripdata")[0][0])


def _ours_argv(server: SourceServer, home: Path, parquet: bool) -> list[str]:
    if parquet:
        source = ["--source", "tlc", "--tlc-url", server.tlc_base_url]
        month = PARQUET_MONTH
    else:
        source, month = ["--source-url", server.base_url], CSV_MONTH
    return [taxi_pipeline_bin(), "run", "yellow", month, *source, "--home", str(home)]


def _ours(
    server: SourceServer, home: Path, log: Path, *, parquet: bool = False
) -> tuple[Measured, int]:
    server.reset_log()
    log.unlink(missing_ok=True)
    started = datetime.now(UTC)
    # The statement timings are DEBUG lines; JSON makes them parseable.
    env = child_env(TAXI_PIPELINE_LOG_LEVEL="DEBUG", TAXI_PIPELINE_LOG_FORMAT="json")
    result = measure(_ours_argv(server, home, parquet), env=env, log=log)
    extra = {"phases": phases(log, home, started, result.wall_seconds)}
    measured = Measured(
        result.wall_seconds, result.peak_rss_bytes, result.returncode, extra, result.cpu_seconds
    )
    return measured, server.bytes_sent


def statement_seconds(log: Path) -> dict[str, float]:
    """Seconds per timed warehouse statement (summed over repeats) from a run's JSON log."""
    seconds: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "statement" in record and "seconds" in record:
            what = str(record["statement"])
            seconds[what] = seconds.get(what, 0.0) + float(record["seconds"])
    return seconds


def phases(log: Path, home: Path, started: datetime, wall: float) -> dict[str, Any]:
    """The phases of one run of ours (see the module docstring); they add up to ``wall``."""
    statements = statement_seconds(log)
    # This run's download step: the latest (a re-run's home holds the first run's too).
    ((first, last),) = _sql(
        home,
        "SELECT started_at, finished_at FROM pipeline_runs WHERE step = 'download'"
        " AND finished_at IS NOT NULL ORDER BY recorded_at DESC LIMIT 1",
    )
    begun, ended = (datetime.fromisoformat(t).replace(tzinfo=UTC) for t in (first, last))
    out = dict.fromkeys(PHASES, 0.0)
    out["start"] = (begun - started).total_seconds()
    out["download + verify"] = (ended - begun).total_seconds()
    for statement, seconds in statements.items():
        phase = STATEMENT_PHASES.get(statement)
        if phase is not None:
            out[phase] += seconds
    out["bookkeeping"] = wall - sum(v for k, v in out.items() if k != "bookkeeping")
    return {"seconds": out, "statements": statements}


def median_phases(runs: list[Measured]) -> dict[str, float]:
    """Each phase's median over ``runs`` (so they need not add up to the median wall)."""
    return {phase: median([r.extra["phases"]["seconds"][phase] for r in runs]) for phase in PHASES}


def _limit(
    source: Path, work: Path, log: Path, *, parquet: bool = False, two_pass: bool = False
) -> tuple[Measured, int]:
    database = work / "limit.duckdb"
    database.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    argv = [PYTHON, "-m", "bench.limit_duckdb", str(source), str(database)]
    argv += ["--parquet"] * parquet + ["--two-pass"] * two_pass
    result = measure(argv, log=log)
    rows = json.loads(log.read_text().strip().splitlines()[-1])["rows"]
    database.unlink(missing_ok=True)
    return result, int(rows)


def _announce(what: str, run: Measured, extra: str = "") -> None:
    # How busy the shared machine was as the run ended: it explains a wall time CPU does not.
    run.extra["load_average"] = round(os.getloadavg()[0], 2)
    say(
        f"{what}: {run.wall_seconds:.2f} s, {run.cpu_seconds:.1f} CPU s,"
        f" {run.peak_rss_bytes / 2**20:.0f} MiB{extra}; load average {os.getloadavg()[0]:.2f}"
    )


def _month(
    server: SourceServer,
    source: Path,
    work: Path,
    runs: int,
    rows: int,
    *,
    parquet: bool,
) -> dict[str, Any]:
    """Ours (and its re-run) and the limits of one month, interleaved run by run."""
    kind = "parquet" if parquet else "csv"
    firsts, reruns, limits, two_pass = [], [], [], []
    first_bytes, rerun_bytes = [], []
    for i in range(runs):
        home = work / f"home-{kind}-{i}"
        first, sent = _ours(server, home, work / f"ours-{kind}-{i}.log", parquet=parquet)
        _expect(_count_rows(home), rows, f"taxi-pipeline run ({kind})")
        firsts.append(first)
        first_bytes.append(sent)
        _announce(f"ours {kind} #{i + 1}", first, f", {sent:,} bytes downloaded")
        again, sent = _ours(server, home, work / f"rerun-{kind}-{i}.log", parquet=parquet)
        _expect(_count_rows(home), rows, f"taxi-pipeline run ({kind}, re-run)")
        reruns.append(again)
        rerun_bytes.append(sent)
        _announce(f"re-run {kind} #{i + 1}", again, f", {sent:,} bytes downloaded")
        subprocess.run(["rm", "-rf", str(home)], check=True)
        limit, counted = _limit(source, work, work / f"limit-{kind}-{i}.log", parquet=parquet)
        _expect(counted, rows, f"limit ({kind})")
        limits.append(limit)
        _announce(f"limit {kind} #{i + 1}", limit)
        if not parquet:
            older, counted = _limit(source, work, work / f"two-pass-{i}.log", two_pass=True)
            _expect(counted, rows, "two-pass limit")
            two_pass.append(older)
            _announce(f"two-pass limit #{i + 1}", older)
    ours, limit_s, rerun_s = summarize(firsts), summarize(limits), summarize(reruns)
    out: dict[str, Any] = {
        "rows": rows,
        "file_bytes": source.stat().st_size,
        "ours": ours | {"bytes_downloaded": first_bytes, "phases": median_phases(firsts)},
        "limit": limit_s,
        "rerun": rerun_s | {"bytes_downloaded": rerun_bytes},
        "ratios": {
            "wall_vs_limit": ours["wall_seconds"] / limit_s["wall_seconds"],
            "rerun_vs_first": rerun_s["wall_seconds"] / ours["wall_seconds"],
        },
    }
    if two_pass:
        out["two_pass_limit"] = summarize(two_pass)
    return out


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
                         {"measured_rows": counted, "measured_seconds": run.wall_seconds},
                         run.cpu_seconds * rows / counted)
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
    parser.add_argument(
        "--parquet-rows", type=int, default=PARQUET_MONTH_ROWS, help="0: no Parquet month"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of ours and of the limits")
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
        source = generate(work / "source", args.rows, CSV_MONTH)
        parquet = None
        if args.parquet_rows:
            say(f"generating a TLC Parquet yellow month of {args.parquet_rows:,} rows")
            parquet = generate_parquet(work / "source", args.parquet_rows, PARQUET_MONTH)
        with serve_directory(work / "source") as server:
            csv = _month(server, source, work, args.runs, args.rows, parquet=False)
            tlc = (
                _month(server, parquet, work, args.runs, args.parquet_rows, parquet=True)
                if parquet is not None
                else None
            )
        peers = (
            _peers(source, args.peer_runs, work, args.rows, args.pandas_rows)
            if args.peer_runs
            else {}
        )

    payload = {
        **csv,
        "parquet": tlc,
        "peers": peers,
        "targets": {
            "wall_ratio_max": TARGET_WALL_RATIO,
            "peak_rss_bytes_max": TARGET_RSS_BYTES,
            "rerun_ratio_max": TARGET_RERUN_RATIO,
        },
    }
    path = write_results(args.name, payload)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
