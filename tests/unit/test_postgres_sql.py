"""PostgreSQL's SQL as text (as tests/unit/test_duckdb_sql.py does DuckDB's): URL parsing, lock
keys, names, and the dialect's spelling of the shared statements. What the expressions mean when
PostgreSQL evaluates them is in tests/integration/test_postgres_warehouse.py (a real server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from taxi_pipeline.adapters.postgres.warehouse import (
    SQL,
    landing_name,
    merge_lock_keys,
    parse_url,
    partition_name,
)
from taxi_pipeline.adapters.sql.dialects import POSTGRES
from taxi_pipeline.adapters.sql.history import History
from taxi_pipeline.domain.datasets import Column, Dataset, Month
from taxi_pipeline.domain.formats import CSV_GZ
from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.pipeline.ports import DateRange

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


def test_each_run_stages_in_a_table_of_its_own_outside_the_partitions_names() -> None:
    first, second = landing_name(GREEN, JAN, "green-201901-a"), landing_name(GREEN, JAN, "b")
    assert first != second
    assert first.startswith("green_tripdata_2019_01_")
    assert len(first + "_text") <= 63
    assert not partition_name(GREEN, "green_tripdata_2019-01.csv").startswith(
        "green_tripdata_2019_01_"
    )


def test_the_id_is_md5_over_bigquerys_strings_of_the_five_fields() -> None:
    assert SQL.unique_row_id_sql(GREEN) == (
        "decode(md5(concat(COALESCE(CAST(\"VendorID\" AS text), ''),"
        " COALESCE(CAST(\"lpep_pickup_datetime\" AS text) || '+00', ''),"
        " COALESCE(CAST(\"lpep_dropoff_datetime\" AS text) || '+00', ''),"
        " COALESCE(CAST(\"PULocationID\" AS text), ''),"
        " COALESCE(CAST(\"DOLocationID\" AS text), ''))), 'hex')"
    )


def test_casts_take_a_sure_text_directly_and_any_other_through_the_function() -> None:
    amount = SQL.typed_sql(Column("fare_amount", "numeric"), "x")
    assert amount == (
        "CASE WHEN length(x) < 30 AND x ~ '^[+-]?[0-9]+[.]?[0-9]*$'"
        " THEN CAST(x AS numeric(38, 9)) ELSE taxi_pipeline_try_numeric(x) END"
    )
    count = SQL.typed_sql(Column("passenger_count", "integer"), "x")
    assert count.endswith(
        "THEN CAST(CAST(x AS numeric) AS bigint) ELSE taxi_pipeline_try_integer(x) END"
    )
    pickup = SQL.typed_sql(Column("lpep_pickup_datetime", "timestamp"), "x")
    assert pickup == "taxi_pipeline_try_timestamp(x)"
    code = SQL.typed_sql(Column("VendorID", "string", numeral=True), "x")
    assert code == "CASE WHEN (x ~ '^[0-9]+([.][0-9]+)?$') THEN x END"
    functions = {s.split("(")[0].split()[-1]: s for s in POSTGRES.functions_sql()}
    assert list(functions) == [
        "taxi_pipeline_refuse",
        "taxi_pipeline_try_numeric",
        "taxi_pipeline_try_integer",
        "taxi_pipeline_try_timestamp",
    ]
    # An exception block (a subtransaction) keeps the try-casts off parallel workers; the
    # strict staging's workers call only the refusal, which has none.
    assert "PARALLEL SAFE" in functions.pop("taxi_pipeline_refuse")
    assert all("PARALLEL RESTRICTED" in s for s in functions.values())


def test_strict_casts_take_the_files_spelling_and_refuse_any_other() -> None:
    count, amount = Column("passenger_count", "integer"), Column("fare_amount", "numeric")
    assert SQL.strict_typed_sql(count, "x") == (
        "CASE WHEN NULLIF(x, '') IS NULL THEN NULL WHEN x NOT LIKE '%.%' THEN CAST(x AS bigint)"
        " WHEN rtrim(x, '0') LIKE '%.' THEN CAST(CAST(x AS numeric) AS bigint)"
        " ELSE CAST(taxi_pipeline_refuse(x) AS bigint) END"
    )
    assert SQL.strict_typed_sql(amount, "x") == (
        "CASE WHEN ascii(x) BETWEEN 43 AND 57 THEN CAST(x AS numeric(38, 9))"
        " WHEN NULLIF(x, '') IS NULL THEN NULL"
        " ELSE CAST(taxi_pipeline_refuse(x) AS numeric(38, 9)) END"
    )
    # Only a timestamp's own text: the id is made of it.
    assert SQL.strict_typed_sql(Column("lpep_pickup_datetime", "timestamp"), "x") == (
        "CASE WHEN x LIKE '____-__-__ __:__:__' AND x COLLATE \"C\" < '9999-12-31'"
        " AND CAST(CAST(x AS timestamp) AS text) = x THEN CAST(x AS timestamp)"
        " WHEN NULLIF(x, '') IS NULL THEN NULL"
        " ELSE CAST(taxi_pipeline_refuse(x) AS timestamp) END"
    )
    assert SQL.strict_typed_sql(Column("VendorID", "string", numeral=True), "x") == (
        "CASE WHEN x IS NULL OR translate(x, '0123456789', '') = ''"
        " OR (x ~ '^[0-9]+([.][0-9]+)?$') THEN NULLIF(x, '')"
        " ELSE CAST(taxi_pipeline_refuse(x) AS text) END"
    )
    assert SQL.strict_typed_sql(Column("store_and_fwd_flag", "string"), "x") == "NULLIF(x, '')"


def test_the_strict_staging_is_one_flat_statement_over_the_final_columns() -> None:
    staging = SQL.strict_staging_sql(GREEN, JAN, "s", "l", "f.csv")
    # Logged, the final table's columns in its order: the table can become a partition.
    assert staging.startswith(
        "CREATE TABLE s AS\nSELECT decode(md5(concat(COALESCE(\"VendorID\", ''),"
        " COALESCE(NULLIF(\"lpep_pickup_datetime\", '') || '+00', ''),"
    )
    assert "  CAST('f.csv' AS text) AS filename,\n" in staging
    names = [line.rsplit(" AS ", 1)[1].strip(",") for line in staging.splitlines()[3:-1]]
    assert names == [f'"{n}"' for n in GREEN.layout.final_names]
    assert "OFFSET" not in staging  # no subquery: parallel workers can run it
    assert staging.endswith("\nFROM l")
    measure = SQL.strict_measure_sql(GREEN, JAN, "s")
    assert "  GROUP BY 1\n) AS per_day" in measure
    assert measure.startswith("SELECT COALESCE(sum(n), 0) AS rows_total, 0 AS rows_bad,")


def test_a_first_load_deletes_the_ids_the_final_table_holds_from_its_staging() -> None:
    ranges = [DateRange(date(2019, 1, 1), date(2019, 2, 1))]
    assert SQL.delete_present_sql(GREEN, "s", "f", ranges, False) == (
        "DELETE FROM s AS s\nWHERE s.unique_row_id IN (\n  SELECT t.unique_row_id FROM f t\n"
        "  WHERE (t.\"lpep_pickup_datetime\" >= TIMESTAMP '2019-01-01'"
        " AND t.\"lpep_pickup_datetime\" < TIMESTAMP '2019-02-01')\n)"
    )


def test_the_final_table_is_partitioned_by_file_and_merges_with_merge_into() -> None:
    ddl = SQL.final_table_sql(GREEN, '"public"."green_tripdata"')
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "public"."green_tripdata" (\n')
    assert "  unique_row_id bytea,\n  filename text," in ddl
    assert '"passenger_count" bigint' in ddl
    assert '"fare_amount" numeric(38, 9)' in ddl
    assert ddl.endswith(") PARTITION BY LIST (filename)")
    ranges = [DateRange(date(2019, 1, 1), date(2019, 2, 1))]
    merge = SQL.merge_sql(GREEN, "f", "s", ranges, True)
    assert merge.startswith("MERGE INTO f AS T\nUSING s AS S\nON T.unique_row_id = S.unique_row_id")
    assert (
        "(T.\"lpep_pickup_datetime\" >= TIMESTAMP '2019-01-01'"
        " AND T.\"lpep_pickup_datetime\" < TIMESTAMP '2019-02-01')"
        ' OR T."lpep_pickup_datetime" IS NULL'
    ) in merge
    first = SQL.insert_missing_sql(GREEN, "p", "f", "s", ranges, False)
    assert first.startswith("INSERT INTO p (unique_row_id, filename, ")
    assert "WHERE NOT EXISTS (\n  SELECT 1 FROM f t\n" in first


def test_history_parameters_are_psycopg_named_placeholders_and_the_server_numbers_lines() -> None:
    assert POSTGRES.param("run_id") == "%(run_id)s"
    runs, loads = History(POSTGRES, "r", "l").ddl()
    assert runs.startswith(
        "CREATE TABLE IF NOT EXISTS r (\n  seq bigint GENERATED ALWAYS AS IDENTITY,\n"
        '  "run_id" text NOT NULL,'
    )
    assert '"recorded_at" timestamptz NOT NULL' in runs
    assert "seq" not in loads
    sql, _ = History(POSTGRES, "r", "l").select_events("x", None, None)
    assert sql.endswith("WHERE TRUE AND run_id = %(run_id)s ORDER BY recorded_at, seq")


def test_only_csv_gz_objects_can_be_copied() -> None:
    assert POSTGRES.copy_options(CSV_GZ) == "(FORMAT csv, HEADER true, FREEZE true)"
    assert POSTGRES.copy_options(CSV_GZ, header=False) == "(FORMAT csv, HEADER false, FREEZE true)"
    with pytest.raises(ConfigurationError, match="cannot read parquet"):
        POSTGRES.copy_options(replace(CSV_GZ, name="parquet"))
