"""The PostgreSQL dialect of the warehouse SQL: pure builders, unit-tested as text.

Kept apart from the adapter (one function per idea: DDL, landing types, typed values, the id
expression, the pickup predicate, the merge) so a shared SQL core can fold them in later.

How a month is staged (see :class:`~taxi_pipeline.adapters.postgres.warehouse.PostgresWarehouse`):
the CSV is fed to ``COPY ... FROM STDIN`` into an UNLOGGED *landing* table whose columns
PostgreSQL's input functions parse as the COPY runs: strings ``text``, timestamps ``timestamp``,
integer and numeric columns ``numeric``. The reference types and the bad-value rules are applied
when the landing table is read (:func:`typed_value`), so they cost no extra write:

- integer columns take a whole number that fits ``integer`` ("1.0" is 1); "1.5" is a bad value;
- numeric columns take what fits DuckDB's DECIMAL(38, 9) range (``abs < 1e29``: no NaN, no
  Infinity);
- timestamps take years 1..9999 (no ``infinity``), what BigQuery and Python can hold.

A file whose text some input function refuses ("seven" in a numeric column) fails that COPY;
it is then landed as text and parsed value by value by :data:`TRY_CAST_FUNCTIONS`, where a
refused value becomes NULL and the row keeps its text in ``_unparsed`` (a bad row).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Final

from taxi_pipeline.datasets import Column, ColumnKind, Dataset, Month, csv_name
from taxi_pipeline.ports import DateRange

POSTGRES_TYPES: Final[dict[ColumnKind, str]] = {
    "string": "text",
    "timestamp": "timestamp",
    "integer": "integer",
    "numeric": "numeric",
}
"""The reference types in the final tables."""

LANDING_TYPES: Final[dict[ColumnKind, str]] = {
    "string": "text",
    "timestamp": "timestamp",
    "integer": "numeric",  # "1.0" must land; whole-number check when read
    "numeric": "numeric",
}
"""How COPY parses each kind into the landing table."""

UNPARSED: Final = "_unparsed"
"""Landing column: the row's text when one of its values was refused by its input function."""

_TRY_FUNCTION: Final[dict[ColumnKind, str]] = {
    "timestamp": "taxi_pipeline_try_timestamp",
    "integer": "taxi_pipeline_try_numeric",
    "numeric": "taxi_pipeline_try_numeric",
}


def quote_ident(name: str) -> str:
    """A double-quoted identifier (the layouts' mixed-case names stay as published)."""
    return '"' + name.replace('"', '""') + '"'


