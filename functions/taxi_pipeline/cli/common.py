"""What every command group shares: consoles, options, settings, opening the pipeline or the
warehouse, printing, exit statuses and the one place expected failures become an error line.
The groups import this module, never each other or :mod:`taxi_pipeline.cli.app`."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Final, TextIO

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text
from typer.core import TyperGroup

from taxi_pipeline.bootstrap import LocalPipeline, build_local, build_warehouse
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, Month, Upstream, choose_publication
from taxi_pipeline.domain.messages import IngestResult, RunState
from taxi_pipeline.domain.runs import EARLIEST_MONTH
from taxi_pipeline.errors import ConfigurationError, PipelineError, RunCancelled, UnsupportedMonth
from taxi_pipeline.logs import configure_logging, redact
from taxi_pipeline.pipeline.ports import Progress as ProgressPort
from taxi_pipeline.pipeline.ports import ProgressTask, Warehouse
from taxi_pipeline.pipeline.steps.download import source_file_url
from taxi_pipeline.render.text import printable, rows_phrase
from taxi_pipeline.settings import LogFormat, Settings

# -- exit statuses --------------------------------------------------------------------------------


class ExitStatus(IntEnum):
    """What a script or a CI step can tell from the exit status (README "Exit statuses")."""

    SUCCESS = 0
    """Every run ended SUCCESS (or there was nothing to run)."""
    FAILED = 1
    """A run FAILED, or the command could not do its work (a refused query, an internal error)."""
    USAGE = 2
    """Bad arguments or settings, a home or warehouse that cannot be used: nothing ran."""
    SKIPPED = 3
    """No run failed, but some were SKIPPED (not published upstream)."""
    INTERRUPTED = 130
    """Stopped with Ctrl-C."""
    BROKEN_PIPE = 141
    """The reader of the output went away (``| head``): 128 + SIGPIPE, as for other tools."""


def exit_status(states: Iterable[RunState]) -> ExitStatus:
    """0 when every run succeeded, 1 when any did not end SUCCESS or SKIPPED, else 3 when any
    was SKIPPED. The same rule for ``run``, ``backfill`` and ``schedule``."""
    seen = set(states)
    if seen - {RunState.SUCCESS, RunState.SKIPPED}:
        return ExitStatus.FAILED
    return ExitStatus.SKIPPED if RunState.SKIPPED in seen else ExitStatus.SUCCESS


def exit_with(states: Iterable[RunState]) -> None:
    """End the command with the exit status of its runs (nothing to do when all succeeded)."""
    status = exit_status(states)
    if status is not ExitStatus.SUCCESS:
        raise typer.Exit(int(status))


class CliError(Exception):
    """An expected failure: reported as one ``error:`` line, then exit ``status``."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.USAGE) -> None:
        super().__init__(message)
        self.status = status


# -- consoles and printing ------------------------------------------------------------------------


def _width(stream: TextIO) -> int | None:
    """A terminal's own width; piped output (scripts, CI logs) gets at least 120 columns rather
    than rich's 80, so the summary table stays whole."""
    if stream.isatty():
        return None
    return max(shutil.get_terminal_size((120, 24)).columns, 120)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # Rich exits with 1 here; the app's error handling gives every command the same 141.
        self.quiet = True
        raise BrokenPipeError


console = _Console(width=_width(sys.stdout), highlight=False)
err_console = _Console(stderr=True, width=_width(sys.stderr), highlight=False)

STATE_STYLES: Final = {
    RunState.SUCCESS: "green",
    RunState.FAILED: "bold red",
    RunState.RETRYING: "yellow",
    RunState.RUNNING: "cyan",
    RunState.QUEUED: "blue",
    RunState.SKIPPED: "dim",
    RunState.CANCELLED: "magenta",
    RunState.ABANDONED: "bold magenta",
}


def styled_line(line: str, style: str | None = None) -> Text:
    """A line as it is (no markup, no emoji codes, control characters written out) with its
    states in colour."""
    text = Text(printable(line), style=style or "")
    for state, state_style in STATE_STYLES.items():
        text.highlight_regex(rf"\b{state.value}\b", state_style)
    return text


