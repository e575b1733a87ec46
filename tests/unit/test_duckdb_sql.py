"""DuckDB's SQL as text (as tests/unit/test_bigquery_sql.py does BigQuery's), and what the shared
expressions mean when DuckDB evaluates them (an in-memory database, no file, no lake)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from taxi_pipeline.adapters.duckdb.warehouse import HISTORY, SQL
from taxi_pipeline.adapters.sql.dialects import DUCKDB
from taxi_pipeline.adapters.sql.statements import SourceColumn, SourceKind, source_columns
from taxi_pipeline.devkit.parquet_generator import generate_parquet_month
from taxi_pipeline.domain.datasets import Column, Dataset, Month, csv_name
from taxi_pipeline.domain.formats import CSV_GZ, PARQUET
from taxi_pipeline.pipeline.ports import DateRange, Replacement

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


# -- the TLC's Parquet files --------------------------------------------------------------------

YELLOW = Dataset.YELLOW


def test_the_parquet_reader_reads_the_file_with_its_own_types() -> None:
    relation = DUCKDB.read_source(PARQUET, "/lake/raw/yellow/x.parquet", YELLOW)
    assert relation == "SELECT * FROM read_parquet('/lake/raw/yellow/x.parquet')"


@pytest.mark.parametrize(
    ("column", "value", "kind", "expected"),
    [
        (Column("passenger_count", "integer"), "1.0::DOUBLE", "double", 1),
        (Column("passenger_count", "integer"), "1.5::DOUBLE", "double", None),
        (Column("passenger_count", "integer"), "3::BIGINT", "integer", 3),
        (Column("VendorID", "string", numeral=True), "2::INTEGER", "integer", "2"),
        (Column("VendorID", "string", numeral=True), "2.0::DOUBLE", "double", "2"),
        (Column("VendorID", "string", numeral=True), "2.5::DOUBLE", "double", None),
        (Column("RatecodeID", "string"), "99.0::DOUBLE", "double", "99"),
        (Column("RatecodeID", "string"), "1.5::DOUBLE", "double", "1.5"),
        (Column("airport_fee", "numeric"), "1.75::DOUBLE", "double", Decimal("1.75")),
        (Column("airport_fee", "numeric"), "'inf'::DOUBLE", "double", None),
        (Column("airport_fee", "numeric"), "NULL", "empty", None),
        (Column("tpep_pickup_datetime", "timestamp"), "TIMESTAMP '2024-01-01 10:00:00'",
         "timestamp", datetime(2024, 1, 1, 10)),
    ],
)  # fmt: skip
def test_parquet_values_become_the_reference_types(
    column: Column, value: str, kind: SourceKind, expected: object
) -> None:
    assert _value(SQL.typed_from_sql(column, value, kind)) == expected


def test_parquet_staging_casts_each_period_column_and_reads_either_airport_fee_spelling() -> None:
    month = Month(2024, 1)
    sources = source_columns(PARQUET, YELLOW, month)
    assert sources["airport_fee"] == SourceColumn("Airport_fee", "double")
    assert sources["cbd_congestion_fee"] == SourceColumn(None)
    assert source_columns(PARQUET, YELLOW, Month(2020, 10))["airport_fee"].name == "airport_fee"
    assert source_columns(PARQUET, YELLOW, Month(2015, 3))["passenger_count"].kind == "integer"
    sql = SQL.staging_sql(YELLOW, month, "stg", "ext", "yellow_tripdata_2024-01.parquet", sources)
    assert "'yellow_tripdata_2024-01.parquet' AS filename" in sql
    assert '"Airport_fee" AS "airport_fee"' in sql
    assert 'TRY_CAST(r."airport_fee" AS DECIMAL(38, 9)) AS "airport_fee"' in sql
    assert 'CAST(NULL AS DECIMAL(38, 9)) AS "cbd_congestion_fee"' in sql
    assert 'TRY_CAST(r."tpep_pickup_datetime" AS TIMESTAMP)' in sql
    assert "NULLIF(\"store_and_fwd_flag\", '')" in sql  # an empty text is NULL, as in the CSV
    assert "FALSE AS _header" in sql  # no header line inside a Parquet file


def test_parquet_staging_over_a_generated_file(tmp_path: Path) -> None:
    month = Month(2020, 10)  # counts as DOUBLE, airport_fee null-typed
    generated = generate_parquet_month(
        tmp_path, "yellow", month, 600, seed=2, non_integral_counts=1
    )
    sources = source_columns(PARQUET, YELLOW, month)
    with duckdb.connect() as con:
        con.execute(
            f"CREATE VIEW ext AS {DUCKDB.read_source(PARQUET, str(generated.path), YELLOW)}"
        )
        con.execute(SQL.staging_sql(YELLOW, month, "stg", "ext", generated.name, sources))
        rows, bad, fees = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE _bad), count(airport_fee) FROM stg"
        ).fetchone() or (0, 0, 0)
    assert (rows, bad, fees) == (600, 1, 0)


def test_old_final_tables_gain_the_fee_columns_and_a_replace_deletes_on_bounds() -> None:
    before = ["unique_row_id", "filename", *YELLOW.layout.names, "AIRPORT_FEE"]
    assert SQL.add_columns_sql(YELLOW, "t", before) == [
        'ALTER TABLE t ADD COLUMN "cbd_congestion_fee" DECIMAL(38, 9)'
    ]
    assert SQL.add_columns_sql(YELLOW, "t", list(YELLOW.layout.final_names)) == []
    replacing = Replacement(
        ("yellow_tripdata_2019-03.csv", "yellow_tripdata_2019-03.parquet"),
        (DateRange(date(2019, 3, 1), date(2019, 4, 1)),),
    )
    assert SQL.delete_month_sql(YELLOW, "f", replacing) == (
        "DELETE FROM f AS T\n"
        "WHERE T.filename IN ('yellow_tripdata_2019-03.csv', 'yellow_tripdata_2019-03.parquet')\n"
        "  AND ((T.\"tpep_pickup_datetime\" >= TIMESTAMP '2019-03-01'"
        " AND T.\"tpep_pickup_datetime\" < TIMESTAMP '2019-04-01')"
        ' OR T."tpep_pickup_datetime" IS NULL)'
    )
    unbounded = Replacement(replacing.filenames, None)
    assert "TIMESTAMP" not in SQL.delete_month_sql(YELLOW, "f", unbounded)
