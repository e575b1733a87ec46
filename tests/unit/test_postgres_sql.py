"""The PostgreSQL dialect as text: URL parsing, lock keys, names, and the SQL pieces a shared SQL
core will fold in (typed values, the id, the pickup predicate)."""

from __future__ import annotations

from datetime import date

import pytest

from taxi_pipeline.adapters.postgres import sql
from taxi_pipeline.adapters.postgres.warehouse import landing_name, merge_lock_keys, parse_url
from taxi_pipeline.datasets import Column, Dataset, Month
from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.ports import DateRange

GREEN, JAN = Dataset.GREEN, Month(2019, 1)


def test_the_url_loses_only_the_schema_and_keeps_the_socket_host() -> None:
    target = parse_url("postgresql://u@/ny_taxi?host=/cloudsql/p:r:i&schema=taxi&sslmode=disable")
    assert target.schema == "taxi"
    assert "schema" not in target.conninfo
    assert "host=%2Fcloudsql%2Fp%3Ar%3Ai" in target.conninfo
    assert target.password is None
    assert parse_url("postgres://u@h/db").schema == "public"


def test_the_password_setting_counts_only_when_the_url_has_none() -> None:
    assert parse_url("postgresql://u@h/db", "from-setting").password == "from-setting"
    assert parse_url("postgresql://u:in-url@h/db", "from-setting").password is None


def test_a_bad_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as err:
        parse_url("mysql://u:secret-pw@h/db")
    assert "secret-pw" not in str(err.value)
    with pytest.raises(ConfigurationError, match="invalid schema name"):
        parse_url("postgresql://u@h/db?schema=x%22y")


def test_merge_locks_cover_the_files_month_and_every_pickup_month_in_order() -> None:
    ranges = [
        DateRange(date(2008, 12, 31), date(2009, 1, 1)),
        DateRange(date(2018, 12, 31), date(2019, 2, 2)),
    ]
    assert merge_lock_keys(GREEN, JAN, ranges, include_null=True) == [
        "taxi-pipeline:merge:green:2008-12",
        "taxi-pipeline:merge:green:2018-12",
        "taxi-pipeline:merge:green:2019-01",
        "taxi-pipeline:merge:green:2019-02",
        "taxi-pipeline:merge:green:null-pickup",
    ]
    assert merge_lock_keys(GREEN, JAN, [], include_null=False) == [
        "taxi-pipeline:merge:green:2019-01"
    ]


def test_each_run_lands_in_a_table_of_its_own_outside_the_partitions_names() -> None:
    first, second = landing_name(GREEN, JAN, "green-201901-a"), landing_name(GREEN, JAN, "b")
    assert first != second
    assert first.startswith("green_tripdata_2019_01_")
    assert len(first) <= 63
    assert not sql.partition_name(GREEN, JAN).startswith("green_tripdata_2019_01_")


def test_typed_values_follow_the_reference_rules() -> None:
    count, amount = Column("passenger_count", "integer"), Column("fare_amount", "numeric")
    assert sql.typed_value(count, "x") == (
        "CASE WHEN x = trunc(x) AND x BETWEEN -2147483648 AND 2147483647 THEN x::integer END"
    )
    assert sql.typed_value(amount, "x") == "CASE WHEN abs(x) < 1e29 THEN x END"
    assert sql.typed_value(count, "x", checked=False) == "CAST(x AS integer)"
    assert sql.typed_value(Column("VendorID", "string"), "x") == "NULLIF(x, '')"


def test_the_id_is_md5_over_bigquerys_strings_of_the_five_fields() -> None:
    text = sql.unique_row_id_sql(GREEN, "l", checked=False)
    assert text == (
        "decode(md5(coalesce(CAST(NULLIF(l.\"VendorID\", '') AS text), '')"
        " || coalesce(CAST(l.\"lpep_pickup_datetime\" AS text) || '+00', '')"
        " || coalesce(CAST(l.\"lpep_dropoff_datetime\" AS text) || '+00', '')"
        " || coalesce(CAST(NULLIF(l.\"PULocationID\", '') AS text), '')"
        " || coalesce(CAST(NULLIF(l.\"DOLocationID\", '') AS text), '')), 'hex')"
    )


def test_the_pickup_predicate_has_one_term_per_range() -> None:
    ranges = [DateRange(date(2019, 1, 1), date(2019, 2, 1))]
    assert sql.target_pickup_predicate(GREEN, ranges, True, "t") == (
        "(t.\"lpep_pickup_datetime\" >= TIMESTAMP '2019-01-01'"
        " AND t.\"lpep_pickup_datetime\" < TIMESTAMP '2019-02-01')"
        ' OR t."lpep_pickup_datetime" IS NULL'
    )
    assert sql.target_pickup_predicate(GREEN, [], False, "t") == "FALSE"
