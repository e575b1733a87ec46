"""The Parquet generator: each period's exact schema, deterministic rows, the real files' quirks."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxi_pipeline.devkit.parquet_generator import (
    GeneratedParquet,
    ParquetMonthSpec,
    default_row_group_rows,
    expected_table,
    generate_parquet_month,
)
from taxi_pipeline.domain.datasets import Month
from taxi_pipeline.domain.tlc_schemas import PERIODS, SchemaPeriod, arrow_fields, recognise
from taxi_pipeline.errors import UnsupportedMonth

ROWS = 2400
GROUP = 800


def _months(period: SchemaPeriod) -> list[Month]:
    """The period's first month and, for a closed period, its last."""
    return [period.first] if period.last is None else [period.first, period.last]


CASES = [
    (period, month)
    for periods in PERIODS.values()
    for period in periods
    for month in _months(period)
]


def generate(tmp_path: Path, dataset: str, month: Month, **options: Any) -> GeneratedParquet:
    """A small file of several row groups (``options`` as :func:`generate_parquet_month`'s)."""
    return generate_parquet_month(
        tmp_path, dataset, month, ROWS, seed=3, row_group_rows=GROUP, **options
    )


@pytest.mark.parametrize(("period", "month"), CASES, ids=[f"{p.dataset}-{m}" for p, m in CASES])
def test_each_period_is_written_in_its_exact_schema(
    tmp_path: Path, period: SchemaPeriod, month: Month
) -> None:
    generated = generate(tmp_path, period.dataset, month)
    assert generated.name == f"{period.dataset}_tripdata_{month}.parquet"
    parquet = pq.ParquetFile(generated.path)
    assert arrow_fields(parquet.schema_arrow) == period.fields_in(month)
    recognition = recognise(period.dataset, month, arrow_fields(parquet.schema_arrow))
    assert recognition.matches, recognition.problem
    assert recognition.period == period
    metadata = parquet.metadata
    assert (metadata.num_rows, metadata.num_row_groups) == (ROWS, ROWS // GROUP)
    assert generated.row_groups == ROWS // GROUP
    assert generated.size_bytes == generated.path.stat().st_size

    physical = {
        parquet.schema.column(i).name: parquet.schema.column(i) for i in range(len(period.names))
    }
    for name, arrow_type in period.fields_in(month):
        column = physical[name]
        if arrow_type == "timestamp[us]":
            assert column.physical_type == "INT64"
            assert "isAdjustedToUTC=false" in str(column.logical_type)
            assert "timeUnit=microseconds" in str(column.logical_type)
        elif arrow_type == "null":
            assert (column.physical_type, str(column.logical_type)) == ("INT32", "Null")
        elif arrow_type in ("string", "large_string"):
            assert (column.physical_type, str(column.logical_type)) == ("BYTE_ARRAY", "String")
        else:
            assert column.physical_type == arrow_type.upper()  # INT64, INT32, DOUBLE


def test_the_same_spec_gives_the_same_bytes_and_another_seed_other_rows(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", "yellow", Month(2024, 1))
    again = generate(tmp_path / "b", "yellow", Month(2024, 1))
    other = generate_parquet_month(tmp_path / "c", "yellow", Month(2024, 1), ROWS, seed=4)
    assert first.path.read_bytes() == again.path.read_bytes()
    assert first.expected_table() != other.expected_table()


def test_rows_do_not_depend_on_the_row_group_size(tmp_path: Path) -> None:
    coarse = generate_parquet_month(tmp_path / "a", "green", Month(2019, 4), ROWS, seed=3)
    fine = generate_parquet_month(
        tmp_path / "b", "green", Month(2019, 4), ROWS, seed=3, row_group_rows=333
    )
    assert pq.ParquetFile(fine.path).metadata.num_row_groups == 8
    assert pq.read_table(coarse.path).equals(pq.read_table(fine.path))


def test_expected_table_is_what_the_file_holds(tmp_path: Path) -> None:
    generated = generate(tmp_path, "yellow", Month(2019, 3), non_integral_counts=4)
    assert pq.read_table(generated.path).equals(generated.expected_table())
    assert expected_table(generated.spec).num_rows == ROWS


def _pickups(table: pa.Table, name: str) -> list[datetime]:
    return list(table.column(name).to_pylist())


@pytest.mark.parametrize(
    ("dataset", "month", "pickup"),
    [
        ("yellow", Month(2016, 2), "tpep_pickup_datetime"),
        ("yellow", Month(2025, 3), "tpep_pickup_datetime"),
        ("green", Month(2021, 7), "lpep_pickup_datetime"),
        ("fhv", Month(2019, 2), "pickup_datetime"),
        ("fhvhv", Month(2022, 12), "pickup_datetime"),
    ],
)
def test_strays_and_duplicates_are_where_the_counts_say(
    tmp_path: Path, dataset: str, month: Month, pickup: str
) -> None:
    generated = generate(tmp_path, dataset, month, stray_rows=7, duplicate_rows=5)
    table = pq.read_table(generated.path)
    start = datetime(month.year, month.month, 1)
    following = month.next()
    end = datetime(following.year, following.month, 1)
    strays = [p for p in _pickups(table, pickup) if not start <= p < end]
    assert len(strays) == generated.out_of_month_rows == 7
    assert sorted({p.date() for p in strays}) == list(generated.stray_pickup_dates)
    assert date(2008, 12, 31) in generated.stray_pickup_dates
    rows = table.to_pylist()
    copies = sum(1 for before, row in itertools.pairwise(rows) if row == before)
    assert copies == generated.duplicate_rows == 5
    in_month = sorted(p for p in _pickups(table, pickup) if start <= p < end)
    day = end - start - (end - start) * 29 / 30
    assert in_month[0] < start + day, "pickups start with the month"
    assert in_month[-1] > end - day, "and run to its end"


def test_counts_are_doubles_like_1_0_with_nulls_and_requested_non_integral_ones(
    tmp_path: Path,
) -> None:
    generated = generate(tmp_path, "yellow", Month(2019, 3), non_integral_counts=4)
    table = pq.read_table(generated.path)
    passengers = table.column("passenger_count").to_pylist()
    assert table.schema.field("passenger_count").type == pa.float64()
    assert Counter(p for p in passengers if p is not None and p != int(p)) == {1.5: 4}
    assert {p for p in passengers if p is not None and p == int(p)} >= {0.0, 1.0, 2.0}
    unknown = [i for i, p in enumerate(passengers) if p is None]
    assert 0 < len(unknown) < ROWS // 20, "an unknown-trip group of about 1%"
    ratecodes = table.column("RatecodeID").to_pylist()
    flags = table.column("store_and_fwd_flag").to_pylist()
    assert all(ratecodes[i] is None and flags[i] is None for i in unknown)
    assert {table.column("payment_type")[i].as_py() for i in unknown} == {0}
    assert set(table.column("airport_fee").to_pylist()) == {None}


def test_a_non_integral_count_needs_a_double_period(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"yellow 2023-02\.\.2024-12 writes passenger_count as an"):
        generate(tmp_path, "yellow", Month(2024, 1), non_integral_counts=1)
    with pytest.raises(ValueError, match="do not fit"):
        generate_parquet_month(
            tmp_path, "yellow", Month(2019, 1), 10, stray_rows=4, duplicate_rows=2
        )


def test_fees_are_filled_from_their_months(tmp_path: Path) -> None:
    def values(dataset: str, month: Month, column: str) -> set[object]:
        table = pq.read_table(generate(tmp_path / f"{dataset}{month}", dataset, month).path)
        return set(table.column(column).to_pylist())

    assert values("yellow", Month(2024, 5), "Airport_fee") >= {0.0, 1.75}
    assert values("yellow", Month(2021, 6), "airport_fee") >= {0.0, 1.25}
    assert values("yellow", Month(2025, 2), "cbd_congestion_fee") >= {0.0, 0.75}
    assert values("green", Month(2025, 2), "cbd_congestion_fee") >= {0.0, 0.75}
    assert values("yellow", Month(2020, 3), "congestion_surcharge") >= {0.0, 2.5}
    assert values("yellow", Month(2016, 3), "congestion_surcharge") == {None}
    assert values("green", Month(2016, 3), "ehail_fee") == {None}
    assert values("yellow", Month(2019, 3), "improvement_surcharge") == {0.3}


def test_totals_add_up(tmp_path: Path) -> None:
    table = pq.read_table(generate(tmp_path, "yellow", Month(2025, 4)).path).to_pylist()
    parts = (
        *("fare_amount", "extra", "mta_tax", "tip_amount", "tolls_amount"),
        *("improvement_surcharge", "congestion_surcharge", "Airport_fee", "cbd_congestion_fee"),
    )
    for row in table:
        assert row["total_amount"] == pytest.approx(sum(row[p] or 0 for p in parts))


def test_id_texts_are_the_rows_id_columns_in_their_final_types(tmp_path: Path) -> None:
    generated = generate(tmp_path, "yellow", Month(2024, 2))
    texts = generated.expected_id_texts()
    rows = pq.read_table(generated.path).to_pylist()
    assert len(texts) == ROWS
    for text, row in zip(texts, rows, strict=True):
        vendor = None if row["VendorID"] is None else str(row["VendorID"])
        assert text == (
            vendor,
            row["tpep_pickup_datetime"].strftime("%Y-%m-%d %H:%M:%S"),
            row["tpep_dropoff_datetime"].strftime("%Y-%m-%d %H:%M:%S"),
            str(row["PULocationID"]),
            str(row["DOLocationID"]),
        )
    assert any(t[0] is None for t in texts), "a few empty VendorIDs (COALESCE in the id)"
    ids = {hashlib.md5("".join(p or "" for p in t).encode()).hexdigest() for t in texts}
    assert len(ids) == ROWS - generated.duplicate_rows, "only the exact copies share an id"
    # fhv's id columns: the base (text), its spellings of the times, location ids written as
    # DOUBLE before 2019-05 ("80.0" -> "80"), many empty.
    fhv = generate(tmp_path / "fhv", "fhv", Month(2019, 3))
    assert pq.read_schema(fhv.path).field("PUlocationID").type == "double"
    fhv_texts = fhv.expected_id_texts()
    for text, row in zip(fhv_texts, pq.read_table(fhv.path).to_pylist(), strict=True):
        zones = [
            None if row[z] is None else str(int(row[z])) for z in ("PUlocationID", "DOlocationID")
        ]
        assert text == (
            row["dispatching_base_num"],
            row["pickup_datetime"].strftime("%Y-%m-%d %H:%M:%S"),
            row["dropOff_datetime"].strftime("%Y-%m-%d %H:%M:%S"),
            *zones,
        )
    assert any(t[3] is None for t in fhv_texts)
    hv = generate(tmp_path / "fhvhv", "fhvhv", Month(2025, 1)).expected_id_texts()
    assert {t[0] for t in hv} == {"HV0003", "HV0004", "HV0005"}
    assert len(hv[0]) == 6
    with pytest.raises(ValueError, match="no reference id columns"):
        generate(
            tmp_path / "omitted", "fhv", Month(2020, 1), omit_columns=["DOlocationID"]
        ).expected_id_texts()


def test_schema_variations_for_bad_input_tests(tmp_path: Path) -> None:
    month = Month(2024, 3)
    extra = generate(tmp_path / "a", "yellow", month, extra_columns={"rider_rating": "double"})
    recognition = recognise("yellow", month, arrow_fields(pq.read_schema(extra.path)))
    assert recognition.new_column_messages == ("new column rider_rating (double) not loaded",)

    missing = generate(tmp_path / "b", "yellow", month, omit_columns=["Airport_fee"])
    assert "column 'Airport_fee' is missing" in str(
        recognise("yellow", month, arrow_fields(pq.read_schema(missing.path))).problem
    )
    zoned = generate(
        tmp_path / "c", "yellow", month, retype={"tpep_pickup_datetime": "timestamp[us, tz=UTC]"}
    )
    schema = pq.read_schema(zoned.path)
    assert str(schema.field("tpep_pickup_datetime").type) == "timestamp[us, tz=UTC]"
    assert "is timestamp[us, tz=UTC], expected timestamp[us]" in str(
        recognise("yellow", month, arrow_fields(schema)).problem
    )
    assert zoned.fields == tuple(arrow_fields(schema))


def test_months_before_a_datasets_first_period_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMonth, match="yellow 2010-12"):
        generate(tmp_path, "yellow", Month(2010, 12))
    assert list(tmp_path.iterdir()) == []


def test_default_row_groups() -> None:
    assert default_row_group_rows(3000) == 1000
    assert default_row_group_rows(100) == 1000
    assert default_row_group_rows(3_475_226) == 868_807  # yellow 2025-01: 4 groups, like the TLC's
    assert default_row_group_rows(20_000_000) == 1 << 20
    spec = ParquetMonthSpec("green", Month(2020, 1), 10, row_group_rows=0)
    with pytest.raises(ValueError, match="row_group_rows must be >= 1"):
        expected_table(spec)


@pytest.mark.slow
def test_a_full_yellow_month_is_generated_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2024 yellow month's size (3M rows); the timing is printed, not asserted."""
    started = time.perf_counter()
    generated = generate_parquet_month(tmp_path, "yellow", Month(2024, 1), 3_000_000, seed=1)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n3M-row yellow Parquet month: {elapsed:.1f} s, {generated.size_bytes / 1e6:.1f} MB,"
            f" {generated.row_groups} row groups"
        )
    metadata = pq.read_metadata(generated.path)
    assert (metadata.num_rows, metadata.num_row_groups) == (3_000_000, 4)
    assert 40e6 < generated.size_bytes < 75e6, "published 2024 months: 48-63 MB"


