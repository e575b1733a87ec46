"""The published taxi datasets: their CSV layouts, reference types, sources, months and names.

Everything here is pure data and naming rules, shared by every step and adapter, so the
cloud (BigQuery) and the embedded default (DuckDB) agree on what a column is called and
what type it has.

Two upstreams publish the months: the DataTalksClub mirror (``csv.gz``, 2019-01..2021-07, the
zoomcamp's data: yellow, green, fhv) and the NYC TLC itself (``parquet``, yellow from 2011-01,
green from 2013-08, fhv from 2015-01, fhvhv from 2019-02, about two months after a month ends).
They are not the same rows, so a month is loaded from one of them only
(:func:`choose_publication`, and the source guard of the download and merge steps).

A dataset is one declaration, its :class:`DatasetSpec` in :data:`SPECS`: layout and reference
types, id columns, pickup/dropoff, clustering, publications, how its generated trips look
(ARCHITECTURE.md, "Adding a dataset").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import total_ordering
from typing import Final, Literal

from taxi_pipeline.domain.formats import FORMATS, SourceFormat, format_named, format_of
from taxi_pipeline.errors import BeforeTheFirstMonth, UnsupportedMonth

ColumnKind = Literal["string", "timestamp", "integer", "numeric"]


class Upstream(StrEnum):
    """Where a month's file comes from: the ``--source`` of a run (``TAXI_PIPELINE_SOURCE``)."""

    AUTO = "auto"
    """The mirror for the months it publishes, the TLC for every other month."""
    MIRROR = "mirror"
    """The DataTalksClub CSV backups: ``{source_url}/{dataset}/{file}.csv.gz``."""
    TLC = "tlc"
    """The TLC's Parquet files: ``{tlc_url}/{dataset}_tripdata_YYYY-MM.parquet``."""


class Dataset(StrEnum):
    """A published taxi dataset (a release tag of DataTalksClub/nyc-tlc-data). Everything about
    one is its :class:`DatasetSpec` in :data:`SPECS`."""

    YELLOW = "yellow"
    GREEN = "green"
    FHV = "fhv"
    """For-hire vehicles (the trips of the bases that dispatch them)."""
    FHVHV = "fhvhv"
    """High-volume for-hire vehicles (Uber, Lyft, Via), from 2019-02."""

    @property
    def spec(self) -> DatasetSpec:
        return SPECS[self]

    @property
    def layout(self) -> Layout:
        return SPECS[self].layout

    @property
    def final_table(self) -> str:
        """Name of the partitioned final table, e.g. ``green_tripdata``."""
        return f"{self.value}_tripdata"


@dataclass(frozen=True)
class Column:
    """One published column with its reference type (each warehouse's name for the type is in
    its dialect, ``adapters/sql/dialects.py``).

    ``numeral``: a code written as a number (digits, optionally a decimal part: some months
    write ``1.0``); any other text is a bad value. The taxis' id columns that are text (VendorID
    and the location ids) are numerals, which is what keeps the reference's separator-less
    ``unique_row_id`` concatenation unambiguous about where the pickup is (see README).
    """

    name: str
    kind: ColumnKind
    numeral: bool = False

    @property
    def checked(self) -> bool:
        """Whether a text can fail this column (and the row then counts as bad)."""
        return self.kind != "string" or self.numeral


@dataclass(frozen=True)
class Layout:
    """The published layout of a dataset (the CSV's columns, in file order; a TLC-only
    dataset's Parquet columns), and the final table's columns beyond it."""

    columns: tuple[Column, ...]
    pickup: str
    dropoff: str
    id_columns: tuple[str, ...]
    """Columns of the ``unique_row_id`` formula, in formula order: MD5 over their BigQuery
    ``STRING`` forms, concatenated, NULL as '' (README, "Row ids")."""
    added: tuple[Column, ...] = ()
    """Final-table columns the CSV does not have (the TLC's fees): NULL for CSV months. A final
    table made before they existed gains them in place (``ALTER TABLE ... ADD COLUMN``)."""

    @property
    def names(self) -> tuple[str, ...]:
        """The CSV's column names, in file order."""
        return tuple(c.name for c in self.columns)

    @property
    def final_columns(self) -> tuple[Column, ...]:
        """Every column of the final table after ``unique_row_id`` and ``filename``."""
        return self.columns + self.added

    @property
    def final_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.final_columns)

    def column(self, name: str) -> Column:
        for candidate in self.final_columns:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no column {name!r}")

    @property
    def header(self) -> str:
        """The exact header line of a published file (without the newline)."""
        return ",".join(self.names)

    def __post_init__(self) -> None:
        names = set(self.names)
        missing = [n for n in (self.pickup, self.dropoff, *self.id_columns) if n not in names]
        if missing:
            raise ValueError(f"layout has no columns {missing} (pickup, dropoff, id)")


