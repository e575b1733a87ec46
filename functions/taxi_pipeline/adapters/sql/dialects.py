"""Where the SQL warehouses differ: one small :class:`Dialect` each, side by side.

The statements (:mod:`.statements`, :mod:`.history`) are written once over these hooks, the way
dlt writes its merge SQL once in ``sql_jobs.py`` and lets each destination override a few. The
base class speaks the standard SQL that DuckDB and PostgreSQL share; BigQuery overrides what
GoogleSQL spells otherwise, PostgreSQL what it lacks (``TRY_CAST``, ``regexp_full_match``). Pure
text: nothing here imports a database driver, so every dialect's SQL is unit-tested as text
(``tests/unit/test_duckdb_sql.py``, ``test_bigquery_sql.py``, ``test_postgres_sql.py``).

A new warehouse adds its class here (its type map beside the others) and, when it reads the lake
itself, its reader per source format in :meth:`Dialect.read_source`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, Literal

from taxi_pipeline.domain.datasets import Column, ColumnKind, Dataset
from taxi_pipeline.domain.formats import CSV_GZ, PARQUET, SourceFormat
from taxi_pipeline.errors import ConfigurationError

HistoryKind = Literal["text", "integer", "timestamp"]
"""The kinds of the run-history columns (``pipeline_runs``, ``pipeline_loads``)."""

MergeStyle = Literal["merge", "insert-missing"]
"""``merge``: the reference's insert-only ``MERGE``; ``insert-missing``: ``INSERT ... SELECT ...
WHERE NOT EXISTS``, the same effect where MERGE is missing or slower."""

_NARROW_NUMERIC: Final = "DECIMAL(18, 9)"
"""DuckDB's 64-bit decimal at NUMERIC's scale (:meth:`DuckDbDialect.whole_number`)."""

STAGING_EXPIRATION: Final = timedelta(days=1)
"""How long a month's tables may outlive a crash where the warehouse can expire them."""


