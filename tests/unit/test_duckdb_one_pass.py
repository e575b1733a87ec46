"""What the DuckDB warehouse's one pass (a clean month straight into the final table) stands on,
pinned against the installed DuckDB: its typed CSV reader types a field as ``TRY_CAST`` of its
text does (or refuses the file), and the rows an open transaction appended are numbered from
``UNCOMMITTED_ROW_IDS``. A DuckDB that changes either fails here before it changes a load."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import duckdb
import pytest

from taxi_pipeline.adapters.duckdb.warehouse import UNCOMMITTED_ROW_IDS
from taxi_pipeline.adapters.sql.dialects import DUCKDB, Dialect

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
            reader = DUCKDB.read_csv(str(path), {"a": sql_type})
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
