"""The local scheduler: fire times, months, memory from run labels, catch-up, bounds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from taxi_pipeline.domain.datasets import Dataset, Month, Upstream
from taxi_pipeline.domain.messages import IngestRequest, RunState, parse_model
from taxi_pipeline.domain.runs import RunEvent, resolve_month
from taxi_pipeline.domain.schedules import Schedule, load_schedules
from taxi_pipeline.local.scheduler import (
    Scheduler,
    fire_times,
    fired_month,
    remembered_fires,
    schedule_label,
)
from taxi_pipeline.settings import Settings

GREEN = Schedule("taxi-green-monthly", Dataset.GREEN, "0 9 1 * *", "Etc/UTC", '{"dataset":"green"}')
YELLOW = Schedule(
    "taxi-yellow-monthly", Dataset.YELLOW, "0 10 1 * *", "Etc/UTC", '{"dataset":"yellow"}'
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_the_packaged_schedules_are_the_reference_crons() -> None:
    crons = {s.dataset: (s.cron, s.time_zone) for s in load_schedules()}
    assert crons[Dataset.GREEN] == ("0 9 1 * *", "Etc/UTC")
    assert crons[Dataset.YELLOW] == ("0 10 1 * *", "Etc/UTC")


def test_fire_times_are_half_open_and_utc() -> None:
    times = fire_times(GREEN, utc(2019, 1, 1, 9), utc(2019, 4, 1, 9))
    assert times == [utc(2019, 2, 1, 9), utc(2019, 3, 1, 9), utc(2019, 4, 1, 9)]


def test_month_is_the_fire_date_month_minus_the_lag_in_the_schedule_zone() -> None:
    assert fired_month(GREEN, utc(2019, 3, 1, 9), 0) == Month(2019, 3)
    assert fired_month(GREEN, utc(2019, 1, 1, 9), 1) == Month(2018, 12)
    new_york = Schedule(
        "ny", Dataset.GREEN, "30 0 1 * *", "America/New_York", '{"dataset":"green"}'
    )
    (at,) = fire_times(new_york, utc(2019, 2, 15), utc(2019, 3, 15))
    assert at == utc(2019, 3, 1, 5, 30), "00:30 EST is 05:30 UTC"
    assert fired_month(new_york, at, 0) == Month(2019, 3)
    # The same instant read in UTC on the evening before would be February: not used.
    assert fired_month(new_york, utc(2019, 3, 1, 4, 59), 0) == Month(2019, 2)


def test_the_shipped_jobs_ask_the_tlc_for_the_month_two_months_back_as_the_cloud_does() -> None:
    """The fire of 2026-12-01 asks for 2026-10, locally and in the download function (which
    reads the Cloud Scheduler job's body and its publish time), whatever the lag setting."""
    green = next(s for s in load_schedules() if s.dataset is Dataset.GREEN)
    (at,) = fire_times(green, utc(2026, 11, 30), utc(2026, 12, 2))
    assert at == utc(2026, 12, 1, 9)
    assert fired_month(green, at, lag_months=0) == Month(2026, 10)
    request = parse_model(IngestRequest, green.data, "schedule body")
    assert request.source is Upstream.TLC
    settings = Settings(schedule_lag_months=5)  # the job's own lag wins
    assert resolve_month(request, at, settings.schedule_lag_months) == Month(2026, 10)

    pipeline, clock = _Pipeline(), _Clock(utc(2026, 12, 1, 9, 30))
    scheduler = Scheduler(pipeline, [green], history=lambda: [], clock=clock, sleep=clock.sleep)
    (fired,) = scheduler.run(once=True, since=utc(2026, 11, 30))
    assert (fired.fire.month, pipeline.sources) == (Month(2026, 10), [Upstream.TLC])


def _history(name: str, fired: str, state: RunState = RunState.SUCCESS) -> RunEvent:
    return RunEvent(
        run_id=f"green-x-{fired}",
        dataset="green",
        month="2019-01",
        step="queue",
        state=state,
        labels={"trigger": "schedule", "schedule": name, "fired": fired},
        recorded_at=utc(2024, 1, 1),
    )


def test_last_fires_are_remembered_from_labels_whatever_the_outcome() -> None:
    events = [
        _history("taxi-green-monthly", "201902010900"),
        _history("taxi-green-monthly", "201903010900", RunState.SKIPPED),
        _history("taxi-yellow-monthly", "201902011000"),
        RunEvent("m", "green", "2019-01", "queue", RunState.QUEUED, labels={"trigger": "manual"}),
    ]
    assert remembered_fires(events) == {
        "taxi-green-monthly": utc(2019, 3, 1, 9),
        "taxi-yellow-monthly": utc(2019, 2, 1, 10),
    }


@dataclass
class _Pipeline:
    """Records submissions and writes the QUEUED line, as LocalPipeline does."""

    events: list[RunEvent] = field(default_factory=list)
    submitted: list[tuple[Dataset, Month, dict[str, str]]] = field(default_factory=list)
    sources: list[Upstream | None] = field(default_factory=list)
    drains: int = 0

    def submit(
        self,
        dataset: Dataset,
        month: Month,
        *,
        labels: Mapping[str, str] | None = None,
        force: bool = False,
        run_id: str | None = None,
        source: Upstream | None = None,
        replace: bool = False,
    ) -> str:
        run_id = f"{dataset.value}-{len(self.submitted)}"
        self.sources.append(source)
        self.submitted.append((dataset, month, dict(labels or {})))
        self.events.append(
            RunEvent(
                run_id, dataset.value, str(month), "queue", RunState.QUEUED, labels=labels or {}
            )
        )
        return run_id

    def drain(self, workers: int = 1) -> None:
        self.drains += 1


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.naps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += timedelta(seconds=seconds)


def _scheduler(
    pipeline: _Pipeline, clock: _Clock, lag: int = 0, max_nap: float = 30.0
) -> Scheduler:
    return Scheduler(
        pipeline,
        [GREEN, YELLOW],
        history=lambda: list(pipeline.events),
        lag_months=lag,
        clock=clock,
        sleep=clock.sleep,
        max_nap=max_nap,
    )


def test_first_start_catches_up_from_since_then_the_next_start_from_memory() -> None:
    pipeline, clock = _Pipeline(), _Clock(utc(2019, 3, 15))
    fired = _scheduler(pipeline, clock).run(once=True, since=utc(2019, 1, 1))
    assert [(f.fire.dataset, f.fire.month) for f in fired] == [
        (Dataset.GREEN, Month(2019, 1)),
        (Dataset.YELLOW, Month(2019, 1)),
        (Dataset.GREEN, Month(2019, 2)),
        (Dataset.YELLOW, Month(2019, 2)),
        (Dataset.GREEN, Month(2019, 3)),
        (Dataset.YELLOW, Month(2019, 3)),
    ]
    labels = pipeline.submitted[0][2]
    assert labels == {
        "trigger": "schedule",
        "schedule": "taxi-green-monthly",
        "fired": "201901010900",
    }
    assert pipeline.drains == 1

    # Restart two months later: only the missed fires, remembered from the labels.
    clock.now = utc(2019, 5, 2)
    pipeline.submitted.clear()
    again = _scheduler(pipeline, clock).run(once=True, since=utc(2019, 1, 1))
    assert [(f.fire.dataset, str(f.fire.month)) for f in again] == [
        (Dataset.GREEN, "2019-04"),
        (Dataset.YELLOW, "2019-04"),
        (Dataset.GREEN, "2019-05"),
        (Dataset.YELLOW, "2019-05"),
    ]


def test_no_catchup_skips_missed_fires_and_nothing_remembered_starts_from_now() -> None:
    pipeline, clock = _Pipeline(), _Clock(utc(2019, 3, 15))
    assert _scheduler(pipeline, clock).run(once=True) == []
    pipeline.events.append(_history(schedule_label(GREEN), "201901010900"))
    assert _scheduler(pipeline, clock).run(once=True, catchup=False) == []
    caught = _scheduler(pipeline, clock).run(once=True)
    assert [str(f.fire.month) for f in caught if f.fire.dataset is Dataset.GREEN] == [
        "2019-02",
        "2019-03",
    ]


def test_runs_until_the_bound_sleeping_between_fires() -> None:
    pipeline, clock = _Pipeline(), _Clock(utc(2019, 1, 31, 12))
    scheduler = _scheduler(pipeline, clock, lag=1, max_nap=6 * 3600)
    fired = scheduler.run(until=utc(2019, 3, 1, 9, 30), catchup=False)
    assert [(f.fire.at, str(f.fire.month)) for f in fired] == [
        (utc(2019, 2, 1, 9), "2019-01"),
        (utc(2019, 2, 1, 10), "2019-01"),
        (utc(2019, 3, 1, 9), "2019-02"),
    ]
    assert clock.naps, "it waited for each fire"
    assert max(clock.naps) <= 6 * 3600
    assert clock.now <= utc(2019, 3, 1, 10), "it stopped before the next fire past the bound"


def test_a_past_until_replays_the_schedule_up_to_it_without_sleeping() -> None:
    pipeline, clock = _Pipeline(), _Clock(utc(2024, 1, 1))
    fired = _scheduler(pipeline, clock).run(since=utc(2019, 1, 1), until=utc(2019, 6, 1, 12))
    assert len(fired) == 12
    assert clock.naps == []


@pytest.mark.parametrize("name", ["Taxi Green", "taxi-green-monthly"])
def test_schedule_label_is_a_valid_label_value(name: str) -> None:
    label = schedule_label(Schedule(name, Dataset.GREEN, "0 9 1 * *", "Etc/UTC", "{}"))
    assert label.replace("-", "").replace("_", "").isalnum()
    assert label == label.lower()
