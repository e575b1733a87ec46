"""A function killed after each side effect of each step, then redelivered: converges exactly."""

from __future__ import annotations

import pytest

from support.reliability import JAN, RigFactory, Source, assert_exact
from taxi_pipeline.adapters.faults.wrappers import Faults
from taxi_pipeline.domain.datasets import Dataset, object_name
from taxi_pipeline.domain.messages import RunState

# (kill point, which occurrence): the side effects of download, register and merge, in order.
KILL_POINTS = [
    # download
    ("after append_run_events", 1),  # RUNNING recorded, nothing else done
    ("lake.write", 1),  # mid-upload: the first chunk written, not committed
    ("after lake.commit", 1),  # object committed (its finalize event is out), step not done
    # register
    ("after ensure_final_table", 1),
    ("after create_external_table", 1),  # the external table exists, no merge request yet
    ("before publish merge-requests", 1),
    ("after publish merge-requests", 1),  # merge requested, register's outcome not recorded
    # merge
    ("after create_external_table", 2),
    ("before stage", 1),
    ("after stage", 1),  # staging table built
    ("before merge_staged", 1),
    ("after merge_staged", 1),  # rows inserted and recorded as loaded, staging still there
    ("after drop_month_objects", 1),  # loaded and cleaned up, result not published
    ("before publish ingest-results", 1),
    ("after publish ingest-results", 1),  # result out, the last merge line not yet written
]


@pytest.mark.parametrize(("point", "nth"), KILL_POINTS, ids=[f"{p}#{n}" for p, n in KILL_POINTS])
@pytest.mark.parametrize("copies", [1, 2], ids=["once", "twice"])
def test_kill_then_redelivery_converges(
    rig_factory: RigFactory, source: Source, point: str, nth: int, copies: int
) -> None:
    faults = Faults(kill_at=point, kill_nth=nth, copies=copies, seed=nth)
    rig = rig_factory(faults=faults)
    generated = source.files[(Dataset.GREEN, JAN)]
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-crash")

    rig.run(workers=copies)

    assert faults.killed, f"the kill point {point!r} #{nth} was never reached"
    assert rig.bus.crashes == [f"killed {point} (#{nth})"]
    assert_exact(rig, generated)
    assert rig.leftovers() == []
    assert rig.raw_objects() == [object_name(Dataset.GREEN, JAN)]
    results = rig.bus.results()
    assert results, "no result published"
    assert {r.state for r in results} == {RunState.SUCCESS}
    assert len(rig.warehouse.loads(Dataset.GREEN)) >= 1
    # The redelivery finished the run: its last merge line is SUCCESS.
    merge_lines = [e for e in rig.events("green-201901-crash") if e.step == "merge"]
    assert merge_lines[-1].state is RunState.SUCCESS
