"""``runs``, ``runs show``, ``status [--html]`` and ``schedule`` on the embedded default."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from support.e2e import Cli, Source
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month

_RUN_ID = re.compile(r"^((?:green|yellow)-\d{6}-[0-9a-f]{8})\s", re.MULTILINE)


def _run_ids(out: str) -> list[str]:
    return _RUN_ID.findall(out)


def test_runs_lists_one_line_per_run_and_show_draws_its_timeline(cli: Cli, source: Source) -> None:
    assert cli("run", "green", "2019-01")[0] == 0
    assert cli("run", "yellow", "2019-02")[0] == 0

    code, out = cli("runs")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["RUN", "ID", "DATASET", "MONTH"]
    assert len(_run_ids(out)) == 2
    green_line = next(line for line in lines if line.startswith("green-201901-"))
    assert re.search(r"green\s+2019-01\s+SUCCESS\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d", green_line)
    assert f"{source.files[(Dataset.GREEN, Month(2019, 1))].rows:,}" in green_line
    assert "trigger=manual" in green_line

    code, out = cli("runs", "--dataset", "yellow")
    assert [i.split("-")[0] for i in _run_ids(out)] == ["yellow"]
    code, out = cli("runs", "--state", "failed")
    assert _run_ids(out) == []
    code, out = cli("runs", "--since", "1h")
    assert len(_run_ids(out)) == 2

    run_id = green_line.split()[0]
    code, out = cli("runs", "show", run_id, "--width", "40")
    assert code == 0, out
    assert f"run       {run_id}" in out
    assert "state     SUCCESS" in out
    steps = [line for line in out.splitlines() if line.endswith("|") and "|" in line[:-1]]
    assert [line.split()[0] for line in steps] == ["STEP", "queue", "download", "register", "merge"]
    assert all(len(line.rsplit("|", 2)[1]) == 40 for line in steps[1:])
    assert "█" in steps[2]


def test_runs_on_a_fresh_home_says_there_are_none_yet(cli: Cli) -> None:
    assert cli("schedule", "--once", "--no-catchup")[0] == 0  # opens the home, fires nothing
    code, out = cli("runs")
    assert code == 0, out
    assert "no runs recorded yet in duckdb://" in out
    assert "RUN ID" not in out

    code, out = cli("runs", "--state", "failed")
    assert code == 0, out
    assert out.strip() == "no runs match"


def test_a_failing_run_shows_failed_with_its_reason(cli: Cli, source: Source) -> None:
    name = "green_tripdata_2019-02.csv.gz"
    source.server.inject(name, Fault.replace_body(b"<html>rate limited</html>", times=None))
    try:
        code, out = cli("run", "green", "2019-02")
    finally:
        source.server.clear_faults(name)
    assert code == 1, out

    code, out = cli("runs", "--state", "FAILED")
    assert code == 0, out
    (run_id,) = _run_ids(out)
    line = next(line for line in out.splitlines() if line.startswith(run_id))
    assert "FAILED" in line
    assert "gzip" in line, "the reason is on the run's line"

    code, out = cli("runs", "show", run_id)
    assert "state     FAILED" in out
    assert re.search(r"download \(try 1, FAILED\): .*gzip", out)
    assert "X" in next(line for line in out.splitlines() if line.startswith("download"))

    code, out = cli("status")
    assert re.search(r"^2019-02\s+\.\s+FAILED\s+\.\s+\.$", out, re.MULTILINE), out


def test_status_matrix_and_html_page(cli: Cli, source: Source, tmp_path: Path) -> None:
    assert cli("run", "yellow", "2019-01..2019-03")[0] == 0
    assert cli("run", "green", "2019-01")[0] == 0
    assert cli("run", "green", "2021-08")[0] == 3  # the TLC has not published it: not shown

    page = tmp_path / "status.html"
    code, out = cli("status", "--html", str(page))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["MONTH", "yellow", "green", "fhv", "fhvhv"]
    yellow = source.files[(Dataset.YELLOW, Month(2019, 1))].rows
    green = source.files[(Dataset.GREEN, Month(2019, 1))].rows
    # fhvhv has no 2019-01 anywhere: "-", not a missing ".".
    assert re.search(
        rf"^2019-01\s+{yellow:,} mirror\s+{green:,} mirror\s+\.\s+-$", out, re.MULTILINE
    )
    assert re.search(r"^2019-04\s+\.\s+\.\s+\.\s+\.$", out, re.MULTILINE)
    assert sum(1 for line in lines if re.match(r"^20\d\d-\d\d ", line)) == 31, "2019-01..2021-07"
    assert "yellow: 3/31 loaded" in out
    assert "green: 1/31 loaded" in out

    html = page.read_text()
    parser = _Collect()
    parser.feed(html)
    assert not {"script", "link", "img", "iframe"} & set(parser.tags), "no network assets"
    assert not {"src", "href"} & parser.attributes
    assert "svg" in parser.tags
    assert parser.tags.count("rect") >= 4 * 3, "a bar per step of each run"
    assert f"{green:,}" in html


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.update(name for name, _ in attrs)


def test_schedule_catches_up_from_since_then_from_memory_and_skips_unpublished(
    cli: Cli, source: Source
) -> None:
    """The shipped jobs ask the TLC for the month two months before the fire's."""
    code, out = cli(
        "schedule", "--since", "2019-03-01", "--until", "2019-04-01T13:00", "--workers", "2"
    )
    assert code == 3, out  # fhvhv 2019-01: SKIPPED, its data starts 2019-02
    fires = re.findall(r"^fire (\S+) at (\S+ \S+) UTC -> (\w+) (\S+)", out, re.MULTILINE)
    assert fires == [
        ("taxi-green-monthly", "2019-03-01 09:00", "green", "2019-01"),
        ("taxi-yellow-monthly", "2019-03-01 10:00", "yellow", "2019-01"),
        ("taxi-fhv-monthly", "2019-03-01 11:00", "fhv", "2019-01"),
        ("taxi-fhvhv-monthly", "2019-03-01 12:00", "fhvhv", "2019-01"),
        ("taxi-green-monthly", "2019-04-01 09:00", "green", "2019-02"),
        ("taxi-yellow-monthly", "2019-04-01 10:00", "yellow", "2019-02"),
        ("taxi-fhv-monthly", "2019-04-01 11:00", "fhv", "2019-02"),
        ("taxi-fhvhv-monthly", "2019-04-01 12:00", "fhvhv", "2019-02"),
    ]
    assert out.count(": SUCCESS") == 7
    assert re.search(r"fhvhv 2019-01 \S+: SKIPPED - .*fhvhv trip data starts 2019-02", out)
    assert "8 fires, 0 failed" in out
    for dataset, month in ((Dataset.FHV, Month(2019, 2)), (Dataset.FHVHV, Month(2019, 2))):
        loaded = source.parquet[(dataset, month)]
        assert cli.rows(
            f"SELECT count(*) FROM {dataset.final_table} WHERE filename = '{loaded.name}'"
        ) == [[str(loaded.rows)]]
    expected = source.parquet[(Dataset.GREEN, Month(2019, 1))]
    assert cli.rows(
        "SELECT count(*) FROM green_tripdata WHERE filename = 'green_tripdata_2019-01.parquet'"
    ) == [[str(expected.rows)]]

    # Restarted later: resumes after the remembered fires; the TLC has not published 2019-04
    # (a 403, as CloudFront answers for a missing key) -> SKIPPED, not retried.
    code, out = cli("schedule", "--dataset", "yellow", "--until", "2019-06-02")
    assert code == 3, out  # SKIPPED, none failed
    months = re.findall(r"-> yellow (\S+) \(run", out)
    assert months == ["2019-03", "2019-04"]
    assert re.search(r"yellow 2019-04 \S+: SKIPPED - .*not published \(HTTP 403\)", out)

    code, out = cli("runs", "--label", "trigger=schedule", "--dataset", "yellow")
    assert len(_run_ids(out)) == 4
    assert "fired=201906011000" in out
    assert "schedule=taxi-yellow-monthly" in out

    # Nothing missed any more, and --no-catchup never replays: both fire nothing.
    code, out = cli("schedule", "--dataset", "yellow", "--until", "2019-06-02")
    assert "0 fires" in out
    code, out = cli("schedule", "--no-catchup", "--once")
    assert "0 fires" in out


