"""Values a hostile or broken file can hold (issue 12, items 5 and 9): impossible timestamps are
bad values, not a blocked month; an unexpected error in the core is permanent; two rows whose
reference ids would collide across months never make pruning change a result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date

from support.reliability import FEB, JAN, RigFactory, Source, gzip_bytes
from taxi_pipeline.adapters.faults.wrappers import Faults
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month, file_name
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.pipeline.ports import StagingSummary

LAYOUT = Dataset.GREEN.layout


def _line(vendor: str, pickup: str, dropoff: str) -> str:
    return f"{vendor},{pickup},{dropoff},N,1,74,75,1,1.50,7.00,0.5,0.5,0,0,,0.3,8.30,1,1,0"


def _fillers(month: Month, count: int) -> list[str]:
    return [
        _line("2", f"{month}-{1 + i // 1440:02d} {i // 60 % 24:02d}:{i % 60:02d}:00", "")
        for i in range(count)
    ]


def _serve(source: Source, month: Month, lines: Sequence[str]) -> None:
    body = gzip_bytes(LAYOUT.header, list(lines))
    source.server.inject(file_name(Dataset.GREEN, month), Fault.replace_body(body, None))


IMPOSSIBLE = [
    _line("2", "infinity", "2019-02-20 10:10:00"),
    _line("2", "9999-12-31 23:59:59", "2019-02-20 10:10:00"),
    _line("2", "10000-01-01 00:00:00", "2019-02-20 10:10:00"),
    _line("2", "0000-01-01 00:00:00", "2019-02-20 10:10:00"),
    _line("2", "2019-02-20 10:00:00", "infinity"),
]


def test_impossible_timestamps_are_bad_values_and_the_month_loads(
    rig_factory: RigFactory, source: Source
) -> None:
    """One `infinity` or year-9999/10000/0 pickup among the rows made the merge fail (Python's
    date overflows) on every delivery until the dead letter; now each is a NULL bad value."""
    rig = rig_factory(bad_row_threshold=0.05)
    _serve(source, FEB, _fillers(FEB, 200) + IMPOSSIBLE)
    key = rig.bus.submit(Dataset.GREEN, FEB, "green-201902-impossible")
    rig.run()

    (result,) = rig.bus.results()
    assert result.state is RunState.SUCCESS
    assert (result.rows_in_file, result.rows_inserted, result.rows_bad) == (205, 205, 5)
    assert rig.scalar("SELECT count(*) FROM green_tripdata WHERE lpep_pickup_datetime IS NULL") == 4
    assert rig.scalar(
        "SELECT count(*) FROM green_tripdata WHERE lpep_dropoff_datetime IS NULL"
    ) == (
        201  # the fillers have no dropoff, plus the `infinity` one
    )
    merge_done = [e for e in rig.events("green-201902-impossible") if e.step == "merge"][-1]
    assert "infinity" in merge_done.details["bad_samples"]
    assert rig.bus.deliveries[key] == 1
    assert max(rig.bus.deliveries.values()) == 1


def _dates_past_the_calendar(staged: StagingSummary) -> StagingSummary:
    """What a warehouse that stages truthfully, then reports a pickup date whose next day no
    date holds, says."""
    return StagingSummary(
        staged.rows,
        staged.rows_bad,
        staged.rows_out_of_month,
        staged.rows_without_pickup,
        (*staged.pickup_dates, date.max),
    )


def test_an_unexpected_error_in_the_core_is_permanent(rig_factory: RigFactory) -> None:
    """An OverflowError raised by the merge step's own date arithmetic fails the run at once
    (FAILED, alerted, one delivery) instead of being retried five times as transient."""
    rig = rig_factory(faults=Faults(staged=_dates_past_the_calendar, seed=0))
    key = rig.bus.submit(Dataset.GREEN, JAN, "green-201901-overflow")
    rig.run()

    last = rig.events("green-201901-overflow")[-1]
    assert last.state is RunState.FAILED
    assert last.error is not None
    assert last.error.startswith("OverflowError: date value out of range")
    assert rig.bus.deliveries[key] == 1
    assert max(rig.bus.deliveries.values()) == 1


def test_ids_that_would_collide_across_months_are_merged_as_unpruned(
    rig_factory: RigFactory, source: Source
) -> None:
    """The reference id concatenates fields without a separator. The pair from the issue (a
    VendorID that holds a timestamp) and a pickup-only / dropoff-only pair, each split over two
    months: every id is held once, as the reference's unpruned MERGE would hold it, and the
    VendorID that is not a numeral is a counted bad value."""
    rig = rig_factory(bad_row_threshold=0.05)
    issue_first = _line("2", "2019-03-01 10:00:00", "2019-03-05 10:10:00")
    issue_second = _line("22019-03-01 10:00:00+00", "2019-03-05 10:10:00", "")
    pickup_only = _line("1", "2019-03-07 08:00:00", "")
    dropoff_only = _line("1", "", "2019-03-07 08:00:00")
    _serve(source, JAN, [*_fillers(JAN, 100), issue_first, pickup_only])
    _serve(source, FEB, [*_fillers(FEB, 100), issue_second, dropoff_only])
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-ids")
    rig.run()
    rig.bus.submit(Dataset.GREEN, FEB, "green-201902-ids")
    rig.run()

    results = {r.run_id: r for r in rig.bus.results()}
    january, february = results["green-201901-ids"], results["green-201902-ids"]
    assert (january.rows_inserted, january.rows_bad) == (102, 0)
    # The dropoff-only row has the pickup-only row's id: the reference keeps one of them.
    assert (february.rows_in_file, february.rows_inserted, february.rows_bad) == (102, 101, 1)
    ids = Counter(
        row[0] for row in rig.warehouse.query("SELECT unique_row_id FROM green_tripdata").rows
    )
    assert sum(ids.values()) == 203
    assert max(ids.values()) == 1  # no id twice
    assert rig.scalar("SELECT count(*) FROM green_tripdata WHERE VendorID IS NULL") == 1
