"""Typing a month in this client, on its way into COPY: how a clean month lands.

PostgreSQL cannot read the lake, so every row crosses this client anyway. Where the lake holds
the object as a file here, DuckDB (in this process, in memory, streaming) reads it (a gzip CSV
with the strict CSV reader the DuckDB warehouse uses; a Parquet file as its format's text
batches, the very texts its CSV feed would write into a text landing), checks each value
against the spellings :meth:`~taxi_pipeline.adapters.sql.dialects.PostgresDialect.strict_cast`
takes, types it, computes ``unique_row_id`` from those spellings exactly as
:meth:`~taxi_pipeline.adapters.sql.statements.Statements.strict_staging_sql` does, and pgpq
encodes the typed Arrow batches in PostgreSQL's binary COPY format into ``COPY`` of the typed
staging table. The server parses no text at all (each value arrives as its type's own bytes), into
the table that becomes the file's partition: no text landing table, no second write of every row
(BENCHMARKS.md, section 8).

The checks here take a subset of what the strict typing takes, the subset where DuckDB's reading
of a text and PostgreSQL's are the same value: a count as a whole number (``1.0`` is 1), an
amount that starts with a sign, a point or a digit and has no ``_`` (DuckDB's decimal input
then reads it as PostgreSQL's numeric input does, rounding past 9 decimals alike; the tests
compare them spelling by spelling), a timestamp in the files' own spelling from the year 1000
on. Any other value (a word in a count, ``1e3`` in a count, a timestamp not in that spelling, a
day past its month's end, a repeated header line) raises :class:`ClientTypingRefused`, as does
a value the server's input refuses in COPY (the adapter tells that by its SQLSTATE): the
adapter then lands the month as text and types it there, strictly or exactly, as before.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from taxi_pipeline.adapters.sql.dialects import DUCKDB, POSTGRES
from taxi_pipeline.adapters.sql.statements import NUMERAL, Statements
from taxi_pipeline.domain.datasets import Column, Dataset, Month
from taxi_pipeline.domain.formats import LandedColumn, Sink, SourceFormat

if TYPE_CHECKING:
    import pyarrow as pa
    from pgpq._pgpq import PostgresSchema

_TIMESTAMP: Final = (
    "[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    " ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
)
"""The files' own spelling of a timestamp, which DuckDB and PostgreSQL read as the same instant
(no 24:00:00, no 60th second, no zone, no year 0: DuckDB's 1 BC, PostgreSQL's error); a day
past its month's end fails DuckDB's cast."""
_WHOLE: Final = "-?[0-9]+([.]0*)?"
"""A count the strict typing takes as the same number ("1", "-3", "1.0", "1.")."""
_BATCH_ROWS: Final = 16_384
"""Rows per Arrow batch: about 3.5 MiB of COPY data each, a few of them in flight."""
_PGPQ_TYPES: Final = {
    "string": "Text",
    "timestamp": "Timestamp",
    "integer": "Int8",
    "numeric": "Numeric",
}
"""The binary encoding pgpq must choose for each kind of column: the final table's type
(``PostgresDialect.column_types``), whose binary input the server then calls."""
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


def copied_columns(dataset: Dataset, in_file: Collection[str]) -> list[str]:
    """The staging table's columns COPY fills, in the order :func:`typed_rows_sql` writes
    them: the id and the final columns the file has (``in_file``: their final names).
    ``filename`` is the table's default (the same text in every row, a fifth of a row's bytes)
    and a fee the file predates is NULL."""
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


def copy_sql(dataset: Dataset, table_ref: str, in_file: Collection[str]) -> str:
    """The COPY of :func:`write_typed_rows`'s binary data into a table :func:`staging_table_sql`
    made in the same transaction. FREEZE: its rows are written as seen by all (the table is the
    transaction's own), so reading them later (measure, index, merges) sets no hint bits."""
    columns = ", ".join(POSTGRES.quote_ident(c) for c in copied_columns(dataset, in_file))
    return f"COPY {table_ref} ({columns}) FROM STDIN (FORMAT binary, FREEZE)"


def typed_rows_sql(dataset: Dataset, relation: str, in_file: Collection[str]) -> str:
    """The rows of the text relation ``relation`` (the final columns ``in_file``, every one
    as text, an empty field empty or NULL) as :func:`copied_columns`, each value as its final
    column's DuckDB type, ``unique_row_id`` as the 16 bytes of its md5; a value the strict
    typing might not take alike raises."""
    d, q = DUCKDB, DUCKDB.quote_ident

    def refuse(ref: str, what: str) -> str:
        return f"error({d.quote_text(_REFUSED + what + ': ')} || {ref})"

    def checked(ref: str, condition: str, value: str, column: Column) -> str:
        return (
            f"CASE WHEN {ref} IS NULL THEN NULL WHEN {condition}"
            f" THEN {value} ELSE {refuse(ref, column.name)} END"
        )

    def value(column: Column) -> str:
        ref = f"NULLIF({q(column.name)}, '')"
        if column.kind == "string":
            return checked(ref, d.full_match(ref, NUMERAL), ref, column) if column.numeral else ref
        if column.kind == "timestamp":
            # The strict typing refuses the year 9999's last day and later too.
            condition = f"{d.full_match(ref, _TIMESTAMP)} AND {ref} < '9999-12-31'"
            return checked(ref, condition, f"CAST({ref} AS TIMESTAMP)", column)
        if column.kind == "integer":
            # "007" is 7, "1.0" is 1: the number, whose text is the id's.
            whole = f"CAST(split_part({ref}, '.', 1) AS BIGINT)"
            return checked(ref, d.full_match(ref, _WHOLE), whole, column)
        # A sign, a point or a digit first ('+' .. '9', as the strict typing asks: no NaN or
        # infinity) and no '_' (PostgreSQL 15 refuses "1_000"): DuckDB's decimal input then
        # reads what PostgreSQL's numeric input reads, rounding past 9 decimals alike, or
        # fails (the month lands as text). No regular expression: nine amounts a row.
        number = f"CAST({ref} AS {d.column_type(column)})"
        condition = f"ascii({ref}) BETWEEN 43 AND 57 AND NOT contains({ref}, '_')"
        return checked(ref, condition, number, column)

    layout = dataset.layout
    parts = []
    for name in layout.id_columns:
        if name not in in_file:  # a column the file's period predates adds nothing to the id
            continue
        # The source text (the check of its value takes it, or the row raises), as the strict
        # typing spells it in the id: an instant with its zone, a count as its number.
        column, text = layout.column(name), f"NULLIF({q(name)}, '')"
        if column.kind == "timestamp":
            text = f"{text} || '+00'"
        elif column.kind == "integer":
            text = f"CAST(CAST(split_part({text}, '.', 1) AS BIGINT) AS VARCHAR)"
        parts.append(f"COALESCE({text}, '')")
    copied = [layout.column(name) for name in copied_columns(dataset, in_file)[1:]]
    values = ",\n  ".join(f"{value(c)} AS {q(c.name)}" for c in copied)
    return (
        f"SELECT unhex(md5(concat({', '.join(parts)}))) AS unique_row_id,\n  {values}\n"
        f"FROM {relation}"
    )


class Tally:
    """:meth:`~taxi_pipeline.adapters.sql.statements.Statements.strict_measure_sql`'s row,
    counted from the typed batches on their way into COPY: the server need not read the staged
    rows again to measure them (the adapter checks the count against the COPY's own)."""

    def __init__(self, dataset: Dataset, month: Month) -> None:
        following = month.next()
        self._first = datetime(month.year, month.month, 1)
        self._after = datetime(following.year, following.month, 1)
        self._pickup, self._dropoff = dataset.layout.pickup, dataset.layout.dropoff
        self.rows = self._out_of_month = self._without_pickup = self._without_dropoff = 0
        self._dates: set[date] = set()

    def add(self, batch: pa.RecordBatch) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        pickup, dropoff = batch.column(self._pickup), batch.column(self._dropoff)
        self.rows += batch.num_rows
        self._without_pickup += pickup.null_count
        self._without_dropoff += dropoff.null_count
        # As the SQL counts: a row without a pickup is in no month (its comparisons are NULL).
        outside = pc.or_(pc.less(pickup, self._first), pc.greater_equal(pickup, self._after))
        self._out_of_month += pc.sum(outside).as_py() or 0
        days = pc.unique(pc.cast(pc.coalesce(pickup, dropoff), pa.date32()))
        self._dates.update(d for d in days.to_pylist() if d is not None)

    def measure_row(self) -> tuple[Any, ...]:
        """The measure's row: rows, bad (0), out of month, without pickup or dropoff, repeated
        headers (0), the pickup dates, bad samples (none)."""
        return (
            self.rows,
            0,
            self._out_of_month,
            self._without_pickup,
            self._without_dropoff,
            0,
            sorted(self._dates),
            [],
        )


@dataclass(frozen=True)
class TypedFile:
    """A lake object on this machine for this client to type: the file and its format, the
    month it is of, and the final columns it has, each with its name in the file."""

    path: Path
    fmt: SourceFormat
    dataset: Dataset
    month: Month
    columns: Sequence[LandedColumn]

    @property
    def in_file(self) -> list[str]:
        """The final names of the columns the file has."""
        return [final for final, _ in self.columns]


def write_typed_rows(file: TypedFile, sink: Sink, tally: Tally | None = None) -> None:
    """Write the rows of ``file`` into ``sink`` as binary COPY data for :func:`copy_sql` of
    its columns: :func:`typed_rows_sql` run by an in-memory DuckDB over the file's texts (a
    gzip CSV through its strict CSV reader, as the DuckDB warehouse reads the lake; a typed
    format through its text batches), batch by batch, in bounded memory, each batch encoded by
    pgpq (and counted by ``tally``). Raises :class:`ClientTypingRefused` where DuckDB refuses
    a value or the file."""
    import duckdb
    import pgpq
    import pyarrow as pa

    dataset, in_file = file.dataset, file.in_file
    connection = duckdb.connect(config={"memory_limit": _MEMORY_LIMIT})
    try:
        # Row order does not matter to COPY: DuckDB then need not hold batches back.
        connection.execute("SET preserve_insertion_order = false")
        with file.path.open("rb") as handle:
            if file.fmt.text_batches_path:
                schema = pa.schema([(name, pa.string()) for name in in_file])
                texts = pa.RecordBatchReader.from_batches(
                    schema, file.fmt.text_batches(handle, file.columns)
                )
                connection.register("landed", texts)
                landed = "landed"
            else:  # DuckDB reads the file itself (a CSV's columns are the layout's)
                landed = f"({DUCKDB.read_csv(str(file.path), dataset.layout.names, 'gzip')})"
            rows = connection.sql(typed_rows_sql(dataset, landed, in_file))
            # DuckDB's errors come as the batches are made, through Arrow's stream (OSError).
            reader = rows.to_arrow_reader(_BATCH_ROWS)
            encoder = pgpq.ArrowToPostgresBinaryEncoder(reader.schema)
            _check_encoding(dataset, in_file, encoder.schema())
            sink.write(encoder.write_header())
            for batch in reader:
                sink.write(encoder.write_batch(batch))
                if tally is not None:
                    tally.add(batch)
            sink.write(encoder.finish())
    except (duckdb.Error, pa.ArrowException, OSError, ValueError) as exc:
        raise ClientTypingRefused(_first_line(exc)) from exc
    finally:
        connection.close()


def _check_encoding(dataset: Dataset, in_file: Collection[str], schema: PostgresSchema) -> None:
    """That pgpq encodes each column as its final column's type (a DuckDB or pgpq version that
    maps an Arrow type otherwise would make the server misread the bytes)."""
    kinds = (dataset.layout.column(name).kind for name in copied_columns(dataset, in_file)[1:])
    wanted = ["Bytea", *(_PGPQ_TYPES[kind] for kind in kinds)]
    encoded = [type(column.data_type).__name__ for column in schema.columns]
    if encoded != wanted:
        raise ClientTypingRefused(f"pgpq would encode the columns as {encoded}, not {wanted}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
