"""Streaming verification of a downloaded ``.csv.gz`` before it may become a ``raw/`` object.

Fed chunk by chunk while the bytes stream to the lake, so verification costs no second pass and
no disk: complete length, gzip integrity (CRC-32 and size trailer of every member), the header
equal to the dataset's published layout, a plausible row count, and an inflated size under a cap
(a decompression bomb fails here, clearly, rather than deep inside the warehouse's CSV parser).
The register step runs the same verifier over a hand-uploaded object, read from the lake.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import BinaryIO, cast

from isal import isal_zlib

from taxi_pipeline.domain.datasets import Layout
from taxi_pipeline.domain.formats import (
    LandedColumn,
    Sink,
    StreamVerifier,
    VerifyTarget,
    header_mismatch,
)
from taxi_pipeline.domain.formats import VerifiedFile as VerifiedFile
from taxi_pipeline.errors import VerificationFailed

_MAX_HEADER_BYTES = 4096
_READ_CHUNK = 1024 * 1024
_INFLATE_STEP = 4 * 1024 * 1024
DEFAULT_MAX_INFLATED_BYTES = 8 * 1024**3
# isal's stub declares ``error`` as an instance of Exception; at run time it is the class.
_INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)


class TruncatedStream(VerificationFailed):
    """The gzip stream ended without its end-of-stream marker and trailer."""


class GzipCsvVerifier:
    """Checks a gzip CSV as it streams past; :meth:`finish` raises on anything wrong.

    Inflating the whole stream is what a gzip CRC check costs; ISA-L's inflate (python-isal,
    zlib-compatible) does it ~1.6x faster than zlib, and the verification bounds how fast a
    download can go (BENCHMARKS.md, section 3).
    """

    def __init__(
        self,
        layout: Layout,
        expected_length: int | None,
        min_rows: int = 1,
        max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
    ) -> None:
        self._layout = layout
        self._expected_length = expected_length
        self._min_rows = min_rows
        self._max_inflated = max_inflated_bytes
        self._inflater = isal_zlib.decompressobj(wbits=31)
        self._compressed = 0
        self._uncompressed = 0
        self._newlines = 0
        self._header: bytes | None = None
        self._head = bytearray()
        self._last_byte = b""

    def feed(self, chunk: bytes) -> None:
        self._compressed += len(chunk)
        if self._expected_length is not None and self._compressed > self._expected_length:
            raise VerificationFailed(
                f"received more than the announced {self._expected_length} bytes"
            )
        data = chunk
        while True:
            try:
                # Bounded output per call: a few KiB of a bomb inflate to gigabytes at once.
                out = self._inflater.decompress(data, _INFLATE_STEP)
            except _INFLATE_ERROR as exc:
                raise VerificationFailed(f"not a valid gzip stream: {exc}") from exc
            self._consume(out)
            if self._inflater.eof:
                # Concatenated gzip members are legal gzip: start the next one.
                data = self._inflater.unused_data
                if not data:
                    return
                self._inflater = isal_zlib.decompressobj(wbits=31)
            else:
                data = self._inflater.unconsumed_tail
                if not data and len(out) < _INFLATE_STEP:
                    return  # input used up and no output left pending: wait for more

    def _consume(self, out: bytes) -> None:
        if not out:
            return
        self._uncompressed += len(out)
        if self._uncompressed > self._max_inflated:
            raise VerificationFailed(
                f"file inflates to more than {self._max_inflated:,} bytes, the most a month may"
                " hold (TAXI_PIPELINE_MAX_INFLATED_BYTES): a decompression bomb, or a file that"
                " is not a taxi month"
            )
        self._newlines += out.count(b"\n")
        self._last_byte = out[-1:]
        if self._header is None:
            self._head += out[: _MAX_HEADER_BYTES - len(self._head) + 1]
            end = self._head.find(b"\n")
            if end >= 0:
                self._check_header(bytes(self._head[:end]))
            elif len(self._head) > _MAX_HEADER_BYTES:
                raise VerificationFailed("no header line in the first 4 KiB")

    def _check_header(self, line: bytes) -> None:
        header = line.rstrip(b"\r")
        self._header = header
        try:
            text = header.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise VerificationFailed("header is not UTF-8") from exc
        expected = self._layout.header
        if text.lstrip("\ufeff") != expected:
            raise VerificationFailed(header_mismatch(expected, text.lstrip("\ufeff")))

    def finish(self) -> VerifiedFile:
        """Raise :class:`VerificationFailed` unless the stream was complete and plausible."""
        if self._expected_length is not None and self._compressed != self._expected_length:
            raise VerificationFailed(
                f"download cut short: {self._compressed} of {self._expected_length} bytes"
            )
        if self._compressed == 0:
            raise VerificationFailed("empty download")
        if not self._inflater.eof:
            raise TruncatedStream("gzip stream is truncated (no end-of-stream and CRC trailer)")
        if self._header is None:
            if self._head:
                self._check_header(bytes(self._head))
            else:
                raise VerificationFailed("file is empty after decompression")
        rows = self._newlines - 1 + (1 if self._last_byte not in (b"\n", b"") else 0)
        if self._newlines == 0:
            rows = 0
        if rows < self._min_rows:
            raise VerificationFailed(
                f"file has {rows} data rows, fewer than the plausible minimum {self._min_rows}"
            )
        return VerifiedFile(self._compressed, self._uncompressed, rows)


def gzip_csv_verifier(target: VerifyTarget) -> GzipCsvVerifier:
    """The ``csv.gz`` entry's :data:`~taxi_pipeline.domain.formats.VerifierFactory`."""
    return GzipCsvVerifier(
        target.layout, target.expected_length, target.min_rows, target.max_inflated
    )


