"""Layouts, months and names (pure)."""

from __future__ import annotations

import pytest

from taxi_pipeline.adapters.sql.dialects import BIGQUERY
from taxi_pipeline.adapters.sql.tables import external_table, staging_table
from taxi_pipeline.domain.datasets import (
    Dataset,
    Month,
    Upstream,
    choose_publication,
    csv_name,
    file_name,
    object_name,
    parse_month_span,
    parse_object_name,
    published_months,
    upstream_of_object,
)
from taxi_pipeline.domain.formats import PARQUET
from taxi_pipeline.errors import UnsupportedMonth


def test_layouts_match_the_published_headers() -> None:
    assert Dataset.YELLOW.layout.header == (
        "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,"
        "RatecodeID,store_and_fwd_flag,PULocationID,DOLocationID,payment_type,fare_amount,extra,"
        "mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount,congestion_surcharge"
    )
    assert Dataset.GREEN.layout.header == (
        "VendorID,lpep_pickup_datetime,lpep_dropoff_datetime,store_and_fwd_flag,RatecodeID,"
        "PULocationID,DOLocationID,passenger_count,trip_distance,fare_amount,extra,mta_tax,"
        "tip_amount,tolls_amount,ehail_fee,improvement_surcharge,total_amount,payment_type,"
        "trip_type,congestion_surcharge"
    )
    assert len(Dataset.YELLOW.layout.columns) == 18
    assert len(Dataset.GREEN.layout.columns) == 20


def test_reference_types() -> None:
    yellow = {c.name: BIGQUERY.column_type(c) for c in Dataset.YELLOW.layout.columns}
    assert yellow["VendorID"] == "STRING"
    assert yellow["tpep_pickup_datetime"] == "TIMESTAMP"
    assert yellow["passenger_count"] == "INT64"
    assert yellow["payment_type"] == "INT64"
    assert yellow["RatecodeID"] == "STRING"
    assert yellow["total_amount"] == "NUMERIC"
    green = {c.name: BIGQUERY.column_type(c) for c in Dataset.GREEN.layout.columns}
    assert green["trip_type"] == "STRING"
    assert green["ehail_fee"] == "NUMERIC"
    assert Dataset.GREEN.layout.id_columns == (
        "VendorID",
        "lpep_pickup_datetime",
        "lpep_dropoff_datetime",
        "PULocationID",
        "DOLocationID",
    )


def test_names() -> None:
    month = Month(2019, 3)
    assert file_name(Dataset.GREEN, month) == "green_tripdata_2019-03.csv.gz"
    assert csv_name(Dataset.GREEN, month) == "green_tripdata_2019-03.csv"
    assert object_name(Dataset.YELLOW, month) == "raw/yellow/yellow_tripdata_2019-03.csv.gz"
    assert external_table(Dataset.YELLOW, month) == "yellow_tripdata_2019_03_ext"
    assert staging_table(Dataset.YELLOW, month) == "yellow_tripdata_2019_03"
    assert parse_object_name("raw/green/green_tripdata_2020-12.csv.gz") == (
        Dataset.GREEN,
        Month(2020, 12),
    )


@pytest.mark.parametrize(
    "name",
    [
        "raw/green/yellow_tripdata_2019-01.csv.gz",
        "raw/green/green_tripdata_2019-01.csv",
        "other/green/green_tripdata_2019-01.csv.gz",
        "raw/green/../green_tripdata_2019-01.csv.gz",
        "raw/bus/bus_tripdata_2019-01.csv.gz",
        "raw/green/green_tripdata_2019-13.csv.gz",
        "raw/green/green_tripdata_2019-01.csv.gz\n",
        "raw/green/green_tripdata_\u0662\u0660\u0661\u0669-01.csv.gz",
    ],
)
def test_parse_object_name_refuses_anything_else(name: str) -> None:
    with pytest.raises(ValueError, match=r"raw/|01\.\.12"):
        parse_object_name(name)


