"""Shared helpers of the benchmark scripts: timing, peak RSS, the machine, the results file.

Peak RSS of a measured command: see :class:`RssSampler` (the kernel's per-process peak,
``VmHWM``, read every 20 ms over the child's process tree).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
# Overridable so the smoke test keeps its scratch data and results in its own tmp_path.
WORK = Path(os.environ.get("TAXI_BENCH_WORK", REPO / "bench" / ".work"))
RESULTS = Path(os.environ.get("TAXI_BENCH_RESULTS", REPO / "bench" / "results"))
PYTHON = sys.executable
MIB = 1024 * 1024
GIB = 1024 * MIB
FULL_MONTH_ROWS = 7_667_792
"""Rows of yellow 2019-01, the largest published month."""

_SAMPLE_SECONDS = 0.1
"""Between two samples of a process tree: each walks every process of the machine (psutil finds
children by their parent), about 40% of a core at 20 ms for two samplers, CPU the measured run
would otherwise have had (on 2 cores, a run that keeps both busy lost the most). A peak between
two samples is still seen: every process's own kernel high-water mark (``VmHWM``) is read too."""


@dataclass(frozen=True)
class Measured:
    """One measured run of a command."""

    wall_seconds: float
    peak_rss_bytes: int
    returncode: int
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    """User + system CPU of the process and the children it waited for (``wait4``'s rusage):
    what a run costs, however busy the shared machine was."""


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants (0 once it is gone)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            continue
    return total


