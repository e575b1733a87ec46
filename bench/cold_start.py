"""Benchmark 4: cold start of each Cloud Run function vs a bare ``import functions_framework``.

``python -m bench.cold_start`` runs, per function and per repetition, a fresh Python process
(``bench/cold_start_worker.py``, stdlib only before the clock) that imports functions_framework,
loads ``functions/main.py`` with ``functions_framework.create_app(target, ..., "cloudevent")``,
and posts one real binary-mode CloudEvent through ``app.test_client()``; it reports the time and
RSS after each stage. The environment names the local adapters (folder lake, DuckDB warehouse,
``memory://`` bus, a local HTTP source serving a small generated month), so the first event
does real work: a download, a register, a merge, a dead letter. The events and the state each
one needs (the lake object, the registered month) are prepared beforehand in this process with
the same handlers. Results go to ``bench/results/cold_start.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from bench.common import PYTHON, REPO, child_env, generate, median, say, scratch, write_results
from taxi_pipeline import bootstrap
from taxi_pipeline.adapters.memory.bus import InProcessBus
from taxi_pipeline.devkit.source_server import serve_directory
from taxi_pipeline.domain.datasets import Dataset, Month, object_name
from taxi_pipeline.domain.messages import IngestRequest, Topic
from taxi_pipeline.pipeline import handlers
from taxi_pipeline.pipeline.cloudevents import build_gcs_event, build_pubsub_event

TARGETS = ("on_ingest_request", "on_object_finalized", "on_merge_request", "on_dead_letter")
_PROJECT = "test-project"
_MONTH = Month(2019, 1)
_WORKER = Path(__file__).with_name("cold_start_worker.py")


def _env(home: Path, source_url: str) -> dict[str, str]:
    return {
        "TAXI_PIPELINE_LAKE_URL": (home / "lake").as_uri(),
        "TAXI_PIPELINE_WAREHOUSE_URL": f"duckdb://{home / 'warehouse.duckdb'}",
        "TAXI_PIPELINE_BUS_URL": f"memory://{_PROJECT}",
        "TAXI_PIPELINE_SOURCE_URL": source_url,
        "TAXI_PIPELINE_LOG_FORMAT": "json",
        "TAXI_PIPELINE_LOG_LEVEL": "WARNING",
    }


@contextmanager
def _cloud_env(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    bootstrap.reset_cloud_ports()
    try:
        yield
    finally:
        bootstrap.reset_cloud_ports()  # closes DuckDB: the worker opens the same file
        os.environ.clear()
        os.environ.update(saved)


def _ingest_event(run_id: str) -> CloudEvent:
    request = IngestRequest(dataset=Dataset.YELLOW, month=str(_MONTH), run_id=run_id)
    attributes = {"run_id": run_id, "dataset": "yellow", "month": str(_MONTH)}
    return build_pubsub_event(_PROJECT, Topic.INGEST_REQUESTS, request.to_bytes(), attributes)


def _prepare(target: str, env: dict[str, str], run_id: str) -> CloudEvent:
    """The event ``target`` gets, after doing in-process what comes before it in the chain."""
    if target == "on_ingest_request":
        return _ingest_event(run_id)
    if target == "on_dead_letter":
        attributes = {
            "run_id": run_id, "dataset": "yellow", "month": str(_MONTH),
            "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        }  # fmt: skip
        body = json.dumps({"dataset": "yellow", "month": str(_MONTH)}).encode()
        return build_pubsub_event(_PROJECT, Topic.DEAD_LETTER, body, attributes, delivery_attempt=1)
    with _cloud_env(env):
        ports = bootstrap.cloud_ports()
        handlers.handle_ingest_request(_ingest_event(run_id), ports)
        info = ports.lake.stat(object_name(Dataset.YELLOW, _MONTH))
        if info is None:
            raise RuntimeError("the prepared download left no lake object")
        finalized = build_gcs_event(info)
        if target == "on_object_finalized":
            return finalized
        handlers.handle_object_finalized(finalized, ports)
        bus = ports.bus
        assert isinstance(bus, InProcessBus)
        merges = [(d, a) for t, d, a in bus.published if t == Topic.MERGE_REQUESTS]
        data, attributes = merges[-1]
        return build_pubsub_event(_PROJECT, Topic.MERGE_REQUESTS, data, attributes)


def _run_worker(argv: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    import subprocess
    import time

    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    return result


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and k != "status"]
    return {"runs": len(runs), **{k: median([r[k] for r in runs]) for k in keys}, "all": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the served month")
    parser.add_argument("--name", default="cold_start")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with scratch("cold-start") as work:
        generate(work / "source", args.rows)
        with serve_directory(work / "source") as server:
            bare = [
                _run_worker([PYTHON, str(_WORKER), "--bare"], child_env(), work)
                for _ in range(args.runs)
            ]
            results["bare_import_functions_framework"] = _summary(bare)
            bare_s = results["bare_import_functions_framework"]["import_ff_seconds"]
            say(f"bare import: {bare_s:.3f} s")
            for target in TARGETS:
                runs = []
                for i in range(args.runs):
                    home = work / f"{target}-{i}"
                    env = _env(home, server.base_url)
                    event = _prepare(target, env, f"yellow-2019-01-cold-{i}")
                    headers, body = to_binary(event)
                    home.mkdir(parents=True, exist_ok=True)
                    event_file = home / "event.json"
                    encoded = {"headers": dict(headers), "body": base64.b64encode(body).decode()}
                    event_file.write_text(json.dumps(encoded))
                    runs.append(
                        _run_worker(
                            [
                                PYTHON,
                                str(_WORKER),
                                target,
                                str(REPO / "functions" / "main.py"),
                                str(event_file),
                            ],
                            child_env(**env),
                            work,
                        )
                    )
                results[target] = _summary(runs)
                s = results[target]
                say(
                    f"{target}: import main {s['import_main_seconds']:.3f} s,"
                    f" first event {s['first_event_seconds']:.3f} s,"
                    f" RSS {s['rss_after_event_bytes'] / 2**20:.0f} MiB"
                )
    path = write_results(args.name, {"rows_served": args.rows, "functions": results})
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
