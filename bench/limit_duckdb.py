"""The "limit" of a month ingest: DuckDB alone, from the local file, no pipeline around it.

``python -m bench.limit_duckdb FILE.csv.gz WAREHOUSE.duckdb``: read the gzip CSV with DuckDB's
own typed parser, build the staging table with the pipeline's ``unique_row_id`` expression
(CTAS), then insert it into an empty final table of the pipeline's schema. Prints the row count
as JSON. Nothing else: no download, no verification, no events, no run history, no dedup check.

``--parquet`` (a TLC file, ``{dataset}_tripdata_YYYY-MM.parquet``): one pass, ``INSERT INTO final
SELECT ... FROM read_parquet(FILE)`` with a plain cast of each of the month's period columns onto
the final table's reference type (the fees included) and the same ``unique_row_id`` over them.
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
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.formats import PARQUET

_FINAL_TYPES = {
    "string": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "integer": "BIGINT",
    "numeric": "DECIMAL(38, 9)",
}
# Integer columns hold "1.0" in some months: read as DOUBLE, cast in the CTAS.
_READ_TYPES = _FINAL_TYPES | {"integer": "DOUBLE"}


def _q(name: str) -> str:
    return '"' + name + '"'


def run(source: Path, database: Path, memory_limit: str | None = None) -> int:
    """Load ``source`` into ``database``; returns the final table's row count."""
    dataset = Dataset.YELLOW
    columns = dataset.layout.columns
    config: dict[str, str | bool | int | float | list[str]] = {
        "preserve_insertion_order": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(str(database), config=config)
    try:
        final = ", ".join(f"{_q(c.name)} {_FINAL_TYPES[c.kind]}" for c in columns)
        con.execute(f"CREATE TABLE final (unique_row_id BLOB, filename VARCHAR, {final})")
        read = ", ".join(f"'{c.name}': '{_READ_TYPES[c.kind]}'" for c in columns)
        typed = ", ".join(
            f"CAST({_q(c.name)} AS BIGINT) AS {_q(c.name)}" if c.kind == "integer" else _q(c.name)
            for c in columns
        )
        con.execute(
            f"CREATE TABLE staging AS SELECT {unique_row_id_sql(dataset)} AS unique_row_id,"
            f" '{source.name.removesuffix('.gz')}' AS filename, *"
            f" FROM (SELECT {typed} FROM read_csv('{source}', header = true, auto_detect = false,"
            f" delim = ',', quote = '\"', nullstr = '', compression = 'gzip',"
            f" columns = {{{read}}}))"
        )
        con.execute("INSERT INTO final SELECT * FROM staging")
        con.execute("CHECKPOINT")
        row = con.execute("SELECT count(*) FROM final").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def run_parquet(source: Path, database: Path, memory_limit: str | None = None) -> int:
    """Load the TLC file ``source`` (any dataset, told by its name) into ``database`` in one
    statement; returns the rows."""
    match = re.fullmatch(r"([a-z]+)_tripdata_(\d{4}-\d{2})\.parquet", source.name)
    if match is None:
        raise ValueError(
            f"{source.name}: not a TLC file name ({{dataset}}_tripdata_YYYY-MM.parquet)"
        )
    dataset, month = Dataset(match.group(1)), Month.parse(match.group(2))
    sources = source_columns(PARQUET, dataset, month)
    columns = dataset.layout.final_columns
    config: dict[str, str | bool | int | float | list[str]] = {
        "preserve_insertion_order": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(str(database), config=config)
    try:
        final = ", ".join(f"{_q(c.name)} {_FINAL_TYPES[c.kind]}" for c in columns)
        con.execute(f"CREATE TABLE final (unique_row_id BLOB, filename VARCHAR, {final})")
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
        con.execute(
            f"INSERT INTO final SELECT {unique_row_id_sql(dataset)}, '{source.name}', {names}"
            f" FROM (SELECT {', '.join(casts)} FROM read_parquet('{source}'))"
        )
        con.execute("CHECKPOINT")
        row = con.execute("SELECT count(*) FROM final").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", type=Path)
    parser.add_argument("database", type=Path)
    parser.add_argument("--memory-limit", default=None)
    parser.add_argument(
        "--parquet", action="store_true", help="SOURCE is a TLC Parquet file: one pass"
    )
    args = parser.parse_args(argv)
    load = run_parquet if args.parquet else run
    rows = load(args.source, args.database, args.memory_limit)
    sys.stdout.write(json.dumps({"rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
