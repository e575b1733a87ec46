"""The DuckDB warehouse's one pass (a clean month straight into the final table): what it stands
on, pinned against the installed DuckDB (its typed CSV reader types a field as ``TRY_CAST`` of
its text does, or refuses the file; the rows an open transaction appended are numbered from
``UNCOMMITTED_ROW_IDS``; the narrow integer rule agrees with the wide one), and what it does: the
rows the staging table would have held, seen by nobody until the merge commits, rolled back by a
refusal, and a month with a value to set aside staged the slow way."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from taxi_pipeline.adapters.duckdb.warehouse import SQL, UNCOMMITTED_ROW_IDS, DuckDbWarehouse
from taxi_pipeline.adapters.folder.store import FolderStore
from taxi_pipeline.adapters.sql.dialects import DUCKDB, Dialect
from taxi_pipeline.adapters.sql.statements import source_columns
from taxi_pipeline.devkit.generator import generate_month, write_raw
from taxi_pipeline.devkit.parquet_generator import generate_parquet_month
from taxi_pipeline.domain.datasets import Dataset, Month, csv_name, object_name
from taxi_pipeline.domain.formats import CSV_GZ, PARQUET, SourceFormat, format_of
from taxi_pipeline.pipeline.ports import (
    JobContext,
    MergeOutcome,
    MergePlan,
    ObjectInfo,
    Replacement,
)
from taxi_pipeline.pipeline.steps.merge import pickup_ranges

YELLOW, JAN = Dataset.YELLOW, Month(2019, 1)

# Texts a published or hostile file may hold in a number or timestamp field: whitespace, signs,
# exponents, digits past the scale, past the width, other scripts, special words, zones.
_FIELDS = [
    "1", "1.0", "1.5", " 1", "1 ", " 1.5 ", "+1", "-1", "-0", "00001", "1e3", "1E3", "1e-3",
    ".5", "5.", "0x10", "1_000", "1,5", "--1", "1-", "1.2.3", "e", ".", "-", "+", " ", "\t1",
    "1d", "1f", "true", "inf", "-inf", "nan", "infinity", "\u0661", "\uff11", "1.0000000001",
    "1.00000000049", "1.0000000005", "0.1234567895", "999999999.9999999999", "1000000000",
    "99999999999999999999999999999", "123456789012345678901234567890", "1e30", "1e40",
    "12345678901234567890123456789.123456789", "2019-01-01 00:00:00", "2019-01-01",
    "2019-01-01T00:00:00", "2019-01-01 00:00:00+00", "2019-01-01 00:00:00+05",
    "2019-01-01 00:00:00.5", "2019-01-01 24:00:00", "2019-02-30 00:00:00", "2019-1-1 0:0:0",
    " 2019-01-01 00:00:00", "2019-01-01 00:00:00 ", "-infinity", "epoch", "0000-01-01 00:00:00",
    "10000-01-01 00:00:00", "9999-12-31 23:59:59", "2019-01-01 00:00:00 BC",
    "2019-01-01 00:00:00Z", "2019-01-01 00:00", "20190101", "2019/01/01 00:00:00",
    "2019-01-01 00:00:00.123456789", "2019-01-01 00:00:60", "1970-01-01 00:00:00 UTC",
    "2019-01-01 00:00:00 +00:00", "allballs", "22019-03-01 10:00:00+00",
]  # fmt: skip


def _one_column_csv(path: Path, field: str) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([["a"], [field], [field]])
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))
    return path


@pytest.mark.parametrize("sql_type", sorted(set(DUCKDB.typed_csv_types.values()) - {"VARCHAR"}))
def test_the_typed_csv_reader_types_a_field_as_try_cast_does_or_refuses_it(
    sql_type: str, tmp_path: Path
) -> None:
    same, refused = 0, 0
    with duckdb.connect() as con:
        for field in _FIELDS:
            path = _one_column_csv(tmp_path / "one.csv.gz", field)
            reader = DUCKDB.read_csv_as(str(path), {"a": sql_type}, "gzip")
            (cast,) = con.execute(f"SELECT TRY_CAST(? AS {sql_type})", [field]).fetchone() or ()
            try:
                rows = con.execute(f"SELECT a FROM ({reader})").fetchall()
            except duckdb.ConversionException:
                refused += 1  # the one pass stops; staging types it (NULL: a bad value)
                continue
            assert rows == [(cast,), (cast,)], field
            assert cast is not None, f"{field!r} read as {rows[0][0]!r}, a bad value for TRY_CAST"
            same += 1
    assert same >= 10
    assert refused >= 10


def test_the_rows_an_open_transaction_appended_are_numbered_past_every_committed_row(
    tmp_path: Path,
) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        # Past one row group (122,880 rows), so DuckDB writes the appended rows optimistically.
        con.execute("CREATE TABLE t AS SELECT range AS a FROM range(300000)")
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO t SELECT range FROM range(200000)")
        con.execute("DELETE FROM t WHERE a < 10 AND rowid < 300000")
        counted = con.execute(
            f"SELECT count(*), min(rowid), max(a) FROM t WHERE rowid >= {UNCOMMITTED_ROW_IDS}"
        ).fetchall()
        assert counted == [(200_000, UNCOMMITTED_ROW_IDS, 199_999)]
        con.execute("COMMIT")
        (after,) = con.execute("SELECT max(rowid) FROM t").fetchone() or ()
        assert after < UNCOMMITTED_ROW_IDS


_DOUBLES = [
    0.0, -0.0, 1.0, 1.5, 2.0000000004, 2.0000000005, 0.1 + 0.2, 3.0 - 1e-10, 999_999_999.0,
    999_999_999.5, 1e9, 1e9 + 1, 1e17, 1e18, 1e19, 1e38, -7.0, float("inf"), float("-inf"),
    float("nan"),
]  # fmt: skip


def test_the_narrow_whole_number_rule_agrees_with_the_wide_one() -> None:
    """DuckDB's integer rule goes through DECIMAL(18, 9) where a value fits: the same integers
    as the reference's DECIMAL(38, 9) rule, for texts and doubles alike."""
    wide = Dialect.whole_number  # the shared rule, in DuckDB's SQL
    texts = [f for f in _FIELDS if f.strip()]
    with duckdb.connect() as con:
        for value, sql_type in [
            *((t, "VARCHAR") for t in texts),
            *((d, "DOUBLE") for d in _DOUBLES),
        ]:
            got = con.execute(
                f"SELECT {DUCKDB.whole_number('x')}, {wide(DUCKDB, 'x')}"
                f" FROM (SELECT CAST(? AS {sql_type}) AS x)",
                [value],
            ).fetchone()
            assert got is not None
            assert got[0] == got[1], (value, sql_type)
        # Both branches are taken: a count that fits, and one that does not.
        fits = con.execute(f"SELECT {DUCKDB.whole_number(repr('7.0'))}").fetchone()
        past = con.execute(f"SELECT {DUCKDB.whole_number(repr('12345678901.0'))}").fetchone()
        assert (fits, past) == ((7,), (12_345_678_901,))


