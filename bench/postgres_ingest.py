"""Benchmark 8: a yellow month into PostgreSQL, ours against the zoomcamp flow's own SQL.

``python -m bench.postgres_ingest`` starts one PostgreSQL server (``bench.postgres``, Debian's
package, a temp folder, every statement's duration in its log), generates yellow months, serves
them over local HTTP, and measures on that one server, interleaved, a fresh database per run:

- ours: ``taxi-pipeline run yellow 2019-01`` with ``TAXI_PIPELINE_WAREHOUSE_URL=postgresql://...``,
  installed as a user installs it (``bench.common.installed_cli``; ``--venv dev``: this venv)
  (download and verification, the rows typed in the client by DuckDB on their way into one
  binary COPY (pgpq) of the typed staging table, measured, then the insert-only merge: the
  file's first load deletes the ids the final table holds from it, indexes it and attaches it
  as the file's partition, with its load record): wall, client peak RSS;
- ours on a TLC Parquet month of the same row count (``run yellow 2024-01``, the TLC's layout
  from the same server): the client types the file's texts on their way into the binary COPY,
  as it types the CSV's;
- reference: the zoomcamp's 04_postgres_taxi flow as SQL: ``curl | gunzip`` to a file, CREATE
  the final and the staging table, TRUNCATE, COPY (``psql \\copy``, client-side like the JDBC
  CopyIn), ``UPDATE staging SET unique_row_id = md5(7 fields), filename``, ``MERGE`` on the id.
  Its counts are ``double precision`` instead of ``integer``: with ``integer`` its COPY refuses
  the file's ``1.0`` spellings and loads nothing (a known weak spot of the flow);
- where each run's time goes: the server log's statements by phase (COPY, staging, measure,
  merge, other), their overlaps counted once, and the rest of the run's wall (the client:
  process start, download and verification, run history);
- the merge of the 12th month against the 1st: twelve smaller months loaded in order by each
  contender into a database of its own; the merge statements' durations are read from the
  server's log.

Results go to ``bench/results/postgres_ingest.json``; ``python -m bench.report`` renders them.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    FULL_MONTH_ROWS,
    MIB,
    Measured,
    RssSampler,
    child_env,
    generate,
    generate_parquet,
    installed_cli,
    measure,
    say,
    scratch,
    summarize,
    taxi_pipeline_bin,
    write_results,
)
from bench.postgres import PgServer, postgres_server
from taxi_pipeline.devkit.source_server import TLC_PREFIX, SourceServer, serve_directory

PARQUET_MONTH = "2024-01"
"""The TLC Parquet month ours loads beside the CSV one (a current schema period)."""
TARGET_WALL_RATIO = 0.5
TARGET_CLIENT_RSS_BYTES = 512 * MIB

_COLUMNS = (
    '"VendorID", tpep_pickup_datetime, tpep_dropoff_datetime, passenger_count, trip_distance,'
    ' "RatecodeID", store_and_fwd_flag, "PULocationID", "DOLocationID", payment_type,'
    " fare_amount, extra, mta_tax, tip_amount, tolls_amount, improvement_surcharge,"
    " total_amount, congestion_surcharge"
)
_TYPES = """
  unique_row_id text, filename text, "VendorID" text, tpep_pickup_datetime timestamp,
  tpep_dropoff_datetime timestamp, passenger_count double precision,
  trip_distance double precision, "RatecodeID" text, store_and_fwd_flag text,
  "PULocationID" text, "DOLocationID" text, payment_type double precision,
  fare_amount double precision, extra double precision, mta_tax double precision,
  tip_amount double precision, tolls_amount double precision,
  improvement_surcharge double precision, total_amount double precision,
  congestion_surcharge double precision"""


def reference_sql(csv_path: Path, filename: str) -> str:
    """The 04_postgres_taxi flow's statements for one yellow file (psql script)."""
    md5 = (
        "md5(COALESCE(CAST(\"VendorID\" AS text), '') || COALESCE(CAST(tpep_pickup_datetime AS"
        " text), '') || COALESCE(CAST(tpep_dropoff_datetime AS text), '') ||"
        " COALESCE(\"PULocationID\", '') || COALESCE(\"DOLocationID\", '') ||"
        " COALESCE(CAST(fare_amount AS text), '') || COALESCE(CAST(trip_distance AS text), ''))"
    )
    names = ["unique_row_id", "filename", *(c.strip() for c in _COLUMNS.split(","))]
    return "\n".join(
        [
            f"CREATE TABLE IF NOT EXISTS public.yellow_tripdata ({_TYPES});",
            f"CREATE TABLE IF NOT EXISTS public.yellow_tripdata_staging ({_TYPES});",
            "TRUNCATE TABLE public.yellow_tripdata_staging;",
            f"\\copy public.yellow_tripdata_staging ({_COLUMNS}) FROM"
            f" {shlex.quote(str(csv_path))} WITH (FORMAT csv, HEADER true)",
            f"UPDATE public.yellow_tripdata_staging SET unique_row_id = {md5},"
            f" filename = '{filename}';",
            "MERGE INTO public.yellow_tripdata AS T USING public.yellow_tripdata_staging AS S"
            " ON T.unique_row_id = S.unique_row_id WHEN NOT MATCHED THEN INSERT"
            f" ({', '.join(names)}) VALUES ({', '.join('S.' + n for n in names)});",
            "",
        ]
    )


