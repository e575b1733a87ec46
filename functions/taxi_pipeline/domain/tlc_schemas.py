"""The TLC's Parquet trip files: which columns, spelled how, of which types, in which months.

Pure data and rules, no I/O and no pyarrow: a schema is described by its Arrow type names as
``str(pyarrow.DataType)`` spells them (``int64``, ``int32``, ``double``, ``null``,
``timestamp[us]``, ``string``, ``large_string``), so the verifier, the generator and the
warehouses' staging read one table of facts (``shared/reference/tlc-parquet.md``, per-month footer
analyses of the published files).

A dataset's months fall into *schema periods* (yellow 2011-01.., 2018-07.., 2023-02.., 2025-01..;
green 2013-08.., 2023-02.., 2025-01..; fhv 2015-01.., 2019-05..; fhvhv 2019-02.., 2025-01..).
Inside a period a column may still change type at a known month (yellow ``congestion_surcharge``
holds values from 2019-01) and real files flip between an empty column's encodings from one month to
the next (yellow ``airport_fee``: DOUBLE 2020-09, INT32 2020-10, DOUBLE 2020-11). So each column has
the type the files of a month hold (what the generator writes) and the types real files of the
period are known to hold instead (what :func:`recognise` accepts):

- an empty column is written as Parquet's null type (physical INT32, read by Arrow as ``null``)
  in one month and as an all-NULL DOUBLE in the next; both load as NULL;
- text columns are accepted as ``string`` or ``large_string``: both are Parquet BYTE_ARRAY UTF8,
  only the Arrow schema stored in the footer differs (files written without it read as ``string``).

Anything else (a count in a type its period never used, a timestamp with a zone or in
nanoseconds, a missing column) is a schema the pipeline does not know: :func:`recognise` names the
first such column. Columns a file has beyond its period are *new columns*: reported, not loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from taxi_pipeline.domain.datasets import Month
from taxi_pipeline.errors import UnsupportedMonth

TEXT: Final = frozenset({"string", "large_string"})
"""Both Arrow spellings of a Parquet UTF8 column."""
EMPTY: Final = frozenset({"null", "int32", "double"})
"""The encodings of an all-empty amount column: null type (physical INT32) or all-NULL DOUBLE."""
_INTEGERS: Final = frozenset({"int32", "int64"})

TLC_DATASETS: Final = ("yellow", "green", "fhv", "fhvhv")


@dataclass(frozen=True)
class TlcColumn:
    """One column of a schema period, spelled as the files spell it."""

    name: str
    arrow_type: str
    """The type files of the period's first month hold."""
    tolerated: frozenset[str] = frozenset()
    """Types real files of the period hold for this column besides :meth:`arrow_type_in`'s
    (see the module docstring)."""
    changes: tuple[tuple[Month, str], ...] = ()
    """``(month, arrow_type)``: from ``month`` on, files hold that type (within the period)."""

    def arrow_type_in(self, month: Month) -> str:
        """The type files of ``month`` hold (what the generator writes)."""
        current = self.arrow_type
        for since, arrow_type in self.changes:
            if month >= since:
                current = arrow_type
        return current

    def accepted_in(self, month: Month) -> frozenset[str]:
        """Every type :func:`recognise` accepts for this column in ``month``."""
        return frozenset({self.arrow_type_in(month)}) | self.tolerated


@dataclass(frozen=True)
class SchemaPeriod:
    """Months of one dataset whose files share column names, order and (mostly) types."""

    dataset: str
    first: Month
    last: Month | None
    """The period's last month; ``None``: still current."""
    columns: tuple[TlcColumn, ...]
    pickup: str
    dropoff: str
    what_changed: str
    """What sets this period apart from the one before, in a few words."""

    @property
    def label(self) -> str:
        """``yellow 2018-07..2023-01``, or ``yellow 2025-01..`` for the current period."""
        return f"{self.dataset} {self.first}..{self.last or ''}"

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in file order."""
        return tuple(c.name for c in self.columns)

    def contains(self, month: Month) -> bool:
        return self.first <= month and (self.last is None or month <= self.last)

    def column(self, name: str) -> TlcColumn:
        for candidate in self.columns:
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.label} has no column {name!r}")

    def fields_in(self, month: Month) -> tuple[tuple[str, str], ...]:
        """``(name, arrow_type)`` in file order, exactly as files of ``month`` hold them."""
        if not self.contains(month):
            raise ValueError(f"{month} is not in {self.label}")
        return tuple((c.name, c.arrow_type_in(month)) for c in self.columns)


@dataclass(frozen=True)
class ColumnMatch:
    """A period's column as one file holds it."""

    name: str
    """As the period spells it."""
    file_name: str
    """As the file spells it (differs from ``name`` in case only, e.g. ``airport_fee``)."""
    arrow_type: str
    """The file's type, one of the types the period accepts for the column."""


