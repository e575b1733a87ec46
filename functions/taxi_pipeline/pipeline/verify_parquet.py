"""Verification of a TLC Parquet file before it may become a ``raw/`` object.

The same shape as :class:`~taxi_pipeline.pipeline.verify.GzipCsvVerifier`: fed chunk by chunk
while the bytes stream to the lake, :meth:`ParquetVerifier.finish` raises
:class:`~taxi_pipeline.errors.VerificationFailed` unless the file is complete (the announced
length; ``PAR1`` at both ends), its footer parses and agrees with the file's size, its schema is
one its month's period has (:func:`taxi_pipeline.domain.tlc_schemas.recognise`) and it holds at
least ``min_rows`` rows. It returns the footer's row count, which staging later compares with the
rows it reads.

Parquet keeps everything a reader needs to trust the file in its footer, at the very end
(``... footer, 4-byte little-endian footer length, PAR1``), so the verifier keeps only the first
four bytes and a bounded tail (``max_footer_bytes`` + 8) while the rest streams past: a 450 MB
fhvhv month costs no more memory than a 1 MB green one. pyarrow parses the footer from a small
synthetic buffer ``PAR1 + footer + length + PAR1`` (its row-group offsets point past that buffer,
which reading the metadata never follows); it is imported only when a footer is parsed, so
``import main`` stays as cold as before.

Parquet has no whole-file checksum. Where the source's ``ETag`` is a plain MD5 (an S3 object
uploaded in one part), passing it as ``etag`` adds the MD5 of the bytes to the checks; a
multipart ETag (``"...-12"``) is not an MD5 of the content and is not checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from taxi_pipeline.domain.datasets import Month
from taxi_pipeline.domain.formats import LandedColumn, Sink, VerifyTarget
from taxi_pipeline.domain.tlc_schemas import Recognition, arrow_fields, period_of, recognise
from taxi_pipeline.errors import VerificationFailed
from taxi_pipeline.pipeline.verify import VerifiedFile

MAGIC: Final = b"PAR1"
DEFAULT_MAX_FOOTER_BYTES: Final = 16 << 20
"""Footers of the published files are tens of KiB; anything near this is not a TLC file."""
_TRAILER: Final = 8  # footer length (uint32 little-endian) + PAR1
_SMALLEST: Final = len(MAGIC) + _TRAILER
_MD5_ETAG_RE: Final = re.compile(r'^(?:W/)?"?([0-9a-fA-F]{32})"?$')
_READ_CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class VerifiedParquet(VerifiedFile):
    """A verified Parquet file: ``rows`` is the footer's count, ``bytes_uncompressed`` the
    row groups' uncompressed size."""

    row_groups: int
    recognition: Recognition
    """The schema period, each column as the file holds it, and any new columns."""
    created_by: str
    """The writer the footer names (e.g. ``parquet-cpp-arrow version 14.0.2``)."""

    @property
    def notes(self) -> tuple[str, ...]:
        """``new column X (type) not loaded`` for each column beyond the file's period."""
        return self.recognition.new_column_messages


def md5_of_etag(etag: str | None) -> str | None:
    """The content MD5 a single-part S3 ``ETag`` is, or ``None`` (multipart, absent, other)."""
    match = _MD5_ETAG_RE.match(etag.strip()) if etag else None
    return match.group(1).lower() if match else None