def _reference(
    pg: PgServer, database: str, url: str, month: str, work: Path, log: Path
) -> Measured:
    """Extract (curl | gunzip to a file), the flow's SQL, purge the file: one shell command."""
    csv_path = work / f"yellow_tripdata_{month}.csv"
    script = work / f"reference-{month}.sql"
    script.write_text(reference_sql(csv_path, csv_path.name))
    psql = shlex.join(
        [str(pg.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
         "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(script)]
    )  # fmt: skip
    command = (
        f"curl -sf {shlex.quote(url)} | gunzip > {shlex.quote(str(csv_path))}"
        f" && {psql} && rm -f {shlex.quote(str(csv_path))}"
    )
    return measure(["bash", "-o", "pipefail", "-c", command], log=log)


def _ours(
    cli: str,
    pg: PgServer,
    database: str,
    server: SourceServer,
    month: str,
    home: Path,
    log: Path,
) -> Measured:
    argv = [cli, "run", "yellow", month, "--source-url", server.base_url,
            "--tlc-url", f"{server.base_url}/{TLC_PREFIX}", "--home", str(home)]  # fmt: skip
    env = child_env(
        TAXI_PIPELINE_WAREHOUSE_URL=f"postgresql://postgres@127.0.0.1:{pg.port}/{database}"
    )
    return measure(argv, env=env, log=log)


def _count(pg: PgServer, database: str) -> int:
    return int(
        subprocess.run(
            pg.psql_argv("-d", database, "-c", "SELECT count(*) FROM yellow_tripdata"),
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
    )  # fmt: skip


def _expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise RuntimeError(f"{what}: {got} rows loaded, expected {want}")


_LOGGED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  duration: ([0-9.]+) ms"
    r"  (?:statement|execute [^:]*): (.*)$",
    re.MULTILINE,
)
"""A statement the server logged (``log_min_duration_statement = 0``): when it ended, how long
it took, its text."""

PHASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("copy", r"^COPY "),
        # Ours, for a month landed as text: the staging table typed from the landing ones
        # (CREATE TABLE ... AS; a clean month has none, its COPY typed it); the reference: its
        # UPDATE of every staged row.
        ("staging", r"^(CREATE (UNLOGGED )?TABLE \S+ AS|UPDATE )"),
        ("measure", r"^(SELECT COALESCE\(sum\(n\)|SELECT count\(\*\) FILTER|ANALYZE )"),
        # The insert-only merge: ours deletes the ids the final table holds from a first load's
        # staging table, indexes and attaches it (or MERGEs a file loaded before); the
        # reference MERGEs.
        (
            "merge",
            r"^(MERGE INTO|DELETE FROM \S+ AS s\b|CREATE INDEX|ALTER TABLE|"
            r"INSERT INTO \S+_file_)",
        ),
    )
)
"""The phases of a load as the server's log shows them, in order; any other statement (DDL, the
run history, locks) is "other"."""


