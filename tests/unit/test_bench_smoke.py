"""The benchmark scripts at tiny sizes, so they do not rot: values checked, never timings.

Each script runs as ``python -m bench.NAME`` (as BENCHMARKS.md documents) with its scratch data
and results under ``tmp_path``; they run side by side to stay well under 20 s. The peers
(PostgreSQL) and the BigQuery emulator are left out: they are exercised by the full runs (the
PostgreSQL warehouse's own benchmark starts its server: both contenders are its subject).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

_COMMANDS = {
    "ingest": ["--rows", "3000", "--parquet-rows", "2000", "--runs", "1", "--peer-runs", "0"],
    "download": ["--rows", "3000", "--copies", "2", "--runs", "1"],
    "cold_start": ["--rows", "500", "--runs", "1"],
    "bq_cost": ["--rows", "3000", "--no-emulator"],
    "backfill": ["--rows", "500", "--months", "2", "--runs", "1", "--concurrency", "1", "2"],
    "ui": ["--runs", "300", "--requests", "2"],
    "fhvhv": ["--rows", "3000", "--runs", "1"],
    # This venv: a venv of its own (pip install, half a minute) is for the full runs.
    "postgres_ingest": [
        "--rows",
        "2000",
        "--runs",
        "1",
        "--months",
        "2",
        "--month-rows",
        "500",
        "--venv",
        "dev",
    ],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    base = tmp_path_factory.mktemp("bench")
    env = {
        **os.environ,
        "TAXI_BENCH_WORK": str(base / "work"),
        "TAXI_BENCH_RESULTS": str(base / "results"),
    }
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"bench.{name}", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, args in _COMMANDS.items()
    }
    for name, process in running.items():
        # Eight scripts side by side on 2 shared cores: a generous bound, never a timing.
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"bench.{name} failed:\n{out.decode()[-3000:]}"
    report = base / "BENCHMARKS.md"
    subprocess.run(
        [sys.executable, "-m", "bench.report", "--results", str(base / "results"),
         "--out", str(report)],
        cwd=REPO, env=env, check=True,
    )  # fmt: skip
    loaded = {p.stem: json.loads(p.read_text()) for p in (base / "results").glob("*.json")}
    loaded["_report"] = {"text": report.read_text(), "work_left": list((base / "work").iterdir())}
    return loaded


def test_ingest_loads_every_row_and_the_rerun_downloads_nothing(
    results: dict[str, dict[str, Any]],
) -> None:
    ingest = results["ingest"]
    assert ingest["rows"] == 3000
    assert ingest["ours"]["bytes_downloaded"] == [ingest["file_bytes"]]
    assert ingest["rerun"]["bytes_downloaded"] == [0]
    assert ingest["peers"] == {}


def test_ingest_loads_the_parquet_month_and_times_every_phase(
    results: dict[str, dict[str, Any]],
) -> None:
    ingest = results["ingest"]
    parquet = ingest["parquet"]
    assert parquet["rows"] == 2000
    assert parquet["ours"]["bytes_downloaded"] == [parquet["file_bytes"]]
    assert parquet["rerun"]["bytes_downloaded"] == [0]
    for month in (ingest, parquet):
        phases = month["ours"]["phases"]
        assert list(phases) == ["start", "download + verify", "stage", "summary", "merge",
                                "bookkeeping"]  # fmt: skip
        assert phases["stage"] > 0
        (run,) = month["ours"]["all"]
        statements = run["extra"]["phases"]["statements"]
        assert "stage into final table" in statements  # the one pass, not a staging table
        assert "build staging table" not in statements
    assert ingest["two_pass_limit"]["runs"] == 1
    assert "| Parquet month (" in results["_report"]["text"]


def test_download_moves_every_byte_to_both_lakes(results: dict[str, dict[str, Any]]) -> None:
    sizes = results["download"]["sizes"]
    assert list(sizes) == ["month", "2x month"]
    assert sizes["2x month"]["bytes"] == 2 * sizes["month"]["bytes"]
    for size in sizes.values():
        for kind in ("curl", "curl_gzip_t", "folder", "gcs"):
            assert size[kind]["all"][0]["extra"]["bytes"] == size["bytes"]


def test_cold_start_answers_every_function(results: dict[str, dict[str, Any]]) -> None:
    functions = results["cold_start"]["functions"]
    assert set(functions) == {
        "bare_import_functions_framework", "on_ingest_request", "on_object_finalized",
        "on_merge_request", "on_dead_letter",
    }  # fmt: skip
    for name, summary in functions.items():
        if name != "bare_import_functions_framework":
            assert summary["all"][0]["status"] == 200


def test_bq_cost_prunes_to_the_staging_dates(results: dict[str, dict[str, Any]]) -> None:
    cost = results["bq_cost"]
    assert ["2019-01-01", "2019-02-01"] in [r for r in cost["pickup_ranges"]] or any(
        r[0] <= "2019-01-01" and r[1] >= "2019-02-01" for r in cost["pickup_ranges"]
    )
    assert "TIMESTAMP '2019-02-01'" in cost["merge_sql"]
    table = {row["target_months"]: row for row in cost["bytes"]["table"]}
    assert table[31]["unpruned"] == 31 * table[1]["unpruned"]
    assert table[31]["pruned_reload"] == table[12]["pruned_reload"]
    assert cost["bytes"]["rows"] == 3000


def test_backfill_runs_each_concurrency(results: dict[str, dict[str, Any]]) -> None:
    backfill = results["backfill"]
    assert backfill["months"] == 2
    assert set(backfill["concurrency"]) == {"1", "2"}


def test_ui_serves_every_page_over_the_written_history(results: dict[str, dict[str, Any]]) -> None:
    ui = results["ui"]
    assert ui["runs"] == 300
    assert ui["lines"] > 300 * 3
    assert ui["rows_per_page"] == 100
    assert set(ui["pages"]) == {
        "/", "/?page=50", "/?state=FAILED&label=trigger=schedule", "/api/runs", "/coverage",
        "/runs/{id}",
    }  # fmt: skip
    assert all(page["requests"] == 2 for page in ui["pages"].values())


def test_postgres_ingest_loads_both_contenders(results: dict[str, dict[str, Any]]) -> None:
    pg = results["postgres_ingest"]
    (size,) = pg["sizes"]
    assert size["rows"] == 2000
    assert size["ours"]["runs"] == size["parquet"]["runs"] == size["reference"]["runs"] == 1
    # Each phase found in the server's log: ours COPYs (typed and measured in the client: no
    # staging or measure statement) and merges, from the CSV and from the TLC Parquet file
    # alike; the reference COPYs, UPDATEs and merges.
    for contender, phases in (("ours", ("copy", "merge")), ("parquet", ("copy", "merge")),
                              ("reference", ("copy", "staging", "merge"))):  # fmt: skip
        assert all(size[contender]["phases"][p] > 0 for p in phases), size[contender]["phases"]
    for contender in ("ours", "parquet"):
        assert size[contender]["phases"]["staging"] == 0, f"{contender}: a clean month as text"
        assert size[contender]["phases"]["measure"] == 0, f"{contender}: measured by the server"
    assert pg["parquet_month"] == "2024-01"
    months = pg["twelve_months"]
    assert months["months"] == ["2019-01", "2019-02"]
    # The merge statements were found in the server's log (ours: each month's first load).
    assert all(seconds > 0 for seconds in months["ours"]["merge_seconds"])
    assert all(seconds > 0 for seconds in months["reference"]["merge_seconds"])


def test_report_renders_every_section_and_the_scratch_is_gone(
    results: dict[str, dict[str, Any]],
) -> None:
    text = results["_report"]["text"]
    for title in ("## 1. Month ingest", "## 2. Re-run", "## 3. Download", "## 4. Cold start",
                  "## 5. BigQuery cost", "## 6. Backfill", "## 7. Web UI",
                  "## 8. PostgreSQL"):  # fmt: skip
        assert title in text
    numbers = re.findall(r"^## (\d+)\. ", text, re.MULTILINE)
    assert len(numbers) == len(set(numbers)), numbers  # every section its own number
    assert "Not run yet" not in text
    assert results["_report"]["work_left"] == []


def test_fhvhv_loads_every_row_under_its_target_and_the_rerun_downloads_nothing(
    results: dict[str, dict[str, Any]],
) -> None:
    fhvhv = results["fhvhv"]
    assert fhvhv["rows"] == 3000
    assert fhvhv["ours"]["bytes_downloaded"] == [fhvhv["file_bytes"]]
    assert fhvhv["rerun"]["bytes_downloaded"] == [0]
    assert fhvhv["limit"]["runs"] == 1
    assert "## 9. A full-size fhvhv month" in results["_report"]["text"]