# -- the warehouse ------------------------------------------------------------------------------


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[DuckDbWarehouse]:
    built = DuckDbWarehouse(tmp_path / "home" / "warehouse.duckdb", threads=2)
    yield built
    built.close()


def _put(lake: Path, path: Path, dataset: Dataset, month: Month) -> ObjectInfo:
    name = object_name(dataset, month, format_of(path.name) or CSV_GZ)
    target = lake / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    return ObjectInfo("lake", name, "1", target.stat().st_size, target.as_uri())


def _stage(
    warehouse: DuckDbWarehouse, tmp_path: Path, path: Path, dataset: Dataset, month: Month
) -> tuple[ObjectInfo, JobContext]:
    lake = tmp_path / "lake"
    source = _put(lake, path, dataset, month)
    run_id = f"{dataset.value}-{month.year}{month.month:02d}-onepass"
    context = JobContext(run_id, dataset, month, "merge")
    warehouse.ensure_final_table(dataset)
    warehouse.create_external_table(dataset, month, source, FolderStore(lake))
    return source, context


def _open_elsewhere(path: Path) -> int:
    """Open the DuckDB file from another process; its exit status (0: it could)."""
    code = f"import duckdb; duckdb.connect({str(path)!r}).close()"
    return subprocess.run([sys.executable, "-c", code], check=False).returncode


