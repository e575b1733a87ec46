"""The web UI in a real browser: Debian's headless Chromium driven by Selenium (chromium-driver).

``taxi-pipeline ui`` runs as its own process on a free port over a home with runs made by the
CLI (generated months served over local HTTP, one month made to fail). The browser opens the
pages, finds the run ids, starts a backfill from the coverage form and a run from the executions
form, and waits (polling, with a timeout) until the pages show them loaded; after the server
stops, the warehouse holds every row of those months. Screenshots go to ``tests/artifacts/ui/``
(``TAXI_PIPELINE_TEST_ARTIFACTS`` to put them elsewhere); with ``TAXI_PIPELINE_UPDATE_DOCS=1``
the executions screenshot also replaces ``docs/ui-executions.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from support.e2e import Cli, Source
from support.ui import free_port, wait_until
from taxi_pipeline.devkit.source_server import Fault
from taxi_pipeline.domain.datasets import Dataset, Month

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("TAXI_PIPELINE_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
    path = folder / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup-dev)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: Selenium Manager (which would download a driver) never runs.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class UiServer:
    def __init__(self, cli: Cli, port: int, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_PIPELINE_")}
        env |= {"TAXI_PIPELINE_HOME": str(cli.home), "TAXI_PIPELINE_SOURCE_URL": cli.source_url}
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "taxi-pipeline"), "ui", "--port", str(port)],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def answering(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the UI exited early:\n{self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/api/runs", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; the exit status and what the server printed."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=60)
        return code, self.log.read_text()


def _console_errors(driver: WebDriver) -> list[str]:
    entries = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(e["message"]) for e in entries if e["level"] == "SEVERE"]


def _shoot(driver: WebDriver, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_pages_render_the_runs_and_a_run_started_from_the_page_loads_its_month(
    cli: Cli, source: Source, browser: WebDriver, artifacts: Path, tmp_path: Path
) -> None:
    driver = browser
    made = []
    for dataset, month in (("green", "2019-01"), ("yellow", "2019-01"), ("yellow", "2019-02")):
        code, out = cli("run", dataset, month)
        assert code == 0, out
        made += [line.split()[-1] for line in out.splitlines() if f" {month} " in line]
    source.server.inject("green_tripdata_2019-01.csv.gz", Fault.replace_body(b"no,such\n", None))
    try:
        code, out = cli("run", "green", "2019-01", "--force")
    finally:
        source.server.clear_faults("green_tripdata_2019-01.csv.gz")
    assert code == 1, out
    assert len(made) == 3

    server = UiServer(cli, free_port(), tmp_path / "ui.log")
    try:
        wait_until(server.answering, timeout=60, what="the UI to answer")

        driver.get(f"{server.url}/")
        shown = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "td.id a")]
        assert len(shown) == 4
        assert set(made) <= set(shown)
        assert driver.find_elements(By.CSS_SELECTOR, "tr.failed")

        driver.get(f"{server.url}/runs/{made[0]}")
        assert driver.find_element(By.CSS_SELECTOR, "h1.id").text == made[0]
        bars = driver.find_elements(By.CSS_SELECTOR, "svg.gantt g.bar")
        assert len(bars) == 4
        _shoot(driver, artifacts, "run")

        # A backfill from the coverage page: green 2019-02, only missing.
        driver.get(f"{server.url}/coverage")
        form = driver.find_element(By.CSS_SELECTOR, "form.backfill")
        Select(form.find_element(By.NAME, "dataset")).select_by_value("green")
        for name in ("from", "to"):
            field = form.find_element(By.NAME, name)
            field.clear()
            field.send_keys("2019-02")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        result = form.find_element(By.CSS_SELECTOR, "output.result")
        wait_until(lambda: "1 run QUEUED" in result.text, timeout=30, what="the backfill answer")
        cell = "table[data-dataset=green] td[data-month='2019-02']"

        def loaded() -> bool:
            found = driver.find_elements(By.CSS_SELECTOR, cell)
            return bool(found) and found[0].get_attribute("data-state") == "loaded"

        # The page refreshes itself (no reload here) until the month shows loaded.
        wait_until(loaded, timeout=180, interval=0.5, what="green 2019-02 to show loaded")
        _shoot(driver, artifacts, "coverage")

        # A run from the executions page: yellow 2019-03; its page shows it end.
        driver.get(f"{server.url}/")
        run_form = driver.find_element(By.CSS_SELECTOR, "form[data-kind=run]")
        Select(run_form.find_element(By.NAME, "dataset")).select_by_value("yellow")
        run_form.find_element(By.NAME, "month").send_keys("2019-03")
        run_form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        link = wait_until(
            lambda: run_form.find_elements(By.CSS_SELECTOR, "output.result a"),
            timeout=30,
            what="the run answer",
        )[0]
        link.click()
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "h1.id + .badge.success"),
            timeout=180,
            interval=0.5,
            what="the new run to show SUCCESS",
        )
        started = driver.find_element(By.CSS_SELECTOR, "h1.id").text
        assert started.startswith("yellow-201903-")

        driver.get(f"{server.url}/?state=FAILED")
        failed = driver.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
        assert [row.get_attribute("class") for row in failed] == ["failed"]
        driver.get(f"{server.url}/")
        rows = driver.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
        assert len(rows) == 6
        screenshot = _shoot(driver, artifacts, "executions")
        if os.environ.get("TAXI_PIPELINE_UPDATE_DOCS") == "1":
            shutil.copyfile(screenshot, ROOT / "docs" / "ui-executions.png")
        assert _console_errors(driver) == []
    finally:
        code, log = server.stop()
    # Ctrl-C: the server shut down, closed the warehouse and said so.
    assert code == 130, log
    assert log.rstrip().endswith("stopped"), log

    counts = dict(
        cli.rows("SELECT filename, count(*) FROM green_tripdata GROUP BY 1 ORDER BY 1")
        + cli.rows("SELECT filename, count(*) FROM yellow_tripdata GROUP BY 1 ORDER BY 1")
    )
    for dataset, month in (("green", "2019-02"), ("yellow", "2019-03")):
        expected = source.files[(Dataset(dataset), Month.parse(month))].rows
        assert counts[f"{dataset}_tripdata_{month}.csv"] == str(expected)
