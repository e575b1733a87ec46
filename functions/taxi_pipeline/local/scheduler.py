"""The local scheduler: the schedules of ``infra/schedules.toml`` fired on the embedded default.

The same :func:`taxi_pipeline.domain.schedules.load_schedules` entries become the Cloud
Scheduler jobs, so local and cloud fire on the same crons in the same time zones.

- A fire at local date D loads month(D) minus the schedule's ``lag_months`` (the shipped jobs:
  2, the TLC's publication delay), else ``settings.schedule_lag_months`` (the reference loads
  the scheduled date's own month, lag 0), from the schedule's ``source``. The date is taken in
  the schedule's time zone, so a fire at 00:30 on the 1st in New York is that month, not the
  previous one in UTC. The download function computes the same month from the Cloud Scheduler
  job's body (``lag_months``) and its publish time.
- Each fire is one run labelled ``trigger=schedule, schedule=<name>, fired=YYYYMMDDHHMM``
  (UTC). The last fire of each schedule is therefore remembered in ``pipeline_runs`` itself:
  no extra state table, and the same memory works on BigQuery.
- On start, fires missed since the last remembered one are caught up (Kestra's
  ``recoverMissedSchedules: ALL``) unless ``catchup=False``, which starts from now. With nothing
  remembered, the scheduler starts from ``since`` (or from now).
- A month not published upstream yet ends SKIPPED (HTTP 404 is a permanent "not published"), and
  the fire is remembered like any other, so it is not retried on every start.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

from croniter import croniter

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import IngestRequest, parse_model
from taxi_pipeline.domain.runs import RunEvent
from taxi_pipeline.domain.schedules import Schedule
from taxi_pipeline.local.admission import Runner

log = logging.getLogger(__name__)

FIRED_FORMAT: Final = "%Y%m%d%H%M"
_LABEL_SAFE: Final = re.compile(r"[^a-z0-9_-]")
MAX_NAP_SECONDS: Final = 30.0
"""Longest single sleep, so a stop request or a clock jump is noticed soon."""


@dataclass(frozen=True)
class Fire:
    """One due occurrence of a schedule."""

    schedule: Schedule
    at: datetime
    """The fire time, UTC."""
    month: Month

    @property
    def dataset(self) -> Dataset:
        return self.schedule.dataset

    @property
    def labels(self) -> dict[str, str]:
        request = parse_model(IngestRequest, self.schedule.body, "schedule body")
        extra = {k: v for k, v in self.schedule.attributes.items() if k != "run_id"}
        return {
            **request.labels,
            **{k: _label(v) for k, v in extra.items() if _LABEL_SAFE.sub("", k) == k},
            "trigger": "schedule",
            "schedule": schedule_label(self.schedule),
            "fired": self.at.astimezone(UTC).strftime(FIRED_FORMAT),
        }


def _label(value: str) -> str:
    return _LABEL_SAFE.sub("-", value.lower())[:63]


def schedule_label(schedule: Schedule) -> str:
    """The schedule's name as a label value (lowercase, BigQuery label characters)."""
    return _label(schedule.name)


def fired_month(schedule: Schedule, at: datetime, lag_months: int) -> Month:
    """The month a fire loads: the fire's local date's month minus the schedule's lag, or
    ``lag_months`` (the setting) for a schedule that names none."""
    local = at.astimezone(ZoneInfo(schedule.time_zone))
    lag = schedule.lag_months if schedule.lag_months is not None else lag_months
    return Month(local.year, local.month).minus(lag)


