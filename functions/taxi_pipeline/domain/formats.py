"""The source formats: one entry each, the one place that knows a format.

An entry says what a file of the format is called (its suffix), its content type, how a stream
of it is verified before it may become a ``raw/`` object (the verifier's factory), how the head
of a hand upload is checked, what the ``filename`` column says for it, whether it brings its own
typed columns, and how a warehouse fed through its client gets its rows (the CSV feed, and for
a typed format the same texts as Arrow batches, for a client that types them itself). How each
warehouse stages it is that warehouse's hook (``adapters/sql/dialects.py``: DuckDB's reader,
BigQuery's external-table and load-job options, PostgreSQL's COPY options).

A new format adds its entry to :data:`FORMATS` and its module of code (verifiers and feed;
``csv.gz``: ``pipeline/verify.py``; ``parquet``: ``pipeline/verify_parquet.py``).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Protocol, cast

from taxi_pipeline.errors import ConfigurationError, VerificationFailed

if TYPE_CHECKING:
    from taxi_pipeline.domain.datasets import Layout, Month


@dataclass(frozen=True)
class VerifiedFile:
    """What a verifier reports once a whole stream passed."""

    bytes_compressed: int
    bytes_uncompressed: int
    rows: int

    @property
    def notes(self) -> tuple[str, ...]:
        """What the file holds that is not loaded (``new column X (double) not loaded``)."""
        return ()


@dataclass(frozen=True)
class VerifyTarget:
    """What a verifier checks a file against."""

    dataset: str
    month: Month
    layout: Layout
    expected_length: int | None
    """The announced (or stored) size; ``None``: unknown."""
    min_rows: int = 1
    max_inflated: int = 8 * 1024**3
    etag: str | None = None
    """The source's ``ETag``, where the format can check the bytes against it."""


