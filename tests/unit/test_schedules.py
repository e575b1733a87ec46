"""The schedules file: the shipped jobs, and specific refusals of malformed entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.domain.schedules import DEFAULT_PATH, Schedule, load_schedules
from taxi_pipeline.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_schedules_are_the_reference_jobs() -> None:
    schedules = {s.dataset: s for s in load_schedules()}
    assert schedules[Dataset.GREEN] == Schedule(
        "taxi-green-monthly",
        Dataset.GREEN,
        "0 9 1 * *",
        "Etc/UTC",
        '{"dataset": "green"}',
        {"trigger": "schedule"},
        Topic.INGEST_REQUESTS,
    )
    assert schedules[Dataset.YELLOW].cron == "0 10 1 * *"
    assert json.loads(schedules[Dataset.YELLOW].data) == {"dataset": "yellow"}


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
