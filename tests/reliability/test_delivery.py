"""At-least-once delivery: every event of a month three times, shuffled, in parallel."""

from __future__ import annotations

import pytest

from support.reliability import RigFactory, Source, assert_exact
from taxi_pipeline.adapters.faults.wrappers import Faults
from taxi_pipeline.domain.messages import RunState


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_event_three_times_shuffled_in_parallel(
    rig_factory: RigFactory, source: Source, seed: int
) -> None:
    rig = rig_factory(faults=Faults(copies=3, seed=seed))
    runs = {}
    for (dataset, month), _generated in source.files.items():
        run_id = f"{dataset.value}-{month.year}{month.month:02d}-dup{seed}"
        runs[run_id] = (dataset, month)
        rig.bus.submit(dataset, month, run_id)

    rig.run(workers=4)

    for generated in source.files.values():
        assert_exact(rig, generated)
    assert rig.leftovers() == []
    assert sorted(rig.raw_objects()) == sorted(
        f"raw/{d.value}/{d.value}_tripdata_{m}.csv.gz" for d, m in source.files
    )
    # Every delivery of every message counted: each one at least 3 times, none dead-lettered.
    assert min(rig.bus.deliveries.values()) >= 3
    assert rig.bus.crashes == []
    # Only transient errors may escape a handler (a duplicate racing another one).
    assert all(f.startswith("TransientError") for f in rig.bus.failures), rig.bus.failures
    for run_id in runs:
        states = {r.state for r in rig.bus.results() if r.run_id == run_id}
        assert states == {RunState.SUCCESS}, (run_id, rig.bus.failures)
    # Every result of a run reports the one load: the delivery that inserted the file's rows,
    # and its redeliveries, which insert nothing and repeat the run's figures.
    for run_id, (dataset, month) in runs.items():
        inserted = {r.rows_inserted for r in rig.bus.results() if r.run_id == run_id}
        assert inserted == {source.files[(dataset, month)].rows}
