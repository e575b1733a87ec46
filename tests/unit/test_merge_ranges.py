"""The pruning ranges of the merge (pure)."""

from __future__ import annotations

from datetime import date

from taxi_pipeline.pipeline.ports import DateRange
from taxi_pipeline.pipeline.steps.merge import pickup_ranges


def test_consecutive_days_fold_and_strays_stay_apart() -> None:
    days = [date(2019, 1, d) for d in range(1, 32)] + [date(2008, 12, 31), date(2088, 1, 24)]
    assert pickup_ranges(days) == [
        DateRange(date(2008, 12, 31), date(2009, 1, 1)),
        DateRange(date(2019, 1, 1), date(2019, 2, 1)),
        DateRange(date(2088, 1, 24), date(2088, 1, 25)),
    ]


def test_a_neighbour_day_extends_its_range() -> None:
    days = [date(2019, 1, 31), date(2019, 2, 1), date(2019, 1, 30)]
    assert pickup_ranges(days) == [DateRange(date(2019, 1, 30), date(2019, 2, 2))]
    assert pickup_ranges([]) == []