def _columns(spec: str) -> tuple[Column, ...]:
    """``name:K`` items: S string, C numeral code (a string), T timestamp, I integer, N numeric."""
    kinds: dict[str, ColumnKind] = {
        "S": "string",
        "C": "string",
        "T": "timestamp",
        "I": "integer",
        "N": "numeric",
    }
    out = []
    for item in spec.split():
        name, kind = item.split(":")
        out.append(Column(name, kinds[kind], numeral=kind == "C"))
    return tuple(out)


@dataclass(frozen=True)
class Fares:
    """How a taxi's fares look: payment types as cumulative per mille thresholds of types 1..4
    (the rest is 5), and the congestion surcharge from 2019-02 on (per mille charged, cents)."""

    payment_thresholds_pm: tuple[int, int, int, int]
    congestion_charged_pm: int
    congestion_cents: int


@dataclass(frozen=True)
class TripProfile:
    """How a dataset's trips look, for the synthetic files of ``devkit/generator.py``: per mille
    of trips inside Manhattan, the taxis' fares (``None``: the layout has no fare columns), per
    mille of trips without a pickup / dropoff zone (fhv's bases often leave them empty)."""

    manhattan_share_pm: int
    fares: Fares | None = None
    no_pickup_zone_pm: int = 0
    no_dropoff_zone_pm: int = 0