def print_line(line: str, *, err: bool = False, style: str | None = None) -> None:
    """One line as it is, states coloured. Every line that may hold data goes through here."""
    (err_console if err else console).print(styled_line(line, style), soft_wrap=True)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line."""
    err_console.print(
        Text.assemble(("error: ", "bold red"), redact(printable(" ".join(message.split())))),
        soft_wrap=True,
    )


# -- the one place expected failures are turned into an error line --------------------------------

# Set by the app's ``--debug`` for the length of one invocation (the group below resets it).
_DEBUG: ContextVar[bool] = ContextVar("taxi_pipeline_cli_debug", default=False)


def set_debug(debug: bool) -> None:
    _DEBUG.set(debug)


def debug_enabled() -> bool:
    return _DEBUG.get()


def describe_failure(exc: BaseException) -> tuple[str, ExitStatus] | None:
    """The error line and exit status of an expected failure; None for anything else."""
    if isinstance(exc, CliError):
        return str(exc), exc.status
    if isinstance(exc, ConfigurationError):
        return str(exc), ExitStatus.USAGE
    if isinstance(exc, RunCancelled):
        return str(exc), ExitStatus.INTERRUPTED
    if isinstance(exc, PipelineError):
        return str(exc), ExitStatus.FAILED
    if isinstance(exc, ValidationError):
        return settings_problem(exc), ExitStatus.USAGE
    if isinstance(exc, OSError):
        return os_problem(exc), ExitStatus.USAGE
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", ExitStatus.INTERRUPTED
    return None


def settings_problem(exc: ValidationError) -> str:
    """``TAXI_PIPELINE_HTTP_ATTEMPTS='abc': Input should be a valid integer`` and so on."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        name = f"TAXI_PIPELINE_{field.upper()}" if field else "settings"
        problems.append(f"{name}={error.get('input')!r}: {error['msg']}")
    return "invalid setting: " + "; ".join(problems)


def os_problem(exc: OSError) -> str:
    """``cannot use /proc/x: No such file or directory``."""
    reason = exc.strerror or str(exc)
    return f"cannot use {exc.filename}: {reason}" if exc.filename else reason


class TaxiPipelineGroup(TyperGroup):
    """The app's command group: expected failures of any command end as one error line and a
    documented exit status; the traceback only with ``--debug``. Unexpected ones (bugs) say so
    in one line too and exit 1."""

    # ``Any``: the base class takes typer's vendored click context, which typer does not export.
    def invoke(self, ctx: Any) -> Any:
        token = _DEBUG.set(False)
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a reader that went away is noticed here, not at exit
            return result
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own: usage errors, exit statuses
        except BrokenPipeError as exc:
            _silence_stdout()
            raise typer.Exit(int(ExitStatus.BROKEN_PIPE)) from exc
        except (Exception, KeyboardInterrupt) as exc:
            if _DEBUG.get():
                raise
            described = describe_failure(exc)
            if described is None:
                described = (
                    f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the"
                    " traceback)",
                    ExitStatus.FAILED,
                )
            message, status = described
            print_error(message)
            raise typer.Exit(int(status)) from exc
        finally:
            _DEBUG.reset(token)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        pass  # not a real file (a test runner's buffer): nothing will flush into a closed pipe


# -- options and settings -------------------------------------------------------------------------

