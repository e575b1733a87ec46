"""The command line: ``taxi-pipeline run | sql | runs | status | schedule | backfill | ui``.

Each command group lives in its own module, which registers itself here; the groups share
:mod:`taxi_pipeline.cli.common` and never import this module or each other.
"""

from __future__ import annotations

import typer

from taxi_pipeline.cli import backfill, history, run, schedule, ui

app = typer.Typer(
    help="Load NYC taxi trip months (zoomcamp module 2) into a warehouse, locally or on GCP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for group in (run, history, schedule, backfill, ui):
    group.register(app)


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