class ParquetVerifier:
    """Checks a TLC Parquet file as it streams past; :meth:`finish` raises on anything wrong.

    Raises :class:`~taxi_pipeline.errors.UnsupportedMonth` at construction for a month before
    the dataset's first schema period (nothing to verify against).
    """

    def __init__(
        self,
        dataset: str,
        month: Month,
        expected_length: int | None,
        min_rows: int = 1,
        *,
        etag: str | None = None,
        max_footer_bytes: int = DEFAULT_MAX_FOOTER_BYTES,
    ) -> None:
        period_of(dataset, month)
        self._dataset = str(dataset)
        self._month = month
        self._expected_length = expected_length
        self._min_rows = min_rows
        self._max_footer = max_footer_bytes
        self._keep = max_footer_bytes + _TRAILER
        self._received = 0
        self._head = b""
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self._expected_md5 = md5_of_etag(etag)
        self._md5 = hashlib.md5(usedforsecurity=False) if self._expected_md5 else None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the footer: at most ``max_footer_bytes`` + 8 + one chunk."""
        return self._tail_bytes + len(self._head)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._received += len(chunk)
        if self._expected_length is not None and self._received > self._expected_length:
            raise VerificationFailed(
                f"received more than the announced {self._expected_length} bytes"
            )
        if self._md5 is not None:
            self._md5.update(chunk)
        if len(self._head) < len(MAGIC):
            self._head += chunk[: len(MAGIC) - len(self._head)]
            if len(self._head) == len(MAGIC):
                _check_head(self._head)
        self._tail.append(chunk)
        self._tail_bytes += len(chunk)
        # Drop whole chunks that lie before the last ``_keep`` bytes.
        while self._tail_bytes - len(self._tail[0]) >= self._keep:
            self._tail_bytes -= len(self._tail.popleft())

    def finish(self) -> VerifiedParquet:
        """Raise :class:`VerificationFailed` unless the file was complete and recognised."""
        if self._expected_length is not None and self._received != self._expected_length:
            raise VerificationFailed(
                f"download cut short: {self._received} of {self._expected_length} bytes"
            )
        if self._received == 0:
            raise VerificationFailed("empty download")
        if self._md5 is not None and self._md5.hexdigest() != self._expected_md5:
            raise VerificationFailed(
                f"content MD5 {self._md5.hexdigest()} differs from the source's ETag"
                f" {self._expected_md5}"
            )
        tail = b"".join(self._tail)[-self._keep :]
        return _verify(
            self._head,
            tail,
            self._received,
            self._dataset,
            self._month,
            self._min_rows,
            self._max_footer,
        )


def parquet_verifier(target: VerifyTarget) -> ParquetVerifier:
    """The ``parquet`` entry's :data:`~taxi_pipeline.domain.formats.VerifierFactory`."""
    return ParquetVerifier(
        target.dataset, target.month, target.expected_length, target.min_rows, etag=target.etag
    )


def verify_parquet_lake_object(handle: BinaryIO, target: VerifyTarget) -> VerifiedParquet:
    """The ``parquet`` entry's object verifier: both ends of a seekable object (its footer)."""
    return verify_parquet_object(
        handle,
        target.dataset,
        target.month,
        expected_length=target.expected_length,
        min_rows=target.min_rows,
        etag=target.etag,
    )


_CSV_BATCH_ROWS: Final = 64 * 1024


def parquet_csv_feed(handle: BinaryIO, columns: Sequence[LandedColumn], sink: Sink) -> None:
    """The ``parquet`` entry's CSV feed: the object's rows written into ``sink`` as CSV (no
    header), a batch of rows at a time (memory bounded by a row group); pyarrow reads it from
    the handle (a GCS object in ranges). Columns are matched by name ignoring case (the
    verifier checked the footer for the month's period: a column it allows to be absent is
    simply not there)."""
    import pyarrow.csv as pa_csv

    writer: Any = None
    try:
        for rows in _csv_batches(handle, columns):
            if writer is None:
                writer = pa_csv.CSVWriter(
                    sink, rows.schema, write_options=pa_csv.WriteOptions(include_header=False)
                )
            writer.write_batch(rows)
    finally:
        if writer is not None:
            writer.close()


