"""The TLC's Parquet schema periods: lookups, refusals and what ``recognise`` tolerates."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pytest

from taxi_pipeline.domain.datasets import LAYOUTS, Dataset, Month
from taxi_pipeline.domain.tlc_schemas import (
    PERIODS,
    arrow_fields,
    first_month,
    period_of,
    recognise,
    tlc_file_name,
)
from taxi_pipeline.errors import PermanentError, UnsupportedMonth

# The published CSV headers: the Parquet files keep their names and order (and add fee columns).
YELLOW_ORDER = LAYOUTS[Dataset.YELLOW].names
GREEN_ORDER = LAYOUTS[Dataset.GREEN].names
FHV_ORDER = (
    "dispatching_base_num", "pickup_datetime", "dropOff_datetime", "PUlocationID",
    "DOlocationID", "SR_Flag", "Affiliated_base_number",
)  # fmt: skip

ALL_PERIODS = [p for periods in PERIODS.values() for p in periods]


def fields(dataset: str, month: Month) -> list[tuple[str, str]]:
    return list(period_of(dataset, month).fields_in(month))


def replaced(
    found: list[tuple[str, str]], name: str, arrow_type: str | None = None, *, new_name: str = ""
) -> list[tuple[str, str]]:
    return [(new_name or n, arrow_type or t) if n == name else (n, t) for n, t in found]


@pytest.mark.parametrize(
    ("dataset", "month", "first", "last"),
    [
        ("yellow", "2011-01", "2011-01", "2018-06"),
        ("yellow", "2018-06", "2011-01", "2018-06"),
        ("yellow", "2018-07", "2018-07", "2023-01"),
        ("yellow", "2023-01", "2018-07", "2023-01"),
        ("yellow", "2023-02", "2023-02", "2024-12"),
        ("yellow", "2025-01", "2025-01", None),
        ("yellow", "2031-07", "2025-01", None),
        ("green", "2013-08", "2013-08", "2023-01"),
        ("green", "2023-02", "2023-02", "2024-12"),
        ("green", "2025-06", "2025-01", None),
        ("fhv", "2019-04", "2015-01", "2019-04"),
        ("fhv", "2019-05", "2019-05", None),
        ("fhvhv", "2019-02", "2019-02", "2024-12"),
        ("fhvhv", "2025-01", "2025-01", None),
    ],
)
def test_period_of_finds_the_period_holding_the_month(
    dataset: str, month: str, first: str, last: str | None
) -> None:
    period = period_of(dataset, Month.parse(month))
    assert (str(period.first), None if period.last is None else str(period.last)) == (first, last)
    assert period.contains(Month.parse(month))
    assert period.label == f"{dataset} {first}..{last or ''}"


def test_the_periods_of_a_dataset_follow_each_other_without_a_gap() -> None:
    for periods in PERIODS.values():
        for before, after in itertools.pairwise(periods):
            assert before.last is not None
            assert before.last.next() == after.first
        assert periods[-1].last is None


def test_yellow_columns_in_file_order_and_spelling() -> None:
    names = [p.names for p in PERIODS["yellow"]]
    assert names[0] == (*YELLOW_ORDER, "airport_fee")
    assert names[1] == names[0]
    assert names[2] == (*YELLOW_ORDER, "Airport_fee")
    assert names[3] == (*YELLOW_ORDER, "Airport_fee", "cbd_congestion_fee")


def test_green_fhv_and_fhvhv_columns() -> None:
    green = [p.names for p in PERIODS["green"]]
    assert green[0] == green[1] == GREEN_ORDER
    assert green[2] == (*GREEN_ORDER, "cbd_congestion_fee")
    assert all(p.names == FHV_ORDER for p in PERIODS["fhv"])
    fhvhv = [p.names for p in PERIODS["fhvhv"]]
    assert len(fhvhv[0]) == 24
    assert fhvhv[0][:4] == (
        "hvfhs_license_num", "dispatching_base_num", "originating_base_num", "request_datetime"
    )  # fmt: skip
    assert fhvhv[1] == (*fhvhv[0], "cbd_congestion_fee")


@pytest.mark.parametrize("dataset", [Dataset.YELLOW, Dataset.GREEN])
def test_every_csv_column_is_in_every_period_of_its_dataset(dataset: Dataset) -> None:
    """The final tables keep their columns whatever the source month."""
    for period in PERIODS[dataset]:
        folded = {name.casefold() for name in period.names}
        assert {name.casefold() for name in LAYOUTS[dataset].names} <= folded, period.label
        assert (period.pickup, period.dropoff) == (
            LAYOUTS[dataset].pickup,
            LAYOUTS[dataset].dropoff,
        )


@pytest.mark.parametrize(
    ("dataset", "month", "types"),
    [
        # name: (type) for the columns whose type tells the periods apart
        ("yellow", "2015-06", {"VendorID": "int64", "passenger_count": "int64",
                               "RatecodeID": "int64", "store_and_fwd_flag": "string",
                               "congestion_surcharge": "null", "airport_fee": "null"}),
        ("yellow", "2018-07", {"passenger_count": "double", "RatecodeID": "double",
                               "congestion_surcharge": "null", "airport_fee": "null"}),
        ("yellow", "2019-01", {"congestion_surcharge": "double", "airport_fee": "null"}),
        ("yellow", "2020-09", {"airport_fee": "double"}),
        ("yellow", "2020-10", {"airport_fee": "null"}),
        ("yellow", "2020-11", {"airport_fee": "double"}),
        ("yellow", "2023-02", {"VendorID": "int32", "PULocationID": "int32",
                               "passenger_count": "int64", "RatecodeID": "int64",
                               "payment_type": "int64", "store_and_fwd_flag": "large_string",
                               "Airport_fee": "double"}),
        ("yellow", "2025-01", {"cbd_congestion_fee": "double"}),
        ("green", "2019-08", {"VendorID": "int64", "trip_type": "double", "ehail_fee": "double"}),
        ("green", "2019-09", {"ehail_fee": "null", "congestion_surcharge": "double"}),
        ("green", "2023-02", {"VendorID": "int32", "trip_type": "int64", "ehail_fee": "double",
                              "store_and_fwd_flag": "large_string"}),
        ("fhv", "2019-01", {"PUlocationID": "double", "SR_Flag": "double"}),
        ("fhv", "2019-03", {"PUlocationID": "double", "SR_Flag": "null"}),
        ("fhv", "2019-05", {"PUlocationID": "int64", "SR_Flag": "null"}),
    ],
)  # fmt: skip
def test_types_of_a_month_are_the_files_types(
    dataset: str, month: str, types: dict[str, str]
) -> None:
    got = dict(fields(dataset, Month.parse(month)))
    assert {name: got[name] for name in types} == types
    pickup = period_of(dataset, Month.parse(month)).pickup
    assert got[pickup] == "timestamp[us]", "wall-clock time, no zone"


@pytest.mark.parametrize("period", ALL_PERIODS, ids=lambda p: p.label)
def test_each_periods_own_schema_is_recognised_in_its_first_and_last_month(period: object) -> None:
    from taxi_pipeline.domain.tlc_schemas import SchemaPeriod

    assert isinstance(period, SchemaPeriod)
    for month in (period.first, period.last or Month(2030, 12)):
        recognition = recognise(period.dataset, month, period.fields_in(month))
        assert recognition.matches, recognition.problem
        assert recognition.period == period
        assert [m.name for m in recognition.columns] == list(period.names)
        assert recognition.new_columns == ()
        assert recognition.notes == ()


@pytest.mark.parametrize(
    ("dataset", "month", "expected"),
    [
        ("yellow", Month(2010, 12), "before 2011-01 have another layout"),
        ("yellow", Month(2009, 1), "from 2011-01 on"),
        ("green", Month(2013, 7), "green trip data starts 2013-08"),
        ("fhv", Month(2014, 12), "starts 2015-01"),
        ("fhvhv", Month(2019, 1), "starts 2019-02"),
    ],
)
def test_months_before_a_datasets_first_period_are_refused(
    dataset: str, month: Month, expected: str
) -> None:
    with pytest.raises(UnsupportedMonth, match=expected) as raised:
        period_of(dataset, month)
    assert isinstance(raised.value, PermanentError), "never retried"
    assert str(raised.value).startswith(f"{dataset} {month}: ")
    with pytest.raises(UnsupportedMonth):
        recognise(dataset, month, [])


def test_first_months_and_unknown_datasets() -> None:
    assert [str(first_month(d)) for d in ("yellow", "green", "fhv", "fhvhv")] == [
        "2011-01", "2013-08", "2015-01", "2019-02"
    ]  # fmt: skip
    assert period_of(Dataset.GREEN, Month(2020, 1)).dataset == "green", "a Dataset works too"
    with pytest.raises(ValueError, match=r"unknown TLC dataset 'purple' \(known: yellow, green"):
        period_of("purple", Month(2020, 1))


@pytest.mark.parametrize(
    ("dataset", "month", "column", "arrow_type"),
    [
        ("yellow", "2020-10", "airport_fee", "int32"),  # the 2020-10 file's encoding
        ("yellow", "2020-10", "airport_fee", "double"),
        ("yellow", "2019-05", "airport_fee", "int32"),
        ("yellow", "2014-08", "improvement_surcharge", "null"),
        ("yellow", "2011-01", "congestion_surcharge", "double"),
        ("yellow", "2011-02", "congestion_surcharge", "int32"),
        ("yellow", "2018-10", "congestion_surcharge", "double"),
        ("green", "2019-09", "ehail_fee", "double"),
        ("green", "2018-01", "ehail_fee", "null"),
        ("green", "2024-03", "ehail_fee", "null"),
        ("yellow", "2024-01", "store_and_fwd_flag", "string"),  # no Arrow schema in the footer
        ("yellow", "2019-01", "store_and_fwd_flag", "large_string"),
        ("fhv", "2019-06", "SR_Flag", "double"),
    ],
)
def test_encodings_real_files_use_are_tolerated(
    dataset: str, month: str, column: str, arrow_type: str
) -> None:
    found = replaced(fields(dataset, Month.parse(month)), column, arrow_type)
    recognition = recognise(dataset, Month.parse(month), found)
    assert recognition.matches, recognition.problem
    assert recognition.arrow_type_of(column) == arrow_type


@pytest.mark.parametrize(
    ("dataset", "month", "column", "arrow_type", "message"),
    [
        ("yellow", "2019-03", "passenger_count", "int64",
         "yellow 2019-03: column 'passenger_count' is int64, expected double"
         " in yellow 2018-07..2023-01 files"),
        ("yellow", "2024-01", "passenger_count", "double",
         "column 'passenger_count' is double, expected int64 in yellow 2023-02..2024-12 files"),
        ("yellow", "2024-01", "tpep_pickup_datetime", "timestamp[us, tz=UTC]",
         "column 'tpep_pickup_datetime' is timestamp[us, tz=UTC], expected timestamp[us]"),
        ("yellow", "2024-01", "tpep_dropoff_datetime", "timestamp[ns]",
         "'tpep_dropoff_datetime' is timestamp[ns], expected timestamp[us]"),
        ("yellow", "2019-03", "airport_fee", "string",
         "'airport_fee' is string, expected null (or double, int32)"),
        ("yellow", "2019-03", "congestion_surcharge", "int64",
         "'congestion_surcharge' is int64, expected double (or int32, null)"),
        ("green", "2019-03", "store_and_fwd_flag", "int64",
         "'store_and_fwd_flag' is int64, expected string (or large_string)"),
        ("yellow", "2024-06", "VendorID", "int64", "'VendorID' is int64, expected int32"),
    ],
)  # fmt: skip
def test_an_unexpected_type_is_named_with_its_period(
    dataset: str, month: str, column: str, arrow_type: str, message: str
) -> None:
    found = replaced(fields(dataset, Month.parse(month)), column, arrow_type)
    recognition = recognise(dataset, Month.parse(month), found)
    assert not recognition.matches
    assert recognition.problem is not None
    assert message in recognition.problem
    assert recognition.columns == ()


def test_a_missing_column_is_named() -> None:
    month = Month(2024, 1)
    found = [f for f in fields("yellow", month) if f[0] not in {"Airport_fee", "mta_tax"}]
    recognition = recognise("yellow", month, found)
    assert recognition.problem == (
        "yellow 2024-01: column 'mta_tax' is missing (yellow 2023-02..2024-12 files have it)"
    ), "the first missing column in file order"


def test_a_2025_file_without_cbd_congestion_fee_is_not_recognised() -> None:
    month = Month(2025, 2)
    found = fields("yellow", Month(2024, 12))
    problem = recognise("yellow", month, found).problem
    assert problem == (
        "yellow 2025-02: column 'cbd_congestion_fee' is missing (yellow 2025-01.. files have it)"
    )


def test_new_columns_are_reported_not_refused() -> None:
    month = Month(2024, 1)
    found = fields("yellow", month)
    found.insert(5, ("rider_rating", "double"))
    found.append(("zone_note", "large_string"))
    recognition = recognise("yellow", month, found)
    assert recognition.matches
    assert recognition.new_columns == (("rider_rating", "double"), ("zone_note", "large_string"))
    assert recognition.new_column_messages == (
        "new column rider_rating (double) not loaded",
        "new column zone_note (large_string) not loaded",
    )
    assert recognition.notes == (), "a new column in between leaves the known ones in order"


def test_a_name_in_another_case_matches_and_says_how_the_file_spells_it() -> None:
    month = Month(2024, 1)
    found = replaced(fields("yellow", month), "Airport_fee", new_name="airport_fee")
    recognition = recognise("yellow", month, found)
    assert recognition.matches, recognition.problem
    assert recognition.file_name_of("Airport_fee") == "airport_fee"
    assert recognition.notes == ("column 'Airport_fee' is spelled 'airport_fee'",)
    with pytest.raises(KeyError, match="not a column"):
        recognition.file_name_of("airport_fee")


def test_names_differing_only_in_case_are_ambiguous() -> None:
    month = Month(2024, 1)
    found = [*fields("yellow", month), ("airport_fee", "double")]
    problem = recognise("yellow", month, found).problem
    assert problem == (
        "yellow 2024-01: columns 'Airport_fee' and 'airport_fee' differ only in case"
        " (DuckDB and BigQuery names ignore case)"
    )


def test_a_repeated_column_is_refused() -> None:
    month = Month(2019, 1)
    found = [*fields("green", month), ("VendorID", "int64")]
    assert recognise("green", month, found).problem == (
        "green 2019-01: column 'VendorID' appears twice"
    )


def test_reordered_columns_load_by_name_with_a_note() -> None:
    month = Month(2019, 1)
    found = list(reversed(fields("yellow", month)))
    recognition = recognise("yellow", month, found)
    assert recognition.matches
    assert recognition.notes == ("columns are not in yellow 2018-07..2023-01 order",)


def test_arrow_fields_spells_types_as_recognise_expects() -> None:
    schema = pa.schema(
        [
            ("VendorID", pa.int32()),
            ("tpep_pickup_datetime", pa.timestamp("us")),
            ("store_and_fwd_flag", pa.large_string()),
            ("airport_fee", pa.null()),
            ("zoned", pa.timestamp("us", tz="UTC")),
        ]
    )
    assert arrow_fields(schema) == (
        ("VendorID", "int32"),
        ("tpep_pickup_datetime", "timestamp[us]"),
        ("store_and_fwd_flag", "large_string"),
        ("airport_fee", "null"),
        ("zoned", "timestamp[us, tz=UTC]"),
    )


def test_fields_in_refuses_a_month_outside_the_period() -> None:
    period = period_of("yellow", Month(2019, 1))
    with pytest.raises(ValueError, match=r"2024-01 is not in yellow 2018-07\.\.2023-01"):
        period.fields_in(Month(2024, 1))
    with pytest.raises(KeyError, match="no column 'Airport_fee'"):
        period.column("Airport_fee")


def test_tlc_file_names() -> None:
    assert tlc_file_name("yellow", Month(2024, 1)) == "yellow_tripdata_2024-01.parquet"
    assert tlc_file_name(Dataset.GREEN, Month(2013, 8)) == "green_tripdata_2013-08.parquet"
    with pytest.raises(ValueError, match="unknown TLC dataset"):
        tlc_file_name("purple", Month(2024, 1))
