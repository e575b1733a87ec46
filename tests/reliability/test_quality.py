"""Data-quality accounting at merge: unfit values counted with samples; a threshold; strays kept."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.reliability import JAN, Rig, RigFactory, Source, assert_exact, gzip_bytes, make_rig
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month, file_name
from taxi_pipeline.domain.messages import RunState

FEB = Month(2019, 2)
LAYOUT = Dataset.GREEN.layout


def _good(i: int) -> str:
    pickup = f"2019-02-{1 + i // 1440:02d} {i // 60 % 24:02d}:{i % 60:02d}:00"
    dropoff = pickup[:-2] + "30"
    return f"2,{pickup},{dropoff},N,1,74,75,1,1.50,7.00,0.5,0.5,0,0,,0.3,8.30,1,1,0"


BAD = [
    "2,2019-02-20 10:00:00,2019-02-20 10:10:00,N,1,74,75,two,1.50,7.00,0.5,0.5,0,0,,0.3,8.30,1,1,0",
    "2,2019-02-20 11:00:00,2019-02-20 11:10:00,N,1,74,75,1,1.50,seven,0.5,0.5,0,0,,0.3,8.30,1,1,0",
    "2,2019-02-20 12:00:00,2019-02-31 12:10:00,N,1,74,75,1,1.50,7.00,0.5,0.5,0,0,,0.3,8.30,1.5,1,0",
]


@pytest.fixture
def quality_rig(tmp_path: Path, baseline_home: Path, source: Source) -> Iterator[Rig]:
    """Green 2019-01 loaded; a 5% bad-row threshold."""
    home = tmp_path / "home"
    shutil.copytree(baseline_home, home)
    rig = make_rig(home, source.url, bad_row_threshold=0.05)
    yield rig
    rig.close()


def _serve_feb(source: Source, good: int, bad: int) -> None:
    lines = [_good(i) for i in range(good)] + [BAD[i % len(BAD)] for i in range(bad)]
    source.server.inject(
        file_name(Dataset.GREEN, FEB), Fault.replace_body(gzip_bytes(LAYOUT.header, lines), None)
    )


def test_bad_values_below_the_threshold_are_counted_with_samples(
    quality_rig: Rig, source: Source
) -> None:
    rig = quality_rig
    _serve_feb(source, good=200, bad=3)
    rig.bus.submit(Dataset.GREEN, FEB, "green-201902-dq")
    rig.run()

    (result,) = [r for r in rig.bus.results() if r.run_id == "green-201902-dq"]
    assert result.state is RunState.SUCCESS
    assert (result.rows_in_file, result.rows_inserted, result.rows_bad) == (203, 203, 3)
    merge_done = [e for e in rig.events("green-201902-dq") if e.step == "merge"][-1]
    assert merge_done.details["rows_bad"] == "3"
    samples = merge_done.details["bad_samples"]
    assert ",two," in samples
    assert ",seven," in samples
    assert "2019-02-31 12:10:00" in samples
    # The rows are kept (with the unfit value left empty), and January is untouched.
    assert (
        rig.scalar(
            "SELECT count(*) FROM green_tripdata WHERE filename = 'green_tripdata_2019-02.csv'"
            " AND (passenger_count IS NULL OR fare_amount IS NULL OR lpep_dropoff_datetime IS NULL)"
        )
        == 3
    )
    assert_exact(rig, source.files[(Dataset.GREEN, JAN)])
    assert rig.leftovers() == []


def test_bad_values_above_the_threshold_fail_the_merge_and_change_nothing(
    quality_rig: Rig, source: Source
) -> None:
    rig = quality_rig
    before = rig.final_count(Dataset.GREEN)
    loads = rig.warehouse.loads()
    _serve_feb(source, good=200, bad=20)  # 20 > 5% of 220
    key = rig.bus.submit(Dataset.GREEN, FEB, "green-201902-dq")
    rig.run()

    last = rig.events("green-201902-dq")[-1]
    assert last.state is RunState.FAILED
    assert last.error is not None
    assert "20 of 220 rows have values that do not fit the column types" in last.error
    assert "nothing was merged" in last.error
    assert ",two," in last.error  # samples in the run record
    assert rig.final_count(Dataset.GREEN) == before
    assert rig.warehouse.loads() == loads
    assert rig.leftovers() == []
    assert rig.bus.deliveries[key] == 1
    assert max(rig.bus.deliveries.values()) == 1  # permanent: no delivery was repeated


def test_out_of_month_rows_are_kept_and_counted(rig_factory: RigFactory, source: Source) -> None:
    rig = rig_factory()
    generated = source.files[(Dataset.GREEN, JAN)]
    assert generated.out_of_month_rows > 0
    rig.bus.submit(Dataset.GREEN, JAN, "green-201901-strays")
    rig.run()

    (result,) = rig.bus.results()
    assert result.rows_out_of_month == generated.out_of_month_rows
    assert (
        rig.scalar(
            "SELECT count(*) FROM green_tripdata WHERE lpep_pickup_datetime < '2019-01-01'"
            " OR lpep_pickup_datetime >= '2019-02-01'"
        )
        == generated.out_of_month_rows
    )
    merge_done = [e for e in rig.events("green-201901-strays") if e.step == "merge"][-1]
    assert merge_done.details["rows_out_of_month"] == str(generated.out_of_month_rows)
    assert_exact(rig, generated)


def test_a_header_line_repeated_in_the_body_is_a_bad_row_never_loaded(
    quality_rig: Rig, source: Source
) -> None:
    """Two files concatenated by hand: the second header is no trip (issue 12)."""
    rig = quality_rig
    lines = [_good(i) for i in range(100)] + [LAYOUT.header] + [_good(i) for i in range(100, 200)]
    source.server.inject(
        file_name(Dataset.GREEN, FEB), Fault.replace_body(gzip_bytes(LAYOUT.header, lines), None)
    )
    rig.bus.submit(Dataset.GREEN, FEB, "green-201902-header")
    rig.run()

    (result,) = [r for r in rig.bus.results() if r.run_id == "green-201902-header"]
    assert result.state is RunState.SUCCESS
    counts = (result.rows_in_file, result.rows_inserted, result.rows_already_present)
    assert counts == (200, 200, 0)
    assert result.rows_bad == 1
    feb = "WHERE filename = 'green_tripdata_2019-02.csv'"
    assert rig.scalar(f"SELECT count(*) FROM green_tripdata {feb}") == 200
    assert rig.scalar(f"SELECT count(*) FROM green_tripdata {feb} AND VendorID IS NULL") == 0
    (merge,) = [
        e
        for e in rig.events("green-201902-header")
        if e.step == "merge" and e.state is RunState.SUCCESS
    ]
    assert merge.details["bad_samples"].startswith("VendorID,lpep_pickup_datetime,")