@dataclass(frozen=True)
class Recognition:
    """What :func:`recognise` found: the period, each column as the file holds it, new columns."""

    dataset: str
    month: Month
    period: SchemaPeriod
    problem: str | None
    """``None`` when the schema is one of the period's; else the first thing wrong, in words."""
    columns: tuple[ColumnMatch, ...] = ()
    """The period's columns in period order (empty when there is a problem)."""
    new_columns: tuple[tuple[str, str], ...] = ()
    """``(name, arrow_type)`` of columns the period does not have, in file order: not loaded."""
    notes: tuple[str, ...] = ()
    """Tolerated differences worth a log line (a spelling in another case, columns reordered)."""

    @property
    def matches(self) -> bool:
        return self.problem is None

    @property
    def new_column_messages(self) -> tuple[str, ...]:
        """``new column X (type) not loaded``, one per new column, for run details and summaries."""
        return tuple(f"new column {name} ({kind}) not loaded" for name, kind in self.new_columns)

    def file_name_of(self, name: str) -> str:
        """How the file spells the period's column ``name``."""
        for match in self.columns:
            if match.name == name:
                return match.file_name
        raise KeyError(f"{name!r} is not a column of {self.period.label}")

    def arrow_type_of(self, name: str) -> str:
        """The file's type of the period's column ``name`` (``null`` for an empty column)."""
        for match in self.columns:
            if match.name == name:
                return match.arrow_type
        raise KeyError(f"{name!r} is not a column of {self.period.label}")


# --- the facts ----------------------------------------------------------------------------------