DATASET_NAMES: Final = ", ".join(d.value for d in Dataset)
"""Every dataset, for help texts: ``yellow, green, fhv, fhvhv``."""
DatasetArgument = Annotated[
    Dataset,
    typer.Argument(metavar="DATASET", help=f"One of {DATASET_NAMES}.", case_sensitive=False),
]
SourceOption = Annotated[
    str | None,
    typer.Option(
        "--source-url",
        metavar="URL",
        help="Base URL of the source files (TAXI_PIPELINE_SOURCE_URL).",
    ),
]
UpstreamOption = Annotated[
    Upstream | None,
    typer.Option(
        "--source",
        metavar="SOURCE",
        case_sensitive=False,
        help="auto (default: the mirror for 2019-01..2021-07 where it publishes the dataset, the"
        " TLC otherwise), mirror or tlc (TAXI_PIPELINE_SOURCE).",
    ),
]
TlcUrlOption = Annotated[
    str | None,
    typer.Option(
        "--tlc-url",
        metavar="URL",
        help="Base URL of the TLC's Parquet files (TAXI_PIPELINE_TLC_URL).",
    ),
]
ReplaceOption = Annotated[
    bool,
    typer.Option(
        "--replace",
        help="Replace the rows of a month loaded from the other source (or from an upstream"
        " file that changed since) instead of refusing the run; downloads the file again.",
    ),
]
HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", metavar="DIR", help="Folder of the embedded default (TAXI_PIPELINE_HOME)."
    ),
]

LOCAL_DEFAULTS: Final = {"http_attempts": 2, "max_delivery_attempts": 2}
"""The CLI's own defaults where the cloud's would keep a laptop waiting: offline, a month fails
after 2 x 2 tries in seconds, not 3 x 5. The environment still overrides them."""


def load_settings(
    home: Path | None = None,
    source_url: str | None = None,
    *,
    tlc_url: str | None = None,
    source: Upstream | None = None,
) -> Settings:
    """Settings from the environment, with the CLI's defaults and flags on top."""
    overrides: dict[str, object] = {}
    if home is not None:
        overrides["home"] = home
    if source_url is not None:
        overrides["source_url"] = source_url
    if tlc_url is not None:
        overrides["tlc_url"] = tlc_url
    if source is not None:
        overrides["source"] = source
    settings = Settings(**overrides)  # type: ignore[arg-type]
    local = {k: v for k, v in LOCAL_DEFAULTS.items() if k not in settings.model_fields_set}
    if local:
        settings = settings.model_copy(update=local)
    _configure_cli_logging(settings)
    return settings