class StreamVerifier(Protocol):
    """Checks a file as it streams past, chunk by chunk; :meth:`finish` raises on anything
    wrong (``VerificationFailed``), before the lake object may be committed."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> VerifiedFile: ...


VerifierFactory = Callable[[VerifyTarget], StreamVerifier]
"""A stream verifier for a file expected to match the target."""
ObjectVerifier = Callable[[BinaryIO, VerifyTarget], VerifiedFile]
"""Verify a whole object at hand (a seekable stream of it: a hand upload, a lake object)."""


class Sink(Protocol):
    """Where a CSV feed writes (a client's ``COPY ... FROM STDIN``)."""

    def write(self, data: bytes) -> int: ...


LandedColumn = tuple[str, "str | None"]
"""A column a client lands: its final name, and its name in the file (``None``: the file has
none; written empty)."""
CsvFeed = Callable[[BinaryIO, "Sequence[LandedColumn]", Sink], None]
"""Write an object's rows into ``sink`` as CSV text in the given columns' order (a text format
passes its own lines through, header included: its columns are the layout's)."""
TextBatches = Callable[[BinaryIO, "Sequence[LandedColumn]"], "Iterator[Any]"]
"""An object's rows as Arrow record batches of strings (named by the columns' final names,
NULL for an empty field), each value the text the format's CSV feed writes of it."""


def _resolve(path: str) -> object:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class SourceFormat:
    """One source file format."""

    name: str
    suffix: str
    """The file name's ending, e.g. ``.csv.gz``."""
    content_type: str
    verifier_path: str
    """``module:factory`` of its :data:`VerifierFactory` (resolved when first used, so the
    domain imports no verifier and a format's verifier loads only where it runs)."""
    object_verifier_path: str
    """``module:function`` of its :data:`ObjectVerifier`."""
    check_head: Callable[[bytes, Layout, str], None]
    """Cheap check of the first :attr:`head_bytes` of an object nobody verified (a hand
    upload): raises ``VerificationFailed``. Arguments: head, layout, dataset name."""
    head_bytes: int
    row_filename_suffix: str
    """What the ``filename`` column ends with instead of :attr:`suffix` (the reference writes
    the CSV's name: ``.csv`` for a ``.csv.gz`` file)."""
    csv_feed_path: str = ""
    """``module:function`` of its :data:`CsvFeed` (a warehouse that cannot read the lake lands
    the rows its client writes; empty: such warehouses cannot take the format)."""
    text_batches_path: str = ""
    """``module:function`` of its :data:`TextBatches` (empty: a client reads a file of the
    format itself, as a CSV, or cannot)."""
    typed: bool = False
    """Whether a file brings its own typed columns, named as its schema period names them (a
    Parquet file; ``domain/tlc_schemas``) rather than the layout's columns as text (a CSV)."""
    declares_rows: bool = False
    """Whether a file states its row count where it is cheap to read (a Parquet footer): the
    merge then checks that staging read exactly that many rows."""

    def verifier(self, target: VerifyTarget) -> StreamVerifier:
        factory = cast("VerifierFactory", _resolve(self.verifier_path))
        return factory(target)

    def verify_object(self, handle: BinaryIO, target: VerifyTarget) -> VerifiedFile:
        """Verify a whole object read through ``handle`` (as a download is verified)."""
        verify = cast("ObjectVerifier", _resolve(self.object_verifier_path))
        return verify(handle, target)

    def write_csv(self, handle: BinaryIO, columns: Sequence[LandedColumn], sink: Sink) -> None:
        """Write the object read through ``handle`` into ``sink`` as CSV rows (its feed)."""
        if not self.csv_feed_path:
            raise ConfigurationError(f"no warehouse fed through its client reads {self.name}")
        feed = cast("CsvFeed", _resolve(self.csv_feed_path))
        feed(handle, columns, sink)

    def text_batches(self, handle: BinaryIO, columns: Sequence[LandedColumn]) -> Iterator[Any]:
        """The object read through ``handle`` as Arrow batches of its CSV feed's texts."""
        if not self.text_batches_path:
            raise ConfigurationError(f"no text batches of {self.name} objects")
        batches = cast("TextBatches", _resolve(self.text_batches_path))
        return batches(handle, columns)

    def row_filename(self, file_name: str) -> str:
        """The ``filename`` column value of the rows of ``file_name``."""
        return file_name.removesuffix(self.suffix) + self.row_filename_suffix


GZIP_MAGIC: Final = b"\x1f\x8b"


def _check_gzip_csv_head(head: bytes, layout: Layout, dataset: str) -> None:
    """gzip, and the published header line."""
    if not head.startswith(GZIP_MAGIC):
        raise VerificationFailed("object is not gzip-compressed (no gzip magic bytes)")
    try:
        text = zlib.decompressobj(wbits=31).decompress(head, 16 * 1024)
    except zlib.error as exc:
        raise VerificationFailed(f"object is not a valid gzip stream: {exc}") from exc
    line = text.split(b"\n", 1)[0].rstrip(b"\r")
    expected = layout.header
    got = line.decode("utf-8", "replace").lstrip("\ufeff")
    if got != expected:
        raise VerificationFailed(header_mismatch(expected, got, f"published {dataset}"))


def header_mismatch(expected: str, got: str, layout: str = "published") -> str:
    """Where a header first differs from the layout: ``column 2 is 'pickup', expected
    'tpep_pickup_datetime' (18 columns expected, 3 found)``. The file's text is quoted with
    ``repr`` (cut at 60 characters), so nothing in it reaches a log or a terminal raw."""
    want, have = expected.split(","), got.split(",")
    counts = f"({len(want)} columns expected, {len(have)} found)"
    lead = f"header does not match the {layout} layout:"
    for position, (name, found) in enumerate(zip(want, have, strict=False), start=1):
        if name != found:
            return f"{lead} column {position} is {found[:60]!r}, expected {name!r} {counts}"
    if len(have) < len(want):
        missing = want[len(have)]
        return f"{lead} column {len(have) + 1} ({missing!r}) is missing {counts}"
    extra = have[len(want)]
    return f"{lead} column {len(want) + 1} ({extra[:60]!r}) is not in it {counts}"


PARQUET_MAGIC: Final = b"PAR1"


def _check_parquet_head(head: bytes, layout: Layout, dataset: str) -> None:
    """``PAR1`` first (the footer, schema and row count are checked on the whole object)."""
    if head[: len(PARQUET_MAGIC)] != PARQUET_MAGIC:
        raise VerificationFailed(
            f"not a Parquet file: it starts with {head[:4]!r}, not {PARQUET_MAGIC!r}"
            " (an error page or another format)"
        )


CSV_GZ: Final = SourceFormat(
    name="csv.gz",
    suffix=".csv.gz",
    content_type="application/gzip",
    verifier_path="taxi_pipeline.pipeline.verify:gzip_csv_verifier",
    object_verifier_path="taxi_pipeline.pipeline.verify:verify_gzip_csv_object",
    check_head=_check_gzip_csv_head,
    head_bytes=64 * 1024,
    row_filename_suffix=".csv",
    csv_feed_path="taxi_pipeline.pipeline.verify:gzip_csv_feed",
)

PARQUET: Final = SourceFormat(
    name="parquet",
    suffix=".parquet",
    # Registered with IANA in 2024; GCS and browsers show it as such.
    content_type="application/vnd.apache.parquet",
    verifier_path="taxi_pipeline.pipeline.verify_parquet:parquet_verifier",
    object_verifier_path="taxi_pipeline.pipeline.verify_parquet:verify_parquet_lake_object",
    check_head=_check_parquet_head,
    head_bytes=len(PARQUET_MAGIC),
    # The TLC's rows are named after the file itself: there is no CSV behind it.
    row_filename_suffix=".parquet",
    csv_feed_path="taxi_pipeline.pipeline.verify_parquet:parquet_csv_feed",
    text_batches_path="taxi_pipeline.pipeline.verify_parquet:parquet_text_batches",
    typed=True,
    declares_rows=True,
)

FORMATS: Final[dict[str, SourceFormat]] = {CSV_GZ.name: CSV_GZ, PARQUET.name: PARQUET}


def format_named(name: str) -> SourceFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown source format {name!r}") from None


def format_of(file_name: str) -> SourceFormat | None:
    """The format whose suffix ``file_name`` ends with (the longest suffix wins)."""
    matches = [f for f in FORMATS.values() if file_name.endswith(f.suffix)]
    return max(matches, key=lambda f: len(f.suffix)) if matches else None
