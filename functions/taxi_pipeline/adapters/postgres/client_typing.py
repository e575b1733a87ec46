"""Typing a gzip CSV month in this client, on its way into COPY: how a clean month lands.

PostgreSQL cannot read the lake, so every row crosses this client anyway. Where the lake holds
the object as a file here, DuckDB (in this process, in memory, streaming) reads it with the
strict CSV reader the DuckDB warehouse uses, checks each value against the spellings
:meth:`~taxi_pipeline.adapters.sql.dialects.PostgresDialect.strict_cast` takes, computes
``unique_row_id`` from those spellings exactly as
:meth:`~taxi_pipeline.adapters.sql.statements.Statements.strict_staging_sql` does, and writes
the rows as CSV into ``COPY`` of the typed staging table. The server parses each value once,
with the same input functions the strict ``CAST`` calls, into the table that becomes the file's
partition: no text landing table, no second write of every row (BENCHMARKS.md, section 8).

The checks here take a subset of what the strict typing takes, and where they take a value the
server types it alike: a count ``1.0`` is sent as ``1`` (and an integer code as bigint writes
it), every other value as the file writes it. Any other value (a word in a count, a timestamp
not in the files' own spelling, a repeated header line, a text that needs quotes in CSV)
raises :class:`ClientTypingRefused`, as does a value the server's input function refuses in
COPY (the adapter tells that by its SQLSTATE): the adapter then lands the month as text and
types it there, strictly or exactly, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from taxi_pipeline.adapters.sql.dialects import DUCKDB, POSTGRES
from taxi_pipeline.adapters.sql.statements import NUMERAL, Statements
from taxi_pipeline.domain.datasets import Column, Dataset
from taxi_pipeline.domain.formats import Sink

_TIMESTAMP: Final = (
    "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01]) ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
)
"""The files' own spelling of a timestamp, which PostgreSQL's input reads back as the same text
(no 24:00:00, no 60th second, no zone); a day past its month's end fails COPY itself."""
_WHOLE: Final = "-?[0-9]+([.]0*)?"
"""A count the strict typing takes as the same number ("1", "-3", "1.0", "1.")."""
_BATCH_ROWS: Final = 16_384
"""Rows per Arrow batch written as CSV: about 3 MiB of text, a few of them in flight."""
_MEMORY_LIMIT: Final = "256MB"
"""DuckDB's own memory here: the month streams through it (a full yellow month peaks the run's
process at about 350 MiB; 128MB ran out now and then). A statement past it fails, and the
month lands as text."""
_STATEMENTS: Final = Statements(POSTGRES)
FILE_CHECK: Final = "taxi_pipeline_file"
"""The CHECK a staging table of this client holds until it is attached as its file's partition."""
_REFUSED: Final = "taxi_pipeline: refused "
"""How a refused value's error starts (DuckDB's ``error()``)."""


class ClientTypingRefused(Exception):
    """This client's typing does not take the month (a value, or the file itself): land it as
    text instead, where the server types it or says what is wrong."""


def supports(dataset: Dataset) -> bool:
    """Whether the id of ``dataset`` is made of texts this client spells as the strict typing
    does: codes, counts and timestamps (every dataset's id columns), no amount."""
    by_name = {c.name: c for c in dataset.layout.final_columns}
    return all(by_name[n].kind != "numeric" for n in dataset.layout.id_columns)


def copied_columns(dataset: Dataset) -> list[str]:
    """The staging table's columns COPY fills, in the order :func:`typed_rows_sql` writes
    them: the id and the final columns the CSV has. ``filename`` is the table's default (the
    same text in every row, a fifth of a row's bytes) and a fee the CSV predates is NULL."""
    in_file = set(dataset.layout.names)
    names = [c.name for c in dataset.layout.final_columns if c.name in in_file]
    return ["unique_row_id", *names]


def staging_table_sql(dataset: Dataset, table_ref: str, filename: str) -> list[str]:
    """The (empty) staging table of the file ``filename`` that COPY fills from this client:
    the final table's columns, ``filename`` its default, and the partition's constraint as a
    CHECK, so ATTACH need not read the rows to prove it (both go once it is attached)."""
    d = POSTGRES
    text = d.quote_text(filename)
    return [
        _STATEMENTS.final_table_sql(dataset, table_ref, partitioned=False),
        f"ALTER TABLE {table_ref} ALTER COLUMN filename SET DEFAULT {text}",
        f"ALTER TABLE {table_ref} ADD CONSTRAINT {FILE_CHECK}"
        f" CHECK (filename IS NOT NULL AND filename = {text})",
    ]


