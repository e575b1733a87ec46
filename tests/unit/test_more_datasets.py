"""fhv, fhvhv and the taxi zones as declarations (issue 17): layouts, ids, sources, the SQL each
dialect writes for them, and the zone file's checks (pure, or DuckDB in memory)."""

from __future__ import annotations

import hashlib

import duckdb
import pytest

from taxi_pipeline.adapters.bigquery.warehouse import SQL as BQ
from taxi_pipeline.adapters.duckdb.warehouse import SQL as DUCK
from taxi_pipeline.adapters.sql.dialects import BIGQUERY, DUCKDB, POSTGRES
from taxi_pipeline.adapters.sql.statements import SourceColumn, Statements, source_columns
from taxi_pipeline.domain.datasets import (
    Dataset,
    Month,
    Upstream,
    choose_publication,
    file_name,
    object_name,
    parse_object,
)
from taxi_pipeline.domain.formats import CSV_GZ, PARQUET
from taxi_pipeline.domain.lookups import TAXI_ZONES, check_lookup_csv
from taxi_pipeline.domain.schedules import load_schedules
from taxi_pipeline.errors import (
    BeforeTheFirstMonth,
    NotPublished,
    UnsupportedMonth,
    VerificationFailed,
)

FHV, FHVHV = Dataset.FHV, Dataset.FHVHV


def test_fhv_is_declared_as_published_with_integer_zones_and_the_taxis_id_formula() -> None:
    layout = FHV.layout
    assert layout.header == (
        "dispatching_base_num,pickup_datetime,dropOff_datetime,PUlocationID,DOlocationID,"
        "SR_Flag,Affiliated_base_number"
    )
    types = {c.name: BIGQUERY.column_type(c) for c in layout.final_columns}
    assert types == {
        "dispatching_base_num": "STRING",
        "pickup_datetime": "TIMESTAMP",
        "dropOff_datetime": "TIMESTAMP",
        "PUlocationID": "INT64",
        "DOlocationID": "INT64",
        "SR_Flag": "INT64",
        "Affiliated_base_number": "STRING",
    }
    assert layout.id_columns == (
        "dispatching_base_num", "pickup_datetime", "dropOff_datetime", "PUlocationID",
        "DOlocationID",
    )  # fmt: skip
    assert FHV.final_table == "fhv_tripdata"
    assert file_name(FHV, Month(2019, 1)) == "fhv_tripdata_2019-01.csv.gz"
    assert object_name(FHV, Month(2024, 1), PARQUET) == "raw/fhv/fhv_tripdata_2024-01.parquet"
    assert parse_object("raw/fhv/fhv_tripdata_2024-01.parquet") == (FHV, Month(2024, 1), PARQUET)


def test_fhvhv_has_the_tlcs_24_columns_and_the_cbd_fee_beside_them() -> None:
    layout = FHVHV.layout
    assert len(layout.columns) == 24
    assert layout.final_names[-1] == "cbd_congestion_fee"
    assert layout.id_columns == (
        "hvfhs_license_num", "dispatching_base_num", "pickup_datetime", "dropoff_datetime",
        "PULocationID", "DOLocationID",
    )  # fmt: skip
    kinds = {c.name: c.kind for c in layout.final_columns}
    assert kinds["trip_time"] == kinds["PULocationID"] == "integer"
    assert kinds["driver_pay"] == kinds["cbd_congestion_fee"] == "numeric"
    assert kinds["request_datetime"] == kinds["on_scene_datetime"] == "timestamp"
    # The first and the new schema period both map onto the 25 final columns.
    old = source_columns(PARQUET, FHVHV, Month(2024, 12))
    new = source_columns(PARQUET, FHVHV, Month(2025, 1))
    assert old["cbd_congestion_fee"] == SourceColumn(None)
    assert new["cbd_congestion_fee"] == SourceColumn("cbd_congestion_fee", "double")
    assert new["trip_time"].kind == "integer"


def test_sources_and_ranges() -> None:
    mirror, tlc = Month(2020, 5), Month(2022, 1)
    assert choose_publication(FHV, mirror, Upstream.AUTO).upstream is Upstream.MIRROR
    assert choose_publication(FHV, tlc, Upstream.AUTO).upstream is Upstream.TLC
    assert choose_publication(FHV, Month(2015, 1), Upstream.TLC).source_format is PARQUET
    with pytest.raises(UnsupportedMonth, match="fhv trip data starts 2015-01"):
        choose_publication(FHV, Month(2014, 12), Upstream.TLC)
    # fhvhv: the TLC only, from 2019-02; auto picks it even in the mirror's range.
    assert choose_publication(FHVHV, mirror, Upstream.AUTO).upstream is Upstream.TLC
    with pytest.raises(UnsupportedMonth, match="fhvhv is not published by the mirror"):
        choose_publication(FHVHV, mirror, Upstream.MIRROR)
    with pytest.raises(BeforeTheFirstMonth, match="fhvhv trip data starts 2019-02") as raised:
        choose_publication(FHVHV, Month(2019, 1), Upstream.AUTO)
    # Nothing that early exists anywhere: a scheduled run of it is SKIPPED (not published),
    # where yellow before 2011 exists in another layout and fails.
    assert isinstance(raised.value, NotPublished)
    assert isinstance(raised.value, UnsupportedMonth)
    with pytest.raises(UnsupportedMonth) as other:
        choose_publication(Dataset.YELLOW, Month(2010, 12), Upstream.TLC)
    assert not isinstance(other.value, NotPublished)
    assert file_name(FHVHV, tlc) == "fhvhv_tripdata_2022-01.parquet"
    assert FHVHV.spec.published_months() == []
    assert not FHVHV.spec.publishes(Month(2019, 1))
    assert FHVHV.spec.publishes(Month(2019, 2))