def test_months() -> None:
    assert str(Month.parse("2019-01")) == "2019-01"
    assert Month(2019, 12).next() == Month(2020, 1)
    assert Month(2020, 1).previous() == Month(2019, 12)
    assert Month(2020, 1).minus(13) == Month(2018, 12)
    assert parse_month_span("2019-11..2020-02") == [
        Month(2019, 11),
        Month(2019, 12),
        Month(2020, 1),
        Month(2020, 2),
    ]
    assert len(published_months()) == 31
    for bad, reason in [("2019-13", "01..12"), ("19-01", "YYYY-MM"), ("2019-1", "YYYY-MM")]:
        with pytest.raises(ValueError, match=reason):
            Month.parse(bad)
    with pytest.raises(ValueError, match="ends before"):
        parse_month_span("2019-03..2019-01")


@pytest.mark.parametrize("text", ["2019-01\n", "\u0662\u0660\u0661\u0669-01", " 2019-01"])
def test_a_month_is_exactly_four_ascii_digits_dash_two(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        Month.parse(text)


@pytest.mark.parametrize(
    ("dataset", "month", "choice", "upstream"),
    [
        (Dataset.YELLOW, Month(2019, 1), Upstream.AUTO, Upstream.MIRROR),
        (Dataset.YELLOW, Month(2021, 7), Upstream.AUTO, Upstream.MIRROR),
        (Dataset.YELLOW, Month(2021, 8), Upstream.AUTO, Upstream.TLC),
        (Dataset.YELLOW, Month(2018, 12), Upstream.AUTO, Upstream.TLC),
        (Dataset.GREEN, Month(2019, 5), Upstream.TLC, Upstream.TLC),
        (Dataset.GREEN, Month(2024, 1), Upstream.MIRROR, Upstream.MIRROR),  # SKIPPED upstream
        (Dataset.YELLOW, Month(2011, 1), Upstream.AUTO, Upstream.TLC),
        (Dataset.GREEN, Month(2013, 8), Upstream.AUTO, Upstream.TLC),
    ],
)
def test_auto_takes_the_mirror_in_its_range_and_the_tlc_otherwise(
    dataset: Dataset, month: Month, choice: Upstream, upstream: Upstream
) -> None:
    publication = choose_publication(dataset, month, choice)
    assert publication.upstream is upstream
    expected_suffix = ".csv.gz" if upstream is Upstream.MIRROR else ".parquet"
    assert file_name(dataset, month, publication.source_format).endswith(expected_suffix)


@pytest.mark.parametrize(
    ("dataset", "month", "reason"),
    [
        (Dataset.YELLOW, Month(2010, 12), "other column names"),
        (Dataset.GREEN, Month(2013, 7), "green trip data starts 2013-08"),
    ],
)
def test_months_before_the_tlc_layout_are_refused(
    dataset: Dataset, month: Month, reason: str
) -> None:
    with pytest.raises(UnsupportedMonth, match=reason):
        choose_publication(dataset, month, Upstream.AUTO)


def test_parquet_names_and_the_source_of_an_object() -> None:
    month = Month(2024, 1)
    assert (
        object_name(Dataset.YELLOW, month, PARQUET) == "raw/yellow/yellow_tripdata_2024-01.parquet"
    )
    assert csv_name(Dataset.YELLOW, month, PARQUET) == "yellow_tripdata_2024-01.parquet"
    assert parse_object_name("raw/green/green_tripdata_2024-01.parquet") == (Dataset.GREEN, month)
    assert upstream_of_object("raw/green/green_tripdata_2024-01.parquet") is Upstream.TLC
    assert upstream_of_object("raw/green/green_tripdata_2019-01.csv.gz") is Upstream.MIRROR
    assert upstream_of_object("raw/x") is None
    assert [c.name for c in Dataset.YELLOW.layout.added] == ["airport_fee", "cbd_congestion_fee"]
    assert [c.name for c in Dataset.GREEN.layout.added] == ["cbd_congestion_fee"]
    assert len(published_months()) == 31, "the coverage range stays the mirror's"