def hwm(pid: int) -> int:
    """``VmHWM`` of a process: its peak RSS since its last exec (0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class RssSampler:
    """Samples a process tree every 100 ms in a thread until stopped; keeps the peak.

    The peak is the larger of the highest summed RSS seen and the sum over the tree's processes
    of each one's own kernel peak (``VmHWM``, last value read): exact for one process, an upper
    bound for a pipeline. (``ru_maxrss`` from ``wait4`` is not used: it keeps the RSS the child
    had before its exec, i.e. this Python process's.)
    """

    def __init__(self, pid: int) -> None:
        self._sum_peak = 0
        self._hwms: dict[int, int] = {}
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
            except psutil.Error:
                procs = []
            total = 0
            for proc in procs:  # one walk of the tree for both figures
                with contextlib.suppress(psutil.Error):
                    total += int(proc.memory_info().rss)
                peak = hwm(proc.pid)
                if peak:
                    self._hwms[proc.pid] = max(self._hwms.get(proc.pid, 0), peak)
            self._sum_peak = max(self._sum_peak, total)
            self._stop.wait(_SAMPLE_SECONDS)

    @property
    def peak(self) -> int:
        return max(self._sum_peak, sum(self._hwms.values()))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    stdin: int | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> Measured:
    """Run ``argv`` to completion; wall time and peak RSS (see the module docstring).

    Past ``timeout`` seconds the process is killed and :class:`TimeoutError` raised.
    """
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
        sampler = RssSampler(process.pid)
        timer = threading.Timer(timeout, process.kill) if timeout else None
        if timer is not None:
            timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        if timer is not None:
            timer.cancel()
        wall = time.perf_counter() - started
        sampled = sampler.stop()
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    if timeout is not None and wall >= timeout and process.returncode < 0:
        raise TimeoutError(f"{' '.join(argv)} killed after {timeout:.0f} s")
    if check and process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}\n{tail}")
    return Measured(wall, sampled, process.returncode, cpu_seconds=usage.ru_utime + usage.ru_stime)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(runs: Sequence[Measured]) -> dict[str, Any]:
    """Median wall, CPU and peak RSS of several runs, with every run kept."""
    return {
        "runs": len(runs),
        "wall_seconds": median([r.wall_seconds for r in runs]),
        "cpu_seconds": median([r.cpu_seconds for r in runs]),
        "peak_rss_bytes": int(median([r.peak_rss_bytes for r in runs])),
        "all": [asdict(r) for r in runs],
    }


def _first_line(argv: Sequence[str]) -> str:
    try:
        text = subprocess.run(list(argv), capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "absent"
    return (text.strip().splitlines() or ["?"])[0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from importlib.metadata import version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "absent"

    load1, load5, _ = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "ram_bytes": psutil.virtual_memory().total,
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "duckdb": pkg("duckdb"),
        "httpx": pkg("httpx"),
        "google-cloud-storage": pkg("google-cloud-storage"),
        "functions-framework": pkg("functions-framework"),
        "curl": _first_line(["curl", "--version"]),
        "loadavg_when_written": [round(load1, 2), round(load5, 2)],
    }


def results_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def write_results(name: str, payload: Mapping[str, Any]) -> Path:
    """``bench/results/<name>.json``, written atomically (the page is generated from these)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = results_path(name)
    tmp = path.with_suffix(".json.tmp")
    document = {
        "benchmark": name,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


@contextmanager
def scratch(name: str, keep: bool = False) -> Iterator[Path]:
    """A fresh folder under ``bench/.work`` removed afterwards (unless ``keep``)."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=WORK))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def generate(out: Path, rows: int, month: str = "2019-01", seed: int = 1) -> Path:
    """A generated yellow month (the devkit generator in a subprocess); returns the file.

    With ``TAXI_BENCH_DATA`` set, the file is kept in that folder and reused by the next run
    that asks for the same one (the generator is deterministic: same rows, month and seed, same
    bytes); a full month takes a minute or more to generate.
    """
    return _generated(
        "taxi_pipeline.devkit.generator", out, f"yellow_tripdata_{month}.csv.gz", rows, month, seed
    )


def generate_parquet(out: Path, rows: int, month: str = "2024-01", seed: int = 1) -> Path:
    """A generated TLC Parquet yellow month (``devkit.parquet_generator``), kept like
    :func:`generate`."""
    return _generated(
        "taxi_pipeline.devkit.parquet_generator",
        out,
        f"yellow_tripdata_{month}.parquet",
        rows,
        month,
        seed,
    )


def _generated(module: str, out: Path, name: str, rows: int, month: str, seed: int) -> Path:
    kept = os.environ.get("TAXI_BENCH_DATA")
    cached = Path(kept) / f"{rows}-seed{seed}" / name if kept else None
    target = out / name
    if cached is not None and cached.exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, target)
        return target
    subprocess.run(
        [
            PYTHON, "-m", module, "--dataset", "yellow", "--month", month,
            "--rows", str(rows), "--seed", str(seed), "--out", str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, cached.with_suffix(".tmp"))
        cached.with_suffix(".tmp").replace(cached)
    return target


def taxi_pipeline_bin() -> str:
    """The console script next to this interpreter (the project's venv), its package compiled
    to bytecode first (:func:`compile_package`)."""
    compile_package()
    candidate = Path(PYTHON).parent / "taxi-pipeline"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("taxi-pipeline")
    if found is None:
        raise RuntimeError("taxi-pipeline is not installed in this venv (pip install -e .)")
    return found


def installed_cli(folder: Path) -> str:
    """taxi-pipeline as a user installs it: ``pip install`` of this checkout, without the dev
    extras, into a new venv in ``folder``; returns its console script. The project's own venv
    holds the test tools too, and two of them change what a run imports: selenium's trio
    (httpcore then loads it) and numpy (pyarrow then loads it, with OpenBLAS's threads)."""
    say(f"installing taxi-pipeline into a venv of its own ({folder})")
    return str(new_venv(folder, str(REPO)).parent / "taxi-pipeline")


def new_venv(folder: Path, *requirements: str) -> Path:
    """A new venv in ``folder`` with ``requirements`` pip-installed; returns its interpreter."""
    subprocess.run([PYTHON, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    # pip's output only where it fails (its warnings about this machine's indexes are noise).
    pip = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        capture_output=True, text=True,
    )  # fmt: skip
    if pip.returncode != 0:
        output = pip.stdout[-2000:] + pip.stderr[-3000:]
        raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{output}")
    return python


@functools.cache
def compile_package() -> None:
    """Compile the taxi_pipeline package to bytecode once, as ``pip install`` leaves an
    installed package: an editable install run with PYTHONDONTWRITEBYTECODE set (as on CI
    machines) compiles every one of its modules from source at every start (0.15 s a run)."""
    import taxi_pipeline

    package = Path(taxi_pipeline.__file__).parent
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", str(package)], check=True, stdout=subprocess.DEVNULL
    )


def child_env(**extra: str) -> dict[str, str]:
    """This environment without TAXI_PIPELINE_* settings that would change what is measured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_PIPELINE_")}
    env.pop("STORAGE_EMULATOR_HOST", None)
    env.update(extra)
    return env


def say(message: str) -> None:
    """Progress on stderr (benchmark scripts are command-line fronts)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def repeat(times: int, what: str, run: Callable[[int], Measured]) -> list[Measured]:
    """``run(i)`` ``times`` times, announcing each."""
    runs = []
    for i in range(times):
        result = run(i)
        say(
            f"{what} #{i + 1}: {result.wall_seconds:.2f} s,"
            f" peak RSS {result.peak_rss_bytes / MIB:.0f} MiB"
        )
        runs.append(result)
    return runs
