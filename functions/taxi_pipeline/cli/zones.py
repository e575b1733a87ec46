"""``taxi-pipeline zones``: the taxi zone lookup, downloaded through the lake into its table.

Locally the embedded default's lake and warehouse (the home); with ``--cloud`` the lake and
warehouse the settings name (``TAXI_PIPELINE_LAKE_URL=gs://...``,
``TAXI_PIPELINE_WAREHOUSE_URL=bigquery://...``), written from this machine: the file is one small
CSV, so no function is involved. ``deploy.sh`` runs ``zones --cloud --if-missing`` once per
deploy, which loads the table the first time only.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import typer

from taxi_pipeline.bootstrap import build_lake, build_source
from taxi_pipeline.cli.common import (
    CliError,
    ExitStatus,
    HomeOption,
    SourceOption,
    load_settings,
    open_warehouse,
    print_line,
)
from taxi_pipeline.domain.lookups import TAXI_ZONES
from taxi_pipeline.domain.sources import display_url
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.pipeline.lookups import load_lookup
from taxi_pipeline.settings import Settings


def register(app: typer.Typer) -> None:
    """Add this module's command to the main app."""
    app.command()(zones)


def zones(
    source_url: SourceOption = None,
    home: HomeOption = None,
    cloud: Annotated[
        bool,
        typer.Option(
            "--cloud",
            help="Load into the cloud's lake and warehouse (TAXI_PIPELINE_LAKE_URL=gs://...,"
            " TAXI_PIPELINE_WAREHOUSE_URL=bigquery://...) instead of the home's.",
        ),
    ] = False,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing", help="Do nothing when the table already holds zones (deploy.sh)."
        ),
    ] = False,
) -> None:
    """Load the taxi zone lookup (LocationID, Borough, Zone, service_zone) into the table
    taxi_zone_lookup, replacing it whole.

    The file is {source}/misc/taxi_zone_lookup.csv (quoted CSV); it is verified, written to the
    lake as lookup/taxi_zone_lookup.csv, and the table is replaced in one atomic step: a reload
    never duplicates a zone, a failure leaves the table as it was. Exit status 0 when the table
    holds the file's zones, 1 when the load failed, 2 for bad arguments or settings."""
    settings = load_settings(home, source_url)
    _check_where(settings, cloud)
    lake = build_lake(settings)
    source = build_source(settings)
    try:
        with open_warehouse(settings, read_only=False) as warehouse:
            outcome = load_lookup(
                TAXI_ZONES, settings, source, lake, warehouse, if_missing=if_missing
            )
    except PipelineError as exc:
        raise CliError(f"{TAXI_ZONES.table}: {exc}", ExitStatus.FAILED) from exc
    finally:
        source.close()
    where = settings.resolved_warehouse_url
    if not outcome.replaced:
        print_line(
            f"{TAXI_ZONES.table}: {outcome.rows:,} zones already in {where}; nothing loaded"
            " (--if-missing)"
        )
        return
    print_line(
        f"{TAXI_ZONES.table}: {outcome.rows:,} zones from {display_url(outcome.url)}"
        f" (lake {TAXI_ZONES.object_name}) replaced the table in {where}"
    )


def _check_where(settings: Settings, cloud: bool) -> None:
    """``--cloud`` goes with cloud URLs, and a cloud lake with ``--cloud``: the command never
    writes into the cloud without being told to."""
    lake = urlsplit(settings.resolved_lake_url).scheme
    warehouse = urlsplit(settings.resolved_warehouse_url).scheme
    if cloud and (lake != "gs" or warehouse == "duckdb"):
        raise CliError(
            "zones --cloud needs the cloud's lake and warehouse:"
            " TAXI_PIPELINE_LAKE_URL=gs://bucket and"
            " TAXI_PIPELINE_WAREHOUSE_URL=bigquery://project/dataset"
            f" (now {settings.resolved_lake_url} and {settings.resolved_warehouse_url})"
        )
    if not cloud and lake != "file":
        raise CliError(
            f"the lake {settings.resolved_lake_url} is the cloud's: add --cloud to load the zones"
            " there"
        )
