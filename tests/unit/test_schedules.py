"""The schedules file: the shipped jobs, and specific refusals of malformed entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taxi_pipeline.domain.datasets import Dataset, Upstream
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.domain.schedules import DEFAULT_PATH, Schedule, load_schedules
from taxi_pipeline.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_schedules_are_the_reference_jobs_on_the_tlc_two_months_behind() -> None:
    schedules = {s.dataset: s for s in load_schedules()}
    assert schedules[Dataset.GREEN] == Schedule(
        "taxi-green-monthly",
        Dataset.GREEN,
        "0 9 1 * *",
        "Etc/UTC",
        '{"dataset": "green", "source": "tlc", "lag_months": 2}',
        {"trigger": "schedule"},
        Topic.INGEST_REQUESTS,
        Upstream.TLC,
        2,
    )
    assert schedules[Dataset.YELLOW].cron == "0 10 1 * *"
    assert json.loads(schedules[Dataset.YELLOW].data) == {
        "dataset": "yellow",
        "source": "tlc",
        "lag_months": 2,
    }


def test_source_and_lag_go_into_the_body_or_must_agree_with_it(tmp_path: Path) -> None:
    head = '[[schedule]]\nname = "g"\ndataset = "green"\ncron = "0 9 1 * *"\n'
    (schedule,) = load_schedules(_write(tmp_path, head + 'body = \'{"dataset": "green",'
                                        ' "lag_months": 1}\'\nsource = "mirror"\n'))  # fmt: skip
    assert (schedule.source, schedule.lag_months) == (Upstream.MIRROR, 1)
    assert json.loads(schedule.body) == {"dataset": "green", "lag_months": 1, "source": "mirror"}
    for entry, reason in [
        ('body = \'{"dataset": "green", "lag_months": 1}\'\nlag_months = 2\n', "lag_months"),
        ("lag_months = 30\n", "0..24"),
        ('lag_months = "2"\n', "whole number"),
        ('source = "s3"\n', "s3"),
    ]:
        with pytest.raises(ConfigurationError, match=reason):
            load_schedules(_write(tmp_path, head + entry))


def test_packaged_file_is_the_infra_file() -> None:
    assert DEFAULT_PATH.resolve() == (ROOT / "infra" / "schedules.toml").resolve()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return path


def test_defaults_fill_time_zone_topic_and_body(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[schedule]]\nname = "g"\ndataset = "green"\ncron = "5 4 * * *"\n')
    (schedule,) = load_schedules(path)
    assert (schedule.time_zone, schedule.topic, schedule.body) == (
        "Etc/UTC",
        Topic.INGEST_REQUESTS,
        '{"dataset": "green"}',
    )


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ('name = "g"\ndataset = "blue"\ncron = "0 9 1 * *"', "blue"),
        ('name = "g"\ndataset = "green"\ncron = "0 9 1 *"', "five-field"),
        ('name = "g"\ndataset = "green"\ncron = "0 9 1 * *"\ntime_zone = "Mars/Base"', "time zone"),
        ('name = "g h"\ndataset = "green"\ncron = "0 9 1 * *"', "name must match"),
        ('name = "g"\ndataset = "green"\ncron = "0 9 1 * *"\nbody = "{}"', "dataset"),
        (
            'name = "g"\ndataset = "green"\ncron = "0 9 1 * *"\nbody = \'{"dataset": "yellow"}\'',
            "not green",
        ),
        ('name = "g"\ndataset = "green"\ncron = "0 9 1 * *"\ncolour = "red"', "unknown keys"),
        ('dataset = "green"\ncron = "0 9 1 * *"', "missing 'name'"),
    ],
)
def test_malformed_entries_are_refused(tmp_path: Path, entry: str, reason: str) -> None:
    path = _write(tmp_path, f"[[schedule]]\n{entry}\n")
    with pytest.raises(ConfigurationError, match=reason):
        load_schedules(path)


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    one = '[[schedule]]\nname = "g"\ndataset = "green"\ncron = "0 9 1 * *"\n'
    with pytest.raises(ConfigurationError, match="duplicate"):
        load_schedules(_write(tmp_path, one + one))
