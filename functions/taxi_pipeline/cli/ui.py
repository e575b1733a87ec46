"""``taxi-pipeline ui``: serve the web UI over the run history."""

from __future__ import annotations

from typing import Annotated

import typer

from taxi_pipeline.cli.common import (
    ExitStatus,
    HomeOption,
    SourceOption,
    load_settings,
    print_line,
)
from taxi_pipeline.logs import redact


def register(app: typer.Typer) -> None:
    """Add ``ui`` to the main app."""
    app.command()(ui)


def ui(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Anything but loopback needs TAXI_PIPELINE_UI_TOKEN,"
            " which write actions must then send."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8765,
    source_url: SourceOption = None,
    home: HomeOption = None,
) -> None:
    """Web UI: executions, each run's timeline, coverage and backfills, with a JSON API.

    Locally the UI runs the runs it starts (this process holds the DuckDB warehouse); with a
    bigquery:// warehouse it publishes them to Pub/Sub ingest-requests. Stop with Ctrl-C."""
    # Imported here: the web stack is loaded only by this command.
    from taxi_pipeline.ui.server import serve

    settings = load_settings(home, source_url)
    # A refused address (no token), an unusable home or warehouse: the app's error handling
    # prints the one error line and the exit status (2 for settings, 1 for a pipeline error).
    try:
        serve(
            settings,
            host,
            port,
            on_ready=lambda url: print_line(
                f"taxi-pipeline UI on {url} ({redact(settings.resolved_warehouse_url)});"
                " Ctrl-C stops it",
                err=True,
            ),
        )
    except KeyboardInterrupt:
        # uvicorn has shut down (the backend closed) and re-raised the interrupt.
        print_line("stopped", err=True)
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None