def _statements(caplog: pytest.LogCaptureFixture) -> set[str]:
    """The warehouse statements run so far (their DEBUG timing lines)."""
    return {str(r.__dict__["statement"]) for r in caplog.records if "statement" in r.__dict__}


def _staging_rows(path: Path, dataset: Dataset, month: Month, fmt: SourceFormat) -> str:
    """The rows the staging table of the slow way holds, as a query over ``path``."""
    relation = DUCKDB.read_source(fmt, str(path), dataset)
    select = SQL.staging_select(
        dataset, month, f"({relation})", csv_name(dataset, month, fmt),
        source_columns(fmt, dataset, month),
    )  # fmt: skip
    return f"SELECT {', '.join(SQL.final_columns(dataset))} FROM ({select}) WHERE NOT _header"


@pytest.mark.parametrize("fmt", [CSV_GZ, PARQUET], ids=lambda f: f.name)
def test_a_clean_month_loads_in_one_pass_the_rows_the_staging_table_would_hold(
    warehouse: DuckDbWarehouse, tmp_path: Path, fmt: SourceFormat, caplog: pytest.LogCaptureFixture
) -> None:
    month = JAN if fmt is CSV_GZ else Month(2024, 1)
    made = tmp_path / "made"
    path = (
        generate_month(made, YELLOW, month, 20_000, seed=7).path
        if fmt is CSV_GZ
        else generate_parquet_month(made, "yellow", month, 20_000, seed=7).path
    )
    source, context = _stage(warehouse, tmp_path, path, YELLOW, month)
    with caplog.at_level(logging.DEBUG, "taxi_pipeline.adapters.duckdb.warehouse"):
        staged = warehouse.stage(source, FolderStore(tmp_path / "lake"), context)
    # One pass, no staging table, and nothing visible before the commit.
    assert _statements(caplog) >= {"stage into final table", "measure staged rows"}
    assert "build staging table" not in _statements(caplog)
    assert warehouse.query("SELECT count(*) FROM yellow_tripdata").rows == [(0,)]
    assert (staged.rows, staged.rows_bad) == (20_000, 0)
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, False)).inserted == 20_000
    assert _open_elsewhere(warehouse.path) == 0  # the file is let go once committed
    warehouse.drop_month_objects(YELLOW, month)

    columns = ", ".join(SQL.final_columns(YELLOW))
    with duckdb.connect(str(warehouse.path)) as con:
        expected = _staging_rows(path, YELLOW, month, fmt)
        loaded = f"SELECT {columns} FROM yellow_tripdata"
        for first, second in [(loaded, expected), (expected, loaded)]:
            (differ,) = (
                con.execute(f"SELECT count(*) FROM ({first} EXCEPT ALL {second})").fetchone() or ()
            )
            assert differ == 0


def test_a_month_staged_into_the_final_table_and_refused_leaves_nothing(
    warehouse: DuckDbWarehouse, tmp_path: Path
) -> None:
    path = generate_month(tmp_path / "made", YELLOW, JAN, 5_000, seed=8).path
    source, context = _stage(warehouse, tmp_path, path, YELLOW, JAN)
    warehouse.stage(source, FolderStore(tmp_path / "lake"), context)
    assert _open_elsewhere(warehouse.path) != 0  # held from the pass to the commit
    warehouse.drop_month_objects(YELLOW, JAN)  # what the step does with a refused month
    assert _open_elsewhere(warehouse.path) == 0
    assert warehouse.query("SELECT count(*) FROM yellow_tripdata").rows == [(0,)]
    # Staged again by the redelivery: the pass runs anew.
    staged = warehouse.stage(source, FolderStore(tmp_path / "lake"), context)
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, False)).inserted == 5_000
    assert warehouse.query("SELECT count(*) FROM yellow_tripdata").rows == [(5_000,)]


