"""Lookup tables: small reference tables replaced whole from one published CSV (the taxi zones).

Unlike a trip month, a lookup has no months, no ids and no merge: each load replaces the table
atomically with the file's rows (a reload never duplicates), so the table always holds exactly
one published version. The file goes through the lake like a month's
(``lookup/{file name}``, outside ``raw/``: the register step ignores it) and is verified before it
is committed there (:func:`check_lookup_csv`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Final

from taxi_pipeline.domain.datasets import Column
from taxi_pipeline.errors import VerificationFailed

LOOKUP_PREFIX: Final = "lookup/"
"""Where lookup files live in the lake (outside ``raw/``, which holds only trip months)."""


@dataclass(frozen=True)
class LookupTable:
    """A reference table: its name, its columns and where its CSV is published."""

    table: str
    columns: tuple[Column, ...]
    source_path: str
    """Under the mirror's base URL (``TAXI_PIPELINE_SOURCE_URL``), e.g. ``misc/x.csv``."""
    key: str
    """The column naming a row: an integer, unique in the file."""
    max_bytes: int = 1024 * 1024
    """A file larger than this is refused (the taxi zones are ~12 KB): a hostile or wrong
    source cannot fill the lake or the process's memory."""
    max_rows: int = 10_000

    @property
    def file_name(self) -> str:
        return self.source_path.rsplit("/", 1)[-1]

    @property
    def object_name(self) -> str:
        """The lake object, e.g. ``lookup/taxi_zone_lookup.csv``."""
        return f"{LOOKUP_PREFIX}{self.file_name}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


TAXI_ZONES: Final = LookupTable(
    table="taxi_zone_lookup",
    columns=(
        Column("LocationID", "integer"),
        Column("Borough", "string"),
        Column("Zone", "string"),
        Column("service_zone", "string"),
    ),
    source_path="misc/taxi_zone_lookup.csv",
    key="LocationID",
)
"""The TLC's 265 taxi zones (``taxi_zone_lookup.csv``, quoted CSV), joined by every analysis on
the trips' location ids."""

LOOKUPS: Final = {TAXI_ZONES.table: TAXI_ZONES}


@dataclass(frozen=True)
class CheckedLookup:
    """What :func:`check_lookup_csv` found in a file."""

    rows: int
    header_quoted: bool


def check_lookup_csv(lookup: LookupTable, data: bytes) -> CheckedLookup:
    """The file is UTF-8 CSV with the lookup's header (quoted or not), every row has one field
    per column, the key is a unique integer and integer columns hold integers; raises
    :class:`VerificationFailed` naming the first problem. Text may be quoted and hold commas
    (``"Flushing Meadows, Corona Park"``); rows are read as the warehouses' CSV readers read
    them (RFC 4180: ``"`` quotes, ``""`` inside quotes)."""
    if len(data) > lookup.max_bytes:
        raise VerificationFailed(
            f"{lookup.file_name} is {len(data):,} bytes, more than the {lookup.max_bytes:,} a"
            f" {lookup.table} file may hold"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationFailed(f"{lookup.file_name} is not UTF-8 text: {exc}") from exc
    if text.startswith("\ufeff"):
        raise VerificationFailed(f"{lookup.file_name} starts with a byte order mark")
    first_line = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header != list(lookup.names):
            raise VerificationFailed(
                f"{lookup.file_name}: header {first_line[:120]!r} is not {','.join(lookup.names)!r}"
            )
        keys: set[int] = set()
        for line, row in enumerate(reader, start=2):
            keys.add(_checked_row(lookup, line, row, keys))
            if len(keys) > lookup.max_rows:
                raise VerificationFailed(
                    f"{lookup.file_name} has more than {lookup.max_rows:,} rows"
                )
    except csv.Error as exc:
        raise VerificationFailed(f"{lookup.file_name} is not valid CSV: {exc}") from exc
    if not keys:
        raise VerificationFailed(f"{lookup.file_name} has no rows")
    return CheckedLookup(len(keys), header_quoted=first_line.startswith('"'))


def _checked_row(lookup: LookupTable, line: int, row: list[str], keys: set[int]) -> int:
    """The row's key, once its fields are checked (one per column, integers, a new key)."""
    where = f"{lookup.file_name} line {line}"
    if len(row) != len(lookup.columns):
        raise VerificationFailed(
            f"{where} has {len(row)} fields, expected {len(lookup.columns)}"
            if row
            else f"{where} is empty"
        )
    for name, column, value in zip(lookup.names, lookup.columns, row, strict=True):
        if column.kind == "integer" and not _is_integer(value):
            raise VerificationFailed(f"{where}: {name} {value[:40]!r} is not an integer")
    key = int(row[lookup.names.index(lookup.key)])
    if key in keys:
        raise VerificationFailed(f"{where}: {lookup.key} {key} appears twice")
    return key


def _is_integer(text: str) -> bool:
    digits = text[1:] if text[:1] == "-" else text
    return digits.isascii() and digits.isdigit()