def parquet_text_batches(handle: BinaryIO, columns: Sequence[LandedColumn]) -> Iterator[Any]:
    """The ``parquet`` entry's text batches: the object's rows as Arrow batches with every
    column a string (named by its final name; NULL where the CSV feed writes an empty field),
    each value the text :func:`parquet_csv_feed` writes of it (pyarrow's CSV writer casts each
    value to a string just so), for a client that types the rows itself."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for rows in _csv_batches(handle, columns):
        yield pa.RecordBatch.from_arrays(
            [pc.cast(column, pa.string()) for column in rows.columns], names=rows.schema.names
        )


def _csv_batches(handle: BinaryIO, columns: Sequence[LandedColumn]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(handle)
    by_folded = {name.casefold(): name for name in parquet.schema_arrow.names}
    names = [
        (final, by_folded.get(name.casefold()) if name is not None else None)
        for final, name in columns
    ]
    read = sorted({found for _, found in names if found is not None})
    for batch in parquet.iter_batches(batch_size=_CSV_BATCH_ROWS, columns=read, use_threads=False):
        yield _as_csv_batch(batch, names)


def _as_csv_batch(batch: Any, names: Sequence[tuple[str, str | None]]) -> Any:
    """The batch as CSV columns: renamed to the final names, timestamps written as the CSV
    writes them (``2019-01-01 10:00:00``, fractions only where a value has one), a column the
    file lacks or holds as nulls written empty (NULL). pyarrow writes 1.0 as ``1``, as the CSV
    has counts and codes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays: list[Any] = []
    for _, found in names:
        if found is None:
            arrays.append(pa.nulls(batch.num_rows, pa.string()))
            continue
        array = batch.column(found)
        if pa.types.is_timestamp(array.type):
            with contextlib.suppress(pa.ArrowInvalid):  # a cast that would drop a fraction
                array = pc.cast(array, pa.timestamp("s"))
            array = pc.cast(array, pa.string())
        elif pa.types.is_null(array.type):
            array = pa.nulls(batch.num_rows, pa.string())
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=[final for final, _ in names])


def verify_parquet_object(
    source: BinaryIO | Path,
    dataset: str,
    month: Month,
    *,
    expected_length: int | None = None,
    min_rows: int = 1,
    etag: str | None = None,
    max_footer_bytes: int = DEFAULT_MAX_FOOTER_BYTES,
) -> VerifiedParquet:
    """Verify a whole object already at hand (a hand upload, a lake object): the same checks as
    :class:`ParquetVerifier`.

    A seekable source with no ``etag`` to check is read at both ends only (first four bytes,
    last ``max_footer_bytes`` + 8); otherwise it streams through a :class:`ParquetVerifier`.
    """
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return verify_parquet_object(
                handle,
                dataset,
                month,
                expected_length=expected_length,
                min_rows=min_rows,
                etag=etag,
                max_footer_bytes=max_footer_bytes,
            )
    if md5_of_etag(etag) is None and source.seekable():
        period_of(dataset, month)
        size = source.seek(0, 2)
        if expected_length is not None and size != expected_length:
            raise VerificationFailed(f"object holds {size} bytes, expected {expected_length}")
        if size == 0:
            raise VerificationFailed("empty object")
        source.seek(0)
        head = source.read(len(MAGIC))
        _check_head(head)
        # The trailer first, then exactly the footer it announces: a lake object in GCS is
        # read with ranged GETs, and a footer is tens of KiB where the limit is 16 MiB.
        source.seek(max(size - _TRAILER, 0))
        trailer = source.read(_TRAILER)
        keep = _TRAILER
        if len(trailer) == _TRAILER and trailer[-len(MAGIC) :] == MAGIC:
            (announced,) = struct.unpack("<I", trailer[: -len(MAGIC)])
            keep = min(announced, max_footer_bytes) + _TRAILER
        source.seek(max(size - keep, 0))
        tail = source.read(keep)
        return _verify(head, tail, size, str(dataset), month, min_rows, max_footer_bytes)
    verifier = ParquetVerifier(
        dataset, month, expected_length, min_rows, etag=etag, max_footer_bytes=max_footer_bytes
    )
    for chunk in _chunks(source):
        verifier.feed(chunk)
    return verifier.finish()


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(_READ_CHUNK):
        yield chunk


# --- the checks ---------------------------------------------------------------------------------


