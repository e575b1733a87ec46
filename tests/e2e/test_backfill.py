"""Backfills on the embedded default: bounded concurrency, overlaps, and every row exactly once."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from support.e2e import Cli, Source, serve_months
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.bootstrap import LocalPipeline, build_local
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, Month, Upstream, month_range
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.schedules import load_schedules
from taxi_pipeline.local.backfill import plan_backfill, run_backfill
from taxi_pipeline.local.scheduler import Scheduler
from taxi_pipeline.pipeline.ports import MergePlan
from taxi_pipeline.settings import Settings

YEAR = month_range(Month(2019, 1), Month(2019, 12))
ROWS = {(Dataset.GREEN, m): 600 + 37 * m.month for m in YEAR}


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """Twelve small green months of 2019 (2019-13 and later answer 404)."""
    with serve_months(tmp_path_factory.mktemp("year"), ROWS) as served:
        yield served


@pytest.fixture
def cli(tmp_path: Path, year: Source) -> Cli:
    return Cli(tmp_path / "home", year.url, CliRunner())


def _history(home: Path) -> list[history.Run]:
    store = SqliteHistory(home / "runs.sqlite", create=False)
    try:
        return history.derive_runs(store.run_events())
    finally:
        store.close()


def _most_at_once(runs: list[history.Run]) -> int:
    """Most runs whose [first step start, end] intervals overlap (from the history alone)."""
    edges = []
    for run in runs:
        assert run.started_at is not None
        assert run.finished_at is not None
        edges += [(run.started_at, 1), (run.finished_at, -1)]
    peak = current = 0
    for _, step in sorted(edges):  # an end sorts before a start at the same instant
        current += step
        peak = max(peak, current)
    return peak


def _assert_each_row_once(cli: Cli, source: Source, months: list[Month]) -> None:
    expected = {f"green_tripdata_{m}.csv": source.files[(Dataset.GREEN, m)].rows for m in months}
    rows = cli.rows("SELECT filename, count(*) FROM green_tripdata GROUP BY 1 ORDER BY 1")
    assert {name: int(n) for name, n in rows} == expected
    # Exact duplicates inside a file are kept (as the reference): compare distinct ids too.
    distinct = cli.rows("SELECT count(DISTINCT unique_row_id) FROM green_tripdata")
    duplicates = sum(source.files[(Dataset.GREEN, m)].duplicate_rows for m in months)
    assert int(distinct[0][0]) == sum(expected.values()) - duplicates


def test_twelve_month_backfill_runs_three_at_a_time_and_loads_each_row_once(
    cli: Cli, year: Source
) -> None:
    code, out = cli(
        "backfill", "green", "--from", "2019-01", "--to", "2019-12", "--concurrency", "3"
    )

    assert code == 0, out
    assert "12 SUCCESS" in out
    assert "at most 3 runs at a time" in out
    _assert_each_row_once(cli, year, YEAR)
    runs = _history(cli.home)
    assert len(runs) == 12
    assert {r.state for r in runs} == {RunState.SUCCESS}
    assert all(r.labels["backfill"] == "true" for r in runs)
    assert len({r.labels["backfill_id"] for r in runs}) == 1
    assert all(r.queued_at is not None for r in runs), "every run was recorded QUEUED first"
    assert 2 <= _most_at_once(runs) <= 3, "bounded, and actually concurrent"


def test_overlapping_backfill_only_missing_and_a_rerun_that_changes_nothing(
    cli: Cli, year: Source
) -> None:
    code, out = cli("backfill", "green", "--from", "2019-01", "--to", "2019-06")
    assert code == 0, out

    code, out = cli("backfill", "green", "--from", "2019-04", "--to", "2019-09", "--only-missing")
    assert code == 0, out
    assert "3 SUCCESS; 3 already loaded and skipped" in out
    assert "2019-04" not in out.split("backfill ")[0], "loaded months are not even started"

    year.server.reset_log()
    code, out = cli("backfill", "green", "--from", "2019-01", "--to", "2019-09")
    assert code == 0, out
    assert "9 SUCCESS" in out
    assert "; 0 rows inserted" in out
    assert year.server.bytes_sent == 0, "a re-run over loaded months downloads nothing"
    _assert_each_row_once(cli, year, YEAR[:9])


def test_a_backfill_past_the_published_range_skips_those_months_and_refuses_the_future(
    cli: Cli,
) -> None:
    code, out = cli("backfill", "green", "--from", "2019-11", "--to", "2020-02")
    assert code == 3, out  # none failed, some skipped
    assert "2 SUCCESS, 2 SKIPPED" in out
    assert "green_tripdata_2020-01.csv.gz is not published (HTTP 404)" in out

    future = Month(datetime.now(UTC).year + 1, 1)
    code, out = cli("backfill", "green", "--from", "2019-01", "--to", str(future))
    assert code == 2
    assert "is in the future" in out


def test_cloud_backfill_refuses_concurrency_it_could_not_honour(cli: Cli) -> None:
    code, out = cli(
        "backfill", "green", "--from", "2019-01", "--to", "2019-03", "--cloud", "--concurrency", "2"
    )
    assert code == 2, out
    message = " ".join(out.replace("│", " ").split())
    assert "--concurrency applies to local backfills only" in message
    assert "maximum instances" in message
    assert not cli.home.exists(), "refused before any warehouse or bus was opened"


def test_parallel_overlapping_backfills_and_a_schedule_firing_load_each_row_once(
    tmp_path: Path, year: Source
) -> None:
    """Two backfills over 2019-01..08 and 2019-05..12 and the green schedule replaying
    2019-03..2019-06, all at once on one pipeline: every month lands exactly once."""
    settings = Settings(
        home=tmp_path / "home", source_url=year.url, max_concurrent_runs_per_dataset=3
    )
    pipeline: LocalPipeline = build_local(settings)
    # The shipped green job, on the mirror's months (the CSV this test serves), lag 0.
    green = [
        dataclasses.replace(s, source=Upstream.MIRROR, lag_months=0)
        for s in load_schedules()
        if s.dataset is Dataset.GREEN
    ]
    scheduler = Scheduler(pipeline, green, history=pipeline.ports.warehouse.run_events, workers=3)
    reports = []
    errors: list[BaseException] = []

    def backfill(first: Month, last: Month) -> None:
        try:
            plan = plan_backfill(Dataset.GREEN, first, last)
            reports.append(run_backfill(pipeline, plan, workers=3))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def schedule() -> None:
        try:
            scheduler.run(
                since=datetime(2019, 2, 15, tzinfo=UTC), until=datetime(2019, 6, 2, tzinfo=UTC)
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=backfill, args=(Month(2019, 1), Month(2019, 8))),
        threading.Thread(target=backfill, args=(Month(2019, 5), Month(2019, 12))),
        threading.Thread(target=schedule),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert len(scheduler.fired) == 4
        assert {str(f.fire.month) for f in scheduler.fired} == {
            "2019-03",
            "2019-04",
            "2019-05",
            "2019-06",
        }
        events = pipeline.ports.warehouse.run_events()
    finally:
        pipeline.close()
    runs = history.derive_runs(events)
    assert len(runs) == 8 + 8 + 4
    assert {r.state for r in runs} == {RunState.SUCCESS}
    assert pipeline.gate.peak[Dataset.GREEN] <= 3
    assert _most_at_once(runs) <= 3
    inserted: dict[str, int] = {}
    for run in runs:
        inserted[run.month] = inserted.get(run.month, 0) + (run.rows_inserted or 0)
    assert inserted == {str(m): ROWS[(Dataset.GREEN, m)] for m in YEAR}
    cli = Cli(tmp_path / "home", year.url, CliRunner())
    _assert_each_row_once(cli, year, YEAR)


def test_two_runs_of_one_month_started_together_never_merge_at_once(
    tmp_path: Path, year: Source
) -> None:
    """The second run WAITS for the dataset-month merge lock, then finds the object generation
    already loaded and inserts nothing (SUCCESS, "already loaded by <first run>")."""
    settings = Settings(home=tmp_path / "home", source_url=year.url)
    pipeline = build_local(settings)
    real = pipeline.ports.warehouse
    active: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    lock = threading.Lock()

    class Recording:
        """Delegates to the real warehouse; records concurrent stage/merge of one month."""

        def __getattr__(self, name: str) -> object:
            attribute = getattr(real, name)
            if name not in ("stage", "merge_staged"):
                return attribute

            def tracked(*args: object, **kwargs: object) -> object:
                # stage(dataset, month, ...), merge_staged(plan): the month either works on.
                plan = args[0]
                key = (
                    f"{plan.dataset}-{plan.month}"
                    if isinstance(plan, MergePlan)
                    else f"{args[0]}-{args[1]}"
                )
                with lock:
                    if key in active:
                        overlaps.append((key, name))
                    active.append(key)
                try:
                    return attribute(*args, **kwargs)
                finally:
                    with lock:
                        active.remove(key)

            return tracked

    pipeline.ports.warehouse = Recording()  # type: ignore[assignment]
    try:
        first = pipeline.submit(Dataset.GREEN, Month(2019, 3), labels={"trigger": "manual"})
        second = pipeline.submit(Dataset.GREEN, Month(2019, 3), labels={"trigger": "manual"})
        pipeline.drain(workers=4)
        events = real.run_events()
    finally:
        pipeline.close()
    assert overlaps == []
    runs = {r.run_id: r for r in history.derive_runs(events)}
    assert runs[first].state is RunState.SUCCESS
    assert runs[second].state is RunState.SUCCESS
    inserted = sorted((runs[first].rows_inserted or 0, runs[second].rows_inserted or 0))
    assert inserted == [0, ROWS[(Dataset.GREEN, Month(2019, 3))]]
    loser = first if runs[first].rows_inserted == 0 else second
    winner = second if loser == first else first
    merge = next(s for s in runs[loser].steps if s.step == "merge")
    assert merge.details["reason"] == f"already loaded by {winner}"
    winner_merge = next(s for s in runs[winner].steps if s.step == "merge")
    assert merge.running_at is not None
    assert winner_merge.running_at is not None
    assert merge.running_at > winner_merge.running_at, "the second merge ran after the first"
