"""The fault tests again on the GCS lake and the BigQuery warehouse (fake-gcs-server and the
BigQuery emulator, load-mode staging), wired by ``bootstrap.build_in_process`` with the same
faults."""

from __future__ import annotations

import pytest

from support.reliability import JAN, RigFactory, Source, assert_exact
from taxi_pipeline.adapters.faults.wrappers import Faults
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, file_name, object_name
from taxi_pipeline.domain.messages import RunState

pytestmark = pytest.mark.emulator
NAME = file_name(Dataset.GREEN, JAN)


def test_every_event_three_times_shuffled_in_parallel(
    cloud_rig_factory: RigFactory, source: Source
) -> None:
    rig = cloud_rig_factory(faults=Faults(copies=3, seed=5))
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-dup")
    rig.run(workers=3)
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    assert rig.leftovers() == []
    assert rig.raw_objects() == [object_name(Dataset.GREEN, JAN)]
    assert all(f.startswith("TransientError") for f in rig.bus.failures), rig.bus.failures
    assert {r.state for r in rig.bus.results()} == {RunState.SUCCESS}


KILL_POINTS = [
    ("lake.write", 1),
    ("after lake.commit", 1),
    ("after create_external_table", 1),
    ("before publish merge-requests", 1),
    ("after stage", 1),
    ("after merge_staged", 1),
    ("after drop_month_objects", 1),
    ("before publish ingest-results", 1),
]


@pytest.mark.parametrize(("point", "nth"), KILL_POINTS, ids=[f"{p}#{n}" for p, n in KILL_POINTS])
def test_kill_then_redelivery_converges(
    cloud_rig_factory: RigFactory, source: Source, point: str, nth: int
) -> None:
    faults = Faults(kill_at=point, kill_nth=nth, seed=0)
    rig = cloud_rig_factory(faults=faults)
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-crash")
    rig.run()
    assert faults.killed
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    assert rig.leftovers() == []
    assert rig.raw_objects() == [object_name(Dataset.GREEN, JAN)]
    assert {r.state for r in rig.bus.results()} == {RunState.SUCCESS}


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (Fault.unavailable(times=2), RunState.SUCCESS),
        (Fault.cut(after_bytes=5_000), RunState.SUCCESS),
        (Fault.corrupt(at=3_000, times=None), RunState.FAILED),
    ],
    ids=["503-twice", "cut-once", "corrupt"],
)
def test_source_faults(
    cloud_rig_factory: RigFactory, source: Source, fault: Fault, outcome: RunState
) -> None:
    rig = cloud_rig_factory()
    source.server.inject(NAME, fault)
    key = rig.bus.submit(Dataset.GREEN, JAN, "green-201901-source")
    rig.run()
    assert rig.bus.deliveries[key] == 1
    assert rig.events("green-201901-source")[-1].state is outcome
    assert rig.leftovers() == []
    if outcome is RunState.SUCCESS:
        assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    else:
        assert rig.raw_objects() == []
        assert not rig.table_exists(Dataset.GREEN) or rig.final_count(Dataset.GREEN) == 0
