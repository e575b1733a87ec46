"""Synthetic run histories: the ``pipeline_runs`` lines of many runs, as the steps append them.

For the web UI's benchmark (10,000 runs) and its pagination tests: a realistic mix of outcomes
(mostly SUCCESS, some re-runs that insert nothing, 404 skips, failures after retries, a few runs
still in flight at the end), each with the lines the real recorder writes: QUEUED, then RUNNING
and an outcome per step attempt. Deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from taxi_pipeline.domain.datasets import Dataset, Month, object_name, published_months
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import QUEUE_STEP, LoadRecord, RunEvent


@dataclass(frozen=True)
class SyntheticHistory:
    events: list[RunEvent]
    loads: list[LoadRecord]
    run_ids: list[str]
    """In submission order (the last one is the newest)."""


def synthetic_history(
    runs: int,
    *,
    end: datetime | None = None,
    span: timedelta = timedelta(days=30),
    seed: int = 1,
    in_flight: int = 0,
) -> SyntheticHistory:
    """``runs`` runs submitted evenly over ``span`` up to ``end``; the last ``in_flight`` of them
    are left RUNNING (no outcome yet)."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC)
    months = published_months()
    events: list[RunEvent] = []
    loads: dict[tuple[Dataset, Month], LoadRecord] = {}
    run_ids: list[str] = []
    step = span / max(runs, 1)
    for index in range(runs):
        dataset = rng.choice(list(Dataset))
        month = rng.choice(months)
        run_id = f"{dataset.value}-{month.year:04d}{month.month:02d}-{index:08x}"
        run_ids.append(run_id)
        at = end - span + step * index
        labels = {"trigger": rng.choice(["manual", "schedule", "manual"])}
        if rng.random() < 0.3:
            labels |= {"backfill": "true", "backfill_id": f"{index // 50:08x}"}
        active = index >= runs - in_flight
        events.extend(_run_events(rng, run_id, dataset, month, at, labels, active, loads))
    ordered = sorted(events, key=lambda e: e.recorded_at or end)
    return SyntheticHistory(ordered, sorted(loads.values(), key=lambda r: r.loaded_at), run_ids)


def _run_events(
    rng: random.Random,
    run_id: str,
    dataset: Dataset,
    month: Month,
    at: datetime,
    labels: dict[str, str],
    active: bool,
    loads: dict[tuple[Dataset, Month], LoadRecord],
) -> Iterator[RunEvent]:
    def line(
        step: str, state: RunState, start: datetime, when: datetime, attempt: int = 1, **kw: object
    ) -> RunEvent:
        return RunEvent(
            run_id=run_id,
            dataset=dataset.value,
            month=str(month),
            step=step,
            state=state,
            attempt=attempt,
            started_at=start,
            labels=labels,
            recorded_at=when,
            finished_at=when if state is not RunState.RUNNING else None,
            **kw,  # type: ignore[arg-type]
        )

    yield line(QUEUE_STEP, RunState.QUEUED, at, at, attempt=0)
    clock = at + timedelta(seconds=rng.uniform(0.01, 2.0))
    rows = rng.randrange(1_000, 8_000_000)
    size = rows * 18
    outcome = rng.random()
    if outcome < 0.05:  # not published upstream
        yield line("download", RunState.RUNNING, clock, clock)
        done = clock + timedelta(seconds=0.1)
        reason = f"https://example.invalid/{dataset.value}/{month} is not published (HTTP 404)"
        yield line("download", RunState.SKIPPED, clock, done, error=reason)
        return
    attempts = 3 if outcome < 0.09 else 1
    for attempt in range(1, attempts + 1):
        yield line("download", RunState.RUNNING, clock, clock, attempt=attempt)
        took = timedelta(seconds=rows / rng.uniform(150_000, 400_000))
        if active and attempt == attempts:
            return
        if attempt < attempts:
            failed = clock + took / 3
            error = "connection reset by peer (transient); a redelivery follows"
            yield line("download", RunState.RETRYING, clock, failed, attempt=attempt, error=error)
            clock = failed + timedelta(seconds=10 * attempt)
            continue
        if outcome < 0.07:
            failed = clock + took / 2
            error = "header does not match the published layout: expected 18 columns"
            yield line("download", RunState.FAILED, clock, failed, attempt=attempt, error=error)
            return
        clock += took
        yield line("download", RunState.SUCCESS, clock - took, clock, rows=rows, bytes=size)
    register = clock + timedelta(seconds=0.05)
    yield line("register", RunState.RUNNING, register, register)
    clock = register + timedelta(seconds=rng.uniform(0.05, 0.4))
    yield line("register", RunState.SUCCESS, register, clock, bytes=size)
    merge = clock + timedelta(seconds=0.05)
    lock = merge + timedelta(seconds=rng.choice([0.0, 0.0, rng.uniform(0.1, 5.0)]))
    yield line("merge", RunState.RUNNING, merge, lock)
    clock = lock + timedelta(seconds=rows / rng.uniform(400_000, 900_000))
    earlier = loads.get((dataset, month))
    inserted = 0 if earlier is not None else rows
    details = {"rows_in_file": str(rows)}
    if earlier is not None:
        details["reason"] = f"already loaded by {earlier.run_id}"
    yield line("merge", RunState.SUCCESS, merge, clock, rows=inserted, details=details)
    if earlier is None:
        loads[(dataset, month)] = LoadRecord(
            dataset, month, object_name(dataset, month), "1", run_id, rows, rows, clock
        )
