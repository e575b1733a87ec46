"""The "limit" of a month ingest: DuckDB alone, from the local file, no pipeline around it.

``python -m bench.limit_duckdb FILE WAREHOUSE.duckdb``: **one statement, one pass** from the file
to the final table, which is the work itself (a staging table is the pipeline's design, not part
of it): ``INSERT INTO final SELECT <id>, <filename>, <typed columns> FROM <reader>``, with

- a gzip CSV (``yellow_tripdata_YYYY-MM.csv.gz``) read by DuckDB's own typed parser with the
  reference types: ids and codes text, counts BIGINT read leniently (read as DOUBLE, so ``1.0``
  is 1, then cast), amounts DECIMAL(38, 9), timestamps; the fees the CSV lacks NULL;
- ``--parquet``, a TLC file of any dataset (``{dataset}_tripdata_YYYY-MM.parquet``):
  ``read_parquet`` with a plain cast of each of the month's period columns onto the final
  table's reference type (the fees included);

and the pipeline's ``unique_row_id`` over the typed columns, into an empty final table of the
pipeline's schema. ``--two-pass`` (CSV) is the older limit, kept as a second, named figure: the
same typed read into a staging table (CTAS), then ``INSERT INTO final SELECT * FROM staging``.

Prints the row count as JSON; ``--explain FILE`` runs each statement under ``EXPLAIN ANALYZE``
and writes the plans there. Nothing else: no download, no verification, no events, no run
history, no dedup check, no bad-value accounting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import duckdb

from taxi_pipeline.adapters.duckdb.warehouse import unique_row_id_sql
from taxi_pipeline.adapters.sql.dialects import DUCKDB
from taxi_pipeline.adapters.sql.statements import source_columns
from taxi_pipeline.domain.datasets import Column, Dataset, Month
from taxi_pipeline.domain.formats import PARQUET

_FINAL_TYPES = {
    "string": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "integer": "BIGINT",
    "numeric": "DECIMAL(38, 9)",
}
# Integer columns hold "1.0" in some months: read as DOUBLE, cast to BIGINT.
_READ_TYPES = _FINAL_TYPES | {"integer": "DOUBLE"}
_DATASET = Dataset.YELLOW


def _q(name: str) -> str:
    return '"' + name + '"'


def _month_of(source: Path) -> tuple[Dataset, Month]:
    """The dataset and month a file's name says (a TLC Parquet file of any dataset)."""
    match = re.fullmatch(r"([a-z]+)_tripdata_(\d{4}-\d{2})\.(csv\.gz|parquet)", source.name)
    if match is None:
        raise ValueError(f"{source.name}: not a month file ({{dataset}}_tripdata_YYYY-MM.parquet)")
    return Dataset(match.group(1)), Month.parse(match.group(2))


def _final_table_sql(dataset: Dataset) -> str:
    columns = ", ".join(
        f"{_q(c.name)} {_FINAL_TYPES[c.kind]}" for c in dataset.layout.final_columns
    )
    return f"CREATE TABLE final (unique_row_id BLOB, filename VARCHAR, {columns})"


def csv_rows_sql(source: Path) -> str:
    """The month's rows in the final table's shape, from the gzip CSV (one read)."""
    layout = _DATASET.layout
    read = ", ".join(f"'{c.name}': '{_READ_TYPES[c.kind]}'" for c in layout.columns)
    in_file = set(layout.names)

    def typed_value(column: Column) -> str:
        if column.name not in in_file:
            return f"CAST(NULL AS {_FINAL_TYPES[column.kind]})"  # a fee the CSV predates
        if column.kind == "integer":
            return f"CAST({_q(column.name)} AS BIGINT)"
        return _q(column.name)

    typed = ", ".join(f"{typed_value(c)} AS {_q(c.name)}" for c in layout.final_columns)
    names = ", ".join(_q(c.name) for c in layout.final_columns)
    return (
        f"SELECT {unique_row_id_sql(_DATASET)} AS unique_row_id,"
        f" '{source.name.removesuffix('.gz')}' AS filename, {names}"
        f" FROM (SELECT {typed} FROM read_csv('{source}', header = true, auto_detect = false,"
        f" delim = ',', quote = '\"', nullstr = '', compression = 'gzip',"
        f" columns = {{{read}}}))"
    )


def parquet_rows_sql(source: Path) -> str:
    """The month's rows in the final table's shape, from the TLC Parquet file (one read)."""
    dataset, month = _month_of(source)
    sources = source_columns(PARQUET, dataset, month)
    columns = dataset.layout.final_columns
    casts = []
    for column in columns:
        found = sources[column.name]
        target = DUCKDB.column_type(column)
        if found.name is None:
            value = f"CAST(NULL AS {target})"
        elif found.kind == "double" and column.kind == "string":
            value = f"CAST(CAST({_q(found.name)} AS BIGINT) AS VARCHAR)"
        else:
            value = f"CAST({_q(found.name)} AS {target})"
        casts.append(f"{value} AS {_q(column.name)}")
    names = ", ".join(_q(c.name) for c in columns)
    return (
        f"SELECT {unique_row_id_sql(dataset)} AS unique_row_id, '{source.name}' AS filename,"
        f" {names} FROM (SELECT {', '.join(casts)} FROM read_parquet('{source}'))"
    )


def statements(source: Path, *, parquet: bool = False, two_pass: bool = False) -> list[str]:
    """The limit's statements, in order, after the final table is created."""
    rows = parquet_rows_sql(source) if parquet else csv_rows_sql(source)
    if not two_pass:
        return [f"INSERT INTO final {rows}"]
    return [f"CREATE TABLE staging AS {rows}", "INSERT INTO final SELECT * FROM staging"]


def run(
    source: Path,
    database: Path,
    *,
    parquet: bool = False,
    two_pass: bool = False,
    memory_limit: str | None = None,
    explain: Path | None = None,
) -> int:
    """Load ``source`` into ``database``; returns the final table's row count."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "preserve_insertion_order": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(str(database), config=config)
    plans: list[str] = []
    try:
        con.execute(_final_table_sql(_month_of(source)[0] if parquet else _DATASET))
        for statement in statements(source, parquet=parquet, two_pass=two_pass):
            if explain is None:
                con.execute(statement)
            else:
                # EXPLAIN ANALYZE runs the statement: the plan comes with its timings.
                plan = con.execute(f"EXPLAIN ANALYZE {statement}").fetchall()
                plans.append(f"-- {statement[:160]}...\n" + "\n".join(str(p[-1]) for p in plan))
        con.execute("CHECKPOINT")
        row = con.execute("SELECT count(*) FROM final").fetchone()
        if explain is not None:
            explain.write_text("\n\n".join(plans) + "\n")
        return int(row[0]) if row else 0
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", type=Path, help="a yellow month, .csv.gz or (--parquet) TLC")
    parser.add_argument("database", type=Path)
    parser.add_argument("--memory-limit", default=None)
    parser.add_argument("--parquet", action="store_true", help="SOURCE is a TLC Parquet file")
    parser.add_argument(
        "--two-pass", action="store_true", help="CTAS a staging table, then INSERT it (CSV)"
    )
    parser.add_argument("--explain", type=Path, default=None, help="write EXPLAIN ANALYZE here")
    args = parser.parse_args(argv)
    if args.parquet and args.two_pass:
        parser.error("--two-pass is the CSV's older limit")
    rows = run(
        args.source,
        args.database,
        parquet=args.parquet,
        two_pass=args.two_pass,
        memory_limit=args.memory_limit,
        explain=args.explain,
    )
    sys.stdout.write(json.dumps({"rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
