"""Cloud Run functions entry points: one per trigger, each a thin wrapper over ``handlers``.

Nothing here builds a client or reads the environment at import time: the ports are built on
the first event (``bootstrap.cloud_ports``) and cached for the instance, so ``import main`` stays
fast for cold starts. Each handler parses the real payload, acknowledges (returns) on permanent
errors after recording them, and raises on transient ones so Pub/Sub / Eventarc redeliver.
"""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from taxi_pipeline import bootstrap
from taxi_pipeline.pipeline import handlers


@functions_framework.cloud_event
def on_ingest_request(event: CloudEvent) -> None:
    """Pub/Sub ``ingest-requests`` (Cloud Scheduler, backfill CLI, gcloud) -> download."""
    handlers.handle_ingest_request(event, bootstrap.cloud_ports())


@functions_framework.cloud_event
def on_object_finalized(event: CloudEvent) -> None:
    """GCS object finalized in the lake bucket -> register (``raw/`` objects only)."""
    handlers.handle_object_finalized(event, bootstrap.cloud_ports())


@functions_framework.cloud_event
def on_merge_request(event: CloudEvent) -> None:
    """Pub/Sub ``merge-requests`` -> stage and merge into the final table."""
    handlers.handle_merge_request(event, bootstrap.cloud_ports())


@functions_framework.cloud_event
def on_dead_letter(event: CloudEvent) -> None:
    """Pub/Sub dead-letter topic -> the run is recorded FAILED and an alert is logged."""
    handlers.handle_dead_letter(event, bootstrap.cloud_ports())
