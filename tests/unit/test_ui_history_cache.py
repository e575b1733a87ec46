"""The UI's history cache derives exactly what a full read derives, reading only what is new.

The source is the real run history (SQLite) (in ``tmp_path``), wrapped to count what each refresh
reads; the expected runs are always ``history.derive_runs`` over every line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.devkit.run_history import synthetic_history
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.ui.history_cache import HistoryCache

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class CountingSource:
    warehouse: SqliteHistory
    reads: list[tuple[datetime | None, int]] = field(default_factory=list)

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        events = self.warehouse.run_events(run_id=run_id, dataset=dataset, since=since)
        self.reads.append((since, len(events)))
        return events

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        return self.warehouse.loads(dataset)


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[SqliteHistory]:
    store = SqliteHistory(tmp_path / "runs.sqlite")
    yield store
    store.close()


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _expected(warehouse: SqliteHistory) -> list[history.Run]:
    return history.derive_runs(warehouse.run_events())


def test_refreshes_read_only_the_overlap_and_derive_what_a_full_read_derives(
    warehouse: SqliteHistory,
) -> None:
    old = synthetic_history(40, end=NOW - timedelta(hours=1), span=timedelta(hours=5), seed=3)
    warehouse.append_run_events(old.events)
    source = CountingSource(warehouse)
    clock = Clock(NOW)
    cache = HistoryCache(source, overlap=timedelta(minutes=2), min_interval=0, clock=clock)

    first = cache.snapshot()
    assert list(first.runs) == _expected(warehouse)
    assert source.reads == [(None, len(old.events))]

    # Nothing new: the refresh reads the overlap window only (empty here) and changes nothing.
    clock.at = NOW + timedelta(seconds=30)
    again = cache.snapshot()
    assert source.reads[-1] == (NOW - timedelta(minutes=2), 0)
    assert again.runs == first.runs

    # New runs, and new lines of an old run, arrive; some stamped before the last refresh
    # (a writer that committed late) but inside the overlap.
    fresh = synthetic_history(
        5, end=NOW + timedelta(seconds=25), span=timedelta(seconds=50), seed=4
    )
    # Of a run that had not succeeded: a late dead-letter line never turns SUCCESS into FAILED.
    failed_run = next(
        r for r in reversed(history.derive_runs(old.events)) if r.state is RunState.FAILED
    )
    before = first.by_id[failed_run.run_id]
    assert before.error != "dead-lettered after 5 deliveries"
    late_line = replace(
        [e for e in old.events if e.run_id == failed_run.run_id][-1],
        step="dead-letter",
        state=RunState.FAILED,
        error="dead-lettered after 5 deliveries",
        recorded_at=NOW + timedelta(seconds=20),
        started_at=NOW + timedelta(seconds=20),
        finished_at=NOW + timedelta(seconds=20),
    )
    warehouse.append_run_events([*fresh.events, late_line])
    clock.at = NOW + timedelta(seconds=60)
    updated = cache.snapshot()
    assert list(updated.runs) == _expected(warehouse)
    since, count = source.reads[-1]
    assert since == NOW + timedelta(seconds=30) - timedelta(minutes=2)
    assert count == len(fresh.events) + 1
    changed = updated.by_id[late_line.run_id]
    assert changed.state is RunState.FAILED
    assert changed.error == "dead-lettered after 5 deliveries"
    assert len(updated.runs) == 45

    # The next refresh reads those same lines again (they are inside its overlap): still exact.
    clock.at = NOW + timedelta(seconds=61)
    assert list(cache.snapshot().runs) == _expected(warehouse)
    assert source.reads[-1][1] == len(fresh.events) + 1


def test_active_runs_are_counted_and_the_order_is_the_derivations(
    warehouse: SqliteHistory,
) -> None:
    made = synthetic_history(30, end=NOW, span=timedelta(minutes=30), seed=5, in_flight=2)
    warehouse.append_run_events(made.events)
    cache = HistoryCache(warehouse, min_interval=0, clock=Clock(NOW))
    snapshot = cache.snapshot()
    assert [r.run_id for r in snapshot.runs] == [r.run_id for r in _expected(warehouse)]
    assert snapshot.active == 2
    assert [r.run_id for r in snapshot.latest_first][:2] == made.run_ids[::-1][:2]
    assert all(snapshot.by_id[r].is_active for r in made.run_ids[-2:])


def test_a_young_snapshot_is_served_until_invalidated(warehouse: SqliteHistory) -> None:
    source = CountingSource(warehouse)
    cache = HistoryCache(source, min_interval=3600, clock=Clock(NOW))
    assert cache.snapshot().runs == ()
    made = synthetic_history(3, end=NOW, span=timedelta(minutes=1), seed=6)
    warehouse.append_run_events(made.events)
    assert cache.snapshot().runs == ()
    assert len(source.reads) == 1
    cache.invalidate()
    assert [r.run_id for r in cache.snapshot().runs] == made.run_ids
    assert len(source.reads) == 2


def test_the_synthetic_history_derives_to_its_intended_mix() -> None:
    made = synthetic_history(400, end=NOW, seed=1, in_flight=3)
    runs = history.derive_runs(made.events)
    states = {s: sum(1 for r in runs if r.state is s) for s in RunState}
    assert len(runs) == 400
    assert states[RunState.RUNNING] == 3
    assert states[RunState.SUCCESS] > 300
    assert states[RunState.SKIPPED] > 0
    assert states[RunState.FAILED] > 0
    loaded = {(load.dataset.value, str(load.month)) for load in made.loads}
    assert len(loaded) == len(made.loads)
    assert all(r.rows_inserted == 0 for r in runs if "reason" in r.steps[-1].details)