def fire_times(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    """Fire times in ``(after, until]``, UTC, evaluated in the schedule's time zone."""
    zone = ZoneInfo(schedule.time_zone)
    it = croniter(schedule.cron, after.astimezone(zone))
    times: list[datetime] = []
    while True:
        moment: datetime = it.get_next(datetime).astimezone(UTC)
        if moment > until:
            return times
        times.append(moment)


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    zone = ZoneInfo(schedule.time_zone)
    moment: datetime = croniter(schedule.cron, after.astimezone(zone)).get_next(datetime)
    return moment.astimezone(UTC)


def remembered_fires(events: Iterable[RunEvent]) -> dict[str, datetime]:
    """Last fire time per schedule label, from the ``fired`` labels in the run history."""
    last: dict[str, datetime] = {}
    for event in events:
        labels = event.labels
        if labels.get("trigger") != "schedule" or "schedule" not in labels:
            continue
        try:
            at = datetime.strptime(labels.get("fired", ""), FIRED_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            continue
        name = labels["schedule"]
        if name not in last or last[name] < at:
            last[name] = at
    return last


@dataclass
class Fired:
    fire: Fire
    run_id: str


class Scheduler:
    """Fires the schedules on a pipeline until ``until`` (or forever), catching up on start."""

    def __init__(
        self,
        pipeline: Runner,
        schedules: Sequence[Schedule],
        *,
        history: Callable[[], list[RunEvent]],
        lag_months: int = 0,
        workers: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        on_fire: Callable[[Fired], None] | None = None,
        max_nap: float = MAX_NAP_SECONDS,
    ) -> None:
        self.pipeline = pipeline
        self.schedules = list(schedules)
        self.history = history
        self.lag_months = lag_months
        self.workers = workers
        self.clock = clock
        self.sleep = sleep
        self.on_fire = on_fire
        self.max_nap = max_nap
        self.fired: list[Fired] = []

    def baselines(self, *, catchup: bool, since: datetime | None) -> dict[str, datetime]:
        """Where each schedule resumes: after its last remembered fire (catch-up), else
        ``since``, else now."""
        now = self.clock()
        remembered = remembered_fires(self.history())
        start: dict[str, datetime] = {}
        for schedule in self.schedules:
            last = remembered.get(schedule_label(schedule))
            if not catchup:
                start[schedule.name] = max(now, last) if last else now
            elif last is not None:
                start[schedule.name] = last
            else:
                start[schedule.name] = since or now
        return start

    def due(self, baselines: dict[str, datetime], horizon: datetime) -> list[Fire]:
        fires = [
            Fire(s, at, fired_month(s, at, self.lag_months))
            for s in self.schedules
            for at in fire_times(s, baselines[s.name], horizon)
        ]
        fires.sort(key=lambda f: (f.at, f.schedule.name))
        return fires

    def run(
        self,
        *,
        until: datetime | None = None,
        once: bool = False,
        catchup: bool = True,
        since: datetime | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[Fired]:
        """Fire what is due, then wait for the next fire; returns what was fired.

        ``once``: fire what is due now (the catch-up) and return. ``until``: stop once the
        next fire would be after it (fires up to ``until`` in the past are caught up).
        """
        baselines = self.baselines(catchup=catchup, since=since)
        while True:
            now = self.clock()
            horizon = min(now, until) if until is not None else now
            fires = self.due(baselines, horizon)
            for fire in fires:
                run_id = self.pipeline.submit(
                    fire.dataset, fire.month, labels=fire.labels, source=fire.schedule.source
                )
                log.info(
                    "schedule %s fired for %s: %s %s (run %s)",
                    fire.schedule.name,
                    fire.at.isoformat(),
                    fire.dataset.value,
                    fire.month,
                    run_id,
                )
                baselines[fire.schedule.name] = fire.at
                fired = Fired(fire, run_id)
                self.fired.append(fired)
                if self.on_fire is not None:
                    self.on_fire(fired)
            if fires:
                self.pipeline.drain(self.workers)
            if once or should_stop():
                return self.fired
            upcoming = min(next_fire(s, baselines[s.name]) for s in self.schedules)
            if until is not None and upcoming > until:
                return self.fired
            wait = (upcoming - self.clock()).total_seconds()
            if wait > 0:
                self.sleep(min(wait, self.max_nap))


def next_fires(
    schedules: Sequence[Schedule], after: datetime, lag_months: int
) -> list[tuple[Schedule, datetime, Month]]:
    """The next fire of each schedule (for the CLI's banner)."""
    out = []
    for schedule in schedules:
        at = next_fire(schedule, after)
        out.append((schedule, at, fired_month(schedule, at, lag_months)))
    return out
