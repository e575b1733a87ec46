"""A command line that tells the truth (issue 15): exit statuses, errors, output one can trust.

One test (or a few) per item of the issue, each through the CLI as a user types it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from support.browser import WINDOW, measured_layout, screenshot
from support.e2e import Cli, Source
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.bootstrap import build_local
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month, file_name
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.domain.runs import RunEvent
from taxi_pipeline.settings import Settings

SCRIPT = Path(sys.executable).with_name("taxi-pipeline")
_RUN_ID = re.compile(r"\b(?:green|yellow|rejected)-[0-9a-f-]+\b")


def _lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip()]


def _closed_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gzip_csv(header: str, rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header.split(","))
    writer.writerows(rows)
    return gzip.compress(text.getvalue().encode())


# -- 1. a month in the future ---------------------------------------------------------------------


def test_run_refuses_a_future_month_up_front_and_creates_nothing(cli: Cli) -> None:
    future = Month(datetime.now(UTC).year + 4, 1)
    code, out = cli("run", "yellow", str(future))
    assert code == 2, out
    assert f"{future} is in the future" in out
    assert "no result was recorded" not in out
    assert not cli.home.exists(), "refused before the pipeline was opened"

    code, out = cli("run", "yellow", "2008-12..2009-01")
    assert code == 2, out
    assert "2008-12 is before the first published month 2009-01" in out


def test_a_rejected_request_is_recorded_against_its_own_run(cli: Cli, source: Source) -> None:
    """A request the CLI would refuse, published anyway (by hand, another tool): the download
    step rejects it, and the history says so under the run's own id, dataset and month."""
    future = Month(datetime.now(UTC).year + 4, 1)
    pipeline = build_local(Settings(home=cli.home, source_url=source.url))
    try:
        run_id = pipeline.submit(Dataset.YELLOW, future, labels={"trigger": "manual"})
        pipeline.drain()
    finally:
        pipeline.close()
    assert pipeline.results[run_id].state is RunState.FAILED
    assert "in the future" in (pipeline.results[run_id].error or "")

    code, out = cli("runs")
    assert code == 0, out
    assert _RUN_ID.findall(out) == [run_id], "one run, no stray rejected-... entry"
    header, line = out.splitlines()[0], next(ln for ln in out.splitlines() if ln.startswith(run_id))
    assert re.match(rf"{run_id}\s+yellow\s+{future}\s+FAILED\s", line), line
    reason = f"month {future} is in the future"
    assert line.index(reason) == header.index("ERROR"), "the reason is in its own column"


# -- 2. an unreachable source ---------------------------------------------------------------------


def test_an_unreachable_source_fails_fast_with_one_line_per_month(cli: Cli) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    code, out = cli("run", "green", "2019-01..2019-03", "--source-url", base)
    elapsed = time.monotonic() - started
    assert code == 1, out
    about_source = [line for line in _lines(out) if base in line]
    assert len(about_source) == 3, out
    for month, line in zip(("2019-01", "2019-02", "2019-03"), about_source, strict=True):
        assert line.startswith(f"{month} FAILED: "), line
        assert f"{base}/green/green_tripdata_{month}.csv.gz" in line
        assert "check the network" in line
        assert "--source-url" in line
    assert "WARNING" not in out
    assert "Retrying" not in out
    assert "ERROR" not in out
    assert len(_lines(out)) <= 12, out
    assert elapsed < 30, f"{elapsed:.0f} s for three unreachable months"

    # Locally 2 deliveries of 2 HTTP attempts each (the cloud keeps 5 and 3).
    retries = cli.rows(
        "SELECT month, count(*) FROM pipeline_runs WHERE step = 'download'"
        " AND state = 'RETRYING' GROUP BY 1 ORDER BY 1"
    )
    assert retries == [["2019-01", "2"], ["2019-02", "2"], ["2019-03", "2"]]

    # The environment still decides when it says so.
    code, out = cli(
        "run", "green", "2019-04", "--source-url", base,
        env={"TAXI_PIPELINE_MAX_DELIVERY_ATTEMPTS": "3", "TAXI_PIPELINE_HTTP_ATTEMPTS": "1"},
    )  # fmt: skip
    assert code == 1, out
    assert cli.rows(
        "SELECT count(*) FROM pipeline_runs WHERE month = '2019-04' AND state = 'RETRYING'"
    ) == [["3"]]


