"""How the PostgreSQL client cuts COPY data into pieces for its connections: a CSV only at a
record's end, a newline inside a quoted field never being one; binary data anywhere."""

from __future__ import annotations

import csv
import io

import pytest

from taxi_pipeline.adapters.postgres.copying import PieceSink, record_end


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"a,b\n1,2\n3,4", 8),
        (b"a,b\n1,2\n", 8),
        (b"no newline yet", 0),
        (b'1,"x\ny"\n2,"z', 8),  # the newline inside "x\ny" ends nothing
        (b'1,"x\ny', 0),
        (b'1,"say ""hi""\n"\n2,3\n', 20),  # doubled quotes keep the parity
        (b"1,2\r\n3,4\r\n5", 10),
    ],
)
def test_a_piece_ends_after_the_last_newline_outside_quotes(data: bytes, end: int) -> None:
    assert record_end(data) == end


def test_the_pieces_are_the_records_in_order_whatever_the_writes_and_chunk_size() -> None:
    rows = [["1", f"line {i}", 'a "quoted"\nfield' if i % 7 == 0 else "plain"] for i in range(500)]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    data = text.getvalue().encode()
    for chunk, write in ((1, 5), (7, 3), (64, 100), (1000, 333), (len(data) + 1, len(data))):
        pieces: list[bytes] = []
        sink = PieceSink(pieces.append, chunk)
        for start in range(0, len(data), write):
            sink.write(data[start : start + write])
        sink.finish()
        assert b"".join(pieces) == data
        for piece in pieces:  # each piece parses on its own into whole records
            assert all(len(r) == 3 for r in csv.reader(io.StringIO(piece.decode())))


def test_binary_data_is_cut_anywhere_once_a_chunk_is_full_and_nothing_is_lost() -> None:
    """Binary COPY data (one connection) has no records to keep whole: a newline byte or a
    quote byte in it is just a byte."""
    data = bytes(range(256)) * 40
    pieces: list[bytes] = []
    sink = PieceSink(pieces.append, 1000, whole_records=False)
    for start in range(0, len(data), 300):
        sink.write(data[start : start + 300])
    sink.finish()
    assert b"".join(pieces) == data
    assert [len(p) for p in pieces[:-1]] == [1200] * (len(pieces) - 1)  # 4 writes, every time
    batch = bytes(5000)  # an encoded batch larger than a chunk, the sink empty: as it is
    sink.write(batch)
    assert pieces[-1] is batch