@dataclass(frozen=True)
class Publication:
    """What an upstream publishes of a dataset: a file format and the months it covers."""

    upstream: Upstream
    format: str
    """A name in :data:`formats.FORMATS` (``csv.gz``, ``parquet``)."""
    first: Month
    last: Month | None
    """``None``: still publishing (a month appears some weeks after it ends)."""
    before_first: str = ""
    """Why no month before ``first`` is read from this upstream (the error's words)."""
    starts_at_first: bool = True
    """Whether the dataset has no month before ``first`` at all (green before 2013-08): such a
    request is not published (SKIPPED). ``False``: earlier files exist in a layout the pipeline
    does not read (yellow before 2011-01), so such a request fails."""

    @property
    def source_format(self) -> SourceFormat:
        return format_named(self.format)

    def covers(self, month: Month) -> bool:
        return self.first <= month and (self.last is None or month <= self.last)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything about one dataset, in one declaration: its layout and reference types, the id,
    pickup/dropoff and clustering columns, what the source publishes, how its trips look."""

    dataset: Dataset
    layout: Layout
    cluster_columns: tuple[str, ...]
    """Clustering of the final table where the warehouse clusters (BigQuery)."""
    publications: tuple[Publication, ...]
    profile: TripProfile

    @property
    def id_columns(self) -> tuple[str, ...]:
        return self.layout.id_columns

    def published_months(self) -> list[Month]:
        """The months of the closed publications (the mirror's): the coverage matrix's range.
        The TLC's publication is open (it grows every month) and is not enumerated."""
        months = {
            m for p in self.publications if p.last is not None for m in month_range(p.first, p.last)
        }
        return sorted(months)

    def publication(self, upstream: Upstream) -> Publication:
        found = self.find_publication(upstream)
        if found is None:
            raise ValueError(f"{self.dataset.value} has no {upstream.value} publication")
        return found

    def find_publication(self, upstream: Upstream) -> Publication | None:
        for candidate in self.publications:
            if candidate.upstream is upstream:
                return candidate
        return None

    def publishes(self, month: Month) -> bool:
        """Whether any upstream publishes ``month`` (the TLC's open range counts)."""
        return any(p.covers(month) for p in self.publications)


# Reference types from the zoomcamp's 08_gcp_taxi flow (see shared/reference/zoomcamp-pipeline.md).
YELLOW_LAYOUT: Final = Layout(
    columns=_columns(
        "VendorID:C tpep_pickup_datetime:T tpep_dropoff_datetime:T passenger_count:I"
        " trip_distance:N RatecodeID:S store_and_fwd_flag:S PULocationID:C DOLocationID:C"
        " payment_type:I fare_amount:N extra:N mta_tax:N tip_amount:N tolls_amount:N"
        " improvement_surcharge:N total_amount:N congestion_surcharge:N"
    ),
    pickup="tpep_pickup_datetime",
    dropoff="tpep_dropoff_datetime",
    id_columns=(
        "VendorID",
        "tpep_pickup_datetime",
        "tpep_dropoff_datetime",
        "PULocationID",
        "DOLocationID",
    ),
    # The TLC's files have them (airport_fee spelled Airport_fee from 2023-02); the CSV not.
    added=_columns("airport_fee:N cbd_congestion_fee:N"),
)

GREEN_LAYOUT: Final = Layout(
    columns=_columns(
        "VendorID:C lpep_pickup_datetime:T lpep_dropoff_datetime:T store_and_fwd_flag:S"
        " RatecodeID:S PULocationID:C DOLocationID:C passenger_count:I trip_distance:N"
        " fare_amount:N extra:N mta_tax:N tip_amount:N tolls_amount:N ehail_fee:N"
        " improvement_surcharge:N total_amount:N payment_type:I trip_type:S"
        " congestion_surcharge:N"
    ),
    pickup="lpep_pickup_datetime",
    dropoff="lpep_dropoff_datetime",
    id_columns=(
        "VendorID",
        "lpep_pickup_datetime",
        "lpep_dropoff_datetime",
        "PULocationID",
        "DOLocationID",
    ),
    added=_columns("cbd_congestion_fee:N"),
)

# fhv as published (note the spellings). No reference flow types it: the location ids and
# SR_Flag are INTEGER (the files write them as DOUBLE in 2019-01..04, "80.0" in some CSVs, INT64
# later), the rest as the taxis' types. The id is the taxis' formula over fhv's columns: the
# base, pickup, dropoff and zones (README, "Row ids").
FHV_LAYOUT: Final = Layout(
    columns=_columns(
        "dispatching_base_num:S pickup_datetime:T dropOff_datetime:T PUlocationID:I"
        " DOlocationID:I SR_Flag:I Affiliated_base_number:S"
    ),
    pickup="pickup_datetime",
    dropoff="dropOff_datetime",
    id_columns=(
        "dispatching_base_num",
        "pickup_datetime",
        "dropOff_datetime",
        "PUlocationID",
        "DOlocationID",
    ),
)

# fhvhv: the TLC's 24 columns (Parquet only), cbd_congestion_fee from 2025-01.
FHVHV_LAYOUT: Final = Layout(
    columns=_columns(
        "hvfhs_license_num:S dispatching_base_num:S originating_base_num:S request_datetime:T"
        " on_scene_datetime:T pickup_datetime:T dropoff_datetime:T PULocationID:I"
        " DOLocationID:I trip_miles:N trip_time:I base_passenger_fare:N tolls:N bcf:N"
        " sales_tax:N congestion_surcharge:N airport_fee:N tips:N driver_pay:N"
        " shared_request_flag:S shared_match_flag:S access_a_ride_flag:S wav_request_flag:S"
        " wav_match_flag:S"
    ),
    pickup="pickup_datetime",
    dropoff="dropoff_datetime",
    id_columns=(
        "hvfhs_license_num",
        "dispatching_base_num",
        "pickup_datetime",
        "dropoff_datetime",
        "PULocationID",
        "DOLocationID",
    ),
    added=_columns("cbd_congestion_fee:N"),
)

_MONTH_RE: Final = re.compile(r"([0-9]{4})-([0-9]{2})")


@total_ordering
@dataclass(frozen=True)
class Month:
    """A calendar month, written ``YYYY-MM``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12:
            raise ValueError(f"month must be 01..12, got {self.month:02d}")
        if not 1900 <= self.year <= 9999:
            raise ValueError(f"year out of range: {self.year}")

    @classmethod
    def parse(cls, text: str) -> Month:
        """Parse ``YYYY-MM``; raises ``ValueError`` with a specific reason otherwise."""
        match = _MONTH_RE.fullmatch(text)
        if not match:
            raise ValueError(f"month must look like YYYY-MM, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Month):
            return NotImplemented
        return (self.year, self.month) < (other.year, other.month)

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Month:
        return Month(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def minus(self, months: int) -> Month:
        index = self.year * 12 + self.month - 1 - months
        return Month(index // 12, index % 12 + 1)

    @property
    def underscored(self) -> str:
        """``YYYY_MM``, the form used in table names."""
        return f"{self.year:04d}_{self.month:02d}"


def month_range(first: Month, last: Month) -> list[Month]:
    """Every month from ``first`` to ``last`` inclusive (empty when ``last < first``)."""
    months = []
    current = first
    while current <= last:
        months.append(current)
        current = current.next()
    return months


def parse_month_span(text: str) -> list[Month]:
    """``2019-01`` or ``2019-01..2019-03`` -> the months it names."""
    if ".." in text:
        first_text, last_text = text.split("..", 1)
        first, last = Month.parse(first_text), Month.parse(last_text)
        if last < first:
            raise ValueError(f"range {text!r} ends before it starts")
        return month_range(first, last)
    return [Month.parse(text)]


# What the mirror publishes (release tags yellow/green/fhv of DataTalksClub/nyc-tlc-data).
PUBLISHED_FIRST: Final = Month(2019, 1)
PUBLISHED_LAST: Final = Month(2021, 7)
_MIRROR: Final = Publication(Upstream.MIRROR, "csv.gz", PUBLISHED_FIRST, PUBLISHED_LAST)
# What the TLC publishes in today's layout (domain/tlc_schemas.py: yellow before 2011-01 has
# other column names; green starts 2013-08, fhv 2015-01, fhvhv 2019-02).
TLC_YELLOW_FIRST: Final = Month(2011, 1)
TLC_GREEN_FIRST: Final = Month(2013, 8)
TLC_FHV_FIRST: Final = Month(2015, 1)
TLC_FHVHV_FIRST: Final = Month(2019, 2)
_ZONES: Final = ("PULocationID", "DOLocationID")


def _tlc(first: Month, before_first: str, *, starts_at_first: bool = True) -> Publication:
    return Publication(Upstream.TLC, "parquet", first, None, before_first, starts_at_first)


SPECS: Final[dict[Dataset, DatasetSpec]] = {
    Dataset.YELLOW: DatasetSpec(
        Dataset.YELLOW,
        YELLOW_LAYOUT,
        cluster_columns=_ZONES,
        publications=(
            _MIRROR,
            _tlc(
                TLC_YELLOW_FIRST,
                "its yellow files before 2011-01 have other column names (vendor_name,"
                " Trip_Pickup_DateTime, coordinates instead of zones)",
                starts_at_first=False,
            ),
        ),
        profile=TripProfile(850, Fares((710, 985, 993, 998), 900, 250)),
    ),
    Dataset.GREEN: DatasetSpec(
        Dataset.GREEN,
        GREEN_LAYOUT,
        cluster_columns=_ZONES,
        publications=(_MIRROR, _tlc(TLC_GREEN_FIRST, "green trip data starts 2013-08")),
        profile=TripProfile(0, Fares((500, 950, 975, 995), 150, 275)),
    ),
    Dataset.FHV: DatasetSpec(
        Dataset.FHV,
        FHV_LAYOUT,
        cluster_columns=("PUlocationID", "DOlocationID"),
        publications=(_MIRROR, _tlc(TLC_FHV_FIRST, "fhv trip data starts 2015-01")),
        profile=TripProfile(300, no_pickup_zone_pm=200, no_dropoff_zone_pm=150),
    ),
    Dataset.FHVHV: DatasetSpec(
        Dataset.FHVHV,
        FHVHV_LAYOUT,
        cluster_columns=_ZONES,
        publications=(_tlc(TLC_FHVHV_FIRST, "fhvhv trip data starts 2019-02"),),
        profile=TripProfile(850),
    ),
}
LAYOUTS: Final[dict[Dataset, Layout]] = {d: spec.layout for d, spec in SPECS.items()}


def published_months(dataset: Dataset | None = None) -> list[Month]:
    """The months the source publishes of ``dataset`` (of any dataset when ``None``)."""
    specs = [SPECS[dataset]] if dataset else list(SPECS.values())
    return sorted({m for spec in specs for m in spec.published_months()})


def source_format(dataset: Dataset) -> SourceFormat:
    """The format of ``dataset``'s first publication: the mirror's ``csv.gz`` where the mirror
    publishes it, else the TLC's ``parquet``."""
    return format_named(SPECS[dataset].publications[0].format)


def choose_publication(dataset: Dataset, month: Month, choice: Upstream) -> Publication:
    """The publication a run of ``dataset`` ``month`` downloads from.

    ``auto``: the mirror for the months it publishes, the TLC for every other. An explicit
    ``mirror`` is taken as asked (a month it lacks is then not published: SKIPPED). The TLC
    before its first month in today's layout, or an upstream that never publishes the dataset
    (the mirror's fhvhv), raises :class:`UnsupportedMonth`; a month before the dataset's
    first anywhere raises its subclass :class:`BeforeTheFirstMonth` (also ``NotPublished``).
    """
    spec = SPECS[dataset]
    if choice is Upstream.AUTO:
        mirror = spec.find_publication(Upstream.MIRROR)
        choice = Upstream.MIRROR if mirror is not None and mirror.covers(month) else Upstream.TLC
    publication = spec.find_publication(choice)
    if publication is None:
        others = ", ".join(p.upstream.value for p in spec.publications)
        raise UnsupportedMonth(
            f"{dataset.value} is not published by the {choice.value}; it comes from: {others}"
            " (--source)"
        )
    if choice is Upstream.TLC and month < publication.first:
        refusal = BeforeTheFirstMonth if publication.starts_at_first else UnsupportedMonth
        raise refusal(
            f"{dataset.value} {month} is not available from the TLC in today's layout:"
            f" {publication.before_first}; the pipeline reads {dataset.value} from the TLC from"
            f" {publication.first} on"
        )
    return publication


def upstream_of(dataset: Dataset, fmt: SourceFormat) -> Upstream:
    """The upstream that publishes ``dataset`` in ``fmt`` (a loaded object's source)."""
    for publication in SPECS[dataset].publications:
        if publication.format == fmt.name:
            return publication.upstream
    raise ValueError(f"{dataset.value} is not published as {fmt.name}")


def upstream_of_object(name: str) -> Upstream | None:
    """The upstream of the lake object ``name`` (``None``: not a month's object)."""
    try:
        dataset, _, fmt = parse_object(name)
        return upstream_of(dataset, fmt)
    except ValueError:
        return None


def file_name(dataset: Dataset, month: Month, fmt: SourceFormat | None = None) -> str:
    """The published file name, e.g. ``green_tripdata_2019-01.csv.gz``."""
    return f"{dataset.value}_tripdata_{month}{(fmt or source_format(dataset)).suffix}"


def csv_name(dataset: Dataset, month: Month, fmt: SourceFormat | None = None) -> str:
    """The ``filename`` column value: the published CSV's name (without ``.gz``), or the
    Parquet file's name."""
    chosen = fmt or source_format(dataset)
    return chosen.row_filename(file_name(dataset, month, chosen))


def object_name(dataset: Dataset, month: Month, fmt: SourceFormat | None = None) -> str:
    """The lake object name (same in the folder store and in GCS)."""
    return f"raw/{dataset.value}/{file_name(dataset, month, fmt)}"


_OBJECT_RE: Final = re.compile(
    r"^raw/([a-z0-9_]+)/([a-z0-9_]+)_tripdata_([0-9]{4}-[0-9]{2})(\..+)$"
)


def parse_object(name: str) -> tuple[Dataset, Month, SourceFormat]:
    """Reverse of :func:`object_name`; raises ``ValueError`` for anything else."""
    match = _OBJECT_RE.fullmatch(name)
    fmt = format_of(name)
    known = {d.value for d in Dataset}
    suffixes = "|".join(f.suffix for f in FORMATS.values())
    if (
        not match
        or match.group(1) != match.group(2)
        or match.group(1) not in known
        or fmt is None
        or match.group(4) != fmt.suffix
    ):
        raise ValueError(
            f"object name {name!r} is not of the form"
            f" raw/{{dataset}}/{{dataset}}_tripdata_YYYY-MM{{{suffixes}}}"
        )
    return Dataset(match.group(1)), Month.parse(match.group(3)), fmt


def parse_object_name(name: str) -> tuple[Dataset, Month]:
    """The dataset and month of a lake object name; raises ``ValueError`` for anything else."""
    dataset, month, _ = parse_object(name)
    return dataset, month


_SAFE_OBJECT_NAME: Final = re.compile(
    r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"
)
_MAX_OBJECT_NAME_BYTES: Final = 1024  # GCS's limit


def is_safe_object_name(name: str) -> bool:
    """Whether ``name`` may name a lake object in every store: relative, ``/``-separated parts of
    letters, digits, ``._-``, no part starting with a dot (no ``..``, nothing hidden)."""
    return bool(_SAFE_OBJECT_NAME.fullmatch(name)) and len(name.encode()) <= _MAX_OBJECT_NAME_BYTES