def test_csv_and_parquet_sources_of_fhv() -> None:
    csv = source_columns(CSV_GZ, FHV, Month(2019, 2))
    assert all(s.kind == "text" for s in csv.values())
    # Location ids and SR_Flag are DOUBLE until 2019-04 (80.0), INT64 later: read as doubles
    # either way (a whole double is the integer), SR_Flag null-typed in between.
    early = source_columns(PARQUET, FHV, Month(2019, 3))
    late = source_columns(PARQUET, FHV, Month(2023, 6))
    assert early["PUlocationID"] == SourceColumn("PUlocationID", "double")
    assert late["PUlocationID"] == SourceColumn("PUlocationID", "integer")
    assert early["SR_Flag"].kind == late["SR_Flag"].kind == "double"
    assert late["dropOff_datetime"] == SourceColumn("dropOff_datetime", "timestamp")


def _evaluate(sql: str) -> object:
    with duckdb.connect() as con:
        return con.execute(sql).fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [("text", "'80.0'", 80), ("text", "'80'", 80), ("text", "'80.5'", None),
     ("double", "80.0::DOUBLE", 80), ("double", "80.5::DOUBLE", None), ("integer", "80", 80)],
)  # fmt: skip
def test_an_integer_location_accepts_80_point_0_from_every_source(
    kind: str, value: str, expected: int | None
) -> None:
    column = FHV.layout.column("PUlocationID")
    assert _evaluate(f"SELECT {DUCK.typed_from_sql(column, value, kind)}") == expected  # type: ignore[arg-type]


def test_the_fhv_id_is_the_md5_of_the_bigquery_strings_with_null_as_empty() -> None:
    assert BQ.unique_row_id_sql(FHV) == (
        'MD5(CONCAT(COALESCE(CAST(`dispatching_base_num` AS STRING), ""),'
        ' COALESCE(CAST(`pickup_datetime` AS STRING), ""),'
        ' COALESCE(CAST(`dropOff_datetime` AS STRING), ""),'
        ' COALESCE(CAST(`PUlocationID` AS STRING), ""),'
        ' COALESCE(CAST(`DOlocationID` AS STRING), "")))'
    )
    # DuckDB writes the same texts: an INTEGER location as 80, a TIMESTAMP with "+00".
    row = (
        "SELECT {id} FROM (SELECT 'B02510' AS dispatching_base_num,"
        " TIMESTAMP '2019-02-01 00:00:17' AS pickup_datetime,"
        " TIMESTAMP '2019-02-01 00:03:45' AS \"dropOff_datetime\","
        ' 80::BIGINT AS "PUlocationID", NULL::BIGINT AS "DOlocationID")'
    )
    digest = _evaluate(row.format(id=DUCK.unique_row_id_sql(FHV)))
    text = "B025102019-02-01 00:00:17+002019-02-01 00:03:45+0080"
    assert digest == hashlib.md5(text.encode()).digest()


def test_final_tables_partition_by_pickup_and_cluster_by_zone() -> None:
    sql = BQ.final_table_sql(FHV, "`p.d.fhv_tripdata`")
    assert "PARTITION BY DATE(`pickup_datetime`)" in sql
    assert "CLUSTER BY `PUlocationID`, `DOlocationID`" in sql
    assert "`PUlocationID` INT64" in sql
    assert "`SR_Flag` INT64" in sql
    assert "over dispatching_base_num, pickup_datetime" in sql
    hv = DUCK.final_table_sql(FHVHV, "warehouse.fhvhv_tripdata")
    assert '"cbd_congestion_fee" DECIMAL(38, 9)' in hv
    assert '"trip_time" BIGINT' in hv


