"""The command line: ``taxi-pipeline run | load | sql | runs | status | schedule | backfill |
zones | ui``.

Each command group lives in its own module, which registers itself here; the groups share
:mod:`taxi_pipeline.cli.common` and never import this module or each other.
"""

from __future__ import annotations

import atexit
import gc
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from taxi_pipeline.cli import backfill, history, load, run, schedule, ui, zones
from taxi_pipeline.cli.common import TaxiPipelineGroup, set_debug

app = typer.Typer(
    cls=TaxiPipelineGroup,
    help="Load NYC taxi trip months (zoomcamp module 2) into a warehouse, locally or on GCP.",
    epilog="Exit status: 0 every run SUCCESS, 1 a run FAILED (or the command failed),"
    " 2 bad arguments or settings (nothing ran), 3 none failed but some SKIPPED.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Docstring paragraphs are joined and re-wrapped to the terminal, not kept line by line.
    rich_markup_mode="markdown",
)

for group in (run, load, history, schedule, backfill, zones, ui):
    group.register(app)

# At exit, after every command: the interpreter's last garbage collections would walk every
# object still alive (every module's, DuckDB's and pyarrow's bindings), a quarter of a second
# of a PostgreSQL month's run (BENCHMARKS.md, section 8). Frozen objects are still freed as
# their references go; only reference cycles are left to the OS, and no finalizer of ours
# hides in one (files and connections are closed explicitly; logging's exit handler, which
# flushes the log, runs after this one).
atexit.register(gc.freeze)


def _package_version() -> str:
    try:
        return version("taxi-pipeline")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"taxi-pipeline {_package_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show log lines and, on an error, its Python traceback.", is_eager=True
        ),
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Load NYC taxi trip months (zoomcamp module 2) into a warehouse, locally or on GCP."""
    set_debug(debug)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