@dataclass(frozen=True)
class Logged:
    end: float
    seconds: float
    text: str

    @property
    def start(self) -> float:
        return self.end - self.seconds


def _logged(log: Path, start: int, end: int | None = None) -> list[Logged]:
    """The statements logged between bytes ``start`` and ``end`` of the server log."""
    with log.open("rb") as handle:
        handle.seek(start)
        text = handle.read(None if end is None else end - start).decode(errors="replace")
    out = []
    for m in _LOGGED.finditer(text):
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        out.append(Logged(when.timestamp(), float(m.group(2)) / 1000, m.group(3).strip()))
    return out


def phase_of(statement: str) -> str:
    return next((name for name, pattern in PHASES if pattern.match(statement)), "other")


def _union(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the intervals (COPYs on two connections overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def phases(statements: list[Logged], wall: float) -> dict[str, float]:
    """Wall seconds per phase, and ``client``: the run's wall outside every server statement
    (process start, download and verification, run history, the client's side of COPY beyond
    the server's)."""
    out = {name: 0.0 for name, _ in PHASES} | {"other": 0.0}
    for name in out:
        out[name] = _union([(s.start, s.end) for s in statements if phase_of(s.text) == name])
    out["client"] = max(0.0, wall - _union([(s.start, s.end) for s in statements]))
    return out


def _merge_seconds(statements: list[Logged]) -> float:
    return sum(s.seconds for s in statements if phase_of(s.text) == "merge")


def _server_log(pg: PgServer) -> Path:
    return pg.data.parent / "server.log"


_CONTENDERS = ("ours", "parquet", "reference")
"""Interleaved: this order in even runs, reversed in odd ones."""


def _one_size(
    cli: str, pg: PgServer, server: SourceServer, rows: int, runs: int, work: Path
) -> dict[str, Any]:
    url = f"{server.base_url}/yellow/yellow_tripdata_2019-01.csv.gz"
    measured: dict[str, list[Measured]] = {c: [] for c in _CONTENDERS}
    server_peaks = dict.fromkeys(_CONTENDERS, 0)
    for i in range(runs):
        for contender in _CONTENDERS if i % 2 == 0 else _CONTENDERS[::-1]:
            database = f"{contender}_{rows}_{i}"
            pg.sql(f"CREATE DATABASE {database}")
            log = work / f"{database}.log"
            sampler = RssSampler(pg.postmaster())
            start = _server_log(pg).stat().st_size
            home = work / f"home-{database}"
            if contender == "reference":
                run = _reference(pg, database, url, "2019-01", work, log)
            else:
                month = PARQUET_MONTH if contender == "parquet" else "2019-01"
                run = _ours(cli, pg, database, server, month, home, log)
            server_peaks[contender] = max(server_peaks[contender], sampler.stop())
            run = replace(
                run,
                extra={"phases": phases(_logged(_server_log(pg), start), run.wall_seconds)},
            )
            measured[contender].append(run)
            _expect(_count(pg, database), rows, contender)
            say(
                f"{rows:,} rows, {contender} #{i + 1}: {run.wall_seconds:.1f} s,"
                f" client {run.peak_rss_bytes / MIB:.0f} MiB"
            )
            pg.sql(f"DROP DATABASE {database}")
            subprocess.run(["rm", "-rf", str(home)], check=True)
    result: dict[str, Any] = {"rows": rows}
    for contender, contender_runs in measured.items():
        result[contender] = summarize(contender_runs) | {
            "server_peak_rss_bytes": server_peaks[contender],
            "phases": _median_phases(contender_runs),
        }
    reference_wall = result["reference"]["wall_seconds"]
    result["wall_ratio"] = result["ours"]["wall_seconds"] / reference_wall
    result["parquet_wall_ratio"] = result["parquet"]["wall_seconds"] / reference_wall
    return result


def _median_phases(runs: list[Measured]) -> dict[str, float]:
    """The phases of the run whose wall is the median."""
    ordered = sorted(runs, key=lambda r: r.wall_seconds)
    return dict(ordered[(len(ordered) - 1) // 2].extra["phases"])


def _twelve_months(
    cli: str, pg: PgServer, server: SourceServer, months: list[str], rows: int, work: Path
) -> dict[str, Any]:
    """Each contender loads the months in order into its own database; MERGE time per month."""
    out: dict[str, Any] = {"rows_per_month": rows, "months": months}
    for contender in ("ours", "reference"):
        database = f"{contender}_months"
        pg.sql(f"CREATE DATABASE {database}")
        home = work / f"home-{database}"
        walls, merges = [], []
        for month in months:
            start = _server_log(pg).stat().st_size
            log = work / f"{database}-{month}.log"
            if contender == "ours":
                run = _ours(cli, pg, database, server, month, home, log)
            else:
                url = f"{server.base_url}/yellow/yellow_tripdata_{month}.csv.gz"
                run = _reference(pg, database, url, month, work, log)
            statements = _logged(_server_log(pg), start)
            walls.append(run.wall_seconds)
            merges.append(_merge_seconds(statements))
            say(f"{contender} {month}: {run.wall_seconds:.1f} s, merge {merges[-1]:.2f} s")
        _expect(_count(pg, database), rows * len(months), f"{contender} twelve months")
        out[contender] = {"wall_seconds": walls, "merge_seconds": merges}
        pg.sql(f"DROP DATABASE {database}")
        subprocess.run(["rm", "-rf", str(home)], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000, FULL_MONTH_ROWS],
        help="month sizes to measure",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=int, nargs="+", default=[5, 3],
        help="interleaved runs of each contender per size (the last value repeats)",
    )  # fmt: skip
    parser.add_argument("--month-rows", type=int, default=500_000, help="rows of each of the 12")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--name", default="postgres_ingest")
    parser.add_argument(
        "--venv", choices=("installed", "dev"), default="installed",
        help="run ours from a new venv as a user installs it (default), or from this one",
    )  # fmt: skip
    args = parser.parse_args(argv)

    settings = {"log_min_duration_statement": "0", "max_wal_size": "4GB"}
    payload: dict[str, Any] = {"sizes": [], "targets": {
        "wall_ratio_max": TARGET_WALL_RATIO, "client_peak_rss_bytes_max": TARGET_CLIENT_RSS_BYTES,
    }}  # fmt: skip
    with scratch("postgres-ingest") as work, postgres_server(settings) as pg:
        payload["postgresql"] = pg.version
        payload["venv"] = args.venv
        payload["parquet_month"] = PARQUET_MONTH
        cli = installed_cli(work / "venv") if args.venv == "installed" else taxi_pipeline_bin()
        for index, rows in enumerate(args.rows):
            runs = args.runs[min(index, len(args.runs) - 1)]
            source = work / f"source-{rows}"
            say(f"generating a yellow month of {rows:,} rows, as CSV and as TLC Parquet")
            generate(source, rows)
            generate_parquet(source / TLC_PREFIX, rows, PARQUET_MONTH)
            with serve_directory(source) as server:
                payload["sizes"].append(_one_size(cli, pg, server, rows, runs, work))
            subprocess.run(["rm", "-rf", str(source)], check=True)
        if args.months:
            source = work / "source-months"
            months = [f"2019-{m:02d}" for m in range(1, args.months + 1)]
            say(f"generating {len(months)} yellow months of {args.month_rows:,} rows")
            for month in months:
                generate(source, args.month_rows, month=month)
            with serve_directory(source) as server:
                payload["twelve_months"] = _twelve_months(
                    cli, pg, server, months, args.month_rows, work
                )
    path = write_results(args.name, payload)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
