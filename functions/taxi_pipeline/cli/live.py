"""The CLI's side of the local orchestrator: live progress of every phase, Ctrl-C, and the
views that follow runs from another terminal (``runs --watch``, ``runs show --follow``).

Ctrl-C (or SIGTERM) while runs are in flight: the first one cancels every run of the process
(recorded CANCELLED at once, DuckDB statements interrupted, downloads stopped, queued runs
withdrawn), prints one line and exits 130 within a few seconds; a second one exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Final

from rich.console import Console, Group
from rich.filesize import decimal
from rich.live import Live
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from taxi_pipeline.bootstrap import LocalPipeline
from taxi_pipeline.domain.messages import IngestRequest, IngestResult, RunState
from taxi_pipeline.pipeline.ports import ProgressTask

EXIT_CANCELLED: Final = 130
"""128 + SIGINT, what a shell reports for a command stopped with Ctrl-C."""
GRACE_SECONDS: Final = 5.0
"""After the first Ctrl-C, how long the runs get to stop cleanly before the process exits."""
REFRESH_SECONDS: Final = 0.5


# -- live progress -------------------------------------------------------------------------------


def amount(done: float, total: float | None, unit: str) -> str:
    """``12.3/39.2 MB``, ``45%``, ``1,234 rows``."""
    if unit == "bytes":
        return decimal(int(done)) + (f" of {decimal(int(total))}" if total else "")
    if unit == "%":
        return f"{int(done)}%"
    return f"{int(done):,}" + (f" of {int(total):,}" if total else "") + f" {unit}"


class _AmountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        unit = str(task.fields.get("unit", "bytes"))
        text = amount(task.completed, task.total, unit)
        if unit == "bytes" and task.speed:
            text += f"  {decimal(int(task.speed))}/s"
        return Text(text, style="progress.download")


class _LiveTask:
    def __init__(self, progress: Progress, description: str, total: int | None, unit: str) -> None:
        self._progress = progress
        self._id = progress.add_task(description, total=total, unit=unit)

    def advance(self, amount: int) -> None:
        self._progress.advance(self._id, amount)

    def close(self) -> None:
        self._progress.remove_task(self._id)


@dataclass
class LiveProgress:
    """The ``Progress`` port as rich bars on stderr: one line per running phase, named by it
    (download, verify, stage, merge) with bytes, rows or percent."""

    console: Console
    progress: Progress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _AmountColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )

    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        return _LiveTask(self.progress, description, total, unit)

    @contextmanager
    def shown(self) -> Iterator[LiveProgress]:
        with self.progress:
            yield self


# -- Ctrl-C ------------------------------------------------------------------------------------


_SIGNAL_NAMES: Final = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


def _signal_name(signum: int) -> str:
    return _SIGNAL_NAMES.get(signal.Signals(signum), str(signum))


class Interrupts:
    """While the block runs, Ctrl-C and SIGTERM cancel the pipeline's runs instead of raising
    ``KeyboardInterrupt`` wherever the main thread happens to be.

    The handler only starts a thread: it runs between two bytecodes of the main thread, which
    may hold a lock the cancel needs."""

    def __init__(self, pipeline: LocalPipeline, console: Console) -> None:
        self.pipeline = pipeline
        self.console = console
        self.signal: int | None = None
        self.cancelled: list[IngestRequest] = []
        self.stopping = threading.Event()
        """Set by the first signal (a scheduler's nap waits on it)."""
        self._done = threading.Event()
        self._canceller: threading.Thread | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNAL_NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._canceller is not None:
            self._canceller.join(GRACE_SECONDS)  # the cancel is recorded before we report it
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def interrupted(self) -> bool:
        return self.signal is not None

    @property
    def signal_name(self) -> str:
        """``Ctrl-C (SIGINT)`` or ``SIGTERM``: what stopped the process."""
        return _signal_name(self.signal) if self.signal is not None else "no signal"

    def nap(self, seconds: float) -> None:
        """Sleep, but wake at the first signal (the scheduler's wait for its next fire)."""
        self.stopping.wait(seconds)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            self.console.print("cancelled again: exiting at once", highlight=False)
            os._exit(EXIT_CANCELLED)
        self.signal = signum
        self.stopping.set()
        reason = f"cancelled by {_signal_name(signum)}"
        self._canceller = threading.Thread(target=self._cancel, args=(reason,), daemon=True)
        self._canceller.start()

    def _cancel(self, reason: str) -> None:
        self.cancelled = self.pipeline.active_runs()
        self.pipeline.cancel_everything(reason)
        if not self._done.wait(GRACE_SECONDS):
            # A step that does not stop (a download stalled in a read): its run is recorded
            # CANCELLED already, and nothing of it is committed; leave without it.
            self.console.print(
                f"{self.summary()} (a step did not stop within {GRACE_SECONDS:.0f} s)",
                highlight=False,
                markup=False,
            )
            sys.stdout.flush()
            os._exit(EXIT_CANCELLED)

    def stopped_nothing(self) -> bool:
        """Whether every run the signal found in flight finished anyway (it came too late)."""
        return not stopped_runs(self.cancelled, self.pipeline.results)

    def summary(self, not_started: Sequence[str] = ()) -> str:
        """The one line printed on the way out; ``not_started``: the months (``green
        2019-03``) the command had still to submit."""
        return cancel_summary(self.cancelled, self.pipeline.results, not_started)


def stopped_runs(
    cancelled: Sequence[IngestRequest], results: dict[str, IngestResult]
) -> list[IngestRequest]:
    """The runs a cancel really stopped: those of ``cancelled`` that did not succeed."""
    return [
        r
        for r in cancelled
        if (result := results.get(r.run_id or "")) is None or result.state is not RunState.SUCCESS
    ]


def _listed(months: Sequence[str]) -> str:
    return ", ".join(months[:4]) + (", …" if len(months) > 4 else "")


def cancel_summary(
    cancelled: Sequence[IngestRequest],
    results: dict[str, IngestResult],
    not_started: Sequence[str] = (),
) -> str:
    """``cancelled green 2019-01 (run green-201901-3fa2c1d9)``, or a count for several; then
    what never started (a ``run`` of several months stops before the next one)."""
    stopped = stopped_runs(cancelled, results)
    finished = len(cancelled) - len(stopped)
    if len(stopped) == 1:
        (run,) = stopped
        text = f"cancelled {run.dataset.value} {run.month} (run {run.run_id})"
    elif stopped:
        months = sorted({f"{r.dataset.value} {r.month}" for r in stopped})
        text = f"cancelled {len(stopped)} runs ({_listed(months)})"
    elif not_started:
        text = "cancelled between runs"
    else:
        text = "cancelled: no run was in flight"
    if stopped or not not_started:
        text += "; nothing partial was kept"
    if finished:
        text += f"; {finished} finished before the cancel reached it"
    if not_started:
        text += f"; not started: {_listed(not_started)}"
    return text


# -- following runs from another terminal --------------------------------------------------------


def follow(
    console: Console,
    render: Callable[[], tuple[list[str], bool]],
    *,
    style: Callable[[str], Text],
    interval: float = REFRESH_SECONDS,
) -> bool:
    """Show ``render()``'s lines, refreshed every ``interval`` until it says it is done;
    ``render`` returns ``(lines, done)``. Returns False when stopped with Ctrl-C."""
    stop = threading.Event()
    lines, done = render()
    with Live(
        Group(*(style(line) for line in lines)),
        console=console,
        auto_refresh=False,
        transient=False,
    ) as live:
        try:
            while not done and not stop.wait(interval):
                lines, done = render()
                live.update(Group(*(style(line) for line in lines)), refresh=True)
        except KeyboardInterrupt:
            return False
    return True


def now() -> datetime:
    return datetime.now(UTC)
