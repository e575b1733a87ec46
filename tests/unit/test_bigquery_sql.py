"""BigQueryWarehouse's pure parts: the SQL it sends, names, labels; no client, no emulator."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from taxi_pipeline.adapters.bigquery.warehouse import (
    SQL,
    BigQueryWarehouse,
    external_table_sql,
    job_labels,
    label_value,
    raw_load_config,
    replace_sql,
)
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.sql.statements import source_columns
from taxi_pipeline.domain.datasets import Column, Dataset, Month, csv_name
from taxi_pipeline.domain.formats import PARQUET
from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.pipeline.ports import DateRange, JobContext, ObjectInfo, Replacement
from taxi_pipeline.pipeline.steps.merge import pickup_ranges
from taxi_pipeline.settings import Settings, StagingMode

final_table_sql, measure_sql, merge_sql = SQL.final_table_sql, SQL.measure_sql, SQL.merge_sql
target_pickup_predicate, typed_sql = SQL.target_pickup_predicate, SQL.typed_sql
GREEN, JAN = Dataset.GREEN, Month(2019, 1)
FINAL, STAGING = "`p.d.green_tripdata`", "`p.d.green_tripdata_2019_01`"


def _on_clause(sql: str) -> str:
    return sql.split("\nON ", 1)[1].split("\nWHEN ", 1)[0]


def test_merge_on_clause_carries_constant_pickup_bounds_per_range() -> None:
    january = [date(2019, 1, d) for d in range(1, 32)]
    strays = [date(2008, 12, 31), date(2088, 1, 24), date(2018, 12, 31)]
    ranges = pickup_ranges([*january, *strays])
    on = _on_clause(merge_sql(GREEN, FINAL, STAGING, ranges, include_null_pickup=False))

    pickup = "T.`lpep_pickup_datetime`"
    assert on == (
        "T.unique_row_id = S.unique_row_id\n  AND ("
        f"({pickup} >= TIMESTAMP '2008-12-31' AND {pickup} < TIMESTAMP '2009-01-01')"
        f" OR ({pickup} >= TIMESTAMP '2018-12-31' AND {pickup} < TIMESTAMP '2019-02-01')"
        f" OR ({pickup} >= TIMESTAMP '2088-01-24' AND {pickup} < TIMESTAMP '2088-01-25'))"
    )
    # Strays years away add their own day, never a range over the years in between.
    assert "TIMESTAMP '2009-01-01' AND" not in on
    assert "IS NULL" not in on


def test_merge_reads_null_pickups_only_when_asked() -> None:
    ranges = [DateRange(date(2019, 1, 1), date(2019, 2, 1))]
    with_null = _on_clause(merge_sql(GREEN, FINAL, STAGING, ranges, include_null_pickup=True))
    assert with_null.endswith(" OR T.`lpep_pickup_datetime` IS NULL)")
    assert target_pickup_predicate(GREEN, [], include_null=False) == "FALSE"
    assert (
        target_pickup_predicate(GREEN, [], include_null=True) == "T.`lpep_pickup_datetime` IS NULL"
    )


def test_merge_is_insert_only_with_the_final_columns() -> None:
    sql = merge_sql(GREEN, FINAL, STAGING, [DateRange(date(2019, 1, 1), date(2019, 1, 2))], False)
    assert sql.startswith(f"MERGE {FINAL} AS T\nUSING {STAGING} AS S\n")
    assert "WHEN MATCHED" not in sql
    insert = sql.split("WHEN NOT MATCHED THEN INSERT (", 1)[1]
    columns = insert.split(")", 1)[0].split(", ")
    assert columns == ["unique_row_id", "filename", *(f"`{n}`" for n in GREEN.layout.final_names)]
    assert "_bad" not in sql  # staging's own columns stay behind


def test_unique_row_id_is_the_reference_formula() -> None:
    assert SQL.unique_row_id_sql(Dataset.YELLOW) == (
        'MD5(CONCAT(COALESCE(CAST(`VendorID` AS STRING), ""),'
        ' COALESCE(CAST(`tpep_pickup_datetime` AS STRING), ""),'
        ' COALESCE(CAST(`tpep_dropoff_datetime` AS STRING), ""),'
        ' COALESCE(CAST(`PULocationID` AS STRING), ""),'
        ' COALESCE(CAST(`DOLocationID` AS STRING), "")))'
    )


def test_staging_sql_types_nulls_flags_and_expires() -> None:
    sql = SQL.staging_sql(
        GREEN, JAN, STAGING, "`p.d.green_tripdata_2019_01_raw`", csv_name(GREEN, JAN)
    )
    assert sql.startswith(
        f"CREATE OR REPLACE TABLE {STAGING}\nOPTIONS (expiration_timestamp = "
        "TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 1 DAY))\nAS\n"
    )
    assert f"SELECT {SQL.unique_row_id_sql(GREEN)} AS unique_row_id," in sql
    assert "'green_tripdata_2019-01.csv' AS filename" in sql
    assert "NULLIF(`ehail_fee`, '') AS `ehail_fee`" in sql  # empty field = NULL, as in DuckDB
    assert "SAFE_CAST(r.`lpep_pickup_datetime` AS TIMESTAMP) AS `lpep_pickup_datetime`" in sql
    assert "FROM `p.d.green_tripdata_2019_01_raw`) AS r" in sql


def test_integer_columns_accept_whole_decimals_only() -> None:
    expr = typed_sql(Column("passenger_count", "integer"), "x")
    assert expr == (
        "IF(SAFE_CAST(x AS NUMERIC) = TRUNC(SAFE_CAST(x AS NUMERIC)),"
        " SAFE_CAST(SAFE_CAST(x AS NUMERIC) AS INT64), NULL)"
    )
    assert typed_sql(Column("fare_amount", "numeric"), "x") == "SAFE_CAST(x AS NUMERIC)"
    assert typed_sql(Column("VendorID", "string"), "x") == "x"


def test_measure_sql_bounds_the_month() -> None:
    sql = measure_sql(GREEN, Month(2019, 12), STAGING)
    assert (
        "COUNTIF(`lpep_pickup_datetime` < TIMESTAMP '2019-12-01'"
        " OR `lpep_pickup_datetime` >= TIMESTAMP '2020-01-01')"
    ) in sql
    assert f"ARRAY(SELECT _bad_row FROM {STAGING} WHERE _bad LIMIT 5)" in sql


def test_external_table_sql_has_an_explicit_all_string_schema() -> None:
    uri = "gs://lake/raw/green/green_tripdata_2019-01.csv.gz"
    sql = external_table_sql(GREEN, "`p.d.green_tripdata_2019_01_ext`", uri)
    assert sql.startswith("CREATE OR REPLACE EXTERNAL TABLE `p.d.green_tripdata_2019_01_ext` (")
    schema = sql.split("(\n", 1)[1].split("\n)", 1)[0]
    assert [line.strip().rstrip(",") for line in schema.splitlines()] == [
        f"`{n}` STRING" for n in GREEN.layout.names
    ]
    for option in (
        "format = 'CSV'",
        f"uris = ['{uri}']",
        "skip_leading_rows = 1",
        "compression = 'GZIP'",
        "allow_quoted_newlines = true",
        "expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 1 DAY)",
    ):
        assert option in sql
    assert "ignore_unknown_values" not in sql  # strict, as DuckDB: a short line fails the file


def test_load_mode_reads_the_csv_as_the_external_table_does() -> None:
    """Both staging modes read the file as DuckDB's read_csv does: strict field counts, a header
    line, and newlines allowed inside quoted fields (BigQuery's default refuses them)."""
    config = raw_load_config(GREEN, {"step": "merge"})
    assert config.allow_quoted_newlines is True
    assert config.skip_leading_rows == 1
    assert (config.allow_jagged_rows, config.ignore_unknown_values) == (False, False)
    assert config.max_bad_records == 0
    assert [(f.name, f.field_type) for f in config.schema] == [
        (n, "STRING") for n in GREEN.layout.names
    ]
    assert config.labels == {"step": "merge"}


def test_final_table_sql_reference_types_partitioning_clustering() -> None:
    sql = final_table_sql(Dataset.YELLOW, "`p.d.yellow_tripdata`")
    assert sql.startswith(
        "CREATE TABLE IF NOT EXISTS `p.d.yellow_tripdata` (\n"
        "  unique_row_id BYTES,\n  filename STRING,\n  `VendorID` STRING,\n"
        "  `tpep_pickup_datetime` TIMESTAMP,\n  `tpep_dropoff_datetime` TIMESTAMP,\n"
        "  `passenger_count` INT64,\n  `trip_distance` NUMERIC,\n"
    )
    assert "\nPARTITION BY DATE(`tpep_pickup_datetime`)\n" in sql
    assert "\nCLUSTER BY `PULocationID`, `DOLocationID`\n" in sql


def test_labels_are_valid_label_values() -> None:
    context = JobContext("Green-201901-ABC.d", GREEN, JAN, "merge")
    assert job_labels(context) == {
        "component": "taxi-pipeline",
        "dataset": "green",
        "month": "2019-01",
        "run_id": "green-201901-abc_d",
        "step": "merge",
    }
    assert len(label_value("x" * 100)) == 63


@pytest.mark.parametrize(
    ("url", "project", "dataset"),
    [
        ("bigquery://my-project/taxi", "my-project", "taxi"),
        ("bigquery://test-project/Taxi_Data_2/", "test-project", "Taxi_Data_2"),
        ("bigquery://example.com:my-project/taxi", "example.com:my-project", "taxi"),
    ],
)
def test_from_url(url: str, project: str, dataset: str) -> None:
    warehouse = BigQueryWarehouse.from_url(url, Settings())
    assert (warehouse.project, warehouse.dataset) == (project, dataset)
    assert warehouse.table_ref("green_tripdata") == f"`{project}.{dataset}.green_tripdata`"


@pytest.mark.parametrize(
    "url",
    [
        "duckdb:///tmp/w.duckdb",
        "bigquery://my-project",
        "bigquery://my-project/a/b",
        "bigquery://My-Project/taxi",  # uppercase
        "bigquery://proj/taxi",  # shorter than 6
        "bigquery://1project/taxi",  # starts with a digit
        "bigquery://my-project-/taxi",  # ends with a hyphen
        "bigquery://my-project/taxi-data",  # hyphen in a dataset
        "bigquery://my-project/taxi?location=EU",
    ],
)
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(ConfigurationError):
        BigQueryWarehouse.from_url(url, Settings())


def test_table_names_are_checked() -> None:
    warehouse = BigQueryWarehouse("my-project", "taxi", Settings())
    with pytest.raises(ConfigurationError):
        warehouse.table_ref("green`; DROP TABLE x")


class _NoClient:
    """Fails any use: proves a path makes no request."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the client was used: {name}")


def test_load_mode_registers_without_a_job_and_stage_needs_gs_uris(tmp_path: Path) -> None:
    settings = Settings(staging_mode=StagingMode.LOAD)
    warehouse = BigQueryWarehouse("my-project", "taxi", settings, client=_NoClient())  # type: ignore[arg-type]
    source = ObjectInfo("b", "raw/green/x", "1", 10, "file:///tmp/x.csv.gz")
    lake = FolderStore(tmp_path)
    assert warehouse.create_external_table(GREEN, JAN, source, lake) == "green_tripdata_2019_01_raw"
    with pytest.raises(ConfigurationError, match="gs:// objects only"):
        warehouse.stage(source, lake, JobContext("r", GREEN, JAN, "merge"))


def test_import_does_not_load_the_bigquery_client() -> None:
    code = (
        "import sys, taxi_pipeline.adapters.bigquery.warehouse as m;"
        "m.BigQueryWarehouse.from_url('bigquery://my-project/taxi', m.Settings());"
        "print('google.cloud.bigquery' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


# -- the TLC's Parquet files --------------------------------------------------------------------


def test_a_parquet_external_table_takes_the_files_own_schema() -> None:
    sql = external_table_sql(
        Dataset.YELLOW, "`p.d.ext`", "gs://lake/raw/yellow/yellow_tripdata_2024-01.parquet", PARQUET
    )
    assert sql.startswith("CREATE OR REPLACE EXTERNAL TABLE `p.d.ext`\nOPTIONS (\n")
    assert "format = 'PARQUET'" in sql
    assert "STRING" not in sql  # no all-text schema: the footer's types
    config = raw_load_config(Dataset.YELLOW, {"step": "merge"}, PARQUET)
    assert config.source_format == "PARQUET"
    assert config.schema is None


def test_parquet_staging_casts_datetimes_to_timestamps_so_ids_end_in_plus_00() -> None:
    month = Month(2024, 1)
    sql = SQL.staging_sql(
        Dataset.YELLOW,
        month,
        "`p.d.stg`",
        "`p.d.raw`",
        "yellow_tripdata_2024-01.parquet",
        source_columns(PARQUET, Dataset.YELLOW, month),
    )
    assert "SAFE_CAST(r.`tpep_pickup_datetime` AS TIMESTAMP) AS `tpep_pickup_datetime`" in sql
    assert "SAFE_CAST(r.`VendorID` AS STRING) AS `VendorID`" in sql
    assert "`Airport_fee` AS `airport_fee`" in sql
    assert "MD5(CONCAT(COALESCE(CAST(`VendorID` AS STRING)" in sql
    counts = SQL.typed_from_sql(Column("passenger_count", "integer"), "x", "double")
    assert counts == (
        "IF(SAFE_CAST(x AS NUMERIC) = TRUNC(SAFE_CAST(x AS NUMERIC)),"
        " SAFE_CAST(SAFE_CAST(x AS NUMERIC) AS INT64), NULL)"
    )


def test_replace_is_one_transaction_of_a_bounded_delete_and_an_insert_of_missing_ids() -> None:
    ranges = [DateRange(date(2019, 1, 1), date(2019, 2, 1))]
    replacing = Replacement(("green_tripdata_2019-01.csv", "green_tripdata_2019-01.parquet"), None)
    sql = replace_sql(GREEN, FINAL, STAGING, ranges, False, replacing)
    statements = [s.strip() for s in sql.split(";")]
    assert statements[0] == "DECLARE deleted, inserted INT64 DEFAULT 0"
    assert statements[1] == "BEGIN TRANSACTION"
    assert statements[2].startswith(f"DELETE FROM {FINAL} AS T\nWHERE T.filename IN (")
    assert statements[3] == "SET deleted = @@row_count"
    assert statements[4].startswith(f"INSERT INTO {FINAL} (unique_row_id, filename,")
    assert "WHERE NOT EXISTS" in statements[4]
    assert "t.`lpep_pickup_datetime` >= TIMESTAMP '2019-01-01'" in statements[4]
    assert statements[5:] == [
        "SET inserted = @@row_count",
        "COMMIT TRANSACTION",
        "SELECT deleted, inserted",
    ]
