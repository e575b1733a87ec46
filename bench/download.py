"""Benchmark 3: download streaming, HTTP -> folder store and HTTP -> fake-gcs-server.

``python -m bench.download`` generates a full-size yellow month (~140 MB gzip) and a file ten
times that size (the month's gzip concatenated ten times: multi-member gzip, which the verifier
accepts), serves both over local HTTP, and for each size measures, interleaved:

- ``curl -o FILE``: the transfer alone (the target's baseline);
- ``curl | tee FILE | gzip -t``: transfer plus a full gzip check, the work our step must do;
- ours -> folder and ours -> GCS: a worker process (``--worker``) that runs the real download
  step code, ``steps.download._download_once`` with the real ports (``HttpxSource``,
  ``FolderStore`` / ``GcsStore`` on fake-gcs-server, streaming resumable upload), timed around
  the call; its peak RSS is the kernel's ``VmHWM``.

Results go to ``bench/results/download.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    FULL_MONTH_ROWS,
    MIB,
    PYTHON,
    REPO,
    Measured,
    RssSampler,
    child_env,
    generate,
    measure,
    say,
    scratch,
    summarize,
    write_results,
)

TARGET_RSS_BYTES = 150 * MIB
TARGET_THROUGHPUT_RATIO = 0.8
_BUCKET = "bench-lake"
_PROJECT = "test-project"


def worker(target: str, base_url: str, month: str, dest: str) -> dict[str, Any]:
    """Run the real download step once; return what it measured (in this process)."""
    import psutil

    from bench.common import hwm
    from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse
    from taxi_pipeline.adapters.folder.store import FolderStore
    from taxi_pipeline.adapters.http.source import HttpxSource
    from taxi_pipeline.adapters.memory.bus import InProcessBus
    from taxi_pipeline.adapters.memory.locks import ThreadLocks
    from taxi_pipeline.domain.datasets import Dataset, Month, Upstream, object_name
    from taxi_pipeline.pipeline.ports import Lake, Ports
    from taxi_pipeline.pipeline.steps.download import DownloadJob, download_once, source_file_url
    from taxi_pipeline.settings import Settings

    settings = Settings(source_url=base_url, gcp_project=_PROJECT)
    lake: Lake
    if target == "gcs":
        from taxi_pipeline.adapters.gcs.store import GcsStore

        lake = GcsStore(dest, settings)
    else:
        lake = FolderStore(Path(dest))
    ports = Ports(
        settings=settings,
        lake=lake,
        # Never touched by the download (no request is made): the cloud function's warehouse.
        warehouse=BigQueryWarehouse("bench-project", "bench", settings),
        bus=InProcessBus(),
        source=HttpxSource(settings.http_timeout_seconds),
        locks=ThreadLocks(),
    )
    dataset, parsed = Dataset.YELLOW, Month.parse(month)
    url = source_file_url(settings, dataset, parsed)
    name = object_name(dataset, parsed)
    if target == "gcs":
        lake.stat(name)  # the client and its connection exist before the clock starts
    rss_ready = int(psutil.Process().memory_info().rss)
    started = time.perf_counter()
    deadline = time.monotonic() + settings.download_timeout_seconds
    job = DownloadJob(
        url,
        name,
        {"source_url": url},
        dataset,
        parsed,
        dataset.spec.publication(Upstream.MIRROR),
        replace=False,
        loaded_version=None,
    )
    verified = download_once(job, ports, deadline)
    seconds = time.perf_counter() - started
    stored = lake.stat(name)
    if stored is None or stored.size != verified.bytes_compressed:
        raise RuntimeError(f"{name}: stored {stored} != downloaded {verified}")
    return {
        "seconds": seconds,
        "bytes": verified.bytes_compressed,
        "bytes_uncompressed": verified.bytes_uncompressed,
        "rss_ready_bytes": rss_ready,
        "hwm_bytes": hwm(os.getpid()),
    }


def _make_big(small: Path, big: Path, copies: int) -> None:
    with big.open("wb") as out:
        for _ in range(copies):
            with small.open("rb") as part:
                shutil.copyfileobj(part, out, 8 * MIB)


def _ours(
    target: str,
    url: str,
    month: str,
    dest: str,
    work: Path,
    env: dict[str, str],
    timeout: float | None = None,
) -> Measured:
    log = work / f"worker-{target}-{month}.log"
    log.unlink(missing_ok=True)
    argv = [PYTHON, "-m", "bench.download", "--worker", target, url, month, dest]
    run = measure(argv, env=env, log=log, cwd=REPO, timeout=timeout)
    done = json.loads(log.read_text().strip().splitlines()[-1])
    return Measured(
        done["seconds"],
        max(run.peak_rss_bytes, int(done["hwm_bytes"])),
        run.returncode,
        {"bytes": done["bytes"], "rss_ready_bytes": done["rss_ready_bytes"],
         "process_seconds": run.wall_seconds},
    )  # fmt: skip


def _curl(url: str, out: Path, verify: bool) -> Measured:
    if verify:
        command = f"curl -sSf {shlex.quote(url)} | tee {shlex.quote(str(out))} | gzip -t"
        run = measure(["bash", "-o", "pipefail", "-c", command])
    else:
        run = measure(["curl", "-sSf", "-o", str(out), url])
    size = out.stat().st_size
    out.unlink()
    return Measured(run.wall_seconds, run.peak_rss_bytes, run.returncode, {"bytes": size})


def _throughput(runs: list[Measured]) -> float:
    """Median MB/s (10^6 bytes per second) over the runs."""
    rates = sorted(float(r.extra["bytes"]) / r.wall_seconds / 1e6 for r in runs)
    return rates[len(rates) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worker", nargs=4, metavar=("TARGET", "URL", "MONTH", "DEST"))
    parser.add_argument("--rows", type=int, default=FULL_MONTH_ROWS)
    parser.add_argument("--copies", type=int, default=10, help="size of the big file, in months")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--gcs-timeout",
        type=float,
        default=150.0,
        help="seconds before an upload to fake-gcs-server is given up (it slows down on big files)",
    )
    parser.add_argument("--name", default="download")
    args = parser.parse_args(argv)
    if args.worker:
        sys.stdout.write(json.dumps(worker(*args.worker)) + "\n")
        return 0

    sys.path.insert(0, str(REPO / "tests"))
    from emulators import start_fake_gcs

    from taxi_pipeline.devkit.source_server import serve_directory

    results: dict[str, Any] = {}
    with scratch("download") as work:
        say(f"generating a yellow month of {args.rows:,} rows and a {args.copies}x copy")
        small = generate(work / "source", args.rows)
        _make_big(small, work / "source" / "yellow_tripdata_2019-02.csv.gz", args.copies)
        sizes = {"month": "2019-01", f"{args.copies}x month": "2019-02"}
        gcs = start_fake_gcs(work / "gcs")
        try:
            gcs.client().create_bucket(_BUCKET)
            env = child_env(STORAGE_EMULATOR_HOST=gcs.url)
            gcs_sampler = RssSampler(gcs.proc.process.pid)
            gcs_timeouts: dict[str, float] = {}
            with serve_directory(work / "source") as server:
                for label, month in sizes.items():
                    url = f"{server.base_url}/yellow/yellow_tripdata_{month}.csv.gz"
                    size = (work / "source" / f"yellow_tripdata_{month}.csv.gz").stat().st_size
                    kinds: dict[str, list[Measured]] = {
                        "curl": [], "curl_gzip_t": [], "folder": [], "gcs": [],
                    }  # fmt: skip
                    for i in range(args.runs):
                        kinds["curl"].append(_curl(url, work / "curl.out", verify=False))
                        kinds["curl_gzip_t"].append(_curl(url, work / "curl.out", verify=True))
                        lake = work / "lake"
                        kinds["folder"].append(
                            _ours("folder", server.base_url, month, str(lake), work, env)
                        )
                        shutil.rmtree(lake)
                        if label not in gcs_timeouts:
                            try:
                                kinds["gcs"].append(
                                    _ours("gcs", server.base_url, month, _BUCKET, work, env,
                                          args.gcs_timeout)
                                )  # fmt: skip
                            except TimeoutError:
                                gcs_timeouts[label] = args.gcs_timeout
                                say(f"{label}: the upload to fake-gcs-server timed out")
                        for blob in gcs.client().list_blobs(_BUCKET):
                            blob.delete()
                        say(
                            f"{label} #{i + 1}: "
                            + ", ".join(
                                f"{k} {v[-1].wall_seconds:.2f} s"
                                f" ({v[-1].peak_rss_bytes / MIB:.0f} MiB)"
                                for k, v in kinds.items()
                                if v
                            )
                        )
                    results[label] = {
                        "bytes": size,
                        **{
                            k: summarize(v) | {"mb_per_s": _throughput(v)}
                            for k, v in kinds.items()
                            if v
                        },
                    }
                    if label in gcs_timeouts:
                        results[label]["gcs_timed_out_after_seconds"] = gcs_timeouts[label]
            gcs_peak = gcs_sampler.stop()
        finally:
            gcs.stop()
    payload = {
        "rows_per_month": args.rows,
        "sizes": results,
        "fake_gcs_server_peak_rss_bytes": gcs_peak,
        "targets": {
            "peak_rss_bytes_max": TARGET_RSS_BYTES,
            "throughput_vs_curl_min": TARGET_THROUGHPUT_RATIO,
        },
    }
    path = write_results(args.name, payload)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
