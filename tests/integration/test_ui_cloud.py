"""The web UI in the cloud mode, against the emulators: the BigQuery history, Pub/Sub requests.

A ``bigquery://`` warehouse makes ``open_backend`` read the history from BigQuery and publish
what the pages start to ``ingest-requests`` through ``bootstrap.build_bus``, as the Cloud Run
service does; nothing is written to the warehouse (the service's account only reads).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from emulators import BigQueryEmulator, PubSubEmulator
from google.cloud import bigquery
from starlette.testclient import TestClient

from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse
from taxi_pipeline.devkit.run_history import synthetic_history
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import IngestRequest
from taxi_pipeline.domain.runs import LoadRecord
from taxi_pipeline.settings import Settings
from taxi_pipeline.ui.app import create_app
from taxi_pipeline.ui.backend import CloudOrchestrator, open_backend
from taxi_pipeline.ui.security import Access

pytestmark = pytest.mark.emulator

TOKEN = "cloud-token-0123456789abcdef"


@pytest.fixture
def bq_dataset(bigquery_client: bigquery.Client) -> Iterator[str]:
    name = f"ui_{uuid.uuid4().hex[:10]}"
    bigquery_client.create_dataset(name)
    yield name
    bigquery_client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def test_the_cloud_ui_reads_bigquery_and_publishes_to_pubsub(
    bigquery_emulator: BigQueryEmulator,
    bigquery_client: bigquery.Client,
    pubsub_env: PubSubEmulator,
    bq_dataset: str,
    tmp_path: Path,
) -> None:
    url = f"bigquery://{bigquery_emulator.project}/{bq_dataset}"
    settings = Settings(
        home=tmp_path / "home",
        warehouse_url=url,
        bigquery_api_endpoint=bigquery_emulator.url,
        gcp_project=pubsub_env.project,
    )
    writer = BigQueryWarehouse.from_url(url, settings, client=bigquery_client)
    made = synthetic_history(12, end=datetime.now(UTC) - timedelta(hours=1), seed=4)
    writer.append_run_events(made.events)
    loaded = LoadRecord(
        Dataset.GREEN, Month(2019, 1), "raw/x", "1", "green-201901-00000000", 7, 7, made_at()
    )
    writer.record_load(loaded)
    lines_before = len(writer.run_events())

    topic = pubsub_env.create_topic("ingest-requests", exist_ok=True)
    subscriber = pubsub_env.subscriber()
    subscription = f"projects/{pubsub_env.project}/subscriptions/ui-{uuid.uuid4().hex[:8]}"
    subscriber.create_subscription(name=subscription, topic=topic)

    backend = open_backend(settings)
    assert isinstance(backend.orchestrator, CloudOrchestrator)
    app = create_app(backend, Access.for_bind("0.0.0.0", TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with TestClient(app, base_url="https://taxi-ui.example.run.app") as client:
            listed = client.get("/api/runs").json()
            assert [r["run_id"] for r in listed["runs"]] == made.run_ids[::-1]
            cells = client.get("/api/coverage").json()["cells"]
            green = next(c for c in cells if (c["dataset"], c["month"]) == ("green", "2019-01"))
            assert green["state"] == "loaded"
            assert green["loaded_rows"] == 7
            assert made.run_ids[0] in client.get("/").text

            run = client.post(
                "/api/runs", json={"dataset": "yellow", "month": "2019-05"}, headers=auth
            )
            assert run.status_code == 202, run.text
            assert run.json()["state"] == "PUBLISHED"
            backfill = client.post(
                "/api/backfills",
                json={"dataset": "green", "from": "2019-01", "to": "2019-03", "only_missing": True},
                headers=auth,
            )
            assert backfill.status_code == 202, backfill.text
            assert backfill.json()["already_loaded"] == ["2019-01"]
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=30)
        messages = [m.message for m in response.received_messages]
    finally:
        subscriber.close()
    requests = sorted(
        (IngestRequest.model_validate_json(m.data) for m in messages),
        key=lambda r: (r.dataset.value, r.month or ""),
    )
    assert [(r.dataset.value, r.month) for r in requests] == [
        ("green", "2019-02"),
        ("green", "2019-03"),
        ("yellow", "2019-05"),
    ]
    assert requests[-1].run_id == run.json()["run_id"]
    assert all(r.labels["via"] == "ui" for r in requests)
    # Read-only: the UI wrote no line of its own.
    assert len(writer.run_events()) == lines_before
    writer.close()


def made_at() -> datetime:
    return datetime.now(UTC) - timedelta(hours=2)
