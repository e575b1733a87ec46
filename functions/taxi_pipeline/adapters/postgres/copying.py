"""Streaming a lake object into PostgreSQL's ``COPY ... FROM STDIN``, over several connections.

One COPY is one server process parsing every field of the month; two COPYs, each into a landing
table of its own on a connection of its own, parse it on two cores (BENCHMARKS.md, section 8).
This client cuts the inflated CSV at record boundaries (a newline outside quotes) and hands the
pieces out in turn, or hands out a Parquet file's batches of rows written as CSV; each
connection's COPY runs on a thread of its own, fed through a short queue, so memory stays
bounded by a few pieces per connection.

A failure anywhere (the source, a COPY, the server) ends every COPY with an error: none of them
completes on part of the data.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Final

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

CHUNK: Final = 1 << 20
"""Bytes inflated, and handed to one connection, at a time."""
_QUEUED: Final = 4
_WAIT: Final = 0.2
"""Seconds between looks at whether another part failed."""


@dataclass(frozen=True)
class CopyTarget:
    """One connection and the ``COPY ... FROM STDIN`` it runs. ``prepare``: statements run
    first in the COPY's own transaction (a landing table created there), or ``None`` for a
    connection already in the transaction that holds its table."""

    conn: psycopg.Connection[Any]
    statement: str
    prepare: Sequence[str] | None = None


class _Abort(Exception):
    """Raised inside a COPY block so that the COPY fails rather than ends."""


def record_end(data: bytes) -> int:
    """Where the last complete CSV record of ``data`` ends (0: none does), ``data`` starting at
    a record's start: after the last newline with an even number of quotes before it (a quote
    inside a quoted field is doubled, so the parity holds)."""
    if b'"' not in data:
        return data.rfind(b"\n") + 1
    odd = data.count(b'"') % 2 == 1  # at the end of data
    end = len(data)
    while (newline := data.rfind(b"\n", 0, end)) >= 0:
        if data.count(b'"', newline + 1, end) % 2 == 1:
            odd = not odd
        if not odd:
            return newline + 1
        end = newline
    return 0


def csv_pieces(inflated: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    """The inflated CSV in pieces of whole records (the last may lack its newline)."""
    carry = b""
    while block := inflated.read(chunk):
        data = carry + block if carry else block
        end = record_end(data)
        if end:
            yield data[:end]
        carry = data[end:]
    if carry:
        yield carry


def parquet_pieces(batches: Iterable[pa.RecordBatch]) -> Iterator[bytes]:
    """Each batch of rows as CSV text, no header."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    options = pa_csv.WriteOptions(include_header=False)
    for batch in batches:
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(batch, sink, write_options=options)
        yield sink.getvalue().to_pybytes()


def copy_pieces(targets: Sequence[CopyTarget], pieces: Iterable[bytes]) -> None:
    """Hand ``pieces`` to ``targets`` in turn, each COPY on a thread of its own; return once
    every COPY completed, or raise the first failure once every COPY has ended (failed)."""
    failures: list[BaseException] = []
    failed = threading.Event()
    queues: list[queue.Queue[bytes | None]] = [queue.Queue(_QUEUED) for _ in targets]
    threads = [
        threading.Thread(
            target=_run, args=(target, queues[i], failures, failed), name=f"copy-{i}", daemon=True
        )
        for i, target in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    try:
        turn = 0
        for piece in pieces:
            if piece:
                _put(queues[turn % len(queues)], piece, failed)
                turn += 1
        for q in queues:
            _put(q, None, failed)  # the end: each COPY completes
    except _Abort:
        pass  # a COPY failed: its error is in failures
    except BaseException as exc:
        failures.insert(0, exc)
        failed.set()
    finally:
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]


def _put(q: queue.Queue[bytes | None], piece: bytes | None, failed: threading.Event) -> None:
    while not failed.is_set():
        with contextlib.suppress(queue.Full):
            q.put(piece, timeout=_WAIT)
            return
    raise _Abort


def _run(
    target: CopyTarget,
    pieces: queue.Queue[bytes | None],
    failures: list[BaseException],
    failed: threading.Event,
) -> None:
    conn = target.conn

    def copy() -> None:
        with conn.cursor().copy(target.statement) as sink:
            while (piece := _next(pieces, failed)) is not None:
                sink.write(piece)

    try:
        if target.prepare is None:
            copy()
        else:
            with conn.transaction():
                for statement in target.prepare:
                    conn.execute(statement)
                copy()
    except _Abort:
        pass
    except BaseException as exc:
        failures.append(exc)
        failed.set()


def _next(pieces: queue.Queue[bytes | None], failed: threading.Event) -> bytes | None:
    """The next piece (``None``: the end); :class:`_Abort` once another part failed."""
    while not failed.is_set():
        with contextlib.suppress(queue.Empty):
            return pieces.get(timeout=_WAIT)
    raise _Abort