@pytest.mark.parametrize(
    ("dataset", "month", "types"),
    [
        ("yellow", Month(2016, 1), {"passenger_count": "BIGINT", "airport_fee": '"NULL"'}),
        ("yellow", Month(2019, 3), {"passenger_count": "DOUBLE", "congestion_surcharge": "DOUBLE"}),
        ("yellow", Month(2025, 1), {"VendorID": "INTEGER", "Airport_fee": "DOUBLE"}),
        ("green", Month(2020, 1), {"ehail_fee": '"NULL"', "trip_type": "DOUBLE"}),
    ],
)
def test_duckdb_reads_the_files_as_the_warehouse_will(
    tmp_path: Path, dataset: str, month: Month, types: dict[str, str]
) -> None:
    """What staging meets: wall-clock TIMESTAMP (no zone), null-typed columns as DuckDB's NULL."""
    import duckdb

    generated = generate(tmp_path, dataset, month)
    with duckdb.connect() as con:
        described = con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))",
            [str(generated.path)],
        ).fetchall()
        (count,) = con.execute(
            "SELECT count(*) FROM read_parquet(?)", [str(generated.path)]
        ).fetchone() or (None,)
    got = dict(described)
    assert {name: got[name] for name in types} == types
    pickup = generated.spec.period.pickup
    assert got[pickup] == "TIMESTAMP"
    assert count == ROWS