def test_the_zone_lookup_sql_reads_text_and_replaces_in_one_statement() -> None:
    reader = DUCKDB.read_csv("/lake/lookup/taxi_zone_lookup.csv", TAXI_ZONES.names)
    assert "compression = 'none'" in reader
    assert "strict_mode = true" in reader
    assert "'LocationID': 'VARCHAR'" in reader
    assert DUCK.replace_lookup_sql(TAXI_ZONES, "warehouse.taxi_zone_lookup", "src") == (
        "CREATE OR REPLACE TABLE warehouse.taxi_zone_lookup AS\n"
        'SELECT CAST("LocationID" AS BIGINT) AS "LocationID", "Borough", "Zone",'
        ' "service_zone" FROM src'
    )
    assert "CAST(`LocationID` AS INT64)" in BQ.replace_lookup_sql(TAXI_ZONES, "`t`", "`s`")
    assert BIGQUERY.csv_load_options()["max_bad_records"] == 0
    # PostgreSQL keeps its table and replaces the rows (DELETE + INSERT in one transaction).
    assert Statements(POSTGRES).lookup_table_sql(TAXI_ZONES, '"s"."taxi_zone_lookup"') == (
        'CREATE TABLE IF NOT EXISTS "s"."taxi_zone_lookup" ("LocationID" bigint,'
        ' "Borough" text, "Zone" text, "service_zone" text)'
    )
    with duckdb.connect() as con:
        con.execute(DUCK.replace_lookup_sql(
            TAXI_ZONES, "zones",
            "(SELECT '7' AS \"LocationID\", 'Queens' AS \"Borough\","
            " 'Flushing Meadows, Corona Park' AS \"Zone\", 'NA' AS service_zone) AS s",
        ))  # fmt: skip
        assert con.execute("SELECT * FROM zones").fetchall() == [
            (7, "Queens", "Flushing Meadows, Corona Park", "NA")
        ]


ZONES_HEADER = '"LocationID","Borough","Zone","service_zone"\n'


def test_the_zone_file_check_reads_quotes_and_commas() -> None:
    data = (
        ZONES_HEADER + '1,"EWR","Newark Airport","EWR"\n'
        '56,"Queens","Flushing Meadows, Corona Park","Boro Zone"\n'
        '57,"Queens","Bay Terrace ""Fort Totten""","Boro Zone"\n'
        '265,"Unknown","NA","N/A"\n'
    ).encode()
    checked = check_lookup_csv(TAXI_ZONES, data)
    assert (checked.rows, checked.header_quoted) == (4, True)
    plain = b"LocationID,Borough,Zone,service_zone\n1,EWR,Newark Airport,EWR\n"
    assert check_lookup_csv(TAXI_ZONES, plain).rows == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('"LocationID","Borough","Zone"\n1,"EWR","Newark"\n', "header"),
        ('1,"EWR","Newark Airport","EWR"\n', "header"),
        (ZONES_HEADER, "no rows"),
        (ZONES_HEADER + '1,"EWR","Newark Airport"\n', "3 fields, expected 4"),
        (ZONES_HEADER + '1.0,"EWR","Newark Airport","EWR"\n', "not an integer"),
        (ZONES_HEADER + '1,"EWR","a","b"\n1,"EWR","c","d"\n', "appears twice"),
        (ZONES_HEADER + '1,"EWR","Newark Airport,"EWR"\n', "valid CSV|fields"),
        (ZONES_HEADER + '1,"EWR","a","b"\n\n2,"EWR","c","d"\n', "empty"),
        ("<html>503 Service Unavailable</html>\n", "header"),
    ],
    ids=["columns", "no-header", "no-rows", "short", "decimal", "twice", "quote", "blank", "html"],
)
def test_a_file_that_is_not_the_zone_lookup_is_refused(body: str, problem: str) -> None:
    with pytest.raises(VerificationFailed, match=problem):
        check_lookup_csv(TAXI_ZONES, body.encode())


def test_the_zone_file_is_bounded_and_utf8() -> None:
    with pytest.raises(VerificationFailed, match="more than"):
        check_lookup_csv(TAXI_ZONES, ZONES_HEADER.encode() + b"x" * TAXI_ZONES.max_bytes)
    with pytest.raises(VerificationFailed, match="UTF-8"):
        check_lookup_csv(TAXI_ZONES, ZONES_HEADER.encode() + b'1,"\xff","a","b"\n')
    assert TAXI_ZONES.object_name == "lookup/taxi_zone_lookup.csv"
    assert not TAXI_ZONES.object_name.startswith("raw/")  # the register step ignores it


def test_the_shipped_schedules_ask_the_tlc_for_fhv_and_fhvhv_two_months_behind() -> None:
    schedules = {s.dataset: s for s in load_schedules()}
    assert set(schedules) == set(Dataset)
    for dataset in (FHV, FHVHV):
        schedule = schedules[dataset]
        assert (schedule.source, schedule.lag_months) == (Upstream.TLC, 2)
        assert schedule.name == f"taxi-{dataset.value}-monthly"
    crons = {s.cron for s in schedules.values()}
    assert len(crons) == 4, "each job fires at its own hour"
    assert schedules[FHVHV].lag_months == 2
