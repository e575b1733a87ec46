"""Synthetic trip files (the mirror's CSV) in the published layouts, with the real ones' quirks.

``generate_month`` writes ``{dataset}_tripdata_YYYY-MM.csv.gz`` with the published header and
column order (taken from :data:`taxi_pipeline.domain.datasets.LAYOUTS`), ``YYYY-MM-DD HH:MM:SS``
timestamps, plausible values and the quirks the pipeline must survive:

- empty fields: an "unknown trip" group with passenger_count, RatecodeID, store_and_fwd_flag,
  payment_type (and trip_type, congestion_surcharge) empty; VendorID empty on a few rows;
  congestion_surcharge empty on almost every row of months before 2019-02 (it did not exist yet);
  ehail_fee always empty;
- ``1.0`` spellings of integer columns (passenger_count, payment_type, VendorID, RatecodeID;
  fhv's ``80.0`` location ids and SR_Flag);
- fhv: empty pickup / dropoff zones on a share of rows (the dataset's profile), SR_Flag mostly
  empty, a few bases dispatching most trips;
- a few pickups dated outside the file's month (2008-12-31, 2088-01-24, the neighbour days ...);
- exact duplicate rows (a copy right after its original).

Rows are produced by DuckDB SQL over ``range(n)`` with ``hash(row, seed, k)`` as the random
source: per-row formatting in Python is ~20x too slow for a full month, and ``random()`` is not
reproducible across threads. DuckDB streams the CSV text through a FIFO into ``zlib`` in this
process, so generation (DuckDB's threads) and compression (zlib releases the GIL) overlap on
two cores, and the gzip header carries no timestamp: the same seed, dataset, month and row
count give a byte-identical file.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Final

from taxi_pipeline.domain.datasets import LAYOUTS, Dataset, Month, Upstream, file_name

# zlib level 6 (gzip's default) gives published-like sizes; lower levels are faster but the
# files grow ~25%, which would skew download/ingest benchmarks.
_GZIP_LEVEL: Final = 6
_CHUNK: Final = 1 << 20
_DUCKDB_CONFIG: Final[dict[str, Any]] = {
    # Never fetch extensions: the generator must work offline and must not change by itself.
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}

# Fractions, in per mille of rows, of each quirk (roughly what the 2019-2021 files show).
_UNKNOWN_GROUP_PM: Final = 10  # passenger_count/RatecodeID/flag/payment_type all empty
_VENDOR_EMPTY_PM: Final = 1
_FLOAT_SPELLING_PM: Final = 20  # "1.0" in passenger_count / payment_type
_FLOAT_SPELLING_RARE_PM: Final = 5  # "1.0" in VendorID / RatecodeID

# Manhattan zones (taxi_zone_lookup.csv): most trips of a dataset start and end there (its profile's
# manhattan_share_pm), which also
# matters for compression (uniform ids over 1..265 make the files ~10% larger than real ones).
MANHATTAN_ZONES: Final = (
    4, 12, 13, 24, 41, 42, 43, 45, 48, 50, 68, 74, 75, 79, 87, 88, 90, 100, 103, 107, 113, 114,
    116, 120, 125, 127, 128, 137, 140, 141, 142, 143, 144, 148, 151, 152, 153, 158, 161, 162, 163,
    164, 166, 170, 186, 194, 202, 209, 211, 224, 229, 230, 231, 232, 233, 234, 236, 237, 238, 239,
    243, 244, 246, 249, 261, 262, 263,
)  # fmt: skip
MANHATTAN_SHARE_PM: Final = 850

# fhv dispatching bases (B0xxxx license numbers) as the 2019 files show them.
FHV_BASES: Final = tuple(
    f"B0{n:04d}"
    for n in (2510, 2764, 2800, 2865, 2875, 2682, 2617, 1231, 2872, 2835, 2279, 2836, 2887, 3016)
)

# Pickup dates of stray rows, cycled; those inside the file's month are skipped.
FAR_STRAY_DATES: Final = (
    date(2008, 12, 31),
    date(2088, 1, 24),
    date(2009, 1, 1),
    date(2003, 1, 1),
)


@dataclass(frozen=True)
class GeneratedFile:
    """What :func:`generate_month` wrote, with the counts tests assert against."""

    path: Path
    dataset: Dataset
    month: Month
    seed: int
    rows: int
    """Data rows, excluding the header line."""
    out_of_month_rows: int
    """Rows whose pickup timestamp lies outside ``month``."""
    duplicate_rows: int
    """Rows that are exact copies of the row just before them."""
    stray_pickup_dates: tuple[date, ...]
    """The distinct dates of the out-of-month pickups, sorted."""
    size_bytes: int
    uncompressed_bytes: int
    """Size of the CSV text, header included."""

    @property
    def name(self) -> str:
        return self.path.name


def default_stray_rows(rows: int) -> int:
    """A few out-of-month rows: 3 in a small file, about 40 in a full-size month."""
    return min(rows // 100, max(3, rows // 200_000))


def default_duplicate_rows(rows: int) -> int:
    """A few exact duplicates: 2 in a small file, about 75 in a full-size month."""
    return min(rows // 100, max(2, rows // 100_000))


def generate_month(
    directory: Path,
    dataset: Dataset,
    month: Month,
    rows: int,
    seed: int = 0,
    *,
    stray_rows: int | None = None,
    duplicate_rows: int | None = None,
    threads: int | None = None,
) -> GeneratedFile:
    """Write ``directory/{dataset}_tripdata_YYYY-MM.csv.gz`` with ``rows`` data rows.

    ``stray_rows`` rows get a pickup outside ``month`` and ``duplicate_rows`` rows repeat the
    row before them (defaults: :func:`default_stray_rows`, :func:`default_duplicate_rows`).
    The file appears under its final name only once complete. ``threads`` caps DuckDB's
    threads; the output does not depend on it. A dataset the mirror does not publish (fhvhv:
    the TLC's Parquet only) raises ``ValueError``: ``devkit/parquet_generator`` writes it.
    """
    if dataset.spec.find_publication(Upstream.MIRROR) is None:
        raise ValueError(
            f"the mirror publishes no {dataset.value} CSV; generate the TLC's Parquet files"
            " with taxi_pipeline.devkit.parquet_generator"
        )
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    strays = default_stray_rows(rows) if stray_rows is None else stray_rows
    dups = default_duplicate_rows(rows) if duplicate_rows is None else duplicate_rows
    plan = _plan(rows, strays, dups, month)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / file_name(dataset, month)
    query = _query(dataset, month, rows, seed, plan)
    header = (LAYOUTS[dataset].header + "\n").encode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            raw = _write_gzip(out, header, query, threads)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GeneratedFile(
        path=target,
        dataset=dataset,
        month=month,
        seed=seed,
        rows=rows,
        out_of_month_rows=strays,
        duplicate_rows=dups,
        stray_pickup_dates=tuple(sorted(set(plan.stray_dates_used))),
        size_bytes=target.stat().st_size,
        uncompressed_bytes=raw,
    )


def write_raw(path: Path, header: str, lines: Iterable[str]) -> Path:
    """Write a small hand-made ``.csv.gz`` verbatim (header, then one line per item).

    For bad-input tests: wrong headers, missing or extra columns, bad timestamps. Nothing is
    checked or quoted. The gzip header has no timestamp, so equal input gives equal bytes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with (
            tmp.open("wb") as raw,
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        ):
            gz.write((header + "\n").encode())
            for line in lines:
                gz.write((line + "\n").encode())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --- planning: which rows are strays and duplicates -------------------------------------------


@dataclass(frozen=True)
class _Spread:
    """``count`` row indexes ``k * stride + offset`` (k = 0 .. count-1)."""

    count: int
    stride: int
    offset: int

    def indexes(self) -> Iterator[int]:
        return (k * self.stride + self.offset for k in range(self.count))

    def sql(self, column: str) -> str:
        if self.count == 0:
            return "false"
        last = (self.count - 1) * self.stride + self.offset
        return f"({column} % {self.stride} = {self.offset} AND {column} <= {last})"


@dataclass(frozen=True)
class _Plan:
    strays: _Spread
    duplicates: _Spread
    stray_dates: tuple[date, ...]
    """Candidate stray dates, cycled by stray number."""

    @property
    def stray_dates_used(self) -> list[date]:
        return [self.stray_dates[k % len(self.stray_dates)] for k in range(self.strays.count)]


def _plan(rows: int, strays: int, dups: int, month: Month) -> _Plan:
    """Place strays and duplicates evenly, so a stray is never a duplicate or its original.

    That keeps ``out_of_month_rows`` exact without reading the file back.
    """
    if strays < 0 or dups < 0:
        raise ValueError("stray_rows and duplicate_rows must be >= 0")
    if dups and rows // dups < 2:
        raise ValueError(f"{dups} duplicates do not fit in {rows} rows (at most rows // 2)")
    if strays and 2 * dups + strays > rows:
        raise ValueError(f"{strays} strays and {dups} duplicates do not fit in {rows} rows")
    duplicates = _Spread(dups, rows // dups, (rows // dups) // 2) if dups else _Spread(0, 1, 0)
    # A duplicate at i copies i-1: a stray may be neither.
    taken = set(duplicates.indexes()) | {i - 1 for i in duplicates.indexes()}
    stray_spread = _Spread(0, 1, 0)
    if strays:
        stride = rows // strays
        for shift in range(stride):
            candidate = _Spread(strays, stride, (stride // 3 + shift) % stride)
            if taken.isdisjoint(candidate.indexes()):
                stray_spread = candidate
                break
        else:
            raise ValueError(
                f"cannot place {strays} strays beside {dups} duplicates in {rows} rows"
            )
    return _Plan(stray_spread, duplicates, stray_dates(month))


def stray_dates(month: Month) -> tuple[date, ...]:
    """Pickup dates for the stray rows of ``month``, to be cycled: far-away dates (the famous
    2008/2088 rows) alternating with the days just before and after the month."""
    first = date(month.year, month.month, 1)
    following = month.next()
    after = date(following.year, following.month, 1)
    neighbours = (first - timedelta(days=1), after)
    far = tuple(d for d in FAR_STRAY_DATES if not first <= d < after)
    return (far[0], neighbours[0], far[1], neighbours[1], *far[2:])


# --- SQL ----------------------------------------------------------------------------------------


def _query(dataset: Dataset, month: Month, rows: int, seed: int, plan: _Plan) -> str:
    """The SELECT producing the rows, columns in the published order of ``dataset``."""
    first = datetime(month.year, month.month, 1)
    following = month.next()
    seconds = int((datetime(following.year, following.month, 1) - first).total_seconds())
    # Pickups rise through the month like the published files (sorted-ish by pickup), which is
    # also what makes them compress like the real ones; jitter keeps them from being strictly so.
    jitter = 120
    spread = max(seconds - jitter, 1)
    stray_list = ", ".join(f"TIMESTAMP '{d.isoformat()}'" for d in plan.stray_dates)
    n_dates = len(plan.stray_dates)
    early = month < Month(2019, 2)
    profile = dataset.spec.profile

    # One key per (seed, dataset, month): two datasets, or two months, with the same seed
    # must not share their draws (a join across them would find look-alike trips).
    key = int.from_bytes(
        hashlib.blake2b(f"{seed}/{dataset.value}/{month}".encode(), digest_size=7).digest()
    )

    def h(k: int, modulo: int) -> str:
        # One independent uniform draw in [0, modulo) per (row, k).
        return f"(hash(b, {key}::BIGINT, {k}) % {modulo})"

    zones = ", ".join(str(z) for z in MANHATTAN_ZONES)
    busy_share = profile.manhattan_share_pm

    def zone(k: int) -> str:
        # Location ids 1..265; a dataset's share of trips in Manhattan (its profile), the rest
        # spread out.
        draw = f"hash(b, {key}::BIGINT, {k})"
        return (
            f"CASE WHEN {draw} % 1000 < {busy_share}"
            f" THEN [{zones}][(({draw} // 1000) % {len(MANHATTAN_ZONES)})::BIGINT + 1]"
            f" ELSE ({draw} // 1000) % 265 + 1 END"
        )

    def money(cents: str) -> str:
        return f"(({cents}) * 0.01)::DECIMAL(12, 2)::VARCHAR"

    def spelled(value: str, per_mille: int, k: int) -> str:
        # Integer columns that went through a float somewhere are written "1.0".
        return f"({value})::VARCHAR || CASE WHEN {h(k, 1000)} < {per_mille} THEN '.0' ELSE '' END"

    fares = profile.fares
    if fares is None:  # a layout without fares (fhv): the fare columns are not written
        pay_dist, congestion = "NULL", "NULL"
    else:
        pay_dist = (
            "CASE "
            + " ".join(
                f"WHEN q < {limit} THEN {kind}"
                for kind, limit in enumerate(fares.payment_thresholds_pm, start=1)
            )
            + " ELSE 5 END"
        )
        if early:
            congestion = "CASE WHEN unknown OR q_cong < 998 THEN NULL ELSE 0 END"
        else:
            free = 1000 - fares.congestion_charged_pm
            congestion = (
                f"CASE WHEN unknown THEN NULL WHEN q_cong < {free} THEN 0"
                f" ELSE {fares.congestion_cents} END"
            )

    draws = f"""
        SELECT i, b,
            {plan.strays.sql("b")} AS stray,
            b // {plan.strays.stride} AS stray_no,
            {h(1, 1000)} < {_UNKNOWN_GROUP_PM} AS unknown,
            {h(2, 1000)} AS q_vendor,
            {h(3, 1000)} AS q_pass,
            {h(4, 1000)} AS q_rate,
            {h(5, 1000)} AS q,
            {h(6, 1000)} AS q_extra,
            {h(7, 1000)} AS q_tip,
            {h(8, 1000)} AS q_toll,
            {h(9, 1000)} AS q_cong,
            {h(10, 1000)} AS q_flag,
            {zone(11)} AS pu,
            {zone(12)} AS dox,
            {h(13, 1_000_000)} AS q_dist,
            {h(14, jitter)} AS t_jitter,
            {h(15, 86_400)} AS t_day,
            {h(16, 600)} AS t_extra_s
        FROM (
            SELECT i, CASE WHEN {plan.duplicates.sql("i")} THEN i - 1 ELSE i END AS b
            FROM range({rows}) r(i)
        )
    """
    trips = f"""
        SELECT *,
            CASE WHEN stray
                THEN [{stray_list}][stray_no % {n_dates} + 1] + to_seconds(t_day)
                ELSE TIMESTAMP '{first.isoformat(sep=" ")}'
                    + to_seconds(b * {spread} // {max(rows, 1)} + t_jitter)
            END AS pickup,
            CASE WHEN q_dist < 10 THEN 0
                ELSE least(round(-ln(q_dist / 1e6) * 280), 6000)::BIGINT
            END AS dist_c,
            CASE WHEN q_vendor < 400 THEN 1 ELSE 2 END AS vendor,
            CASE WHEN unknown THEN NULL
                WHEN q_rate < 970 THEN 1 WHEN q_rate < 985 THEN 2 WHEN q_rate < 990 THEN 3
                WHEN q_rate < 993 THEN 4 WHEN q_rate < 999 THEN 5 ELSE 6 END AS ratecode,
            CASE WHEN unknown THEN NULL
                WHEN q_pass < 700 THEN 1 WHEN q_pass < 840 THEN 2 WHEN q_pass < 880 THEN 3
                WHEN q_pass < 900 THEN 4 WHEN q_pass < 950 THEN 5 WHEN q_pass < 980 THEN 6
                ELSE 0 END AS passengers,
            CASE WHEN unknown THEN NULL ELSE {pay_dist} END AS payment
        FROM ({draws})
    """
    priced = f"""
        SELECT *,
            pickup + to_seconds(60 + dist_c * 3600 // 1200 + t_extra_s) AS dropoff,
            CASE WHEN ratecode = 2 THEN 5200
                ELSE 250 + (dist_c * 250 // 100 + t_extra_s * 50 // 60) // 50 * 50 END AS fare_c,
            CASE WHEN q_extra < 450 THEN 0 WHEN q_extra < 800 THEN 50 ELSE 100 END AS extra_c,
            CASE WHEN q_toll < 950 THEN 0 ELSE 576 END AS tolls_c,
            {congestion} AS cong_c
        FROM ({trips})
    """
    totals = f"""
        SELECT *,
            -- Card tips: mostly the screen's 20/25/30% presets (on fare + extra), else any amount.
            CASE WHEN payment <> 1 THEN 0
                WHEN q_tip < 700 THEN (fare_c + extra_c) * (20 + 5 * (q_tip % 3)) // 100
                ELSE fare_c * (q_tip - 600) // 1000 END AS tip_c,
            CASE WHEN q_flag < 5 THEN 0 ELSE 50 END AS mta_c
        FROM ({priced})
    """
    total = "fare_c + extra_c + mta_c + tip_c + tolls_c + 30 + coalesce(cong_c, 0)"
    layout = LAYOUTS[dataset]
    bases = len(FHV_BASES)
    base = f"{h(30, bases)} * {h(31, bases)} // {bases}"
    rare = _FLOAT_SPELLING_RARE_PM
    common = _FLOAT_SPELLING_PM
    expressions = {
        "VendorID": f"CASE WHEN {h(20, 1000)} < {_VENDOR_EMPTY_PM} THEN NULL "
        f"ELSE {spelled('vendor', rare, 21)} END",
        layout.pickup: "strftime(pickup, '%Y-%m-%d %H:%M:%S')",
        layout.dropoff: "strftime(dropoff, '%Y-%m-%d %H:%M:%S')",
        "passenger_count": spelled("passengers", common, 22),
        "trip_distance": money("dist_c"),
        "RatecodeID": spelled("ratecode", rare, 23),
        "store_and_fwd_flag": "CASE WHEN unknown THEN NULL WHEN q_flag > 990 THEN 'Y' ELSE 'N' END",
        "PULocationID": "pu::VARCHAR",
        "DOLocationID": "dox::VARCHAR",
        "payment_type": spelled("payment", common, 24),
        "fare_amount": money("fare_c"),
        "extra": money("extra_c"),
        "mta_tax": money("mta_c"),
        "tip_amount": money("tip_c"),
        "tolls_amount": money("tolls_c"),
        "ehail_fee": "NULL::VARCHAR",
        "improvement_surcharge": money("30"),
        "total_amount": money(total),
        "trip_type": "CASE WHEN unknown THEN NULL WHEN q_toll % 100 < 3 THEN '2' ELSE '1' END",
        "congestion_surcharge": money("cong_c"),
        # fhv: a few bases dispatch most trips (the product of two uniform draws skews the
        # index towards the first); zones are often left empty, and written "80.0" by the
        # months that went through a float.
        "dispatching_base_num": _pick_text(FHV_BASES, base),
        "PUlocationID": f"CASE WHEN {h(35, 1000)} < {profile.no_pickup_zone_pm} THEN NULL"
        f" ELSE {spelled('pu', common, 36)} END",
        "DOlocationID": f"CASE WHEN {h(37, 1000)} < {profile.no_dropoff_zone_pm} THEN NULL"
        f" ELSE {spelled('dox', common, 38)} END",
        "SR_Flag": f"CASE WHEN {h(39, 100)} < 95 THEN NULL ELSE {spelled('1', rare, 40)} END",
        "Affiliated_base_number": f"CASE WHEN {h(32, 100)} < 5 THEN NULL"
        f" WHEN {h(34, 100)} < 90 THEN {_pick_text(FHV_BASES, base)}"
        f" ELSE {_pick_text(FHV_BASES, h(33, len(FHV_BASES)))} END",
    }  # fmt: skip
    missing = set(layout.names) - expressions.keys()
    if missing:
        raise AssertionError(f"no generator expression for {sorted(missing)}")
    select = ",\n".join(f'{expressions[name]} AS "{name}"' for name in layout.names)
    return f"SELECT {select} FROM ({totals})"


def _pick_text(choices: tuple[str, ...], index: str) -> str:
    """The text ``choices[index]`` (``index`` a 0-based SQL integer expression)."""
    listed = ", ".join(f"'{c}'" for c in choices)
    return f"[{listed}][({index})::BIGINT + 1]"


# --- writing ------------------------------------------------------------------------------------


def _write_gzip(out: BinaryIO, header: bytes, query: str, threads: int | None) -> int:
    """Compress ``header`` + the CSV of ``query`` into ``out``; return the uncompressed size."""
    import duckdb  # lazy: only the devkit needs it here

    config = dict(_DUCKDB_CONFIG)
    if threads is not None:
        config["threads"] = threads
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip wrapper, mtime 0
    out.write(compressor.compress(header))
    total = len(header)
    with duckdb.connect(config=config) as con, _csv_source(con, query) as source:
        while chunk := source.read(_CHUNK):
            total += len(chunk)
            out.write(compressor.compress(chunk))
    out.write(compressor.flush())
    return total


@contextlib.contextmanager
def _csv_source(con: Any, query: str) -> Iterator[BinaryIO]:
    """A readable stream of the query's CSV rows (no header), produced by DuckDB's COPY."""
    with tempfile.TemporaryDirectory(prefix="taxi-gen-") as scratch:
        target = Path(scratch) / "rows.csv"
        # USE_TMP_FILE false: DuckDB must write into the FIFO itself, not rename a file over it.
        options = "FORMAT csv, HEADER false, DELIMITER ',', USE_TMP_FILE false"
        sql = f"COPY ({query}) TO '{target}' ({options})"
        if not hasattr(os, "mkfifo"):
            # No FIFOs (Windows): write the CSV, then compress it; slower but the same bytes.
            con.execute(sql)
            with target.open("rb") as stream:
                yield stream
            return
        os.mkfifo(target)
        failure: list[BaseException] = []
        reader_done = threading.Event()

        def produce() -> None:
            try:
                con.execute(sql)
            except BaseException as exc:  # reported to the reader below
                failure.append(exc)
                _unblock_reader(target, reader_done)

        producer = threading.Thread(target=produce, name="taxi-gen-duckdb", daemon=True)
        producer.start()
        try:
            with target.open("rb") as stream:
                yield stream
        except BaseException:
            # The reader stopped early: interrupt DuckDB rather than leave it blocked on a full
            # pipe (closing our end already makes its next write fail with EPIPE).
            with contextlib.suppress(Exception):
                con.interrupt()
            raise
        finally:
            reader_done.set()
            producer.join()
        if failure:
            raise RuntimeError("DuckDB failed while generating rows") from failure[0]


def _unblock_reader(fifo: Path, reader_done: threading.Event) -> None:
    """Open and close the FIFO's write end so a reader blocked in ``open`` sees EOF.

    DuckDB may fail before it opens the FIFO; the reader would then wait for a writer forever.
    A non-blocking open fails until the reader has its end open, hence the polling.
    """
    while not reader_done.is_set():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError:
            time.sleep(0.01)


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m taxi_pipeline.devkit.generator --dataset yellow --month 2019-01 ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dataset",
        type=Dataset,
        choices=[d for d in Dataset if d.spec.find_publication(Upstream.MIRROR)],
        required=True,
    )
    parser.add_argument("--month", type=Month.parse, required=True, help="YYYY-MM")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--stray-rows", type=int, default=None)
    parser.add_argument("--duplicate-rows", type=int, default=None)
    args = parser.parse_args(argv)
    started = datetime.now()
    result = generate_month(
        args.out,
        args.dataset,
        args.month,
        args.rows,
        args.seed,
        stray_rows=args.stray_rows,
        duplicate_rows=args.duplicate_rows,
    )
    elapsed = (datetime.now() - started).total_seconds()
    # A command-line front: printing is its job.
    print(result.path)
    print(
        f"rows={result.rows} out_of_month_rows={result.out_of_month_rows}"
        f" duplicate_rows={result.duplicate_rows} size_bytes={result.size_bytes}"
        f" uncompressed_bytes={result.uncompressed_bytes} seconds={elapsed:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