@pytest.fixture
def json_logs_at_info(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI logs JSON lines at INFO to its stderr; the root logger is restored afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    monkeypatch.setenv("TAXI_PIPELINE_LOG_FORMAT", "json")
    monkeypatch.setenv("TAXI_PIPELINE_LOG_LEVEL", "INFO")
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("json_logs_at_info")
def test_the_log_lines_a_step_writes_while_it_works_carry_its_run(cli: Cli) -> None:
    code, out = cli("run", "green", "2019-01")
    assert code == 0, out
    lines: list[dict[str, Any]] = [
        json.loads(line) for line in out.splitlines() if line.startswith("{")
    ]
    in_steps = [line for line in lines if line.get("step") in ("download", "register", "merge")]
    loggers = {line["logger"] for line in in_steps}
    assert {
        "taxi_pipeline.pipeline.steps.download",
        "taxi_pipeline.pipeline.steps.merge",
    } <= loggers, lines
    run_ids = {line.get("run_id") for line in in_steps}
    assert len(run_ids) == 1, in_steps
    (run_id,) = run_ids
    assert isinstance(run_id, str)
    assert run_id.startswith("green-201901-"), in_steps
    assert {(line.get("dataset"), line.get("month")) for line in in_steps} == {("green", "2019-01")}
    assert all(line["logging.googleapis.com/labels"]["run_id"] == run_id for line in in_steps)