class _ReportedElsewhere(logging.Filter):
    """Drops the records whose news the CLI prints itself: a run's failure (the handlers' alert
    line) is in the summary, with its reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, "alert")


def _configure_cli_logging(settings: Settings) -> None:
    """Log lines go to stderr only when asked for (``TAXI_PIPELINE_LOG_LEVEL`` or ``--debug``);
    otherwise only errors the CLI does not report itself. Retries, redeliveries and a run's
    failure are in the summary: repeating them as 17 log lines per month hid the one that mattered.
    """
    fmt = settings.log_format if settings.log_format is not LogFormat.AUTO else LogFormat.TEXT
    asked = "TAXI_PIPELINE_LOG_LEVEL" in os.environ
    if asked:
        configure_logging(fmt, settings.log_level)
        return
    if debug_enabled():
        configure_logging(fmt, "INFO")
        return
    # The root level stays at WARNING (what other code and tests in this process expect);
    # only the CLI's own handler is quieter.
    handler = configure_logging(fmt, "WARNING")
    handler.setLevel(logging.ERROR)
    handler.addFilter(_ReportedElsewhere())


def parse_month_option(value: str, option: str) -> Month:
    try:
        return Month.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def check_loadable(
    months: Iterable[Month],
    param_hint: str,
    today: datetime | None = None,
    *,
    dataset: Dataset | None = None,
    source: Upstream = Upstream.AUTO,
) -> None:
    """Refuse, before anything runs, months that cannot exist upstream: in the future, before
    the first TLC month, or (given the dataset) before the TLC's first month in today's layout
    when the TLC is the source. (``backfill`` and ``run`` alike; the download step checks
    again.)"""
    now = today or datetime.now(UTC)
    current = Month(now.year, now.month)
    for month in months:
        if dataset is not None and month >= EARLIEST_MONTH:
            try:
                choose_publication(dataset, month, source)
            except UnsupportedMonth as exc:
                raise typer.BadParameter(str(exc), param_hint=param_hint) from exc
        if current < month:
            raise typer.BadParameter(
                f"{month} is in the future (this is {current})", param_hint=param_hint
            )
        if month < EARLIEST_MONTH:
            raise typer.BadParameter(
                f"{month} is before the first published month {EARLIEST_MONTH}",
                param_hint=param_hint,
            )


def parse_when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return history.parse_since(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


# -- progress -------------------------------------------------------------------------------------


class _RichTask:
    def __init__(self, progress: Progress, description: str, total: int | None) -> None:
        self._progress = progress
        self._id = progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        self._progress.advance(self._id, amount)

    def close(self) -> None:
        self._progress.update(self._id, visible=False)


@dataclass
class RichProgress:
    """Progress bars on stderr, for the CLI only."""

    progress: Progress

    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        return _RichTask(self.progress, description, total)


def download_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


# -- opening the pipeline and the warehouse -------------------------------------------------------


def _home_of(settings: Settings) -> Path:
    return settings.home.resolve()


def notice(message: str) -> None:
    """What a waiting process waits for (a lock or the warehouse another process holds)."""
    print_line(message, err=True, style="yellow")


def open_local(
    settings: Settings,
    progress: ProgressPort | None = None,
    notice: Callable[[str], None] | None = notice,
) -> LocalPipeline:
    """The embedded default (creating its home), or a :class:`CliError` naming the home."""
    home = _home_of(settings)
    if home.exists() and not home.is_dir():
        raise CliError(f"the home {home} is not a directory (TAXI_PIPELINE_HOME or --home)")
    try:
        return build_local(settings, progress, notice)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != home else ""
        raise CliError(f"cannot use the home {home}: {exc.strerror or exc}{where}") from exc


def check_home(settings: Settings) -> None:
    """For reading: the home exists (unless the warehouse URL names another place), so a
    command run from the wrong folder says so instead of making an empty home."""
    if settings.warehouse_url is None:
        home = _home_of(settings)
        if not home.is_dir():
            raise CliError(
                f"no taxi-pipeline home at {home}"
                + (" (it is not a directory)" if home.exists() else "")
                + "; point --home or TAXI_PIPELINE_HOME at one (`taxi-pipeline run` creates it)"
            )


@contextmanager
def open_warehouse(settings: Settings, *, read_only: bool = True) -> Iterator[Warehouse]:
    """The warehouse, for reading unless ``read_only=False``: reading creates nothing, so a
    command run from the wrong folder says there is no home instead of making an empty one."""
    if read_only:
        check_home(settings)
    warehouse = build_warehouse(settings, notice, read_only=read_only)
    try:
        yield warehouse
    finally:
        warehouse.close()


# -- run outcomes ---------------------------------------------------------------------------------


def state_of(result: IngestResult | None) -> RunState:
    return result.state if result else RunState.FAILED


def result_line(result: IngestResult) -> str:
    """``green 2019-01 green-201901-…: SUCCESS, rows 1,500 in file, 1,500 inserted``."""
    text = f"{result.dataset.value} {result.month} {result.run_id}: {result.state.value}"
    if result.rows_inserted is not None or result.rows_in_file is not None:
        text += f", rows {rows_phrase(result.rows_in_file, result.rows_inserted)}"
    if result.error:
        text += f" - {' '.join(result.error.split())[:300]}"
    return text


def source_hint(settings: Settings, result: IngestResult) -> str:
    """A hint for a run that failed at the source: its reason names the month's URL (cannot
    reach it, an HTTP error) but the source never said "not published"."""
    if result.state is not RunState.FAILED or not result.error:
        return ""
    month = Month.parse(result.month)
    for upstream, option in (
        (Upstream.MIRROR, "--source-url (TAXI_PIPELINE_SOURCE_URL)"),
        (Upstream.TLC, "--tlc-url (TAXI_PIPELINE_TLC_URL)"),
    ):
        if result.dataset.spec.find_publication(upstream) is None:
            continue  # the mirror has no fhvhv
        if source_file_url(settings, result.dataset, month, upstream) in result.error:
            return f"; check the network, or use {option} for another source"
    return ""