class Dialect:
    """A SQL dialect: quoting, types and the expressions the shared statements are built from."""

    name: ClassVar[str]
    column_types: ClassVar[Mapping[ColumnKind, str]]
    """The final table's type of each reference column kind."""
    history_types: ClassVar[Mapping[HistoryKind, str]]
    id_type: ClassVar[str]
    """The type of ``unique_row_id`` (an MD5 digest as bytes)."""
    text_type: ClassVar[str]
    merge_style: ClassVar[MergeStyle] = "insert-missing"
    merge_head: ClassVar[str] = "MERGE"
    """How a ``MERGE`` statement starts (``MERGE INTO`` where ``INTO`` is required)."""
    empty_text: ClassVar[str] = "''"
    insertion_order: ClassVar[str] = "seq"
    """What orders history rows recorded at the same instant (a column, or the engine's row id)."""
    history_sequence: ClassVar[bool] = True
    """Whether ``pipeline_runs`` has a ``seq`` column the writer fills (no engine row id)."""
    history_process: ClassVar[bool] = False
    """Whether ``pipeline_runs`` keeps the ``process`` that wrote each line (the embedded
    default's SQLite history does: a run whose process is gone is ABANDONED)."""
    loads_order: ClassVar[str] = "loaded_at"
    """The order of ``pipeline_loads`` rows."""
    server_sequence: ClassVar[str | None] = None
    """The type of a ``seq`` column of ``pipeline_runs`` the server fills itself (then
    ``history_sequence`` is off and ``insertion_order`` names it)."""
    fence: ClassVar[str] = ""
    """What ends a subquery the planner must not flatten into its parent (where it would copy
    each typed expression into every place that reads it, with no common subexpressions)."""

    # -- quoting --------------------------------------------------------------------------

    def quote_ident(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def quote_text(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def param(self, name: str) -> str:
        """The placeholder of a query parameter (positional ``?`` unless overridden)."""
        return "?"

    def to_timestamp(self, value: datetime | None) -> datetime | None:
        """A timestamp as the driver takes it (aware UTC; a naive value is taken as UTC)."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def from_timestamp(self, value: datetime | None) -> datetime | None:
        """A timestamp the driver returned, as aware UTC."""
        return self.to_timestamp(value)

    # -- types and casts ------------------------------------------------------------------

    def column_type(self, column: Column) -> str:
        return self.column_types[column.kind]

    def try_cast(self, ref: str, sql_type: str) -> str:
        """``ref`` as ``sql_type``, NULL where it does not fit (never an error)."""
        return f"TRY_CAST({ref} AS {sql_type})"

    def try_integer(self, ref: str) -> str:
        """The text ``ref`` as an integer: a whole number ("1.0" is 1), NULL otherwise ("1.5",
        not a number, out of range).

        "1.0" appears in some published months. A plain cast to an integer refuses "1.0" in
        BigQuery (and rounds "1.5" in its emulator): the text goes through the numeric type.
        """
        number = self.try_cast(ref, self.column_types["numeric"])
        return self.when(
            f"{number} = {self.trunc(number)}", self.try_cast(number, self.column_types["integer"])
        )

    def strict_cast(self, column: Column, ref: str) -> str:
        """The text ``ref`` as ``column``'s (timestamp, integer or numeric) type where it is
        written as the published files write it (``2019-01-01 10:00:00``, ``1``, ``1.0``,
        ``7.5``); any other text raises (:meth:`refuse`, or the cast itself) and the adapter
        types the month with :meth:`try_cast` and its kin instead, slowly and exactly. Only
        warehouses that land the lake object themselves have one (see
        ``Statements.strict_staging_sql``)."""
        raise ConfigurationError(f"the {self.name} warehouse lands nothing itself")

    def refuse(self, ref: str, sql_type: str) -> str:
        """An expression of ``sql_type`` that raises, naming the text ``ref``."""
        raise ConfigurationError(f"the {self.name} warehouse lands nothing itself")

    def only_digits(self, ref: str) -> str:
        """Whether the text ``ref`` holds digits only (or nothing)."""
        return self.full_match(ref, "[0-9]*")

    def strict_id_text(self, column: Column, ref: str) -> str:
        """The reference id's text of an id column from its source text ``ref``, where
        :meth:`strict_cast` took it: the same text :meth:`id_text` gives of the typed value."""
        return self.id_text(column, self.strict_cast(column, ref))

    def when(self, condition: str, value: str) -> str:
        """``value`` where ``condition`` holds, NULL otherwise."""
        return f"CASE WHEN {condition} THEN {value} END"

    def trunc(self, ref: str) -> str:
        return f"trunc({ref})"

    def whole_number(self, ref: str) -> str:
        """The number ``ref`` (a count a file writes as a double) as an integer, as
        :meth:`try_integer` reads a text: 1.0 is 1, 1.5 is NULL (at NUMERIC's scale first)."""
        number = self.try_cast(ref, self.column_types["numeric"])
        return self.when(
            f"{number} = {self.trunc(number)}", self.try_cast(number, self.column_types["integer"])
        )

    def full_match(self, ref: str, pattern: str) -> str:
        """Whether the whole text ``ref`` matches the regular expression ``pattern`` (which
        holds no quote or backslash)."""
        return f"regexp_full_match({ref}, '{pattern}')"

    def nullify_empty(self, ref: str) -> str:
        """An empty field as NULL (the readers that already do so return ``ref``)."""
        return f"NULLIF({ref}, '')"

    def date_of(self, ref: str) -> str:
        return f"CAST({ref} AS DATE)"

    # -- the reference id -----------------------------------------------------------------

    def id_text(self, column: Column, ref: str) -> str:
        """``CAST(ref AS STRING)`` as BigQuery spells it (the reference id's text)."""
        if column.kind == "timestamp":
            # BigQuery writes a UTC timestamp as "2019-01-01 10:00:00+00".
            return f"strftime({ref}, '%Y-%m-%d %H:%M:%S') || '+00'"
        return f"CAST({ref} AS {self.text_type})"

    def digest(self, parts: Sequence[str]) -> str:
        """MD5 of the concatenated texts, as bytes."""
        return f"unhex(md5(concat({', '.join(parts)})))"

    # -- aggregates -----------------------------------------------------------------------

    def count_if(self, condition: str) -> str:
        return f"count(*) FILTER (WHERE {condition})"

    def distinct_dates(self, ref: str) -> str:
        """The distinct dates of a timestamp expression, NULLs left out, as an array."""
        return f"list(DISTINCT {self.date_of(ref)}) FILTER (WHERE {ref} IS NOT NULL)"

    def first_values(self, column: str, table_ref: str, condition: str, limit: int) -> str:
        """An array of at most ``limit`` values of ``column`` where ``condition`` holds."""
        return f"ARRAY(SELECT {column} FROM {table_ref} WHERE {condition} LIMIT {limit})"

    def join_texts(self, items: Sequence[str]) -> str:
        """The texts joined by commas (every item is non-NULL)."""
        return f"array_to_string([{', '.join(items)}], ',')"

    # -- tables ---------------------------------------------------------------------------

    def create_staging(self, table_ref: str) -> str:
        """The head of the staging table's ``CREATE ... AS`` (replacing an earlier one)."""
        return f"CREATE OR REPLACE TABLE {table_ref} AS"

    def final_table_suffix(self, dataset: Dataset) -> str:
        """What follows the final table's column list (partitioning, clustering, options)."""
        return ""

    def history_suffix(self, table: str) -> str:
        """What follows a history table's column list."""
        return ""

    # -- the lake -------------------------------------------------------------------------

    def read_source(self, fmt: SourceFormat, location: str, dataset: Dataset) -> str:
        """A relation over the lake object at ``location`` (a view body): a CSV with every
        column as text, a Parquet file with its own types (staging casts each:
        ``statements.source_columns``); only warehouses that read the lake themselves have
        one."""
        raise ConfigurationError(f"the {self.name} warehouse cannot read {fmt.name} objects")


class DuckDbDialect(Dialect):
    """DuckDB (the embedded default)."""

    name = "duckdb"
    column_types: ClassVar[Mapping[ColumnKind, str]] = {
        "string": "VARCHAR",
        "timestamp": "TIMESTAMP",
        "integer": "BIGINT",
        "numeric": "DECIMAL(38, 9)",
    }
    history_types: ClassVar[Mapping[HistoryKind, str]] = {
        "text": "VARCHAR",
        "integer": "BIGINT",
        "timestamp": "TIMESTAMP",
    }
    id_type = "BLOB"
    text_type = "VARCHAR"
    insertion_order = "rowid"
    history_sequence = False

    def to_timestamp(self, value: datetime | None) -> datetime | None:
        # DuckDB's TIMESTAMP holds UTC wall time without a zone.
        aware = super().to_timestamp(value)
        return None if aware is None else aware.replace(tzinfo=None)

    def from_timestamp(self, value: datetime | None) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)

    def nullify_empty(self, ref: str) -> str:
        # read_csv reads empty fields (quoted or not) as NULL already (nullstr = '').
        return ref

    def whole_number(self, ref: str) -> str:
        # DECIMAL(38, 9) is a 128-bit integer in DuckDB: comparing it with its trunc() and
        # casting it costs ~240 ns a value, a tenth of a month's load for two count columns.
        # DECIMAL(18, 9) (64 bits) reads the same text or double as the same number wherever
        # it fits (both at 9 decimals), ~20x faster; only a value past 999,999,999 takes the
        # wide rule. tests/unit/test_duckdb_one_pass.py checks the two agree.
        narrow = self.try_cast(ref, _NARROW_NUMERIC)
        whole = self.when(f"{narrow} = {self.trunc(narrow)}", f"CAST({narrow} AS BIGINT)")
        return f"CASE WHEN {narrow} IS NOT NULL THEN {whole} ELSE {super().whole_number(ref)} END"

    def try_integer(self, ref: str) -> str:
        # A text goes through the same two widths (TRY_CAST reads it at 9 decimals either way).
        return self.whole_number(ref)

    def create_staging(self, table_ref: str) -> str:
        # A TEMP table: in memory (spilled past the memory limit), gone with its connection.
        return f"CREATE OR REPLACE TEMP TABLE {table_ref} AS"

    typed_csv_types: ClassVar[Mapping[ColumnKind, str]] = {
        "string": "VARCHAR",
        "timestamp": "TIMESTAMP",
        "integer": _NARROW_NUMERIC,
        "numeric": "DECIMAL(38, 9)",
    }
    """What :meth:`read_csv_typed` reads each reference kind as: counts as decimals, so "1.0"
    is 1 and "1.5" a bad value (:meth:`whole_number`); a count past 999,999,999 does not fit
    and stops the read."""

    def read_source(self, fmt: SourceFormat, location: str, dataset: Dataset) -> str:
        if fmt is CSV_GZ:
            return self.read_csv(location, dataset.layout.names, "gzip")
        if fmt is PARQUET:
            # Names as the file spells them; staging picks the period's columns (any case) and
            # casts each onto its reference type. A new column is read by nobody.
            return f"SELECT * FROM read_parquet({self.quote_text(location)})"
        return super().read_source(fmt, location, dataset)

    def read_csv_typed(self, location: str, dataset: Dataset) -> str:
        """The gzip CSV at ``location`` with its columns typed by DuckDB's CSV reader
        (:attr:`typed_csv_types`): a value that does not fit its type fails the read. The
        reader types a field exactly as ``TRY_CAST`` of its text does where it succeeds
        (tests/unit/test_duckdb_one_pass.py), in the reader, at a fraction of the cost."""
        return self.read_csv_as(
            location,
            {c.name: self.typed_csv_types[c.kind] for c in dataset.layout.columns},
            "gzip",
        )

    def read_csv(self, location: str, names: Sequence[str], compression: str = "none") -> str:
        """A CSV with a header line, every column as text (``names``, in file order), strict:
        a line with too few or too many fields fails the statement. ``"`` quotes (and ``""``
        inside quotes), empty fields are NULL."""
        return self.read_csv_as(location, dict.fromkeys(names, "VARCHAR"), compression)

    def read_csv_as(
        self, location: str, types: Mapping[str, str], compression: str = "none"
    ) -> str:
        """:meth:`read_csv` with each column read as its type (name -> type, in file order)."""
        columns = ", ".join(f"{self.quote_text(n)}: {self.quote_text(t)}" for n, t in types.items())
        return (
            f"SELECT * FROM read_csv({self.quote_text(location)}, header = true,"
            " auto_detect = false, delim = ',', quote = '\"', escape = '\"', nullstr = '',"
            f" compression = {self.quote_text(compression)}, strict_mode = true,"
            f" columns = {{{columns}}})"
        )


class BigQueryDialect(Dialect):
    """GoogleSQL (BigQuery and its emulator)."""

    name = "bigquery"
    column_types: ClassVar[Mapping[ColumnKind, str]] = {
        "string": "STRING",
        "timestamp": "TIMESTAMP",
        "integer": "INT64",
        "numeric": "NUMERIC",
    }
    history_types: ClassVar[Mapping[HistoryKind, str]] = {
        "text": "STRING",
        "integer": "INT64",
        "timestamp": "TIMESTAMP",
    }
    id_type = "BYTES"
    text_type = "STRING"
    merge_style = "merge"
    empty_text = '""'

    def quote_ident(self, name: str) -> str:
        return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"

    def quote_text(self, text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    def param(self, name: str) -> str:
        return f"@{name}"

    def try_cast(self, ref: str, sql_type: str) -> str:
        return f"SAFE_CAST({ref} AS {sql_type})"

    def when(self, condition: str, value: str) -> str:
        return f"IF({condition}, {value}, NULL)"

    def trunc(self, ref: str) -> str:
        return f"TRUNC({ref})"

    def full_match(self, ref: str, pattern: str) -> str:
        return f"REGEXP_CONTAINS({ref}, r'^{pattern}$')"

    def date_of(self, ref: str) -> str:
        return f"DATE({ref})"

    def id_text(self, column: Column, ref: str) -> str:
        return f"CAST({ref} AS STRING)"

    def digest(self, parts: Sequence[str]) -> str:
        return f"MD5(CONCAT({', '.join(parts)}))"

    def count_if(self, condition: str) -> str:
        return f"COUNTIF({condition})"

    def distinct_dates(self, ref: str) -> str:
        return f"ARRAY_AGG(DISTINCT {self.date_of(ref)} IGNORE NULLS)"

    def join_texts(self, items: Sequence[str]) -> str:
        return f"ARRAY_TO_STRING([{', '.join(items)}], ',')"

    def create_staging(self, table_ref: str) -> str:
        return f"CREATE OR REPLACE TABLE {table_ref}\nOPTIONS ({self.expiration_option()})\nAS"

    def expiration_option(self) -> str:
        days = STAGING_EXPIRATION.days
        return f"expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {days} DAY)"

    def final_table_suffix(self, dataset: Dataset) -> str:
        spec = dataset.spec
        # Clustering by zone: within a pickup-date partition, the question users ask most ("trips
        # from/to zone X") then reads only the blocks of that zone instead of the whole day,
        # which the reference (no clustering) pays for in full. Re-clustering is automatic and
        # free. Clustering by unique_row_id would not help the MERGE: a join prunes no blocks,
        # only constant filters do, and the partition bounds already narrow its scan.
        cluster = ", ".join(self.quote_ident(c) for c in spec.cluster_columns)
        description = (
            f"NYC TLC {dataset.value} trip records, one row per published row; unique_row_id is"
            f" the zoomcamp reference MD5 id over {', '.join(spec.id_columns)}. Written by"
            " taxi-pipeline."
        )
        return (
            f"\nPARTITION BY DATE({self.quote_ident(spec.layout.pickup)})\n"
            + (f"CLUSTER BY {cluster}\n" if cluster else "")
            + f"OPTIONS (description = {self.quote_text(description)})"
        )

    def history_suffix(self, table: str) -> str:
        if table == "pipeline_runs":
            return "\nPARTITION BY DATE(recorded_at)\nCLUSTER BY dataset, run_id"
        return "\nCLUSTER BY object_name"

    def text_schema(self, fmt: SourceFormat) -> bool:
        """Whether ``fmt`` is read with an explicit all-STRING schema (a CSV); a Parquet file
        brings its own (a timestamp without zone reads as DATETIME; staging casts it)."""
        return not fmt.typed

    def external_options(self, fmt: SourceFormat) -> list[str]:
        """The ``OPTIONS`` of an external table over ``fmt`` (``uris`` and the expiration aside).

        Strict like DuckDB's ``read_csv``: a line with too few or too many fields fails the
        query (no ``ignore_unknown_values``, no jagged rows), so a truncated file cannot load
        partially. Like ``read_csv`` too, a newline inside a quoted field is part of the field
        (``allow_quoted_newlines``): without it BigQuery fails such a file that DuckDB loads.
        The option stops BigQuery from splitting a CSV file across workers, which a gzip file
        never is.
        """
        if fmt is CSV_GZ:
            return [
                "format = 'CSV'",
                "skip_leading_rows = 1",
                "compression = 'GZIP'",
                "field_delimiter = ','",
                "quote = '\"'",
                "allow_quoted_newlines = true",
                "encoding = 'UTF8'",
            ]
        if fmt is PARQUET:
            return ["format = 'PARQUET'"]
        raise ConfigurationError(f"the {self.name} warehouse cannot read {fmt.name} objects")

    def load_options(self, fmt: SourceFormat) -> dict[str, object]:
        """Keyword arguments of the load job's ``LoadJobConfig`` for ``fmt`` (read as
        :meth:`external_options` reads it)."""
        if fmt is CSV_GZ:
            # gzip is detected by the load job itself; a plain CSV (a lookup) reads the same.
            return self.csv_load_options()
        if fmt is PARQUET:
            return {"source_format": "PARQUET"}
        raise ConfigurationError(f"the {self.name} warehouse cannot load {fmt.name} objects")

    def csv_load_options(self) -> dict[str, object]:
        """A load job's options for a CSV with a header line, read as DuckDB's ``read_csv``
        reads it: strict (no jagged rows, no unknown values, no bad record), ``"`` quotes."""
        return {
            "source_format": "CSV",
            "skip_leading_rows": 1,
            "field_delimiter": ",",
            "quote_character": '"',
            # As DuckDB reads them; it only stops BigQuery splitting the file, and gzip is
            # unsplittable.
            "allow_quoted_newlines": True,
            "encoding": "UTF-8",
            "allow_jagged_rows": False,
            "ignore_unknown_values": False,
            "max_bad_records": 0,
        }


_PG_NUMBER: Final = "^[+-]?[0-9]+[.]?[0-9]*$"
"""Texts a cast to a number takes for sure when short enough (PostgreSQL's regular expressions
are slow with bounded repeats: the length is checked apart)."""
_PG_WHOLE: Final = "^[+-]?[0-9]+[.]?0*$"
STRICT_REFUSED_STATE: Final = "22P02"
"""What ``taxi_pipeline_refuse`` raises (invalid_text_representation, as a cast would)."""


class PostgresDialect(Dialect):
    """PostgreSQL 15+ (MERGE). It cannot read the lake: the adapter copies the object into text
    landing tables (:meth:`copy_options`) and types them from there, one of two ways.

    The strict way first (:meth:`strict_cast`): plain casts of the values the published files
    write, in one statement the server may run on parallel workers, any other value failing it
    (the cast itself, or ``taxi_pipeline_refuse``: SQLSTATE 22P02). A month it refuses is typed
    the exact way, by the shared staging SQL: PostgreSQL has no ``TRY_CAST`` (and 15 no
    ``pg_input_is_valid``), so a number the cast takes for sure (a regular expression says so)
    is cast directly, any other text, and every timestamp, goes through a PL/pgSQL function that
    returns NULL where the cast errs (:meth:`functions_sql`, created by the adapter).
    """

    name = "postgres"
    column_types: ClassVar[Mapping[ColumnKind, str]] = {
        "string": "text",
        "timestamp": "timestamp",
        "integer": "bigint",
        "numeric": "numeric(38, 9)",
    }
    history_types: ClassVar[Mapping[HistoryKind, str]] = {
        "text": "text",
        "integer": "bigint",
        "timestamp": "timestamptz",
    }
    id_type = "bytea"
    text_type = "text"
    merge_style = "merge"
    merge_head = "MERGE INTO"
    fence = " OFFSET 0"
    # pipeline_runs numbers its lines itself: writers in several processes need no counter.
    history_sequence = False
    server_sequence = "bigint GENERATED ALWAYS AS IDENTITY"

    def param(self, name: str) -> str:
        return f"%({name})s"

    def try_cast(self, ref: str, sql_type: str) -> str:
        if sql_type == self.column_types["numeric"]:
            # Fewer than 30 characters: fewer than 29 digits before the point, what
            # numeric(38, 9) holds (more decimals are rounded, as DuckDB's DECIMAL does).
            return (
                f"CASE WHEN length({ref}) < 30 AND {ref} ~ '{_PG_NUMBER}'"
                f" THEN CAST({ref} AS {sql_type}) ELSE taxi_pipeline_try_numeric({ref}) END"
            )
        if sql_type == self.column_types["timestamp"]:
            # No regular expression tells valid dates cheaply: every value through the function.
            return f"taxi_pipeline_try_timestamp({ref})"
        raise ValueError(f"no try-cast of text to {sql_type} in PostgreSQL")

    def try_integer(self, ref: str) -> str:
        return (
            f"CASE WHEN length({ref}) < 19 AND {ref} ~ '{_PG_WHOLE}'"
            f" THEN CAST(CAST({ref} AS numeric) AS bigint)"
            f" ELSE taxi_pipeline_try_integer({ref}) END"
        )

    def strict_cast(self, column: Column, ref: str) -> str:
        empty = f"WHEN NULLIF({ref}, '') IS NULL THEN NULL"
        if column.kind == "timestamp":
            # The files' own spelling, and only where it is the timestamp's own text (what the
            # id is made of): not 24:00:00 or a 60th second (the next minute), no zone or sign
            # in a digit's place. '2019-02-30 10:00:00' fails the cast itself (22008).
            return (
                f"CASE WHEN {ref} LIKE '____-__-__ __:__:__' AND {ref} COLLATE \"C\" < '9999-12-31'"
                f" AND CAST(CAST({ref} AS timestamp) AS text) = {ref} THEN CAST({ref} AS timestamp)"
                f" {empty} ELSE {self.refuse(ref, 'timestamp')} END"
            )
        if column.kind == "integer":
            # "1" through bigint's own input (a value past its range fails, 22003); "1.0" when
            # every decimal is a zero; "1.5", "1e3" or "NaN" refuse.
            return (
                f"CASE {empty} WHEN {ref} NOT LIKE '%.%' THEN CAST({ref} AS bigint)"
                f" WHEN rtrim({ref}, '0') LIKE '%.' THEN CAST(CAST({ref} AS numeric) AS bigint)"
                f" ELSE {self.refuse(ref, 'bigint')} END"
            )
        if column.kind == "numeric":
            # A number starts with a sign, a point or a digit ('+' .. '9'), so it is no NaN,
            # which numeric(38, 9) would take; its input rounds to 9 decimals and fails past
            # its range or on an infinity (22003).
            numeric = self.column_types["numeric"]
            return (
                f"CASE WHEN ascii({ref}) BETWEEN 43 AND 57 THEN CAST({ref} AS {numeric})"
                f" {empty} ELSE {self.refuse(ref, numeric)} END"
            )
        return super().strict_cast(column, ref)

    def refuse(self, ref: str, sql_type: str) -> str:
        return f"CAST(taxi_pipeline_refuse({ref}) AS {sql_type})"

    def only_digits(self, ref: str) -> str:
        """Whether the text ``ref`` is digits only (a C loop, much cheaper than a regular
        expression)."""
        return f"translate({ref}, '0123456789', '') = ''"

    def strict_id_text(self, column: Column, ref: str) -> str:
        if column.kind == "string":
            return ref  # an empty text and NULL add the same nothing to the id
        if column.kind == "timestamp":
            return f"NULLIF({ref}, '') || '+00'"  # strict_cast took only the timestamp's text
        return super().strict_id_text(column, ref)

    def full_match(self, ref: str, pattern: str) -> str:
        return f"({ref} ~ '^{pattern}$')"

    def id_text(self, column: Column, ref: str) -> str:
        if column.kind == "timestamp":
            # A timestamp's own text under DateStyle ISO (every session sets it) is BigQuery's
            # "2019-01-01 10:00:00", about a third cheaper than to_char.
            return f"CAST({ref} AS text) || '+00'"
        return f"CAST({ref} AS text)"

    def digest(self, parts: Sequence[str]) -> str:
        return f"decode(md5(concat({', '.join(parts)})), 'hex')"

    def distinct_dates(self, ref: str) -> str:
        return f"array_agg(DISTINCT {self.date_of(ref)}) FILTER (WHERE {ref} IS NOT NULL)"

    def join_texts(self, items: Sequence[str]) -> str:
        return f"concat_ws(',', {', '.join(items)})"

    def create_staging(self, table_ref: str) -> str:
        # UNLOGGED: no WAL for a table that a crash may lose (the redelivery stages again).
        return f"CREATE UNLOGGED TABLE {table_ref} AS"

    def final_table_suffix(self, dataset: Dataset) -> str:
        # A partition per published file: a file's first load is written in bulk into a new
        # table, then attached (BENCHMARKS.md), instead of row by row into growing indexes.
        return " PARTITION BY LIST (filename)"

    def copy_options(self, fmt: SourceFormat, *, header: bool = True) -> str:
        """The options of ``COPY ... FROM STDIN`` of an object of ``fmt`` (decompressed by the
        client): an empty unquoted field is NULL, a quoted one empty (``NULLIF`` makes both
        NULL), a line with too few or too many fields fails the COPY (as ``read_csv`` is
        strict). FREEZE: the landing table is new in the COPY's transaction, so its rows are
        written visible to all, and reading them dirties no page to set hint bits. ``header``:
        the stream starts with the CSV's header line (the first of a month's COPYs)."""
        if fmt is CSV_GZ:
            return f"(FORMAT csv, HEADER {'true' if header else 'false'}, FREEZE true)"
        if fmt is PARQUET:
            # The client writes the Parquet rows as CSV, no header.
            return "(FORMAT csv, FREEZE true)"
        raise ConfigurationError(f"the {self.name} warehouse cannot read {fmt.name} objects")

    def functions_sql(self) -> list[str]:
        """The slow paths of :meth:`try_cast` and :meth:`try_integer` (in the session's schema):
        NULL where the cast errs, and NaN is not a number here (DuckDB's DECIMAL has none).
        Timestamps must look like ISO dates first: PostgreSQL also reads 'now' or 'Jan 1 2019'."""
        # PARALLEL RESTRICTED: an exception block starts a subtransaction, which a parallel
        # worker cannot. taxi_pipeline_refuse has none: the strict statement's workers call it.
        head = "LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$\n"
        return [
            "CREATE OR REPLACE FUNCTION taxi_pipeline_refuse(value text) RETURNS text\n"
            "LANGUAGE plpgsql VOLATILE PARALLEL SAFE AS $$\nBEGIN\n"
            f"  RAISE EXCEPTION USING ERRCODE = '{STRICT_REFUSED_STATE}',\n"
            "    MESSAGE = 'not as the published files write it: ' || left(value, 100);\n"
            "END\n$$",
            "CREATE OR REPLACE FUNCTION taxi_pipeline_try_numeric(value text) RETURNS numeric\n"
            + head
            + "DECLARE n numeric;\nBEGIN n := CAST(value AS numeric(38, 9));\n"
            "  IF n = 'NaN' THEN RETURN NULL; END IF;\n  RETURN n;\n"
            "EXCEPTION WHEN data_exception THEN RETURN NULL;\nEND\n$$",
            "CREATE OR REPLACE FUNCTION taxi_pipeline_try_integer(value text) RETURNS bigint\n"
            + head
            + "DECLARE n numeric;\nBEGIN n := CAST(value AS numeric(38, 9));\n"
            "  IF n = 'NaN' OR n <> trunc(n) OR n < -9223372036854775808\n"
            "    OR n > 9223372036854775807 THEN RETURN NULL; END IF;\n"
            "  RETURN CAST(n AS bigint);\n"
            "EXCEPTION WHEN data_exception THEN RETURN NULL;\nEND\n$$",
            "CREATE OR REPLACE FUNCTION taxi_pipeline_try_timestamp(value text)"
            " RETURNS timestamp\n" + head + "BEGIN\n"
            "  IF value !~ '^\\s*[0-9]{4,}-[0-9]{1,2}-[0-9]{1,2}"
            "([ T][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}([.][0-9]*)?)?)?\\s*$' THEN\n"
            "    RETURN NULL;\n  END IF;\n  RETURN CAST(value AS timestamp);\n"
            "EXCEPTION WHEN data_exception THEN RETURN NULL;\nEND\n$$",
        ]


DUCKDB: Final = DuckDbDialect()
BIGQUERY: Final = BigQueryDialect()
POSTGRES: Final = PostgresDialect()