def _columns(spec: str, types: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``"name:code ..."`` -> ``(name, arrow_type)``; codes are keys of ``types``."""
    out = []
    for item in spec.split():
        name, code = item.split(":")
        out.append((name, types[code]))
    return tuple(out)


_CODES: Final = {
    "I": "int64",
    "i": "int32",
    "D": "double",
    "T": "timestamp[us]",
    "S": "string",
    "L": "large_string",
    "N": "null",
}


def _period(
    dataset: str,
    first: Month,
    spec: str,
    what_changed: str,
    times: tuple[str, str],
    *,
    tolerated: Mapping[str, Iterable[str]] | None = None,
    changes: Mapping[str, Sequence[tuple[Month, str]]] | None = None,
) -> SchemaPeriod:
    tolerated = tolerated or {}
    changes = changes or {}
    columns = []
    for name, arrow_type in _columns(spec, _CODES):
        extra = frozenset(tolerated.get(name, ()))
        if arrow_type in TEXT:
            extra |= TEXT
        columns.append(TlcColumn(name, arrow_type, extra, tuple(changes.get(name, ()))))
    unknown = (set(tolerated) | set(changes)) - {c.name for c in columns}
    if unknown:
        raise AssertionError(f"{dataset} {first}: tolerances for unknown columns {sorted(unknown)}")
    # ``last`` is filled in by _chain from the next period's first month.
    pickup, dropoff = times
    return SchemaPeriod(dataset, first, None, tuple(columns), pickup, dropoff, what_changed)


def _chain(*periods: SchemaPeriod) -> tuple[SchemaPeriod, ...]:
    """Close each period the month before the next one starts."""
    chained = []
    for current, following in zip(periods, (*periods[1:], None), strict=True):
        last = following.first.previous() if following is not None else None
        chained.append(
            SchemaPeriod(
                current.dataset,
                current.first,
                last,
                current.columns,
                current.pickup,
                current.dropoff,
                current.what_changed,
            )
        )
    return tuple(chained)


_YELLOW_HEAD: Final = (
    "VendorID:{v} tpep_pickup_datetime:T tpep_dropoff_datetime:T passenger_count:{c}"
    " trip_distance:D RatecodeID:{c} store_and_fwd_flag:{s} PULocationID:{v} DOLocationID:{v}"
    " payment_type:I fare_amount:D extra:D mta_tax:D tip_amount:D tolls_amount:D"
    " improvement_surcharge:D total_amount:D congestion_surcharge:{g} {airport}:{a}"
)
_YELLOW_TIMES: Final = ("tpep_pickup_datetime", "tpep_dropoff_datetime")

YELLOW_PERIODS: Final = _chain(
    _period(
        "yellow",
        Month(2011, 1),
        _YELLOW_HEAD.format(v="I", c="I", s="S", g="N", airport="airport_fee", a="N"),
        "today's 19 columns; counts INT64; congestion_surcharge and airport_fee empty",
        _YELLOW_TIMES,
        # Empty columns flip between null type and all-NULL DOUBLE from month to month (2011-01
        # DOUBLE, 2011-02 INT32, ...); improvement_surcharge is null-typed in 2014-08.
        tolerated={
            "congestion_surcharge": EMPTY,
            "airport_fee": EMPTY,
            "improvement_surcharge": EMPTY,
        },
    ),
    _period(
        "yellow",
        Month(2018, 7),
        _YELLOW_HEAD.format(v="I", c="D", s="S", g="N", airport="airport_fee", a="N"),
        "passenger_count and RatecodeID DOUBLE",
        _YELLOW_TIMES,
        tolerated={"congestion_surcharge": EMPTY, "airport_fee": EMPTY},
        changes={
            "congestion_surcharge": [(Month(2019, 1), "double")],
            # DOUBLE from 2020-08, but 2020-10's file holds the column null-typed (INT32).
            "airport_fee": [
                (Month(2020, 8), "double"),
                (Month(2020, 10), "null"),
                (Month(2020, 11), "double"),
            ],
        },
    ),
    _period(
        "yellow",
        Month(2023, 2),
        _YELLOW_HEAD.format(v="i", c="I", s="L", g="D", airport="Airport_fee", a="D"),
        "VendorID and location ids INT32, counts INT64, Airport_fee spelled with a capital A,"
        " text as large_string",
        _YELLOW_TIMES,
    ),
    _period(
        "yellow",
        Month(2025, 1),
        _YELLOW_HEAD.format(v="i", c="I", s="L", g="D", airport="Airport_fee", a="D")
        + " cbd_congestion_fee:D",
        "adds cbd_congestion_fee (20 columns)",
        _YELLOW_TIMES,
    ),
)

_GREEN_HEAD: Final = (
    "VendorID:{v} lpep_pickup_datetime:T lpep_dropoff_datetime:T store_and_fwd_flag:{s}"
    " RatecodeID:{c} PULocationID:{v} DOLocationID:{v} passenger_count:{c} trip_distance:D"
    " fare_amount:D extra:D mta_tax:D tip_amount:D tolls_amount:D ehail_fee:{e}"
    " improvement_surcharge:D total_amount:D payment_type:{c} trip_type:{c}"
    " congestion_surcharge:{g}"
)
_GREEN_TIMES: Final = ("lpep_pickup_datetime", "lpep_dropoff_datetime")

GREEN_PERIODS: Final = _chain(
    _period(
        "green",
        Month(2013, 8),
        _GREEN_HEAD.format(v="I", c="D", s="S", e="D", g="N"),
        "green's first files: ids INT64, RatecodeID/passenger_count/payment_type/trip_type DOUBLE",
        _GREEN_TIMES,
        # ehail_fee never holds a value: all-NULL DOUBLE, null-typed 2019-09..2023-01. The
        # reference does not give congestion_surcharge's type before 2019 (empty, like yellow's).
        tolerated={
            "ehail_fee": EMPTY,
            "congestion_surcharge": EMPTY,
            "improvement_surcharge": EMPTY,
        },
        changes={
            "ehail_fee": [(Month(2019, 9), "null")],
            "congestion_surcharge": [(Month(2019, 1), "double")],
        },
    ),
    _period(
        "green",
        Month(2023, 2),
        _GREEN_HEAD.format(v="i", c="I", s="L", e="D", g="D"),
        "VendorID and location ids INT32, the four counts INT64, text as large_string",
        _GREEN_TIMES,
        tolerated={"ehail_fee": EMPTY},
    ),
    _period(
        "green",
        Month(2025, 1),
        _GREEN_HEAD.format(v="i", c="I", s="L", e="D", g="D") + " cbd_congestion_fee:D",
        "adds cbd_congestion_fee (21 columns)",
        _GREEN_TIMES,
        tolerated={"ehail_fee": EMPTY},
    ),
)

_FHV_HEAD: Final = (
    "dispatching_base_num:S pickup_datetime:T dropOff_datetime:T PUlocationID:{loc}"
    " DOlocationID:{loc} SR_Flag:{sr} Affiliated_base_number:S"
)
_FHV_TIMES: Final = ("pickup_datetime", "dropOff_datetime")
# The reference gives fhv's types for 2019 on; for 2015..2018 and after 2023-01 it does not, so the
# integer widths and the empty encodings are all accepted there.
_FHV_FLAG: Final = EMPTY | _INTEGERS

FHV_PERIODS: Final = _chain(
    _period(
        "fhv",
        Month(2015, 1),
        _FHV_HEAD.format(loc="D", sr="D"),
        "fhv's first files: location ids DOUBLE",
        _FHV_TIMES,
        tolerated={"PUlocationID": _INTEGERS, "DOlocationID": _INTEGERS, "SR_Flag": _FHV_FLAG},
        changes={"SR_Flag": [(Month(2019, 3), "null")]},
    ),
    _period(
        "fhv",
        Month(2019, 5),
        _FHV_HEAD.format(loc="I", sr="N"),
        "location ids INT64",
        _FHV_TIMES,
        tolerated={"PUlocationID": {"int32"}, "DOlocationID": {"int32"}, "SR_Flag": _FHV_FLAG},
        changes={"SR_Flag": [(Month(2023, 2), "int64")]},
    ),
)

_FHVHV_HEAD: Final = (
    "hvfhs_license_num:S dispatching_base_num:S originating_base_num:S request_datetime:T"
    " on_scene_datetime:T pickup_datetime:T dropoff_datetime:T PULocationID:I DOLocationID:I"
    " trip_miles:D trip_time:I base_passenger_fare:D tolls:D bcf:D sales_tax:D"
    " congestion_surcharge:D airport_fee:D tips:D driver_pay:D shared_request_flag:S"
    " shared_match_flag:S access_a_ride_flag:S wav_request_flag:S wav_match_flag:S"
)
_FHVHV_TIMES: Final = ("pickup_datetime", "dropoff_datetime")
# The reference names fhvhv's columns, not their types: integer widths and empty encodings are
# all accepted where a column may be empty or narrowed.
_FHVHV_TOLERATED: Final = {
    "PULocationID": _INTEGERS,
    "DOLocationID": _INTEGERS,
    "trip_time": _INTEGERS,
    "congestion_surcharge": EMPTY,
    "airport_fee": EMPTY,
    "originating_base_num": {"null"},
    "on_scene_datetime": {"null"},
}

FHVHV_PERIODS: Final = _chain(
    _period(
        "fhvhv",
        Month(2019, 2),
        _FHVHV_HEAD,
        "fhvhv's first files (24 columns)",
        _FHVHV_TIMES,
        tolerated=_FHVHV_TOLERATED,
    ),
    _period(
        "fhvhv",
        Month(2025, 1),
        _FHVHV_HEAD + " cbd_congestion_fee:D",
        "adds cbd_congestion_fee (25 columns)",
        _FHVHV_TIMES,
        tolerated=_FHVHV_TOLERATED,
    ),
)

PERIODS: Final[Mapping[str, tuple[SchemaPeriod, ...]]] = {
    "yellow": YELLOW_PERIODS,
    "green": GREEN_PERIODS,
    "fhv": FHV_PERIODS,
    "fhvhv": FHVHV_PERIODS,
}

_BEFORE_FIRST: Final = {
    "yellow": "the TLC's yellow files before 2011-01 have another layout (vendor_name,"
    " Trip_Pickup_DateTime as text, coordinates instead of zones)",
    "green": "green trip data starts 2013-08",
    "fhv": "fhv trip data starts 2015-01",
    "fhvhv": "fhvhv trip data starts 2019-02",
}


# --- lookups ------------------------------------------------------------------------------------


def tlc_file_name(dataset: str, month: Month) -> str:
    """The TLC's file name, e.g. ``yellow_tripdata_2024-01.parquet`` (``{base}/{name}``)."""
    _periods(dataset)
    return f"{dataset}_tripdata_{month}.parquet"


def first_month(dataset: str) -> Month:
    """The first month the pipeline reads from the TLC for ``dataset``."""
    return _periods(dataset)[0].first


def period_of(dataset: str, month: Month) -> SchemaPeriod:
    """The schema period of ``dataset`` in ``month``.

    Raises :class:`UnsupportedMonth` for a month before the dataset's first supported one
    (yellow before 2011-01, green before 2013-08) and ``ValueError`` for an unknown dataset.
    """
    periods = _periods(dataset)
    for period in reversed(periods):
        if month >= period.first:
            return period
    raise UnsupportedMonth(
        f"{dataset} {month}: {_BEFORE_FIRST[dataset]}; the pipeline reads {dataset} from the TLC"
        f" from {periods[0].first} on"
    )


def _periods(dataset: str) -> tuple[SchemaPeriod, ...]:
    try:
        return PERIODS[str(dataset)]
    except KeyError:
        raise ValueError(
            f"unknown TLC dataset {dataset!r} (known: {', '.join(TLC_DATASETS)})"
        ) from None


def recognise(dataset: str, month: Month, fields: Iterable[tuple[str, str]]) -> Recognition:
    """Whether a file's schema is one its period's files have.

    ``fields`` are the file's ``(name, arrow_type)`` in file order, types spelled as
    ``str(pyarrow.DataType)`` (see :func:`arrow_fields`). Names match exactly or, failing that,
    ignoring case (yellow's ``airport_fee`` / ``Airport_fee``): DuckDB and BigQuery resolve names
    without case. The result's ``problem`` names the first column that is missing, of a type
    the period never holds, or ambiguous; columns beyond the period are ``new_columns``.
    Raises :class:`UnsupportedMonth` like :func:`period_of`.
    """
    period = period_of(dataset, month)
    found = list(fields)
    where = f"{dataset} {month}"

    def failed(problem: str) -> Recognition:
        return Recognition(str(dataset), month, period, f"{where}: {problem}")

    by_folded: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    for name, arrow_type in found:
        if name in types:
            return failed(f"column {name!r} appears twice")
        types[name] = arrow_type
        by_folded.setdefault(name.casefold(), []).append(name)
    for spellings in by_folded.values():
        if len(spellings) > 1:
            names = " and ".join(repr(s) for s in spellings)
            return failed(
                f"columns {names} differ only in case (DuckDB and BigQuery names ignore case)"
            )

    matches = []
    notes = []
    for column in period.columns:
        spelled = by_folded.get(column.name.casefold())
        if not spelled:
            return failed(f"column {column.name!r} is missing ({period.label} files have it)")
        file_name = spelled[0]
        arrow_type = types[file_name]
        accepted = column.accepted_in(month)
        if arrow_type not in accepted:
            expected = column.arrow_type_in(month)
            others = sorted(accepted - {expected})
            also = f" (or {', '.join(others)})" if others else ""
            return failed(
                f"column {column.name!r} is {arrow_type}, expected {expected}{also}"
                f" in {period.label} files"
            )
        if file_name != column.name:
            notes.append(f"column {column.name!r} is spelled {file_name!r}")
        matches.append(ColumnMatch(column.name, file_name, arrow_type))

    known = {m.file_name for m in matches}
    in_file_order = [name for name, _ in found if name in known]
    if in_file_order != [m.file_name for m in matches]:
        notes.append(f"columns are not in {period.label} order")
    new = tuple((name, arrow_type) for name, arrow_type in found if name not in known)
    return Recognition(str(dataset), month, period, None, tuple(matches), new, tuple(notes))


class ArrowField(Protocol):
    """What :func:`arrow_fields` needs of a ``pyarrow.Field``."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> object: ...


def arrow_fields(schema: Iterable[ArrowField]) -> tuple[tuple[str, str], ...]:
    """``(name, str(type))`` of each field of a ``pyarrow.Schema``: the form :func:`recognise`
    takes (``str`` of an Arrow type is its canonical name, e.g. ``timestamp[us]``)."""
    return tuple((f.name, str(f.type)) for f in schema)
