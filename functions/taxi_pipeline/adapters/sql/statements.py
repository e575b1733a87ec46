"""The staging, measuring and merging SQL of every SQL warehouse, written once over a
:class:`~.dialects.Dialect`.

- Staging reads the month's relation (an external table, a loaded raw table, a text staging
  table fed through a client, DuckDB's ``read_csv`` or ``read_parquet``) and types it onto the
  final table's reference types. A CSV's columns are all text; a Parquet file's have the types
  of its schema period (:func:`source_columns`: integers of either width, counts as DOUBLE,
  null-typed placeholders, timestamps without a zone), each cast explicitly. Every typed value is
  NULL where its source value does not fit (the "1.0" integer rule, numerals, impossible
  timestamps), and such a row is flagged ``_bad`` with its text kept in ``_bad_row``, so nothing
  needs a second read of the source.
- The id is the zoomcamp reference ``unique_row_id``: MD5 over the id columns as BigQuery casts
  them to STRING, concatenated without a separator.
- The merge inserts only ids absent from the final table and reads the target only on the
  pickup dates the staging data can match (constant bounds: they prune partitions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal

from taxi_pipeline.adapters.sql.dialects import Dialect, MergeStyle
from taxi_pipeline.domain.datasets import Column, Dataset, Month
from taxi_pipeline.domain.formats import CSV_GZ, SourceFormat
from taxi_pipeline.domain.lookups import LookupTable
from taxi_pipeline.domain.tlc_schemas import TEXT, period_of
from taxi_pipeline.pipeline.ports import DateRange, Replacement, StagingSummary

BAD_SAMPLES: Final = 5
EARLIEST_TIMESTAMP: Final = date(1, 1, 1)
AFTER_LAST_TIMESTAMP: Final = date(9999, 12, 31)
"""Timestamps outside ``[0001-01-01, 9999-12-31)`` are impossible values (``infinity``, year 0 or
10000, the last day whose next day no date type holds): NULL and counted bad, so they never
reach the pickup ranges (issue 12, item 5)."""

NUMERAL: Final = "[0-9]+([.][0-9]+)?"
"""What a numeral code (``Column.numeral``) is written as: digits, optionally a decimal part."""


def _timestamp(day: date) -> str:
    return f"TIMESTAMP '{day.isoformat()}'"


SourceKind = Literal["text", "integer", "double", "decimal", "timestamp", "empty"]
"""What a source column holds: text (every CSV column), integers of any width, doubles,
decimals (DuckDB's typed CSV read: numbers as ``NUMERIC``, typed like doubles), timestamps, or
nothing (a Parquet null-typed placeholder)."""


@dataclass(frozen=True)
class SourceColumn:
    """Where a final column comes from in the month's source relation."""

    name: str | None
    """The source's column (as the file spells it); ``None``: the file has none (NULL)."""
    kind: SourceKind = "text"


Sources = Mapping[str, SourceColumn]
"""Final column name -> its source column."""


def source_columns(fmt: SourceFormat, dataset: Dataset, month: Month) -> Sources:
    """Each final column's source in a file of ``fmt`` for ``month``.

    A CSV holds the layout's columns as text (the added ones are NULL). A Parquet file holds its
    schema period's columns (``domain/tlc_schemas``), matched by name ignoring case (yellow's
    ``Airport_fee`` / ``airport_fee``), each of the widest kind its month's files are known to
    hold it in: a column that is DOUBLE in one month and null-typed or INT32 the next is cast as
    a double, which reads the others too.
    """
    layout = dataset.layout
    if not fmt.typed:
        present = set(layout.names)
        return {
            c.name: SourceColumn(c.name if c.name in present else None)
            for c in layout.final_columns
        }
    period = period_of(dataset.value, month)
    by_folded = {c.name.casefold(): c for c in period.columns}
    out: dict[str, SourceColumn] = {}
    for column in layout.final_columns:
        found = by_folded.get(column.name.casefold())
        if found is None:
            out[column.name] = SourceColumn(None)
            continue
        out[column.name] = SourceColumn(found.name, _kind_of(found.accepted_in(month)))
    return out


def _can_fail(column: Column, kind: SourceKind) -> bool:
    """Whether a value of ``kind`` can fail ``column``'s type (the row then counts as bad)."""
    if kind == "text":
        return column.checked
    if kind == "decimal":
        return column.kind != "numeric"
    if kind == "double":
        return column.kind != "string" or column.numeral
    return kind == "timestamp"


def _kind_of(arrow_types: frozenset[str]) -> SourceKind:
    if arrow_types & TEXT:
        return "text"
    if any(t.startswith("timestamp") for t in arrow_types):
        return "timestamp"
    if "double" in arrow_types:
        return "double"
    if arrow_types & {"int32", "int64"}:
        return "integer"
    return "empty"


class Statements:
    """The shared statements in one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def q(self, name: str) -> str:
        return self.dialect.quote_ident(name)

    # -- values ---------------------------------------------------------------------------

    def typed_sql(self, column: Column, ref: str) -> str:
        """The reference type of the text ``ref``; NULL when the text does not fit it."""
        d = self.dialect
        if column.kind == "string":
            if column.numeral:
                return d.when(d.full_match(ref, NUMERAL), ref)
            return ref
        if column.kind == "integer":
            return d.try_integer(ref)
        return d.try_cast(ref, d.column_type(column))

    def typed_from_sql(self, column: Column, ref: str, kind: SourceKind) -> str:
        """The reference type of the source value ``ref`` of ``kind``; NULL when it does not
        fit (a count of 1.5, a double that is no numeral, a number past NUMERIC's range)."""
        d = self.dialect
        if kind == "text":
            return self.typed_sql(column, ref)
        target = d.column_type(column)
        if kind == "integer" and column.kind == "string":
            return d.try_cast(ref, d.text_type)
        if kind not in ("double", "decimal") or column.kind in ("numeric", "timestamp"):
            # Integers, timestamps without a zone (BigQuery reads them as DATETIME: cast to
            # TIMESTAMP, so the id's text ends in "+00" as the CSV's does), null-typed columns.
            return d.try_cast(ref, target)
        # A count written as a double: 1.0 is 1, 1.5 is a bad value (as the CSV's "1.0").
        whole = d.whole_number(ref)
        if column.kind == "integer":
            return whole
        as_text = d.try_cast(whole, d.text_type)
        if column.numeral:
            return as_text
        # A code column (RatecodeID, trip_type) written as a double: "1" as the CSV has it.
        return f"COALESCE({as_text}, {d.try_cast(ref, d.text_type)})"

    def possible_sql(self, column: Column, ref: str) -> str:
        """The typed value ``ref`` where it is a possible one (timestamps in range)."""
        if column.kind != "timestamp":
            return ref
        return self.dialect.when(
            f"{ref} >= {_timestamp(EARLIEST_TIMESTAMP)}"
            f" AND {ref} < {_timestamp(AFTER_LAST_TIMESTAMP)}",
            ref,
        )

    def unique_row_id_sql(self, dataset: Dataset) -> str:
        """The reference id over the typed columns, exactly the zoomcamp formula (bytes)."""
        d = self.dialect
        by_name = {c.name: c for c in dataset.layout.columns}
        parts = [
            f"COALESCE({d.id_text(by_name[n], self.q(n))}, {d.empty_text})"
            for n in dataset.layout.id_columns
        ]
        return d.digest(parts)

    # -- staging --------------------------------------------------------------------------

    def staging_sql(
        self,
        dataset: Dataset,
        month: Month,
        table_ref: str,
        source_ref: str,
        filename: str,
        sources: Sources | None = None,
    ) -> str:
        """The staging table from the month's relation ``source_ref``: the rows of
        :meth:`staging_select`."""
        select = self.staging_select(dataset, month, source_ref, filename, sources)
        return f"{self.dialect.create_staging(table_ref)}\n{select}"

    def staging_select(
        self,
        dataset: Dataset,
        month: Month,
        source_ref: str,
        filename: str,
        sources: Sources | None = None,
    ) -> str:
        """The staged rows of the month's relation ``source_ref`` as a query, whose columns
        ``sources`` describes (default: the CSV's, all text).

        Empty texts become NULL first; each cast runs once (the source value goes on under a
        private name, the typed value under the column's), and a row is bad where a value did
        not survive: ``_bad`` flags it and ``_bad_row`` keeps its text for the samples.

        """
        d, q = self.dialect, self.q
        sources = sources or source_columns(CSV_GZ, dataset, month)
        columns = dataset.layout.final_columns
        present = [c for c in columns if sources[c.name].name is not None]
        checked = [c for c in present if _can_fail(c, sources[c.name].kind)]
        names = [q(c.name) for c in columns]
        all_text = all(sources[c.name].kind == "text" for c in present)

        def text(c: Column) -> str:
            return q(f"__text_{c.name}")

        def read(c: Column) -> str:
            source = sources[c.name]
            ref = q(source.name or c.name)
            if source.kind != "text":
                value = ref
            elif all_text:
                value = d.nullify_empty(ref)  # a CSV reader may null empty fields itself
            else:
                value = f"NULLIF({ref}, {d.empty_text})"  # a Parquet text, as the CSV's
            return f"{value} AS {q(c.name)}"

        def typed_value(c: Column) -> str:
            kind = sources[c.name].kind
            if c not in present:
                return f"CAST(NULL AS {d.column_type(c)})"
            return self.typed_from_sql(c, "r." + q(c.name), kind)

        def as_text(c: Column) -> str:
            value = text(c) if c in checked else q(c.name)
            if sources[c.name].kind == "text":
                return value
            return f"CAST({value} AS {d.text_type})"

        nulled = ", ".join(read(c) for c in present)
        typed = ",\n      ".join(
            [f"r.{q(c.name)} AS {text(c)}" for c in checked]
            + [f"{typed_value(c)} AS {q(c.name)}" for c in columns]
        )
        possible = ",\n    ".join(
            [text(c) for c in checked]
            + [f"{self.possible_sql(c, q(c.name))} AS {q(c.name)}" for c in columns]
        )
        bad = (
            " OR ".join(f"({text(c)} IS NOT NULL AND {q(c.name)} IS NULL)" for c in checked)
            or "FALSE"
        )
        line = d.join_texts([f"COALESCE({as_text(c)}, '')" for c in present])
        # The header line again inside the body (files concatenated by hand): no trip. A bad
        # row, among the samples, not counted as a row, deleted before the merge. Only a text
        # file can hold one.
        header = (
            "COALESCE("
            + " AND ".join(
                f"{text(c) if c in checked else q(c.name)} = {d.quote_text(c.name)}"
                for c in present
            )
            + ", FALSE)"
            if all_text
            else "FALSE"
        )
        return (
            f"SELECT {self.unique_row_id_sql(dataset)} AS unique_row_id,\n"
            f"  {d.quote_text(filename)} AS filename,\n"
            f"  {', '.join(names)},\n"
            f"  ({bad}) AS _bad,\n"
            f"  {d.when(f'({bad})', line)} AS _bad_row,\n"
            f"  {header} AS _header\n"
            "FROM (\n"
            f"  SELECT {possible}\n"
            "  FROM (\n"
            f"    SELECT {typed}\n"
            f"    FROM (SELECT {nulled} FROM {source_ref}{d.fence}) AS r{d.fence}\n"
            f"  ) AS typed{d.fence}\n"
            ") AS possible"
        )

    def measure_sql(self, dataset: Dataset, month: Month, table_ref: str) -> str:
        """One query over the staging table: counts, the dates to read the target on, samples.

        The dates are each row's pickup date, or its dropoff date where it has no pickup: the
        id concatenates pickup and dropoff without a separator, so a row with only a pickup and
        a row with only that dropoff share an id (README, "Row ids"); each must find the other.
        """
        d = self.dialect
        pickup, dropoff = self.q(dataset.layout.pickup), self.q(dataset.layout.dropoff)
        first = date(month.year, month.month, 1)
        following = month.next()
        after = date(following.year, following.month, 1)
        # ARRAY(subquery) rather than ARRAY_AGG(... IGNORE NULLS LIMIT n): the BigQuery emulator
        # keeps NULLs when a LIMIT is given; both forms mean the same in BigQuery.
        return (
            f"SELECT {d.count_if('NOT _header')} AS rows_total,"
            f" {d.count_if('_bad')} AS rows_bad,\n"
            f"  {d.count_if(f'{pickup} < {_timestamp(first)} OR {pickup} >= {_timestamp(after)}')}"
            " AS rows_out_of_month,\n"
            f"  {d.count_if(f'{pickup} IS NULL AND NOT _header')} AS rows_without_pickup,\n"
            f"  {d.count_if(f'{dropoff} IS NULL AND NOT _header')} AS rows_without_dropoff,\n"
            f"  {d.count_if('_header')} AS repeated_headers,\n"
            f"  {d.distinct_dates(f'COALESCE({pickup}, {dropoff})')} AS pickup_dates,\n"
            f"  {d.first_values('_bad_row', table_ref, '_bad', BAD_SAMPLES)} AS bad_samples\n"
            f"FROM {table_ref}"
        )

    @staticmethod
    def summary(row: Sequence[Any]) -> StagingSummary:
        """The :class:`StagingSummary` of :meth:`measure_sql`'s one row."""
        total, bad, out_of_month, no_pickup, no_dropoff, _, dates, samples = row
        return StagingSummary(
            rows=int(total),
            rows_bad=int(bad),
            rows_out_of_month=int(out_of_month),
            rows_without_pickup=int(no_pickup),
            rows_without_dropoff=int(no_dropoff),
            pickup_dates=tuple(sorted(dates or ())),
            bad_samples=tuple(samples or ()),
        )

    @staticmethod
    def repeated_headers(row: Sequence[Any]) -> int:
        """How many header lines :meth:`measure_sql` found inside the body."""
        return int(row[5])

    @staticmethod
    def drop_repeated_headers_sql(table_ref: str) -> str:
        return f"DELETE FROM {table_ref} WHERE _header"

    # -- the strict staging (a warehouse that lands the object itself) ---------------------

    def strict_staging_sql(
        self,
        dataset: Dataset,
        month: Month,
        table_ref: str,
        source_ref: str,
        filename: str,
        sources: Sources | None = None,
    ) -> str:
        """``table_ref`` as the final table's rows of the text relation ``source_ref``, typed by
        :meth:`~.dialects.Dialect.strict_cast`: the same values and ids as :meth:`staging_sql`
        where every value is written as the published files write them; any other value fails
        the statement or is counted by :meth:`strict_measure_sql`, and the month is then typed
        by :meth:`staging_sql`. Only the final table's columns, in its order (the table may
        become one of its partitions), and one plain expression per value: no subquery, so the
        server may run it on parallel workers.
        """
        d, q = self.dialect, self.q
        sources = sources or source_columns(CSV_GZ, dataset, month)
        if any(s.kind != "text" for s in sources.values() if s.name is not None):
            raise ValueError("the strict staging reads text columns only")

        def typed(c: Column) -> str:
            name = sources[c.name].name
            cast = self.strict_typed_sql(c, q(name)) if name else "NULL"
            return f"CAST({cast} AS {d.column_type(c)}) AS {q(c.name)}"

        by_name = {c.name: c for c in dataset.layout.final_columns}
        parts = []
        for name in dataset.layout.id_columns:
            source = sources[name].name
            text = d.strict_id_text(by_name[name], q(source)) if source else "NULL"
            parts.append(f"COALESCE({text}, {d.empty_text})")
        columns = ",\n  ".join(typed(c) for c in dataset.layout.final_columns)
        return (
            f"CREATE TABLE {table_ref} AS\n"
            f"SELECT {d.digest(parts)} AS unique_row_id,\n"
            f"  CAST({d.quote_text(filename)} AS {d.text_type}) AS filename,\n"
            f"  {columns}\n"
            f"FROM {source_ref}"
        )

    def strict_typed_sql(self, column: Column, ref: str) -> str:
        """The text ``ref`` as :meth:`typed_sql` types it, where the text is written as the
        published files write it; any other text raises (see :meth:`strict_staging_sql`)."""
        d = self.dialect
        if column.kind != "string":
            return d.strict_cast(column, ref)
        if not column.numeral:
            return d.nullify_empty(ref)
        # Most codes are digits only, a cheaper test than the numeral's regular expression.
        return (
            f"CASE WHEN {ref} IS NULL OR {d.only_digits(ref)} OR {d.full_match(ref, NUMERAL)}"
            f" THEN {d.nullify_empty(ref)} ELSE {d.refuse(ref, d.text_type)} END"
        )

    def strict_measure_sql(self, dataset: Dataset, month: Month, table_ref: str) -> str:
        """:meth:`measure_sql`'s row for a table :meth:`strict_staging_sql` wrote (no bad value,
        header line or sample there): one scan grouped by date, which parallel workers share."""
        d, q = self.dialect, self.q
        pickup, dropoff = q(dataset.layout.pickup), q(dataset.layout.dropoff)
        first = date(month.year, month.month, 1)
        following = month.next()
        after = date(following.year, following.month, 1)
        out_of_month = f"{pickup} < {_timestamp(first)} OR {pickup} >= {_timestamp(after)}"
        return (
            "SELECT COALESCE(sum(n), 0) AS rows_total, 0 AS rows_bad,\n"
            "  COALESCE(sum(out_of_month), 0) AS rows_out_of_month,\n"
            "  COALESCE(sum(no_pickup), 0) AS rows_without_pickup,\n"
            "  COALESCE(sum(no_dropoff), 0) AS rows_without_dropoff, 0 AS repeated_headers,\n"
            "  array_agg(day) FILTER (WHERE day IS NOT NULL) AS pickup_dates,\n"
            f"  CAST(ARRAY[] AS {d.text_type}[]) AS bad_samples\n"
            "FROM (\n"
            f"  SELECT {d.date_of(f'COALESCE({pickup}, {dropoff})')} AS day, count(*) AS n,\n"
            f"    {d.count_if(out_of_month)} AS out_of_month,\n"
            f"    {d.count_if(f'{pickup} IS NULL')} AS no_pickup,\n"
            f"    {d.count_if(f'{dropoff} IS NULL')} AS no_dropoff\n"
            f"  FROM {table_ref}\n"
            "  GROUP BY 1\n"
            ") AS per_day"
        )

    # -- merging --------------------------------------------------------------------------

    def target_pickup_predicate(
        self, dataset: Dataset, ranges: Sequence[DateRange], include_null: bool, alias: str = "T"
    ) -> str:
        """Constant bounds on the target's pickup: only these dates (partitions) are read.

        A join predicate alone does not prune a MERGE target; constants in its ON clause do.
        Each range is its own term, so a stray date years away adds one small range, not the
        years between.
        """
        pickup = f"{alias}.{self.q(dataset.layout.pickup)}"
        terms = [
            f"({pickup} >= {_timestamp(r.start)} AND {pickup} < {_timestamp(r.end)})"
            for r in ranges
        ]
        if include_null:
            terms.append(f"{pickup} IS NULL")
        return " OR ".join(terms) or "FALSE"

    def final_columns(self, dataset: Dataset) -> list[str]:
        """The final table's columns in its order, quoted."""
        return ["unique_row_id", "filename", *(self.q(n) for n in dataset.layout.final_names)]

    def delete_month_sql(
        self, dataset: Dataset, final_ref: str, replacing: Replacement, alias: str = "T"
    ) -> str:
        """Delete the rows a replacing merge replaces: the month's file names, on their
        recorded dates (constant bounds: pruned partitions) and NULL pickups."""
        names = ", ".join(self.dialect.quote_text(n) for n in replacing.filenames)
        where = f"{alias}.filename IN ({names})"
        if replacing.pickup_ranges is not None:
            prune = self.target_pickup_predicate(
                dataset, replacing.pickup_ranges, include_null=True, alias=alias
            )
            where += f"\n  AND ({prune})"
        return f"DELETE FROM {final_ref} AS {alias}\nWHERE {where}"

    def merge_sql(
        self,
        dataset: Dataset,
        final_ref: str,
        staging_ref: str,
        ranges: Sequence[DateRange],
        include_null_pickup: bool,
        style: MergeStyle | None = None,
    ) -> str:
        """Insert the staged rows whose id the final table does not hold (insert-only), in the
        dialect's style unless ``style`` says otherwise."""
        columns = self.final_columns(dataset)
        if (style or self.dialect.merge_style) == "merge":
            prune = self.target_pickup_predicate(dataset, ranges, include_null_pickup, "T")
            return (
                f"{self.dialect.merge_head} {final_ref} AS T\nUSING {staging_ref} AS S\n"
                f"ON T.unique_row_id = S.unique_row_id\n  AND ({prune})\n"
                f"WHEN NOT MATCHED THEN INSERT ({', '.join(columns)})\n"
                f"  VALUES ({', '.join('S.' + c for c in columns)})"
            )
        return self.insert_missing_sql(
            dataset, final_ref, final_ref, staging_ref, ranges, include_null_pickup
        )

    def insert_missing_sql(
        self,
        dataset: Dataset,
        into_ref: str,
        final_ref: str,
        staging_ref: str,
        ranges: Sequence[DateRange],
        include_null_pickup: bool,
    ) -> str:
        """``INSERT INTO into_ref`` the staged rows whose id ``final_ref`` does not hold (the
        final table itself, or a new table that becomes one of its partitions)."""
        columns = self.final_columns(dataset)
        prune = self.target_pickup_predicate(dataset, ranges, include_null_pickup, "t")
        listed = ", ".join(columns)
        return (
            f"INSERT INTO {into_ref} ({listed})\n"
            f"SELECT {listed} FROM {staging_ref} s\nWHERE NOT EXISTS (\n"
            f"  SELECT 1 FROM {final_ref} t\n"
            f"  WHERE ({prune}) AND t.unique_row_id = s.unique_row_id\n)"
        )

    def delete_present_sql(
        self,
        dataset: Dataset,
        staging_ref: str,
        final_ref: str,
        ranges: Sequence[DateRange],
        include_null_pickup: bool,
    ) -> str:
        """``DELETE`` from ``staging_ref`` the rows whose id ``final_ref`` holds: what remains is
        what :meth:`insert_missing_sql` would insert (duplicates inside the staged rows stay),
        so the staged table itself can become one of the final table's partitions."""
        prune = self.target_pickup_predicate(dataset, ranges, include_null_pickup, "t")
        return (
            f"DELETE FROM {staging_ref} AS s\nWHERE s.unique_row_id IN (\n"
            f"  SELECT t.unique_row_id FROM {final_ref} t\n  WHERE {prune}\n)"
        )

    def final_table_sql(self, dataset: Dataset, table_ref: str, *, partitioned: bool = True) -> str:
        """``CREATE TABLE IF NOT EXISTS`` of the final table, in the layout's column order
        (the CSV's, then the added ones); ``partitioned=False``: without the dialect's
        partitioning, a table of its columns that may become one of its partitions."""
        d = self.dialect
        columns = ",\n  ".join(
            f"{self.q(c.name)} {d.column_type(c)}" for c in dataset.layout.final_columns
        )
        return (
            f"CREATE TABLE IF NOT EXISTS {table_ref} (\n"
            f"  unique_row_id {d.id_type},\n  filename {d.text_type},\n  {columns}\n)"
            f"{d.final_table_suffix(dataset) if partitioned else ''}"
        )

    def add_columns_sql(
        self, dataset: Dataset, table_ref: str, present: Sequence[str]
    ) -> list[str]:
        """``ALTER TABLE ... ADD COLUMN`` of each added column (the TLC's fees) a table made
        before it existed lacks (``present``: its columns, any case). Nothing is reloaded: the
        column is NULL in the rows already there (CSV months have no such value)."""
        have = {name.casefold() for name in present}
        return [
            f"ALTER TABLE {table_ref} ADD COLUMN {self.q(c.name)} {self.dialect.column_type(c)}"
            for c in dataset.layout.added
            if c.name.casefold() not in have
        ]

    # -- lookup tables --------------------------------------------------------------------

    def lookup_select_sql(self, lookup: LookupTable, source_ref: str) -> str:
        """The lookup's rows typed from its text relation ``source_ref`` (a verified file: a
        value that does not fit fails the statement, so nothing is replaced)."""
        columns = ", ".join(
            self.q(c.name)
            if c.kind == "string"
            else f"CAST({self.q(c.name)} AS {self.dialect.column_type(c)}) AS {self.q(c.name)}"
            for c in lookup.columns
        )
        return f"SELECT {columns} FROM {source_ref}"

    def lookup_table_sql(self, lookup: LookupTable, table_ref: str) -> str:
        """``CREATE TABLE IF NOT EXISTS`` of the lookup with its reference types (PostgreSQL,
        which replaces the rows in place rather than the table)."""
        columns = ", ".join(
            f"{self.q(c.name)} {self.dialect.column_type(c)}" for c in lookup.columns
        )
        return f"CREATE TABLE IF NOT EXISTS {table_ref} ({columns})"

    def replace_lookup_sql(self, lookup: LookupTable, table_ref: str, source_ref: str) -> str:
        """``CREATE OR REPLACE TABLE ... AS`` the typed rows: one atomic replacement (DuckDB,
        BigQuery; PostgreSQL deletes and inserts the rows inside one transaction instead)."""
        return (
            f"CREATE OR REPLACE TABLE {table_ref} AS\n{self.lookup_select_sql(lookup, source_ref)}"
        )