def gzip_csv_feed(handle: BinaryIO, columns: Sequence[LandedColumn], sink: Sink) -> None:
    """The ``csv.gz`` entry's CSV feed: the object inflated (on ISA-L's own thread) into
    ``sink`` as it is, header included, 1 MiB at a time (its columns are the layout's)."""
    from isal import igzip_threaded

    inflated: BinaryIO = igzip_threaded.open(  # type: ignore[no-untyped-call]
        handle, "rb", threads=1, block_size=_READ_CHUNK
    )
    with inflated:
        while chunk := inflated.read(_READ_CHUNK):
            sink.write(chunk)


def verify_gzip_csv_object(handle: BinaryIO, target: VerifyTarget) -> VerifiedFile:
    """The ``csv.gz`` entry's object verifier: the whole object inflated once, streaming."""
    verifier = gzip_csv_verifier(target)
    while chunk := handle.read(_READ_CHUNK):
        verifier.feed(chunk)
    return verifier.finish()


class BackgroundVerifier:
    """Runs a format's verifier (:class:`GzipCsvVerifier` for ``csv.gz``) on its own thread, so
    inflating (which releases the GIL) overlaps with receiving and uploading the same bytes. At
    most ``depth`` chunks wait in between, which bounds the memory it adds. A verification
    failure surfaces on the next :meth:`feed` or at :meth:`finish`, always before the upload can
    be committed.
    """

    def __init__(self, verifier: StreamVerifier, depth: int = 8) -> None:
        self._verifier = verifier
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="verify-download", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._failure is None:
                try:
                    self._verifier.feed(chunk)
                except BaseException as exc:  # handed to the producer, which re-raises it
                    self._failure = exc

    def feed(self, chunk: bytes) -> None:
        if self._failure is not None:
            self.close()
            raise self._failure
        self._chunks.put(chunk)

    def finish(self) -> VerifiedFile:
        self.close()
        if self._failure is not None:
            raise self._failure
        return self._verifier.finish()

    def close(self) -> None:
        """Stop the thread (idempotent); the producer calls it on every exit path."""
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()