# -- 3. expected failures: one line and a documented status ---------------------------------------


def _assert_one_error_line(out: str, *phrases: str) -> None:
    lines = _lines(out)
    assert len(lines) == 1, out
    assert lines[0].startswith("error: "), out
    assert "Traceback" not in out
    for phrase in phrases:
        assert phrase in lines[0], out


def test_an_unusable_home_is_one_error_line_and_status_2(cli: Cli, tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    code, out = cli("run", "green", "2019-01", "--home", str(a_file))
    assert code == 2
    _assert_one_error_line(out, str(a_file), "not a directory")

    code, out = cli("run", "green", "2019-01", "--home", "/proc/taxi-pipeline-home")
    assert code == 2
    _assert_one_error_line(out, "/proc/taxi-pipeline-home")
    assert not Path("/proc/taxi-pipeline-home").exists()


def test_a_bad_setting_names_its_variable(cli: Cli) -> None:
    code, out = cli("run", "green", "2019-01", env={"TAXI_PIPELINE_HTTP_ATTEMPTS": "many"})
    assert code == 2
    _assert_one_error_line(out, "TAXI_PIPELINE_HTTP_ATTEMPTS='many'", "valid integer")


def test_status_html_into_a_missing_folder_is_one_error_line(cli: Cli, tmp_path: Path) -> None:
    assert cli("schedule", "--once", "--no-catchup")[0] == 0  # makes the home, fires nothing
    target = tmp_path / "no-such-folder" / "status.html"
    code, out = cli("status", "--html", str(target))
    assert code == 2, out
    errors = [line for line in _lines(out) if line.startswith("error: ")]
    assert errors == [f"error: cannot write --html {target}: No such file or directory"]
    assert "Traceback" not in out


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    home = "/proc/taxi-pipeline-home"
    quiet = subprocess.run(
        [str(SCRIPT), "run", "green", "2019-01", "--home", home],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert quiet.returncode == 2
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr.strip() == f"error: cannot use the home {home}: No such file or directory"
    loud = subprocess.run(
        [str(SCRIPT), "--debug", "run", "green", "2019-01", "--home", home],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert loud.returncode != 0
    assert "Traceback (most recent call last)" in loud.stderr
    assert "FileNotFoundError" in loud.stderr


@pytest.mark.parametrize("output", ["table", "csv"])
def test_a_reader_that_goes_away_ends_the_command_quietly(cli: Cli, output: str) -> None:
    """``taxi-pipeline sql ... | head -1``: no error line, no traceback, status 141."""
    assert cli("run", "green", "2019-01")[0] == 0
    process = subprocess.Popen(
        [str(SCRIPT), "sql", "SELECT unique_row_id FROM green_tripdata", "--format", output,
         "--limit", "0", "--home", str(cli.home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.readline().strip()
    process.stdout.close()  # as `head -1` does, long before the 3,000 rows are written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert stderr == ""


# -- 4. read-only commands on a home that does not exist ------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("status",), ("runs",), ("runs", "show", "green-201901-00000000"), ("sql", "SELECT 1")],
    ids=" ".join,
)
def test_read_only_commands_on_a_missing_home_say_so_and_create_nothing(
    cli: Cli, command: tuple[str, ...]
) -> None:
    code, out = cli(*command)
    assert code == 2, out
    _assert_one_error_line(out, f"no taxi-pipeline home at {cli.home}", "--home")
    assert not cli.home.exists()

    cli.home.mkdir()
    code, out = cli(*command)
    assert code == 2, out
    _assert_one_error_line(out, f"no warehouse at {cli.home / 'warehouse.duckdb'}")
    assert list(cli.home.iterdir()) == [], "reading created nothing"


def test_status_names_the_warehouse_it_read(cli: Cli) -> None:
    assert cli("run", "green", "2019-01")[0] == 0
    code, out = cli("status")
    assert code == 0, out
    assert f"read duckdb://{cli.home.resolve() / 'warehouse.duckdb'}" in out


# -- 5. exit statuses -----------------------------------------------------------------------------


def test_exit_status_3_when_none_failed_but_some_were_skipped(cli: Cli, source: Source) -> None:
    wrong = source.url + "/no-such-release"  # every month is a 404 there
    code, out = cli("run", "green", "2019-01..2019-02", "--source-url", wrong)
    assert code == 3, out
    assert out.count(" SKIPPED: ") == 2

    code, out = cli(
        "backfill", "green", "--from", "2019-01", "--to", "2019-02", "--source-url", wrong
    )
    assert code == 3, out
    assert "2 SKIPPED" in out

    code, out = cli(
        "schedule", "--dataset", "green", "--since", "2020-04-30", "--until", "2020-05-02", "--once"
    )
    assert code == 3, out
    assert "1 fire, 0 failed, 1 skipped" in out

    # One SUCCESS and one SKIPPED month: still 3 (nothing failed).
    code, out = cli("run", "green", "2019-02..2019-03")
    assert code == 3, out


def test_exit_status_1_when_any_month_failed(cli: Cli, source: Source) -> None:
    name = file_name(Dataset.GREEN, Month(2019, 2))
    source.server.inject(name, Fault.replace_body(b"<html>oops</html>", times=None))
    try:
        code, out = cli("backfill", "green", "--from", "2019-01", "--to", "2019-03")
    finally:
        source.server.clear_faults(name)
    assert code == 1, out
    assert "1 SUCCESS, 1 SKIPPED, 1 FAILED" in out or "1 SUCCESS, 1 FAILED, 1 SKIPPED" in out


# -- 6. sql output --------------------------------------------------------------------------------


def test_sql_prints_ids_as_hex_values_literally_and_caps_rows(cli: Cli, source: Source) -> None:
    assert cli("run", "green", "2019-01")[0] == 0
    rows = source.files[(Dataset.GREEN, Month(2019, 1))].rows

    code, out = cli("sql", "SELECT unique_row_id FROM green_tripdata ORDER BY 1 LIMIT 1")
    assert code == 0, out
    assert "b'" not in out
    (hex_id,) = re.findall(r"\b[0-9a-f]{32}\b", out)
    expected = cli.rows("SELECT lower(hex(unique_row_id)) FROM green_tripdata ORDER BY 1 LIMIT 1")
    assert hex_id == expected[0][0]

    code, out = cli("sql", "SELECT 'a:x:b' AS emoji, '[red]hi[/red]' AS markup, '[/x]' AS tag")
    assert code == 0, out
    assert "a:x:b" in out
    assert "[red]hi[/red]" in out
    assert "[/x]" in out

    code, out = cli("sql", "SELECT CAST(12.5 AS DECIMAL(38, 9)) AS fare, CAST(3 AS DECIMAL(38, 9))")
    assert code == 0, out
    assert re.search(r"\b12\.5\b", out)
    assert "12.500000000" not in out
    assert not re.search(r"\b3\.0+\b", out)

    code, out = cli("sql", "SELECT unique_row_id FROM green_tripdata")
    assert code == 0, out
    assert len(re.findall(r"\b[0-9a-f]{32}\b", out)) == 100
    assert f"showing 100 of {rows:,} rows" in out
    assert "--limit 0" in out

    code, out = cli("sql", "SELECT unique_row_id FROM green_tripdata", "--limit", "7")
    assert len(re.findall(r"\b[0-9a-f]{32}\b", out)) == 7

    code, out = cli(
        "sql", "SELECT unique_row_id, fare_amount FROM green_tripdata", "--format", "json"
    )
    assert code == 0, out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(records) == rows, "csv and json print every row unless --limit"
    assert re.fullmatch(r"[0-9a-f]{32}", records[0]["unique_row_id"])

    code, out = cli("sql", "SELECT unique_row_id FROM green_tripdata", "--format", "csv")
    assert len(out.splitlines()) == rows + 1


# -- 7. values from data never reach the terminal raw ---------------------------------------------

_HOSTILE = "\x1b]0;pwned\x07[/x]\x1b[2J"


def _assert_escaped(out: str) -> None:
    assert "\x1b" not in out, repr(out)
    assert "\x07" not in out, repr(out)
    assert "\\x1b]0;pwned\\x07[/x]\\x1b[2J" in out, out


def test_a_header_from_the_file_is_printed_escaped(cli: Cli, source: Source) -> None:
    name = file_name(Dataset.YELLOW, Month(2019, 3))
    body = _gzip_csv(f"VendorID,{_HOSTILE},c", [["1", "2", "3"]])
    source.server.inject(name, Fault.replace_body(body, times=None))
    try:
        code, out = cli("run", "yellow", "2019-03")
    finally:
        source.server.clear_faults(name)
    assert code == 1, out
    assert "FAILED" in out
    _assert_escaped(out)

    code, out = cli("runs", "--state", "failed")
    assert code == 0, out
    assert "\x1b" not in out
    (run_id,) = [i for i in _RUN_ID.findall(out) if i.startswith("yellow-")]
    code, out = cli("runs", "show", run_id)
    assert code == 0, out
    _assert_escaped(out)


def test_bad_value_samples_are_printed_escaped(cli: Cli, source: Source) -> None:
    generated = source.files[(Dataset.GREEN, Month(2019, 2))]
    with gzip.open(generated.path, "rt", newline="") as handle:
        table = list(csv.reader(handle))
    column = table[0].index("trip_distance")
    for row in table[1:]:
        row[column] = _HOSTILE
    body = _gzip_csv(",".join(table[0]), table[1:])
    source.server.inject(generated.path.name, Fault.replace_body(body, times=None))
    try:
        code, out = cli("run", "green", "2019-02")
    finally:
        source.server.clear_faults(generated.path.name)
    assert code == 1, out
    assert "do not fit the column types" in out
    _assert_escaped(out)

    code, out = cli("runs", "--state", "failed")
    (run_id,) = _RUN_ID.findall(out)
    code, out = cli("runs", "show", run_id)
    assert code == 0, out
    _assert_escaped(out)
    code, out = cli("status")
    assert "\x1b" not in out


# -- 8. schedule catch-up -------------------------------------------------------------------------


def test_schedule_announces_the_catch_up_before_firing(cli: Cli) -> None:
    code, out = cli(
        "schedule", "--dataset", "green", "--since", "2019-03-01", "--until", "2019-04-02"
    )
    assert code == 0, out
    lines = _lines(out)
    notice = next(i for i, line in enumerate(lines) if line.startswith("catching up"))
    first_fire = next(i for i, line in enumerate(lines) if line.startswith("fire "))
    assert notice < first_fire
    assert lines[notice].startswith("catching up 2 missed fires since 2019-03-01 00:00 UTC")
    assert "(taxi-green-monthly 2: green 2019-01 .. 2019-02)" in lines[notice]


def _in_terminal(args: list[str], env: dict[str, str], answer: bytes | None) -> tuple[int, str]:
    """Run the console script on a pseudo-terminal, answering its question if it asks one."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [str(SCRIPT), *args], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    seen = b""
    answered = answer is None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the program ended
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(leader, answer or b"")
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(leader)
    code = process.wait(timeout=30)
    return code, seen.decode(errors="replace").replace("\r\n", "\n")


def test_schedule_asks_on_a_terminal_before_many_fires(cli: Cli) -> None:
    env = {
        **os.environ,
        "TAXI_PIPELINE_HOME": str(cli.home),
        "TAXI_PIPELINE_SOURCE_URL": cli.source_url,
        "TAXI_PIPELINE_TLC_URL": f"{cli.source_url}/trip-data",
    }
    args = ["schedule", "--since", "2019-01-01", "--until", "2019-03-02"]
    code, out = _in_terminal(args, env, answer=b"n\n")
    assert code == 0, out
    assert "catching up 12 missed fires since 2019-01-01" in out
    assert "Fire all 12 now? [y/N]" in out
    assert "nothing fired" in out
    assert "fire taxi-" not in out
    assert cli("runs")[1].startswith("no runs recorded yet")

    code, out = _in_terminal([*args, "--yes"], env, answer=None)
    # The TLC's 2018-11 and 2018-12 are not served, fhvhv has none before 2019-02: SKIPPED.
    assert code == 3, out
    assert "[y/N]" not in out
    assert out.count("fire taxi-") == 12


# -- 9. header mismatch ---------------------------------------------------------------------------


def test_a_header_mismatch_names_the_first_differing_column(cli: Cli, source: Source) -> None:
    name = file_name(Dataset.YELLOW, Month(2019, 3))
    body = _gzip_csv("VendorID,pickup,dropoff", [["1", "2", "3"]])
    source.server.inject(name, Fault.replace_body(body, times=None))
    try:
        code, out = cli("run", "yellow", "2019-03")
    finally:
        source.server.clear_faults(name)
    assert code == 1, out
    assert (
        "column 2 is 'pickup', expected 'tpep_pickup_datetime' (18 columns expected, 3 found)"
    ) in out
    assert "congestion_surcharge" not in out, "not both full headers"


# -- 10. status --html in a browser ---------------------------------------------------------------


class _PageText(HTMLParser):
    """The text a reader sees without hovering: everything outside <title> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.visible: list[str] = []
        self.fills: set[str] = set()
        self.legend: set[str] = set()
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("title", "style"):
            self._hidden += 1
        if tag == "rect" and values.get("fill"):
            self.fills.add(str(values["fill"]))
        style = values.get("style") or ""
        if values.get("class") == "swatch" and "background:" in style:
            self.legend.add(style.split("background:")[1].split(";")[0].strip())

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "style"):
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.visible.append(data)


def test_status_html_reads_well_in_a_browser(cli: Cli, source: Source, tmp_path: Path) -> None:
    assert cli("run", "green", "2019-01")[0] == 0
    assert cli("run", "yellow", "2019-01")[0] == 0
    name = file_name(Dataset.YELLOW, Month(2019, 2))
    source.server.inject(name, Fault.replace_body(b"<html>rate limited</html>", times=None))
    try:
        assert cli("run", "yellow", "2019-02")[0] == 1
    finally:
        source.server.clear_faults(name)
    # A run from ten minutes earlier: a wall-clock axis would make the others' bars 1-2 px.
    earlier = datetime.now(UTC) - timedelta(minutes=10)
    history = SqliteHistory(cli.home / "runs.sqlite")
    try:
        history.append_run_events(_an_earlier_run(earlier))
    finally:
        history.close()

    page = tmp_path / "status.html"
    code, out = cli("status", "--html", str(page))
    assert code == 0, out
    html = page.read_text()
    text = _PageText()
    text.feed(html)
    visible = " ".join(" ".join(text.visible).split())

    assert "not a valid gzip stream" in visible, "the failure reason is on the page"
    assert text.fills <= text.legend, f"colours without a legend: {text.fills - text.legend}"
    assert not re.search(r"\b\d+(\.\d)?[kM]\b", visible), "one number format"
    assert f"{source.files[(Dataset.YELLOW, Month(2019, 1))].rows:,}" in visible

    layout = measured_layout(page, tmp_path / "chromium-profile")
    assert layout["scrollWidth"] <= WINDOW[0], layout
    assert layout["rightmostElement"] <= WINDOW[0], layout
    spans = layout["rowSpans"]
    assert len(spans) == 4, layout
    assert max(spans) > 600, "the longest run spans the axis"
    # Every run that loaded a month took a visible share of the axis, wherever it began.
    assert sorted(spans)[-3] > 60, layout

    png = tmp_path / "status.png"
    assert screenshot(page, png, tmp_path / "chromium-profile") == WINDOW
    assert png.stat().st_size > 20_000, "a page was drawn"


def _an_earlier_run(at: datetime) -> list[RunEvent]:
    labels = {"trigger": "manual"}

    def line(step: str, state: RunState, begin: float, end: float | None) -> RunEvent:
        return RunEvent(
            run_id="green-201902-0a1b2c3d",
            dataset="green",
            month="2019-02",
            step=step,
            state=state,
            attempt=0 if step == "queue" else 1,
            started_at=at + timedelta(seconds=begin),
            finished_at=None if end is None else at + timedelta(seconds=end),
            labels=labels,
            recorded_at=at + timedelta(seconds=end if end is not None else begin),
            rows=2_500 if step == "merge" and state is RunState.SUCCESS else None,
        )

    return [
        line("queue", RunState.QUEUED, 0.0, None),
        line("download", RunState.RUNNING, 0.05, None),
        line("download", RunState.SUCCESS, 0.05, 0.2),
        line("register", RunState.RUNNING, 0.2, None),
        line("register", RunState.SUCCESS, 0.2, 0.3),
        line("merge", RunState.RUNNING, 0.3, None),
        line("merge", RunState.SUCCESS, 0.3, 0.6),
    ]


# -- 11. small things -----------------------------------------------------------------------------


def test_version(cli: Cli) -> None:
    code, out = cli("--version")
    assert code == 0
    assert re.fullmatch(r"taxi-pipeline \d+\.\d+\.\d+\S*\n", out), out


def test_dataset_names_are_case_insensitive(cli: Cli) -> None:
    code, out = cli("run", "Green", "2019-01")
    assert code == 0, out
    assert "SUCCESS" in out
    code, out = cli("runs", "--dataset", "GREEN")
    assert code == 0, out
    assert "green-201901-" in out


@pytest.mark.parametrize("width", [60, 80, 100, 120])
def test_help_shows_argument_names_and_whole_choices(cli: Cli, width: int) -> None:
    code, out = cli("run", "--help", env={"COLUMNS": str(width)})
    assert code == 0
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "DATASET" in usage, usage
    assert "MONTHS" in usage, usage
    assert "{dataset}" not in usage

    code, out = cli("runs", "--help", env={"COLUMNS": str(width)})
    assert code == 0
    words = set(re.findall(r"[a-z]+", out.lower()))
    for state in RunState:
        assert state.value.lower() in words, f"{state} broken across lines at {width} columns"


def test_counts_read_the_same_in_backfill_and_runs_show(cli: Cli, source: Source) -> None:
    code, out = cli(
        "backfill", "green", "--from", "2019-01", "--to", "2019-01", "--concurrency", "1"
    )
    assert code == 0, out
    rows = source.files[(Dataset.GREEN, Month(2019, 1))].rows
    phrase = f"{rows:,} in file, {rows:,} inserted"
    assert f"SUCCESS, rows {phrase}" in out
    assert "at most 1 run at a time" in out
    found = re.search(r"^green 2019-01 (green-201901-[0-9a-f]{8}): SUCCESS", out, re.MULTILINE)
    assert found, out
    code, out = cli("runs", "show", found.group(1))
    assert f"rows      {phrase}" in out