def copy_sql(dataset: Dataset, table_ref: str) -> str:
    """The COPY of :func:`write_typed_rows`'s text into a table :func:`staging_table_sql` made
    in the same transaction. FREEZE: its rows are written as seen by all (the table is the
    transaction's own), so reading them later (measure, index, merges) sets no hint bits."""
    columns = ", ".join(POSTGRES.quote_ident(c) for c in copied_columns(dataset))
    return f"COPY {table_ref} ({columns}) FROM STDIN (FORMAT csv, FREEZE)"


def typed_rows_sql(dataset: Dataset, relation: str) -> str:
    """The rows of the CSV text relation ``relation`` (the layout's columns, every one as
    text, empty fields NULL) as :func:`copied_columns`, each value as text COPY types,
    ``unique_row_id`` as bytea's hex text; a value the strict typing might not take alike
    raises."""
    d, q = DUCKDB, DUCKDB.quote_ident

    def refuse(ref: str, what: str) -> str:
        return f"error({d.quote_text(_REFUSED + what + ': ')} || {ref})"

    def value(column: Column) -> str:
        ref = f"NULLIF({q(column.name)}, '')"
        if column.kind == "string":
            if not column.numeral:
                return ref
            return (
                f"CASE WHEN {ref} IS NULL OR {d.full_match(ref, NUMERAL)} THEN {ref}"
                f" ELSE {refuse(ref, column.name)} END"
            )
        if column.kind == "timestamp":
            # The strict typing refuses the year 9999's last day and later too.
            return (
                f"CASE WHEN {ref} IS NULL OR ({d.full_match(ref, _TIMESTAMP)}"
                f" AND {ref} < '9999-12-31') THEN {ref} ELSE {refuse(ref, column.name)} END"
            )
        if column.kind == "integer":
            # As bigint writes it (the id's text of a count or a location id): "007" is 7.
            return (
                f"CASE WHEN {ref} IS NULL THEN NULL WHEN {d.full_match(ref, _WHOLE)}"
                f" THEN CAST(CAST(split_part({ref}, '.', 1) AS BIGINT) AS VARCHAR)"
                f" ELSE {refuse(ref, column.name)} END"
            )
        # A sign, a point or a digit first ('+' .. '9', as the strict typing asks): no NaN or
        # infinity; the server's numeric input reads the rest, or fails COPY.
        return (
            f"CASE WHEN {ref} IS NULL OR ascii({ref}) BETWEEN 43 AND 57 THEN {ref}"
            f" ELSE {refuse(ref, column.name)} END"
        )

    by_name = {c.name: c for c in dataset.layout.final_columns}
    parts = []
    for name in dataset.layout.id_columns:
        text = f"{q(name)} || '+00'" if by_name[name].kind == "timestamp" else q(name)
        parts.append(f"COALESCE({text}, '')")
    copied = [by_name[name] for name in copied_columns(dataset)[1:]]
    names = ", ".join(q(c.name) for c in copied)
    values = ",\n    ".join(f"{value(c)} AS {q(c.name)}" for c in copied)
    # The id from the values as they are sent (the strict typing's id texts), typed once.
    return (
        f"SELECT '\\x' || md5(concat({', '.join(parts)})) AS unique_row_id, {names}\n"
        f"FROM (SELECT\n    {values}\n  FROM {relation})"
    )


def write_typed_rows(path: Path, dataset: Dataset, sink: Sink) -> None:
    """Write the rows of the gzip CSV file ``path`` into ``sink`` as CSV for :func:`copy_sql`
    (no header line): :func:`typed_rows_sql` run by an in-memory DuckDB over the file (its strict
    CSV reader, as the DuckDB warehouse reads the lake), batch by batch, in bounded memory.
    Raises :class:`ClientTypingRefused` where DuckDB refuses a value or the file."""
    import duckdb
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    connection = duckdb.connect(config={"memory_limit": _MEMORY_LIMIT})
    try:
        # Row order does not matter to COPY: DuckDB then need not hold batches back.
        connection.execute("SET preserve_insertion_order = false")
        landed = f"({DUCKDB.read_csv(str(path), dataset.layout.names, 'gzip')})"
        rows = connection.sql(typed_rows_sql(dataset, landed))
        # DuckDB's errors come as the batches are made, through Arrow's stream (as OSError).
        reader = rows.to_arrow_reader(_BATCH_ROWS)
        # No quotes: a fifth fewer bytes for the server to parse. A value that would need
        # them (a comma or a quote in a text) stops the writer: the month lands as text.
        options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
        with pa_csv.CSVWriter(sink, reader.schema, write_options=options) as writer:
            for batch in reader:
                writer.write_batch(batch)
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        raise ClientTypingRefused(_first_line(exc)) from exc
    finally:
        connection.close()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
