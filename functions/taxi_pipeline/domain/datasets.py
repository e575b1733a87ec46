"""The published taxi datasets: their CSV layouts, reference types, months and names.

Everything here is pure data and naming rules, shared by every step and adapter, so the
cloud (BigQuery) and the embedded default (DuckDB) agree on what a column is called and
what type it has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import total_ordering
from typing import Final, Literal

ColumnKind = Literal["string", "timestamp", "integer", "numeric"]


class Dataset(StrEnum):
    """A published taxi dataset (a release tag of DataTalksClub/nyc-tlc-data)."""

    YELLOW = "yellow"
    GREEN = "green"

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self]

    @property
    def final_table(self) -> str:
        """Name of the partitioned final table, e.g. ``green_tripdata``."""
        return f"{self.value}_tripdata"


@dataclass(frozen=True)
class Column:
    """One CSV column with the reference (BigQuery) type."""

    name: str
    kind: ColumnKind

    @property
    def bigquery_type(self) -> str:
        return _BIGQUERY_TYPES[self.kind]


_BIGQUERY_TYPES: Final[dict[ColumnKind, str]] = {
    "string": "STRING",
    "timestamp": "TIMESTAMP",
    "integer": "INT64",
    "numeric": "NUMERIC",
}


@dataclass(frozen=True)
class Layout:
    """The published CSV layout of a dataset, in file order."""

    columns: tuple[Column, ...]
    pickup: str
    dropoff: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def header(self) -> str:
        """The exact header line of a published file (without the newline)."""
        return ",".join(self.names)

    @property
    def id_columns(self) -> tuple[str, ...]:
        """Columns of the reference ``unique_row_id`` formula, in formula order."""
        return ("VendorID", self.pickup, self.dropoff, "PULocationID", "DOLocationID")


def _columns(spec: str) -> tuple[Column, ...]:
    kinds: dict[str, ColumnKind] = {"S": "string", "T": "timestamp", "I": "integer", "N": "numeric"}
    out = []
    for item in spec.split():
        name, kind = item.split(":")
        out.append(Column(name, kinds[kind]))
    return tuple(out)


# Reference types from the zoomcamp's 08_gcp_taxi flow (see shared/reference/zoomcamp-pipeline.md).
YELLOW_LAYOUT: Final = Layout(
    columns=_columns(
        "VendorID:S tpep_pickup_datetime:T tpep_dropoff_datetime:T passenger_count:I"
        " trip_distance:N RatecodeID:S store_and_fwd_flag:S PULocationID:S DOLocationID:S"
        " payment_type:I fare_amount:N extra:N mta_tax:N tip_amount:N tolls_amount:N"
        " improvement_surcharge:N total_amount:N congestion_surcharge:N"
    ),
    pickup="tpep_pickup_datetime",
    dropoff="tpep_dropoff_datetime",
)

GREEN_LAYOUT: Final = Layout(
    columns=_columns(
        "VendorID:S lpep_pickup_datetime:T lpep_dropoff_datetime:T store_and_fwd_flag:S"
        " RatecodeID:S PULocationID:S DOLocationID:S passenger_count:I trip_distance:N"
        " fare_amount:N extra:N mta_tax:N tip_amount:N tolls_amount:N ehail_fee:N"
        " improvement_surcharge:N total_amount:N payment_type:I trip_type:S"
        " congestion_surcharge:N"
    ),
    pickup="lpep_pickup_datetime",
    dropoff="lpep_dropoff_datetime",
)

LAYOUTS: Final[dict[Dataset, Layout]] = {Dataset.YELLOW: YELLOW_LAYOUT, Dataset.GREEN: GREEN_LAYOUT}

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


# What the source publishes (release tags yellow/green of DataTalksClub/nyc-tlc-data).
PUBLISHED_FIRST: Final = Month(2019, 1)
PUBLISHED_LAST: Final = Month(2021, 7)


def published_months() -> list[Month]:
    return month_range(PUBLISHED_FIRST, PUBLISHED_LAST)


def file_name(dataset: Dataset, month: Month) -> str:
    """The published file name, e.g. ``green_tripdata_2019-01.csv.gz``."""
    return f"{dataset.value}_tripdata_{month}.csv.gz"


def csv_name(dataset: Dataset, month: Month) -> str:
    """The ``filename`` column value: the published file name without ``.gz``."""
    return file_name(dataset, month).removesuffix(".gz")


def object_name(dataset: Dataset, month: Month) -> str:
    """The lake object name (same in the folder store and in GCS)."""
    return f"raw/{dataset.value}/{file_name(dataset, month)}"


_OBJECT_RE: Final = re.compile(
    r"^raw/(yellow|green)/(yellow|green)_tripdata_([0-9]{4}-[0-9]{2})\.csv\.gz$"
)


def parse_object_name(name: str) -> tuple[Dataset, Month]:
    """Reverse of :func:`object_name`; raises ``ValueError`` for anything else."""
    match = _OBJECT_RE.fullmatch(name)
    if not match or match.group(1) != match.group(2):
        raise ValueError(
            f"object name {name!r} is not of the form"
            " raw/{dataset}/{dataset}_tripdata_YYYY-MM.csv.gz"
        )
    return Dataset(match.group(1)), Month.parse(match.group(3))


_SAFE_OBJECT_NAME: Final = re.compile(
    r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"
)
_MAX_OBJECT_NAME_BYTES: Final = 1024  # GCS's limit


def is_safe_object_name(name: str) -> bool:
    """Whether ``name`` may name a lake object in every store: relative, ``/``-separated parts of
    letters, digits, ``._-``, no part starting with a dot (no ``..``, nothing hidden)."""
    return bool(_SAFE_OBJECT_NAME.fullmatch(name)) and len(name.encode()) <= _MAX_OBJECT_NAME_BYTES


def external_table(dataset: Dataset, month: Month) -> str:
    """Name of the month's external table, e.g. ``green_tripdata_2019_01_ext``."""
    return f"{dataset.value}_tripdata_{month.underscored}_ext"


def staging_table(dataset: Dataset, month: Month) -> str:
    """Name of the month's staging table, e.g. ``green_tripdata_2019_01``."""
    return f"{dataset.value}_tripdata_{month.underscored}"
