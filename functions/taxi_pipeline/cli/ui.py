"""``taxi-pipeline ui``: serve the web UI over the run history."""

from __future__ import annotations

from typing import Annotated

import typer

from taxi_pipeline.cli.common import HomeOption, SourceOption, err_console, load_settings
from taxi_pipeline.errors import PipelineError


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
    try:
        serve(
            settings,
            host,
            port,
            on_ready=lambda url: err_console.print(
                f"taxi-pipeline UI on {url} ({settings.resolved_warehouse_url}); Ctrl-C stops it",
                highlight=False,
                markup=False,
            ),
        )
    except PipelineError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        # uvicorn has shut down (the backend closed) and re-raised the interrupt.
        err_console.print("stopped")
        raise typer.Exit(130) from None