def _check_head(head: bytes) -> None:
    if head != MAGIC:
        raise VerificationFailed(
            f"not a Parquet file: it starts with {head!r}, not {MAGIC!r}"
            " (an error page or another format)"
        )


def _verify(
    head: bytes,
    tail: bytes,
    size: int,
    dataset: str,
    month: Month,
    min_rows: int,
    max_footer: int,
) -> VerifiedParquet:
    """Check what a file's two ends say about it; ``tail`` is its last bytes (or all of it)."""
    if size < _SMALLEST:
        raise VerificationFailed(f"too short for a Parquet file: {size} bytes")
    _check_head(head)
    if tail[-len(MAGIC) :] != MAGIC:
        raise VerificationFailed(
            f"no Parquet footer: the file ends with {tail[-len(MAGIC) :]!r}, not {MAGIC!r}"
            " (truncated, or not Parquet)"
        )
    (footer_length,) = struct.unpack("<I", tail[-_TRAILER : -len(MAGIC)])
    if footer_length > max_footer:
        raise VerificationFailed(
            f"Parquet footer of {footer_length} bytes exceeds the {max_footer}-byte limit"
        )
    data_end = size - _TRAILER - footer_length
    if data_end < len(MAGIC):
        raise VerificationFailed(
            f"Parquet footer length {footer_length} is more than the {size}-byte file holds"
        )
    footer = tail[-_TRAILER - footer_length : -_TRAILER]
    metadata = _parse_footer(footer, tail[-_TRAILER:])
    rows, uncompressed, groups = _check_row_groups(metadata, data_end)
    try:
        fields = arrow_fields(metadata.schema.to_arrow_schema())
    except Exception as exc:  # pyarrow raises ArrowInvalid/NotImplemented for odd schemas
        raise VerificationFailed(f"Parquet schema cannot be read as Arrow types: {exc}") from exc
    recognition = recognise(dataset, month, fields)
    if recognition.problem is not None:
        raise VerificationFailed(f"schema not recognised: {recognition.problem}")
    if rows < min_rows:
        raise VerificationFailed(
            f"file has {rows} rows, fewer than the plausible minimum {min_rows}"
        )
    return VerifiedParquet(
        bytes_compressed=size,
        bytes_uncompressed=uncompressed,
        rows=rows,
        row_groups=groups,
        recognition=recognition,
        created_by=str(metadata.created_by or ""),
    )


def _parse_footer(footer: bytes, trailer: bytes) -> Any:
    """The footer's ``pyarrow.parquet.FileMetaData``."""
    import pyarrow as pa  # lazy: only a verification needs it, never an import of main
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(pa.BufferReader(MAGIC + footer + trailer))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise VerificationFailed(f"Parquet footer does not parse: {exc}") from exc


def _check_row_groups(metadata: Any, data_end: int) -> tuple[int, int, int]:
    """``(rows, uncompressed bytes, row groups)``; every column chunk must lie in the data part.

    A footer from another (longer) file, or a file cut and re-terminated, points outside it.
    """
    rows = uncompressed = 0
    groups = int(metadata.num_row_groups)
    for index in range(groups):
        group = metadata.row_group(index)
        rows += int(group.num_rows)
        uncompressed += int(group.total_byte_size)
        for position in range(int(group.num_columns)):
            chunk = group.column(position)
            starts = [int(chunk.data_page_offset)]
            if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
                starts.append(int(chunk.dictionary_page_offset))
            start = min(starts)
            end = start + int(chunk.total_compressed_size)
            if start < len(MAGIC) or end > data_end:
                raise VerificationFailed(
                    f"Parquet footer does not fit the file: row group {index} column"
                    f" {chunk.path_in_schema!r} spans bytes {start}..{end}, the data ends at"
                    f" {data_end}"
                )
    if rows != int(metadata.num_rows):
        raise VerificationFailed(
            f"Parquet footer says {metadata.num_rows} rows, its row groups hold {rows}"
        )
    return rows, uncompressed, groups
