"""Synthetic TLC Parquet months in each schema period's exact schema, with the real files' quirks.

``generate_parquet_month`` writes ``{dataset}_tripdata_YYYY-MM.parquet`` (yellow, green, fhv,
fhvhv) with the columns, spellings and Arrow types :mod:`taxi_pipeline.domain.tlc_schemas` gives
for that month: INT64 or INT32 ids, counts as DOUBLE (``1.0``) in the periods that wrote them so,
empty columns in Parquet's null type, ``large_string`` text from 2023-02, timestamps as
TIMESTAMP_MICROS with isAdjustedToUTC=false (New York wall-clock time), several row groups.
The quirks the pipeline must survive:

- an "unknown trip" group (1%) with passenger_count, RatecodeID, store_and_fwd_flag and the
  surcharges empty (yellow's payment_type 0), VendorID empty on a few rows;
- a few pickups dated outside the file's month (2008-12-31, 2088-01-24, the neighbour days ...);
- exact duplicate rows (a copy right after its original);
- on request, counts that are not whole numbers (``passenger_count`` 1.5, in DOUBLE periods).

Every value is a function of (seed, dataset, month, row number) alone, drawn with a counter-based
hash (splitmix64) over numpy arrays: no per-row Python, and the rows do not depend on how they
are cut into row groups, so :meth:`GeneratedParquet.expected_table` rebuilds exactly what the
file holds without reading it. A 3M-row yellow month takes a few seconds (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from taxi_pipeline.devkit.generator import (
    FHV_BASES,
    MANHATTAN_SHARE_PM,
    MANHATTAN_ZONES,
    default_duplicate_rows,
    default_stray_rows,
    stray_dates,
)
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.tlc_schemas import SchemaPeriod, period_of, tlc_file_name

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

# pyarrow's default row group size: it gives the real 3.5M-row months their 4 row groups.
MAX_ROW_GROUP_ROWS: Final = 1 << 20
_MIN_DEFAULT_ROW_GROUP_ROWS: Final = 1000
# Snappy: what pyarrow writes by default, and sizes close to the published files'.
_COMPRESSION: Final = "snappy"

_UNKNOWN_GROUP_PM: Final = 10
_VENDOR_EMPTY_PM: Final = 1
_NON_INTEGRAL_COUNT: Final = 1.5
_AIRPORT_ZONES: Final = (1, 132, 138)  # EWR, JFK, LaGuardia
_MICROS: Final = 1_000_000


def default_row_group_rows(rows: int) -> int:
    """A quarter of the rows per group, at least 1,000 and at most 1,048,576 (pyarrow's default).

    Small test files still get several row groups; a full month gets the published files' count.
    """
    return min(MAX_ROW_GROUP_ROWS, max(_MIN_DEFAULT_ROW_GROUP_ROWS, -(-rows // 4)))


@dataclass(frozen=True)
class ParquetMonthSpec:
    """Everything that decides a generated file's bytes."""

    dataset: str
    month: Month
    rows: int
    seed: int = 0
    stray_rows: int = 0
    duplicate_rows: int = 0
    non_integral_counts: int = 0
    """Rows whose passenger_count is 1.5 (only in periods that write counts as DOUBLE)."""
    row_group_rows: int = MAX_ROW_GROUP_ROWS
    extra_columns: Mapping[str, str] = field(default_factory=dict)
    """``name -> arrow type`` appended after the period's columns (a column the TLC adds)."""
    omit_columns: frozenset[str] = frozenset()
    """Period columns left out (a column a file lacks)."""
    retype: Mapping[str, str] = field(default_factory=dict)
    """``name -> arrow type`` written instead of the period's (e.g. ``timestamp[us, tz=UTC]``)."""

    @property
    def period(self) -> SchemaPeriod:
        return period_of(self.dataset, self.month)

    @property
    def name(self) -> str:
        return tlc_file_name(self.dataset, self.month)

    def fields(self) -> tuple[tuple[str, str], ...]:
        """``(name, arrow type)`` of the file's columns, in file order."""
        own = [
            (name, self.retype.get(name, arrow_type))
            for name, arrow_type in self.period.fields_in(self.month)
            if name not in self.omit_columns
        ]
        return (*own, *self.extra_columns.items())


@dataclass(frozen=True)
class GeneratedParquet:
    """What :func:`generate_parquet_month` wrote, with the counts tests assert against."""

    path: Path
    spec: ParquetMonthSpec
    out_of_month_rows: int
    """Rows whose pickup lies outside the month."""
    stray_pickup_dates: tuple[date, ...]
    """The distinct dates of the out-of-month pickups, sorted."""
    row_groups: int
    size_bytes: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dataset(self) -> str:
        return self.spec.dataset

    @property
    def month(self) -> Month:
        return self.spec.month

    @property
    def rows(self) -> int:
        return self.spec.rows

    @property
    def duplicate_rows(self) -> int:
        return self.spec.duplicate_rows

    @property
    def fields(self) -> tuple[tuple[str, str], ...]:
        return self.spec.fields()

    def expected_table(self) -> pa.Table:
        """The rows the file holds, rebuilt from the spec (not read from the file)."""
        return expected_table(self.spec)

    def expected_id_texts(self) -> list[tuple[str | None, ...]]:
        """Per row, the reference id's columns (the dataset's ``id_columns``, in formula order)
        as text in their final types (``None``: NULL).

        Text as it is (an empty text is NULL, as staging reads it), integers as ``2`` whatever
        their Parquet width (a DOUBLE location id ``80.0`` as ``80``), timestamps as
        ``YYYY-MM-DD HH:MM:SS`` (the CSV's spelling; BigQuery's ``CAST(TIMESTAMP AS STRING)``
        adds ``+00``). Tests compute the ids from these, independently of any warehouse.
        """
        names = Dataset(self.spec.dataset).layout.id_columns
        by_folded = {name.casefold(): name for name, _ in self.spec.fields()}
        missing = [n for n in names if n.casefold() not in by_folded]
        if missing:
            raise ValueError(f"{self.name} has no reference id columns {missing}")
        table = self.expected_table()
        columns = [_id_texts(table.column(by_folded[name.casefold()])) for name in names]
        return list(zip(*columns, strict=True))


def generate_parquet_month(
    directory: Path,
    dataset: str,
    month: Month,
    rows: int,
    seed: int = 0,
    *,
    stray_rows: int | None = None,
    duplicate_rows: int | None = None,
    non_integral_counts: int = 0,
    row_group_rows: int | None = None,
    extra_columns: Mapping[str, str] | None = None,
    omit_columns: Sequence[str] = (),
    retype: Mapping[str, str] | None = None,
) -> GeneratedParquet:
    """Write ``directory/{dataset}_tripdata_YYYY-MM.parquet`` with ``rows`` rows.

    Defaults: :func:`~taxi_pipeline.devkit.generator.default_stray_rows` strays,
    :func:`~taxi_pipeline.devkit.generator.default_duplicate_rows` duplicates,
    :func:`default_row_group_rows` rows per group. ``extra_columns``, ``omit_columns`` and
    ``retype`` make files whose schema differs from the period's (new, missing, mistyped
    columns). The file appears under its final name only once complete. Raises
    :class:`~taxi_pipeline.errors.UnsupportedMonth` for a month before the dataset's periods.
    """
    spec = ParquetMonthSpec(
        dataset=str(dataset),
        month=month,
        rows=rows,
        seed=seed,
        stray_rows=default_stray_rows(rows) if stray_rows is None else stray_rows,
        duplicate_rows=default_duplicate_rows(rows) if duplicate_rows is None else duplicate_rows,
        non_integral_counts=non_integral_counts,
        row_group_rows=default_row_group_rows(rows) if row_group_rows is None else row_group_rows,
        extra_columns=dict(extra_columns or {}),
        omit_columns=frozenset(omit_columns),
        retype=dict(retype or {}),
    )
    return write_month(directory, spec)


def write_month(directory: Path, spec: ParquetMonthSpec) -> GeneratedParquet:
    """Write the file ``spec`` describes into ``directory`` (see :func:`generate_parquet_month`)."""
    plan = _Plan.of(spec)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / spec.name
    schema = _arrow_schema(spec)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    groups = 0
    try:
        with pq.ParquetWriter(
            tmp,
            schema,
            compression=_COMPRESSION,
            # 2.6 keeps each column's unit: TIMESTAMP_MICROS, or nanoseconds for a retyped one.
            version="2.6",
        ) as writer:
            for batch in _batches(spec, plan, schema):
                writer.write_table(batch, row_group_size=spec.row_group_rows)
                groups += 1
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GeneratedParquet(
        path=target,
        spec=spec,
        out_of_month_rows=plan.strays,
        stray_pickup_dates=plan.stray_dates_used,
        row_groups=groups,
        size_bytes=target.stat().st_size,
    )


def expected_table(spec: ParquetMonthSpec) -> pa.Table:
    """The rows of the file ``spec`` describes, as one table in the file's schema."""
    plan = _Plan.of(spec)
    schema = _arrow_schema(spec)
    batches = list(_batches(spec, plan, schema))
    return pa.concat_tables(batches) if batches else schema.empty_table()


# --- where the strays, duplicates and non-integral counts go ------------------------------------

_NORMAL, _STRAY, _DUPLICATE, _NON_INTEGRAL = 0, 1, 2, 3


@dataclass(frozen=True)
class _Plan:
    """Special rows sit at ``j * spacing + spacing // 2`` (slot ``j``), kinds interleaved.

    ``spacing >= 2`` keeps a duplicate's original (the row before it) an ordinary row, so the
    counts stay exact without reading the file back.
    """

    spacing: int
    kinds: Ints
    """The kind of each slot."""
    stray_numbers: Ints
    """For a stray slot, its number among the strays (cycles through the stray dates)."""
    dates: tuple[date, ...]
    strays: int

    @classmethod
    def of(cls, spec: ParquetMonthSpec) -> _Plan:
        counts = {
            _STRAY: spec.stray_rows,
            _DUPLICATE: spec.duplicate_rows,
            _NON_INTEGRAL: spec.non_integral_counts,
        }
        if spec.rows < 0 or min(counts.values()) < 0:
            raise ValueError("rows and the counts of special rows must be >= 0")
        if spec.row_group_rows < 1:
            raise ValueError(f"row_group_rows must be >= 1, got {spec.row_group_rows}")
        if (
            spec.non_integral_counts
            and spec.period.column("passenger_count").arrow_type_in(spec.month) != "double"
        ):
            raise ValueError(
                f"{spec.period.label} writes passenger_count as an integer: no room for 1.5"
            )
        total = sum(counts.values())
        if total and spec.rows // total < 2:
            raise ValueError(
                f"{total} strays, duplicates and non-integral counts do not fit in {spec.rows}"
                " rows (at most rows // 2)"
            )
        # Interleave the kinds: each kind's k-th slot sits near k / count of the way through.
        order = sorted(
            ((k + 0.5) / count, kind) for kind, count in counts.items() for k in range(count)
        )
        kinds = np.array([kind for _, kind in order], dtype=np.int64)
        numbers = np.cumsum(kinds == _STRAY) - 1
        return cls(
            spacing=spec.rows // total if total else 1,
            kinds=kinds,
            stray_numbers=numbers.astype(np.int64),
            dates=stray_dates(spec.month),
            strays=spec.stray_rows,
        )

    @property
    def stray_dates_used(self) -> tuple[date, ...]:
        used = {self.dates[k % len(self.dates)] for k in range(self.strays)}
        return tuple(sorted(used))

    def kinds_of(self, rows: Ints) -> tuple[Ints, Ints]:
        """``(kind, stray number)`` of each row number (stray number 0 where not a stray)."""
        slot = rows // self.spacing
        in_slot = (rows % self.spacing == self.spacing // 2) & (slot < len(self.kinds))
        safe = np.where(in_slot, slot, 0)
        if len(self.kinds) == 0:
            return np.zeros_like(rows), np.zeros_like(rows)
        kind = np.where(in_slot, self.kinds[safe], _NORMAL)
        number = np.where(kind == _STRAY, self.stray_numbers[safe], 0)
        return kind.astype(np.int64), number.astype(np.int64)


# --- random draws -------------------------------------------------------------------------------

_GOLDEN: Final = 0x9E3779B97F4A7C15


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finalizer: a bijective scramble of 64-bit words (wraps on purpose)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class _Draws:
    """Independent uniform draws per (row, k), a function of the row number and the key only."""

    def __init__(self, rows: Ints, key: int) -> None:
        self._base = rows.astype(np.uint64) * np.uint64(_GOLDEN)
        self._key = key

    def bits(self, k: int) -> npt.NDArray[np.uint64]:
        salt = (self._key * 0x100000001B3 + k * _GOLDEN) & 0xFFFF_FFFF_FFFF_FFFF
        return _mix(self._base + np.uint64(salt))

    def below(self, k: int, modulo: int) -> Ints:
        """Integers in ``[0, modulo)``."""
        return (self.bits(k) % np.uint64(modulo)).astype(np.int64)

    def unit(self, k: int) -> npt.NDArray[np.float64]:
        """Floats in ``(0, 1]``."""
        return ((self.bits(k) >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53

    def pick(self, k: int, thresholds: Sequence[int], values: Sequence[int]) -> Ints:
        """``values[i]`` where the per-mille draw is below ``thresholds[i]`` (first match)."""
        draw = self.below(k, 1000)
        return np.array(values, dtype=np.int64)[np.searchsorted(thresholds, draw, side="right")]


# --- column values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Num:
    values: npt.NDArray[Any]
    nulls: Bools | None = None


@dataclass(frozen=True)
class _Time:
    micros: Ints
    nulls: Bools | None = None


@dataclass(frozen=True)
class _Text:
    choices: tuple[str, ...]
    index: Ints
    nulls: Bools | None = None


@dataclass(frozen=True)
class _Empty:
    pass


_Values = _Num | _Time | _Text | _Empty


@dataclass(frozen=True)
class _Trips:
    """What every dataset's columns derive from, for one batch of rows."""

    n: int
    draws: _Draws
    unknown: Bools
    pickup: Ints
    dropoff: Ints
    seconds: Ints
    dist_c: Ints
    """Trip distance in hundredths of a mile."""
    non_integral: Bools


def _trips(spec: ParquetMonthSpec, plan: _Plan, start: int, stop: int) -> _Trips:
    rows = np.arange(start, stop, dtype=np.int64)
    kind, stray_number = plan.kinds_of(rows)
    # A duplicate draws everything from the row before it: an exact copy.
    base = np.where(kind == _DUPLICATE, rows - 1, rows)
    key = int.from_bytes(
        hashlib.blake2b(f"{spec.seed}/{spec.dataset}/{spec.month}".encode(), digest_size=8).digest()
    )
    draws = _Draws(base, key)
    first = _epoch_micros(date(spec.month.year, spec.month.month, 1))
    following = spec.month.next()
    month_seconds = (_epoch_micros(date(following.year, following.month, 1)) - first) // _MICROS
    jitter = 120
    spread = max(month_seconds - jitter, 1)
    # Pickups rise through the month like the published files (sorted-ish by pickup).
    in_month = first + (base * spread // max(spec.rows, 1) + draws.below(14, jitter)) * _MICROS
    dates = np.array([_epoch_micros(d) for d in plan.dates], dtype=np.int64)
    stray = kind == _STRAY
    off_month = dates[stray_number % len(dates)] + draws.below(15, 86_400) * _MICROS
    pickup = np.where(stray, off_month, in_month)
    draw = draws.below(13, 1_000_000)
    dist_c = np.where(
        draw < 10, 0, np.minimum(np.round(-np.log(draws.unit(16)) * 280), 6000).astype(np.int64)
    )
    seconds = 60 + dist_c * 3 + draws.below(17, 600)
    non_integral = kind == _NON_INTEGRAL
    unknown = (draws.below(1, 1000) < _UNKNOWN_GROUP_PM) & ~non_integral
    return _Trips(
        n=len(rows),
        draws=draws,
        unknown=unknown,
        pickup=pickup,
        dropoff=pickup + seconds * _MICROS,
        seconds=seconds,
        dist_c=dist_c,
        non_integral=non_integral,
    )


def _epoch_micros(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * _MICROS


def _zones(trips: _Trips, k: int, manhattan_share_pm: int) -> Ints:
    draws = trips.draws
    busy = np.array(MANHATTAN_ZONES, dtype=np.int64)[draws.below(k, len(MANHATTAN_ZONES))]
    anywhere = draws.below(k + 100, 265) + 1
    return np.where(draws.below(k + 200, 1000) < manhattan_share_pm, busy, anywhere)


def _money(cents: Ints, nulls: Bools | None = None) -> _Num:
    return _Num(cents / 100.0, nulls)


def _count(trips: _Trips, values: Ints, arrow_type: str) -> _Num:
    """A count column; 1.5 on the non-integral rows when the period writes counts as DOUBLE."""
    if arrow_type == "double":
        floats = np.where(trips.non_integral, _NON_INTEGRAL_COUNT, values.astype(np.float64))
        return _Num(floats, trips.unknown)
    return _Num(values, trips.unknown)


def _taxi(spec: ParquetMonthSpec, trips: _Trips) -> dict[str, _Values]:
    """Yellow and green columns (named as either spells them)."""
    month, period = spec.month, spec.period
    green = spec.dataset == "green"
    d, unknown = trips.draws, trips.unknown

    def type_of(name: str) -> str:
        return period.column(name).arrow_type_in(month) if name in period.names else "null"

    vendor = np.where(d.below(2, 1000) < 400, 1, 2)
    passengers = d.pick(3, [700, 840, 880, 900, 950, 980], [1, 2, 3, 4, 5, 6, 0])
    ratecode = d.pick(4, [970, 985, 990, 993, 999], [1, 2, 3, 4, 5, 6])
    payment = (
        d.pick(5, [500, 950, 975, 995], [1, 2, 3, 4, 5])
        if green
        else d.pick(5, [710, 985, 993, 998], [1, 2, 3, 4, 5])
    )
    pu = _zones(trips, 11, 0 if green else MANHATTAN_SHARE_PM)
    do = _zones(trips, 12, 0 if green else MANHATTAN_SHARE_PM)
    extra_s = d.below(18, 600)
    fare_c = np.where(
        ratecode == 2, 5200, 250 + (trips.dist_c * 250 // 100 + extra_s * 50 // 60) // 50 * 50
    )
    extra_c = d.pick(6, [450, 800], [0, 50, 100])
    tolls_c = np.where(d.below(8, 1000) < 950, 0, 694 if month >= Month(2023, 1) else 576)
    mta_c = np.where(d.below(10, 1000) < 5, 0, 50)
    tip_draw = d.below(7, 1000)
    tip_c = np.where(
        payment != 1,
        0,
        np.where(
            tip_draw < 700,
            (fare_c + extra_c) * (20 + 5 * (tip_draw % 3)) // 100,
            fare_c * (tip_draw - 600) // 1000,
        ),
    )
    improvement = 0 if month < Month(2015, 1) else 30 if month < Month(2022, 12) else 100
    improvement_c = np.full(trips.n, improvement, dtype=np.int64)
    total_c = fare_c + extra_c + mta_c + tip_c + tolls_c + improvement_c

    # Surcharges exist from a month on; before it, or where the file holds the column empty,
    # they stay NULL and out of the total.
    cong_draw = d.below(9, 1000)
    if month < Month(2019, 2) or type_of("congestion_surcharge") == "null":
        congestion: _Values = _Empty()
    else:
        cong_c = np.where(cong_draw < (850 if green else 100), 0, 275 if green else 250)
        congestion = _money(cong_c, unknown)
        total_c = total_c + np.where(unknown, 0, cong_c)
    values: dict[str, _Values] = {
        "VendorID": _Num(vendor, d.below(20, 1000) < _VENDOR_EMPTY_PM),
        period.pickup: _Time(trips.pickup),
        period.dropoff: _Time(trips.dropoff),
        "passenger_count": _count(trips, passengers, type_of("passenger_count")),
        "trip_distance": _money(trips.dist_c),
        "RatecodeID": _Num(ratecode, unknown),
        "store_and_fwd_flag": _Text(
            ("N", "Y"), (d.below(10, 1000) > 990).astype(np.int64), unknown
        ),
        "PULocationID": _Num(pu),
        "DOLocationID": _Num(do),
        "fare_amount": _money(fare_c),
        "extra": _money(extra_c),
        "mta_tax": _money(mta_c),
        "tip_amount": _money(tip_c),
        "tolls_amount": _money(tolls_c),
        "improvement_surcharge": _money(improvement_c),
        "congestion_surcharge": congestion,
    }
    if green:
        values["payment_type"] = _Num(payment, unknown)
        values["trip_type"] = _Num(np.where(d.below(8, 100) < 3, 2, 1), unknown)
        values["ehail_fee"] = _Empty()  # never holds a value
    else:
        values["payment_type"] = _Num(np.where(unknown, 0, payment))
        airport_name = "Airport_fee" if "Airport_fee" in period.names else "airport_fee"
        if type_of(airport_name) == "null" or month < Month(2021, 1):
            values[airport_name] = _Empty()
        else:
            at_airport = np.isin(pu, _AIRPORT_ZONES)
            airport_c = np.where(at_airport, 175 if month >= Month(2023, 1) else 125, 0)
            values[airport_name] = _money(airport_c, unknown)
            total_c = total_c + np.where(unknown, 0, airport_c)
    if "cbd_congestion_fee" in period.names:
        cbd_c = np.where(d.below(21, 1000) < (300 if green else 700), 75, 0)
        values["cbd_congestion_fee"] = _money(cbd_c, unknown)
        total_c = total_c + np.where(unknown, 0, cbd_c)
    values["total_amount"] = _money(total_c)
    return values


_BASES: Final = FHV_BASES


def _fhv(spec: ParquetMonthSpec, trips: _Trips) -> dict[str, _Values]:
    d = trips.draws
    # A few bases dispatch most trips: squaring a uniform index skews it towards the first.
    base = d.below(30, len(_BASES)) * d.below(31, len(_BASES)) // len(_BASES)
    affiliated = np.where(d.below(32, 100) < 90, base, d.below(33, len(_BASES)))
    flag_type = spec.period.column("SR_Flag").arrow_type_in(spec.month)
    sr_flag: _Values = (
        _Empty() if flag_type == "null" else _Num(np.ones(trips.n), d.below(34, 100) >= 5)
    )
    return {
        "dispatching_base_num": _Text(_BASES, base),
        "pickup_datetime": _Time(trips.pickup),
        "dropOff_datetime": _Time(trips.dropoff),
        # Many fhv trips carry no zone.
        "PUlocationID": _Num(_zones(trips, 11, 0), d.below(35, 100) < 20),
        "DOlocationID": _Num(_zones(trips, 12, 0), d.below(36, 100) < 15),
        "SR_Flag": sr_flag,
        "Affiliated_base_number": _Text(_BASES, affiliated, d.below(37, 100) < 5),
    }


# Uber (HV0003) through its base B03404, Lyft (HV0005) B03406, Via (HV0004) B02800.
_LICENSES: Final = ("HV0003", "HV0005", "HV0004")
_HV_BASES: Final = ("B03404", "B03406", "B02800")


def _fhvhv(spec: ParquetMonthSpec, trips: _Trips) -> dict[str, _Values]:
    d = trips.draws
    company = d.pick(40, [720, 980], [0, 1, 2])
    lyft = company == 1
    fare_c = 500 + trips.dist_c * 180 // 100 + trips.seconds * 60 // 60
    tolls_c = np.where(d.below(41, 1000) < 940, 0, 694)
    bcf_c = fare_c * 3 // 100
    tax_c = fare_c * 8875 // 100_000
    cong_c = np.where(d.below(42, 1000) < 300, 0, 275)
    at_airport = np.isin(_zones(trips, 11, MANHATTAN_SHARE_PM), _AIRPORT_ZONES)
    airport_c = np.where(at_airport, 250, 0)
    tip_c = np.where(d.below(43, 1000) < 850, 0, fare_c * 15 // 100)
    flags = ("N", "Y", " ")
    values: dict[str, _Values] = {
        "hvfhs_license_num": _Text(_LICENSES, company),
        "dispatching_base_num": _Text(_HV_BASES, company),
        "originating_base_num": _Text(_HV_BASES, company, lyft),
        "request_datetime": _Time(trips.pickup - (60 + d.below(44, 840)) * _MICROS),
        "on_scene_datetime": _Time(trips.pickup - d.below(45, 300) * _MICROS, lyft),
        "pickup_datetime": _Time(trips.pickup),
        "dropoff_datetime": _Time(trips.dropoff),
        "PULocationID": _Num(_zones(trips, 11, MANHATTAN_SHARE_PM)),
        "DOLocationID": _Num(_zones(trips, 12, MANHATTAN_SHARE_PM)),
        "trip_miles": _money(trips.dist_c),
        "trip_time": _Num(trips.seconds),
        "base_passenger_fare": _money(fare_c),
        "tolls": _money(tolls_c),
        "bcf": _money(bcf_c),
        "sales_tax": _money(tax_c),
        "congestion_surcharge": _money(cong_c),
        "airport_fee": _money(airport_c),
        "tips": _money(tip_c),
        "driver_pay": _money(fare_c * 72 // 100 + tip_c),
        "shared_request_flag": _Text(flags, (d.below(46, 100) < 2).astype(np.int64)),
        "shared_match_flag": _Text(flags, (d.below(47, 1000) < 5).astype(np.int64)),
        # Lyft leaves access_a_ride_flag blank.
        "access_a_ride_flag": _Text(flags, np.where(lyft, 2, 0)),
        "wav_request_flag": _Text(flags, (d.below(48, 1000) < 3).astype(np.int64)),
        "wav_match_flag": _Text(flags, (d.below(49, 100) < 6).astype(np.int64)),
    }
    if "cbd_congestion_fee" in spec.period.names:
        values["cbd_congestion_fee"] = _money(np.where(d.below(50, 1000) < 600, 150, 0))
    return values


_BUILDERS: Final = {"yellow": _taxi, "green": _taxi, "fhv": _fhv, "fhvhv": _fhvhv}


# --- Arrow --------------------------------------------------------------------------------------

_TIMESTAMP_RE: Final = re.compile(r"timestamp\[(s|ms|us|ns)(?:, tz=([^\]]+))?\]")


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type ``str(type)`` spells as ``name`` (``timestamp[us, tz=UTC]`` included)."""
    match = _TIMESTAMP_RE.fullmatch(name)
    if match:
        return pa.timestamp(match.group(1), tz=match.group(2))
    return pa.type_for_alias(name)


def _arrow_schema(spec: ParquetMonthSpec) -> pa.Schema:
    return pa.schema([pa.field(name, arrow_type(kind)) for name, kind in spec.fields()])


def _batches(spec: ParquetMonthSpec, plan: _Plan, schema: pa.Schema) -> Iterator[pa.Table]:
    for start in range(0, spec.rows, spec.row_group_rows):
        stop = min(start + spec.row_group_rows, spec.rows)
        trips = _trips(spec, plan, start, stop)
        values = _BUILDERS[spec.dataset](spec, trips)
        columns = []
        for position, name in enumerate(schema.names):
            target = schema.field(name).type
            if name in spec.extra_columns:
                columns.append(_extra_column(trips, position, target))
                continue
            own = spec.period.column(name).arrow_type_in(spec.month)
            column = _to_arrow(values[name], arrow_type(own), trips.n)
            columns.append(column if column.type == target else column.cast(target, safe=False))
        yield pa.Table.from_arrays(columns, schema=schema)


def _to_arrow(values: _Values, target: pa.DataType, n: int) -> pa.Array:
    if isinstance(values, _Empty) or pa.types.is_null(target):
        return pa.nulls(n, type=target)
    if isinstance(values, _Text):
        index = pa.array(values.index.astype(np.int32), mask=values.nulls)
        return pc.take(pa.array(values.choices, type=target), index)
    if isinstance(values, _Time):
        return pa.array(values.micros, type=pa.timestamp("us"), mask=values.nulls).cast(target)
    return pa.array(values.values, mask=values.nulls).cast(target, safe=False)


def _extra_column(trips: _Trips, position: int, target: pa.DataType) -> pa.Array:
    """Values for a column the period does not have: something plausible of its type."""
    draws = trips.draws.below(60 + position, 1000)
    if pa.types.is_null(target):
        return pa.nulls(trips.n)
    if pa.types.is_string(target) or pa.types.is_large_string(target):
        return pc.take(pa.array(("A", "B"), type=target), pa.array(draws % 2))
    if pa.types.is_timestamp(target):
        return pa.array(trips.pickup, type=pa.timestamp("us")).cast(target)
    return pa.array(draws / 100.0).cast(target, safe=False)


def _id_texts(column: pa.ChunkedArray) -> list[str | None]:
    if pa.types.is_timestamp(column.type):
        # Whole seconds, like the published files: %S would print microseconds otherwise.
        text = pc.strftime(pc.cast(column, pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")
    elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.cast(column, pa.string())
    else:
        text = pc.cast(pc.cast(column, pa.int64()), pa.string())
    return [None if v is None or v == "" else str(v) for v in text.to_pylist()]


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m taxi_pipeline.devkit.parquet_generator --dataset yellow --month 2024-01 ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dataset", choices=sorted(_BUILDERS), required=True)
    parser.add_argument("--month", type=Month.parse, required=True, help="YYYY-MM")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--row-group-rows", type=int, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = generate_parquet_month(
        args.out, args.dataset, args.month, args.rows, args.seed, row_group_rows=args.row_group_rows
    )
    elapsed = time.perf_counter() - started
    # A command-line front: printing is its job.
    print(result.path)
    print(
        f"rows={result.rows} row_groups={result.row_groups}"
        f" out_of_month_rows={result.out_of_month_rows} duplicate_rows={result.duplicate_rows}"
        f" size_bytes={result.size_bytes} seconds={elapsed:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
