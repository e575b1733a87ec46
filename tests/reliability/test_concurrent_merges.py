"""Two months of one dataset merged at the same time, sharing rows (trips both files hold): each
shared row lands once, whichever load commits first.

The embedded warehouse inserts a clean month straight into the final table, uncommitted, and
checks its ids against the table as it was when that pass began; so two loads of one dataset
must not overlap from the pass to the commit (the merge step's insert lock covers both then)."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from support.reliability import FEB, JAN, RigFactory, Source, gzip_bytes
from taxi_pipeline.adapters.faults.wrappers import Faults
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month, file_name
from taxi_pipeline.domain.messages import RunState

_T = TypeVar("_T")

LAYOUT = Dataset.GREEN.layout
SHARED = [
    f"2,2019-01-31 23:{minute:02d}:00,2019-02-01 00:{minute:02d}:00,N,1,74,75,1,1.50,7.00,0.5,0.5,"
    "0,0,,0.3,8.30,1,1,0"
    for minute in range(10)
]
"""Trips that start on January's last day and end in February: both months' files hold them."""


def _fillers(month: Month, count: int) -> list[str]:
    return [
        f"2,{month}-{1 + i // 1440:02d} {i // 60 % 24:02d}:{i % 60:02d}:00,,N,1,74,75,1,1.50,7.00,"
        "0.5,0.5,0,0,,0.3,8.30,1,1,0"
        for i in range(count)
    ]


def _serve(source: Source, month: Month, lines: Sequence[str]) -> None:
    body = gzip_bytes(LAYOUT.header, list(lines))
    source.server.inject(file_name(Dataset.GREEN, month), Fault.replace_body(body, None))


@dataclass
class _StagingTogether(Faults):
    """Each month's staging waits (at most 2 s) for the other's to begin, so two loads that
    were allowed to overlap would."""

    met: threading.Barrier = field(default_factory=lambda: threading.Barrier(2))

    def around(self, call: str, run: Callable[[], _T]) -> _T:
        if call == "stage":
            # Broken when the other load did not come in time: it waits for this one to commit.
            with contextlib.suppress(threading.BrokenBarrierError):
                self.met.wait(timeout=2)
        return super().around(call, run)


def test_two_months_sharing_rows_merged_at_once_hold_each_row_once(
    rig_factory: RigFactory, source: Source
) -> None:
    faults = _StagingTogether(seed=0)
    rig = rig_factory(faults=faults, max_concurrent_runs_per_dataset=2)
    _serve(source, JAN, [*_fillers(JAN, 100), *SHARED])
    _serve(source, FEB, [*_fillers(FEB, 100), *SHARED])
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-shared")
    rig.bus.submit(Dataset.GREEN, FEB, "green-201902-shared")
    rig.run(workers=2)

    results = {r.run_id: r for r in rig.bus.results()}
    assert {r.state for r in results.values()} == {RunState.SUCCESS}
    inserted = sorted(r.rows_inserted or 0 for r in results.values())
    assert inserted == [100, 110], "the second load finds the shared trips present"
    ids = Counter(
        row[0] for row in rig.warehouse.query("SELECT unique_row_id FROM green_tripdata").rows
    )
    assert sum(ids.values()) == 210
    assert max(ids.values()) == 1
    assert faults.met.broken, "the loads took turns: one staged while the other waited"
