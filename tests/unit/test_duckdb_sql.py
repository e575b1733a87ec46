"""DuckDB's SQL as text (as tests/unit/test_bigquery_sql.py does BigQuery's), and what the shared
expressions mean when DuckDB evaluates them (an in-memory database, no file, no lake)."""

from __future__ import annotations

from datetime import date

import duckdb
import pytest

from taxi_pipeline.adapters.duckdb.warehouse import HISTORY, SQL
from taxi_pipeline.adapters.sql.dialects import DUCKDB
from taxi_pipeline.domain.datasets import Column, Dataset, Month, csv_name
from taxi_pipeline.domain.formats import CSV_GZ
from taxi_pipeline.pipeline.ports import DateRange

GREEN, JAN = Dataset.GREEN, Month(2019, 1)


def _value(expression: str) -> object:
    with duckdb.connect() as con:
        return con.execute(f"SELECT {expression}").fetchone()[0]  # type: ignore[index]


def test_unique_row_id_spells_timestamps_as_bigquery_does() -> None:
    assert SQL.unique_row_id_sql(Dataset.YELLOW) == (
        "unhex(md5(concat(COALESCE(CAST(\"VendorID\" AS VARCHAR), ''),"
        " COALESCE(strftime(\"tpep_pickup_datetime\", '%Y-%m-%d %H:%M:%S') || '+00', ''),"
        " COALESCE(strftime(\"tpep_dropoff_datetime\", '%Y-%m-%d %H:%M:%S') || '+00', ''),"
        " COALESCE(CAST(\"PULocationID\" AS VARCHAR), ''),"
        " COALESCE(CAST(\"DOLocationID\" AS VARCHAR), ''))))"
    )


@pytest.mark.parametrize(
    ("text", "expected"), [("'1'", 1), ("'1.0'", 1), ("'1.5'", None), ("'x'", None)]
)
def test_integer_columns_accept_whole_decimals_only(text: str, expected: int | None) -> None:
    expression = SQL.typed_sql(Column("passenger_count", "integer"), text)
    assert expression.startswith("CASE WHEN TRY_CAST(")
    assert _value(expression) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("'2'", "2"), ("'1.0'", "1.0"), ("'2a'", None), ("'22019-03'", None)]
)
def test_numeral_codes_are_digits_with_an_optional_decimal_part(
    text: str, expected: str | None
) -> None:
    assert _value(SQL.typed_sql(Column("VendorID", "string", numeral=True), text)) == expected


@pytest.mark.parametrize(
    "text", ["'infinity'", "'-infinity'", "'9999-12-31 23:59:59'", "'10000-01-01'", "'0000-01-01'"]
)
def test_impossible_timestamps_are_null(text: str) -> None:
    column = Column("lpep_pickup_datetime", "timestamp")
    typed = SQL.typed_sql(column, text)
    assert _value(SQL.possible_sql(column, typed)) is None
    assert _value(SQL.possible_sql(column, SQL.typed_sql(column, "'9999-12-30 23:59:59'")))


def test_staging_reads_text_once_and_keeps_bad_rows_text() -> None:
    sql = SQL.staging_sql(GREEN, JAN, "stg", "ext", csv_name(GREEN, JAN))
    assert sql.startswith("CREATE OR REPLACE TEMP TABLE stg AS\n")
    assert "'green_tripdata_2019-01.csv' AS filename" in sql
    assert 'FROM (SELECT "VendorID" AS "VendorID"' in sql  # read_csv already nulls ''
    assert 'TRY_CAST(r."fare_amount" AS DECIMAL(38, 9)) AS "fare_amount"' in sql
    assert " AS _bad_row,\n" in sql
    assert "COALESCE(\"__text_VendorID\" = 'VendorID' AND" in sql  # a header line again


def test_merge_is_an_insert_of_missing_ids_with_constant_bounds() -> None:
    ranges = [DateRange(date(2019, 1, 1), date(2019, 2, 1))]
    sql = SQL.merge_sql(GREEN, "green_tripdata", "stg", ranges, include_null_pickup=True)
    assert sql.startswith('INSERT INTO green_tripdata (unique_row_id, filename, "VendorID",')
    assert (
        "WHERE ((t.\"lpep_pickup_datetime\" >= TIMESTAMP '2019-01-01'"
        " AND t.\"lpep_pickup_datetime\" < TIMESTAMP '2019-02-01')"
        ' OR t."lpep_pickup_datetime" IS NULL) AND t.unique_row_id = s.unique_row_id'
    ) in sql


def test_measure_counts_with_filters_and_lists_dates() -> None:
    sql = SQL.measure_sql(GREEN, Month(2019, 12), "stg")
    assert "count(*) FILTER (WHERE _bad) AS rows_bad" in sql
    assert (
        'list(DISTINCT CAST(COALESCE("lpep_pickup_datetime", "lpep_dropoff_datetime") AS DATE))'
    ) in sql
    assert "ARRAY(SELECT _bad_row FROM stg WHERE _bad LIMIT 5) AS bad_samples" in sql


def test_the_csv_reader_reads_every_column_as_text_strictly() -> None:
    relation = DUCKDB.read_source(CSV_GZ, "/lake/raw/x.csv.gz", GREEN)
    assert relation.startswith("SELECT * FROM read_csv('/lake/raw/x.csv.gz', header = true,")
    assert "strict_mode = true" in relation
    assert "'VendorID': 'VARCHAR'" in relation


def test_history_tables_and_positional_parameters() -> None:
    runs, loads = HISTORY.ddl()
    assert runs.startswith(
        'CREATE TABLE IF NOT EXISTS pipeline_runs (\n  "run_id" VARCHAR NOT NULL'
    )
    assert '"seq"' not in runs  # DuckDB orders by rowid
    assert '"loaded_at" TIMESTAMP NOT NULL' in loads
    sql, params = HISTORY.select_events("green-201901-abc", None, None)
    assert sql.endswith("WHERE TRUE AND run_id = ? ORDER BY recorded_at, rowid")
    assert [p.value for p in params] == ["green-201901-abc"]