def test_a_month_with_a_value_to_set_aside_takes_the_staging_table(
    warehouse: DuckDbWarehouse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = YELLOW.layout
    good = "1,2019-01-05 10:00:00,2019-01-05 10:10:00,1,1.2,1,N,74,75,1,7,0,0.5,0,0,0.3,7.8,0"
    lines = [good.replace("10:00:00", f"10:{m:02d}:00", 1) for m in range(20)]
    lines.append(good.replace(",1,1.2,", ",1.5,1.2,", 1))  # one count that is no whole number
    lines.append(layout.header)  # and the header line again inside the body
    path = write_raw(tmp_path / "made" / "yellow.csv.gz", layout.header, lines)
    source, context = _stage(warehouse, tmp_path, path, YELLOW, JAN)
    with caplog.at_level(logging.DEBUG, "taxi_pipeline.adapters.duckdb.warehouse"):
        staged = warehouse.stage(source, FolderStore(tmp_path / "lake"), context)
    # The pass stopped at the first such value; the staging table then counted them.
    assert _statements(caplog) >= {"stage into final table", "build staging table"}
    assert "measure staged rows" not in _statements(caplog)
    assert _open_elsewhere(warehouse.path) == 0  # the slow way stages without the file
    # The header line is a bad row, not a trip (README "Row ids"); the 1.5 a bad value.
    assert (staged.rows, staged.rows_bad) == (21, 2)
    assert sorted(staged.bad_samples) == sorted([lines[20], layout.header])
    ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, ranges, False)).inserted == 21
    counted = warehouse.query("SELECT count(*), count(passenger_count) FROM yellow_tripdata")
    assert counted.rows == [(21, 20)]


def test_a_month_replaced_in_one_pass_holds_the_new_file_only(
    warehouse: DuckDbWarehouse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A clean CSV month, then the TLC's clean file of it replacing it: both in one pass, the
    delete of the old rows in the new rows' transaction."""
    month = Month(2020, 1)
    csv_file = generate_month(tmp_path / "csv", YELLOW, month, 3_000, seed=9).path
    parquet_file = generate_parquet_month(tmp_path / "tlc", "yellow", month, 2_000, seed=9).path
    lake = FolderStore(tmp_path / "lake")
    source, context = _stage(warehouse, tmp_path, csv_file, YELLOW, month)
    staged = warehouse.stage(source, lake, context)
    old_ranges = pickup_ranges(staged.pickup_dates)
    assert warehouse.merge_staged(MergePlan(context, old_ranges, False)).inserted == 3_000

    source, context = _stage(warehouse, tmp_path, parquet_file, YELLOW, month)
    with caplog.at_level(logging.DEBUG, "taxi_pipeline.adapters.duckdb.warehouse"):
        staged = warehouse.stage(source, lake, context)
        ranges = pickup_ranges(staged.pickup_dates)
        names = (csv_name(YELLOW, month, CSV_GZ), csv_name(YELLOW, month, PARQUET))
        replacing = Replacement(names, (*old_ranges, *ranges))
        replaced = warehouse.merge_staged(MergePlan(context, ranges, False, replacing))
    assert "build staging table" not in _statements(caplog)
    assert replaced == MergeOutcome(2_000, 3_000)
    counts = warehouse.query("SELECT filename, count(*) FROM yellow_tripdata GROUP BY filename")
    assert counts.rows == [("yellow_tripdata_2020-01.parquet", 2_000)]