def quote_text(text: str) -> str:
    """A string literal (``standard_conforming_strings`` is on since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


# -- DDL ------------------------------------------------------------------------------------


def final_table_sql(dataset: Dataset, schema: str) -> list[str]:
    """The final table, partitioned by ``filename`` (one partition per published file), and its
    two indexes: pickup (the merge reads only the staged pickup ranges of the target, so its
    cost follows the month, not the table) and the id (lookups).

    A partition per file lets the first load of a file be written in bulk (CREATE TABLE AS, then
    sorted index builds, then ATTACH) instead of row by row into indexes that grow with the
    table (BENCHMARKS.md). No unique constraint: duplicate rows inside one published file are
    kept, as the reference keeps them.
    """
    table = dataset.final_table
    columns = ",\n  ".join(
        f"{quote_ident(c.name)} {POSTGRES_TYPES[c.kind]}" for c in dataset.layout.columns
    )
    return [
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, table)} (\n"
        f"  unique_row_id bytea,\n  filename text,\n  {columns}\n) PARTITION BY LIST (filename)",
        *_index_sql(dataset, schema, table),
    ]


def _index_sql(dataset: Dataset, schema: str, table: str) -> list[str]:
    """The pickup and id indexes of the final table, or of one of its partitions."""
    return [
        f"CREATE INDEX IF NOT EXISTS {quote_ident(table + '_pickup')}"
        f" ON {qualified(schema, table)} ({quote_ident(dataset.layout.pickup)})",
        f"CREATE INDEX IF NOT EXISTS {quote_ident(table + '_unique_row_id')}"
        f" ON {qualified(schema, table)} (unique_row_id)",
    ]


def history_sql(schema: str) -> list[str]:
    """``pipeline_runs`` (``seq`` orders lines of equal ``recorded_at``) and ``pipeline_loads``."""
    runs, loads = qualified(schema, "pipeline_runs"), qualified(schema, "pipeline_loads")
    return [
        f"CREATE TABLE IF NOT EXISTS {runs} (\n"
        "  seq bigint GENERATED ALWAYS AS IDENTITY, run_id text NOT NULL, dataset text,\n"
        "  month text, step text NOT NULL, state text NOT NULL, attempt integer,\n"
        '  started_at timestamptz, finished_at timestamptz, "rows" bigint, bytes bigint,\n'
        "  labels text, error text, details text, recorded_at timestamptz NOT NULL\n)",
        f"CREATE INDEX IF NOT EXISTS pipeline_runs_run_id ON {runs} (run_id)",
        f"CREATE TABLE IF NOT EXISTS {loads} (\n"
        "  dataset text NOT NULL, month text NOT NULL, object_name text NOT NULL,\n"
        "  generation text NOT NULL, run_id text NOT NULL, rows_in_file bigint NOT NULL,\n"
        "  rows_inserted bigint NOT NULL, loaded_at timestamptz NOT NULL\n)",
        f"CREATE INDEX IF NOT EXISTS pipeline_loads_object ON {loads} (object_name, generation)",
    ]


def try_cast_functions_sql(schema: str) -> list[str]:
    """The value-by-value parsers of a file COPY refused: NULL where the input function errs.

    PostgreSQL 15 has no ``pg_input_is_valid`` (16+); an exception block is the way, and it
    only runs for files with a value COPY could not parse.
    """
    return [
        f"CREATE OR REPLACE FUNCTION {qualified(schema, name)}(value text) RETURNS {kind}\n"
        "LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$\n"
        f"BEGIN RETURN value::{kind}; EXCEPTION WHEN data_exception THEN RETURN NULL; END\n$$"
        for name, kind in (
            ("taxi_pipeline_try_numeric", "numeric"),
            ("taxi_pipeline_try_timestamp", "timestamp"),
        )
    ]


# -- landing ----------------------------------------------------------------------------------


def landing_table_sql(dataset: Dataset, table: str, *, as_text: bool = False) -> str:
    """The UNLOGGED table COPY fills: landing types, or every column ``text``."""
    columns = ", ".join(
        f"{quote_ident(c.name)} {'text' if as_text else LANDING_TYPES[c.kind]}"
        for c in dataset.layout.columns
    )
    extra = "" if as_text else f", {UNPARSED} text"
    return f"CREATE UNLOGGED TABLE {table} ({columns}{extra})"


def copy_sql(dataset: Dataset, table: str) -> str:
    """COPY of the published CSV (header line skipped; an empty unquoted field is NULL)."""
    columns = ", ".join(quote_ident(n) for n in dataset.layout.names)
    return f"COPY {table} ({columns}) FROM STDIN (FORMAT csv, HEADER true)"


def reparse_sql(dataset: Dataset, text_table: str, landing: str) -> str:
    """Fill the landing table from the text one, value by value; a refused value becomes NULL
    and its row keeps its text in ``_unparsed``.

    ``OFFSET 0`` keeps the inner query from being flattened, so each value is parsed once.
    """
    layout = dataset.layout
    parsed = [
        f"{_TRY_FUNCTION[c.kind]}({quote_ident(c.name)})" if c.kind != "string" else ""
        for c in layout.columns
    ]
    inner = ", ".join(
        [f"{quote_ident(c.name)} AS {_raw(c)}" for c in layout.columns]
        + [f"{p} AS {_parsed(c)}" for c, p in zip(layout.columns, parsed, strict=True) if p]
    )
    refused = " OR ".join(
        f"({_raw(c)} IS NOT NULL AND {_parsed(c)} IS NULL)"
        for c in layout.columns
        if c.kind != "string"
    )
    line = " || ',' || ".join(f"coalesce({_raw(c)}, '')" for c in layout.columns)
    values = ", ".join(_parsed(c) if c.kind != "string" else _raw(c) for c in layout.columns)
    names = ", ".join(quote_ident(n) for n in layout.names)
    return (
        f"INSERT INTO {landing} ({names}, {UNPARSED})\n"
        f"SELECT {values}, CASE WHEN {refused} THEN {line} END\n"
        f"FROM (SELECT {inner} FROM {text_table} OFFSET 0) AS r"
    )


def _raw(column: Column) -> str:
    return quote_ident(f"raw_{column.name}")


def _parsed(column: Column) -> str:
    return quote_ident(f"parsed_{column.name}")


# -- typed values, bad rows, the id -----------------------------------------------------------


def typed_value(column: Column, ref: str, *, checked: bool = True) -> str:
    """The reference-typed value of a landing column; NULL where it does not fit the type.

    ``checked=False``: for a landing table measured to hold no bad row, where every value fits
    and the checks would change nothing (they cost about a third of the first load's writing).
    """
    if column.kind == "string":
        return f"NULLIF({ref}, '')"
    if not checked:
        return f"CAST({ref} AS integer)" if column.kind == "integer" else ref
    if column.kind == "integer":
        # "1.0" appears in some published months: accept whole numbers, refuse "1.5".
        return (
            f"CASE WHEN {ref} = trunc({ref}) AND {ref} BETWEEN -2147483648 AND 2147483647"
            f" THEN {ref}::integer END"
        )
    if column.kind == "numeric":
        return f"CASE WHEN abs({ref}) < 1e29 THEN {ref} END"  # NaN and Infinity are not < 1e29
    return (
        f"CASE WHEN {ref} BETWEEN '0001-01-01 00:00:00' AND '9999-12-31 23:59:59.999999'"
        f" THEN {ref} END"
    )


def bad_row_predicate(dataset: Dataset, alias: str = "") -> str:
    """A landing row with a value that does not fit its column (refused by COPY's parsing, or
    outside the reference type's range)."""
    prefix = f"{alias}." if alias else ""
    terms = [f"{prefix}{UNPARSED} IS NOT NULL"]
    for column in dataset.layout.columns:
        if column.kind != "string":
            ref = prefix + quote_ident(column.name)
            terms.append(f"({ref} IS NOT NULL AND {typed_value(column, ref)} IS NULL)")
    return " OR ".join(terms)


def bigquery_string(column: Column, typed: str) -> str:
    """``CAST(value AS STRING)`` as BigQuery spells it: timestamps end in ``+00``.

    A timestamp's own text under ``DateStyle = ISO`` (every session sets it) is BigQuery's
    ``YYYY-MM-DD HH:MM:SS`` (fractions of a second as BigQuery writes them too), and about a
    third cheaper than ``to_char``.
    """
    if column.kind == "timestamp":
        return f"CAST({typed} AS text) || '+00'"
    return f"CAST({typed} AS text)"


def unique_row_id_sql(dataset: Dataset, alias: str = "", *, checked: bool = True) -> str:
    """The reference id over the typed values of a landing row: 16 bytes, the same as DuckDB's
    and BigQuery's ``MD5(CONCAT(COALESCE(CAST(f AS STRING), ""), ...))``."""
    by_name = {c.name: c for c in dataset.layout.columns}
    prefix = f"{alias}." if alias else ""
    parts = []
    for name in dataset.layout.id_columns:
        column = by_name[name]
        typed = typed_value(column, prefix + quote_ident(name), checked=checked)
        parts.append(f"coalesce({bigquery_string(column, typed)}, '')")
    return f"decode(md5({' || '.join(parts)}), 'hex')"


def row_text_sql(dataset: Dataset, alias: str = "") -> str:
    """A landing row as CSV-like text (a bad-row sample): its text if it had one refused."""
    prefix = f"{alias}." if alias else ""
    rendered = " || ',' || ".join(
        f"coalesce(CAST({prefix}{quote_ident(n)} AS text), '')" for n in dataset.layout.names
    )
    return f"coalesce({prefix}{UNPARSED}, {rendered})"


# -- measuring and merging --------------------------------------------------------------------


def summary_sql(dataset: Dataset, month: Month, landing: str) -> str:
    """One pass over the landing table: rows, bad rows, out-of-month rows, rows without a
    pickup, and the distinct pickup dates (grouped by date first: a few hundred groups)."""
    pickup = typed_value(_pickup_column(dataset), quote_ident(dataset.layout.pickup))
    first = date(month.year, month.month, 1)
    following = month.next()
    after = date(following.year, following.month, 1)
    return (
        "SELECT coalesce(sum(n), 0), coalesce(sum(bad), 0),\n"
        f"  coalesce(sum(n) FILTER (WHERE d < DATE '{first}' OR d >= DATE '{after}'), 0),\n"
        "  coalesce(sum(n) FILTER (WHERE d IS NULL), 0),\n"
        "  array_agg(d ORDER BY d) FILTER (WHERE d IS NOT NULL)\n"
        f"FROM (SELECT CAST({pickup} AS date) AS d, count(*) AS n,\n"
        f"  count(*) FILTER (WHERE {bad_row_predicate(dataset)}) AS bad\n"
        f"  FROM {landing} GROUP BY 1) AS per_day"
    )


def bad_samples_sql(dataset: Dataset, landing: str, limit: int) -> str:
    return (
        f"SELECT {row_text_sql(dataset)} FROM {landing}"
        f" WHERE {bad_row_predicate(dataset)} LIMIT {int(limit)}"
    )


def target_pickup_predicate(
    dataset: Dataset, ranges: Sequence[DateRange], include_null: bool, alias: str
) -> str:
    """Constant pickup bounds on the target: only the dates the staging data has are read
    (through the pickup index)."""
    pickup = f"{alias}.{quote_ident(dataset.layout.pickup)}"
    terms = [
        f"({pickup} >= TIMESTAMP '{r.start.isoformat()}'"
        f" AND {pickup} < TIMESTAMP '{r.end.isoformat()}')"
        for r in ranges
    ]
    if include_null:
        terms.append(f"{pickup} IS NULL")
    return " OR ".join(terms) or "FALSE"


def _source_sql(dataset: Dataset, landing: str, month: Month, checked: bool) -> str:
    """The landing rows as the final table holds them: typed, with ``filename`` and the id."""
    typed = ", ".join(
        f"{typed_value(c, 'l.' + quote_ident(c.name), checked=checked)} AS {quote_ident(c.name)}"
        for c in dataset.layout.columns
    )
    return (
        f"SELECT {unique_row_id_sql(dataset, 'l', checked=checked)} AS unique_row_id,"
        f" CAST({quote_text(csv_name(dataset, month))} AS text) AS filename, {typed}\n"
        f"  FROM {landing} AS l"
    )


def merge_sql(
    dataset: Dataset,
    final: str,
    landing: str,
    month: Month,
    ranges: Sequence[DateRange],
    include_null_pickup: bool,
    *,
    checked: bool = True,
) -> str:
    """The reference's insert-only MERGE from the landing table (typed, with its id, as it is
    read), with constant pickup bounds on the target: for a file already loaded once."""
    columns = ["unique_row_id", "filename", *(quote_ident(n) for n in dataset.layout.names)]
    prune = target_pickup_predicate(dataset, ranges, include_null_pickup, "t")
    return (
        f"MERGE INTO {final} AS t\n"
        f"USING ({_source_sql(dataset, landing, month, checked)}) AS s\n"
        f"ON t.unique_row_id = s.unique_row_id AND ({prune})\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)})\n"
        f"  VALUES ({', '.join('s.' + c for c in columns)})"
    )


def partition_name(dataset: Dataset, month: Month) -> str:
    """The partition that holds the rows of the month's published file."""
    return f"{dataset.final_table}_file_{month.underscored}"


def new_partition_sql(
    dataset: Dataset,
    schema: str,
    landing: str,
    month: Month,
    ranges: Sequence[DateRange],
    include_null_pickup: bool,
    *,
    checked: bool = True,
) -> list[str]:
    """The first load of a file: its rows whose id the final table does not hold (the same
    insert-only rule as the MERGE) written in bulk into a new table, its indexes built sorted,
    then attached as the file's partition (ATTACH checks the filename, a sequential read)."""
    final = qualified(schema, dataset.final_table)
    name = partition_name(dataset, month)
    prune = target_pickup_predicate(dataset, ranges, include_null_pickup, "t")
    return [
        f"CREATE TABLE {qualified(schema, name)} AS\n"
        f"SELECT * FROM ({_source_sql(dataset, landing, month, checked)}) AS s\n"
        f"WHERE NOT EXISTS (SELECT 1 FROM {final} AS t\n"
        f"  WHERE ({prune}) AND t.unique_row_id = s.unique_row_id)",
        *_index_sql(dataset, schema, name),
        f"ALTER TABLE {final} ATTACH PARTITION {qualified(schema, name)}"
        f" FOR VALUES IN ({quote_text(csv_name(dataset, month))})",
    ]


def _pickup_column(dataset: Dataset) -> Column:
    return next(c for c in dataset.layout.columns if c.name == dataset.layout.pickup)
