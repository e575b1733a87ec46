"""The staging, measuring and merging SQL of every SQL warehouse, written once over a
:class:`~.dialects.Dialect`.

- Staging reads the month's text relation (an external table, a loaded raw table, a text
  staging table fed through a client) and types it: every typed value is NULL where its text does
  not fit (the "1.0" integer rule, numerals, impossible timestamps), and such a row is flagged
  ``_bad`` with its text kept in ``_bad_row``, so nothing needs a second read of the source.
- The id is the zoomcamp reference ``unique_row_id``: MD5 over the id columns as BigQuery casts
  them to STRING, concatenated without a separator.
- The merge inserts only ids absent from the final table and reads the target only on the
  pickup dates the staging data can match (constant bounds: they prune partitions).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Final

from taxi_pipeline.adapters.sql.dialects import Dialect
from taxi_pipeline.domain.datasets import Column, Dataset, Month
from taxi_pipeline.pipeline.ports import DateRange, StagingSummary

BAD_SAMPLES: Final = 5
EARLIEST_TIMESTAMP: Final = date(1, 1, 1)
AFTER_LAST_TIMESTAMP: Final = date(9999, 12, 31)
"""Timestamps outside ``[0001-01-01, 9999-12-31)`` are impossible values (``infinity``, year 0 or
10000, the last day whose next day no date type holds): NULL and counted bad, so they never
reach the pickup ranges (issue 12, item 5)."""

_NUMERAL: Final = "[0-9]+([.][0-9]+)?"


def _timestamp(day: date) -> str:
    return f"TIMESTAMP '{day.isoformat()}'"


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
                return d.when(d.full_match(ref, _NUMERAL), ref)
            return ref
        if column.kind == "integer":
            return d.try_integer(ref)
        return d.try_cast(ref, d.column_type(column))

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

    def landed(self, column: Column) -> bool:
        """Whether COPY lands ``column`` typed (:meth:`landed_sql`), not as text."""
        d = self.dialect
        return d.landing_types.get(column.kind, d.text_type) != d.text_type

    def landed_sql(self, column: Column, ref: str) -> str:
        """The reference type of ``ref``, as the client's COPY landed it
        (:attr:`~.dialects.PostgresDialect.landing_types`): a value its input function parsed
        gets only its range checked (NULL: "1.5" for an integer, NaN), a text is cast as
        :meth:`~.dialects.Dialect.landed_cast` says."""
        d = self.dialect
        if not self.landed(column):
            return (
                d.landed_cast(column, ref)
                if column.kind != "string"
                else self.typed_sql(column, ref)
            )
        if column.kind == "integer":
            return d.when(
                f"{ref} = {d.trunc(ref)} AND {ref} BETWEEN {-(2**63)} AND {2**63 - 1}",
                f"CAST({ref} AS {d.column_types['integer']})",
            )
        if column.kind == "numeric":
            # What DECIMAL(38, 9) holds once rounded to 9 decimals (NaN and infinities are not
            # below it either).
            return d.when(
                f"abs({ref}) < {10**29 - 1}", f"CAST({ref} AS {d.column_types['numeric']})"
            )
        return ref

    def staging_sql(
        self,
        dataset: Dataset,
        month: Month,
        table_ref: str,
        source_ref: str,
        filename: str,
        *,
        landed: bool = False,
    ) -> str:
        """The staging table from the month's text relation ``source_ref``.

        Empty fields become NULL first; each cast runs once (the text goes on under a private
        name, the typed value under the column's), and a row is bad where a text did not
        survive: ``_bad`` flags it and ``_bad_row`` keeps its text for the samples.

        ``landed``: ``source_ref``'s columns hold the dialect's landing types instead of text
        (PostgreSQL's COPY parsed the values), typed by :meth:`landed_sql`: a cast that fails
        there fails the statement, and the adapter lands the file as text instead. A header line
        inside the body cannot have landed (its names parse as no number).
        """
        d, q = self.dialect, self.q
        columns = dataset.layout.columns
        checked = [c for c in columns if c.checked]
        names = [q(c.name) for c in columns]

        def text(c: Column) -> str:
            return q(f"__text_{c.name}")

        def typed_landing(c: Column) -> bool:
            return landed and self.landed(c)

        def as_text(c: Column) -> str:
            ref = text(c) if c.checked else q(c.name)
            return f"CAST({ref} AS {d.text_type})" if typed_landing(c) else ref

        def cast(c: Column, ref: str) -> str:
            return self.landed_sql(c, ref) if landed else self.typed_sql(c, ref)

        nulled = ", ".join(
            f"{n if typed_landing(c) else d.nullify_empty(n)} AS {n}"
            for c, n in zip(columns, names, strict=True)
        )
        typed = ",\n      ".join(
            [f"r.{q(c.name)} AS {text(c)}" for c in checked]
            + [f"{cast(c, 'r.' + q(c.name))} AS {q(c.name)}" for c in columns]
        )
        possible = ",\n    ".join(
            [text(c) for c in checked]
            + [f"{self.possible_sql(c, q(c.name))} AS {q(c.name)}" for c in columns]
        )
        bad = " OR ".join(f"({text(c)} IS NOT NULL AND {q(c.name)} IS NULL)" for c in checked)
        line = d.join_texts([f"COALESCE({as_text(c)}, '')" for c in columns])
        # The header line again inside the body (files concatenated by hand): no trip. A bad
        # row, among the samples, not counted as a row, deleted before the merge.
        header = (
            "FALSE"
            if landed
            else " AND ".join(f"{as_text(c)} = {d.quote_text(c.name)}" for c in columns)
        )
        return (
            f"{d.create_staging(table_ref)}\n"
            f"SELECT {self.unique_row_id_sql(dataset)} AS unique_row_id,\n"
            f"  {d.quote_text(filename)} AS filename,\n"
            f"  {', '.join(names)},\n"
            f"  ({bad}) AS _bad,\n"
            f"  {d.when(f'({bad})', line)} AS _bad_row,\n"
            f"  COALESCE({header}, FALSE) AS _header\n"
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

    def _final_columns(self, dataset: Dataset) -> list[str]:
        return ["unique_row_id", "filename", *(self.q(n) for n in dataset.layout.names)]

    def merge_sql(
        self,
        dataset: Dataset,
        final_ref: str,
        staging_ref: str,
        ranges: Sequence[DateRange],
        include_null_pickup: bool,
    ) -> str:
        """Insert the staged rows whose id the final table does not hold (insert-only)."""
        columns = self._final_columns(dataset)
        if self.dialect.merge_style == "merge":
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
        columns = self._final_columns(dataset)
        prune = self.target_pickup_predicate(dataset, ranges, include_null_pickup, "t")
        listed = ", ".join(columns)
        return (
            f"INSERT INTO {into_ref} ({listed})\n"
            f"SELECT {listed} FROM {staging_ref} s\nWHERE NOT EXISTS (\n"
            f"  SELECT 1 FROM {final_ref} t\n"
            f"  WHERE ({prune}) AND t.unique_row_id = s.unique_row_id\n)"
        )

    def final_table_sql(self, dataset: Dataset, table_ref: str) -> str:
        """``CREATE TABLE IF NOT EXISTS`` of the final table, in the layout's column order."""
        d = self.dialect
        columns = ",\n  ".join(
            f"{self.q(c.name)} {d.column_type(c)}" for c in dataset.layout.columns
        )
        return (
            f"CREATE TABLE IF NOT EXISTS {table_ref} (\n"
            f"  unique_row_id {d.id_type},\n  filename {d.text_type},\n  {columns}\n)"
            f"{d.final_table_suffix(dataset)}"
        )
