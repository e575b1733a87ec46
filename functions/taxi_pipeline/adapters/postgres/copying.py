"""Feeding a lake object into PostgreSQL's ``COPY ... FROM STDIN`` over several connections.

One COPY is one server process parsing every field of the month; two COPYs, each into a landing
table of its own on a connection of its own, parse it on two cores (BENCHMARKS.md, section 8).
The format's CSV feed writes into a :class:`PieceSink`, which cuts the CSV text at record ends (a
newline outside quotes) about every MiB and hands the pieces to the connections in turn; each
connection's COPY runs on a thread of its own behind a short queue, so memory stays bounded by a
few pieces per connection.

A failure anywhere (the feed, a COPY, the server) ends every COPY with an error: none completes
on part of the data.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import psycopg

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


def record_end(data: bytes | bytearray) -> int:
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


class PieceSink:
    """A write-only file (what a format's CSV feed and the client typing's encoder write into)
    that hands the data to ``deliver`` in pieces of about ``chunk`` bytes: of whole CSV records,
    or where ``whole_records`` is false (binary COPY data, fed to one connection), cut anywhere."""

    def __init__(
        self, deliver: Callable[[bytes], None], chunk: int = CHUNK, *, whole_records: bool = True
    ) -> None:
        self._deliver = deliver
        self._chunk = chunk
        self._whole_records = whole_records
        self._buffer = bytearray()
        self.closed = False

    def write(self, data: bytes) -> int:
        if not self._whole_records and not self._buffer and len(data) >= self._chunk:
            self._deliver(bytes(data))  # a whole encoded batch: handed over as it is, no copy
            return len(data)
        self._buffer += data
        if len(self._buffer) >= self._chunk:
            end = record_end(self._buffer) if self._whole_records else len(self._buffer)
            if end == len(self._buffer):
                piece, self._buffer = bytes(self._buffer), bytearray()
                self._deliver(piece)
            elif end:
                piece = bytes(self._buffer[:end])
                del self._buffer[:end]
                self._deliver(piece)
        return len(data)

    def finish(self) -> None:
        """Hand over the rest (the last record may lack its newline)."""
        if self._buffer:
            piece, self._buffer = bytes(self._buffer), bytearray()
            self._deliver(piece)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def copy_through(
    targets: Sequence[CopyTarget],
    feed: Callable[[PieceSink], None],
    *,
    whole_records: bool = True,
) -> int:
    """Run ``feed`` (writing the COPY data into the sink it gets) on this thread and each
    target's COPY on a thread of its own, the pieces handed out in turn (pieces of whole CSV
    records, unless ``whole_records`` is false: binary data, for one target); return once every
    COPY completed (with the rows they copied, together), or raise the first failure once
    every COPY has ended (failed)."""
    failures: list[BaseException] = []
    copied: list[int] = []
    failed = threading.Event()
    queues: list[queue.Queue[bytes | None]] = [queue.Queue(_QUEUED) for _ in targets]
    threads = [
        threading.Thread(
            target=_run,
            args=(target, queues[i], copied, failures, failed),
            name=f"copy-{i}",
            daemon=True,
        )
        for i, target in enumerate(targets)
    ]
    turn = itertools.count()

    def deliver(piece: bytes) -> None:
        _put(queues[next(turn) % len(queues)], piece, failed)

    for thread in threads:
        thread.start()
    try:
        sink = PieceSink(deliver, whole_records=whole_records)
        feed(sink)
        sink.finish()
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
    return sum(copied)


def _put(q: queue.Queue[bytes | None], piece: bytes | None, failed: threading.Event) -> None:
    while not failed.is_set():
        with contextlib.suppress(queue.Full):
            q.put(piece, timeout=_WAIT)
            return
    raise _Abort


def _run(
    target: CopyTarget,
    pieces: queue.Queue[bytes | None],
    copied: list[int],
    failures: list[BaseException],
    failed: threading.Event,
) -> None:
    conn = target.conn

    def copy() -> None:
        cursor = conn.cursor()
        with cursor.copy(target.statement) as sink:
            while (piece := _next(pieces, failed)) is not None:
                sink.write(memoryview(piece))  # psycopg cuts it into messages without copying
        copied.append(cursor.rowcount)

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
