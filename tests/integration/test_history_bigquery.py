"""The run history through the cloud adapters, against the emulators.

The same appended events read back from BigQuery give the same derived runs (states, durations,
errors, labels, the Gantt text) as from DuckDB; ``backfill --cloud`` publishes labelled requests
to Pub/Sub and records them QUEUED in BigQuery, where ``taxi-pipeline runs`` finds them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from emulators import BigQueryEmulator, PubSubEmulator
from google.cloud import bigquery
from typer.testing import CliRunner

from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse
from taxi_pipeline.adapters.sqlite.history import SqliteHistory
from taxi_pipeline.cli.app import app
from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import IngestRequest, RunState
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.render import text as render_text
from taxi_pipeline.settings import Settings

pytestmark = pytest.mark.emulator

T0 = datetime(2024, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def bq_dataset(bigquery_client: bigquery.Client) -> Iterator[str]:
    name = f"runs_{uuid.uuid4().hex[:10]}"
    bigquery_client.create_dataset(name)
    yield name
    bigquery_client.delete_dataset(name, delete_contents=True, not_found_ok=True)


@pytest.fixture
def warehouse(bigquery_client: bigquery.Client, bq_dataset: str) -> BigQueryWarehouse:
    url = f"bigquery://{bigquery_client.project}/{bq_dataset}"
    return BigQueryWarehouse.from_url(url, Settings(), client=bigquery_client)


def _scripted_history() -> list[RunEvent]:
    """A success (with a merge waiting for its lock), a retry then success, a 404 skip and a
    permanent failure, as the steps and handlers append them."""

    def e(
        run: str, step: str, state: RunState, start: float | None, at: float, **kw: object
    ) -> RunEvent:
        event = RunEvent(
            run_id=run,
            dataset="green",
            month="2019-" + run.split("-")[1][4:],
            step=step,
            state=state,
            attempt=int(kw.pop("attempt", 1)),  # type: ignore[call-overload]
            started_at=None if start is None else T0 + timedelta(seconds=start),
            finished_at=None if state is RunState.RUNNING else T0 + timedelta(seconds=at),
            labels={"trigger": "manual", "backfill": "true"},
            recorded_at=T0 + timedelta(seconds=at),
        )
        return replace(event, **kw)  # type: ignore[arg-type]

    ok, retry = "green-201901-aaaaaaaa", "green-201902-bbbbbbbb"
    skip, fail = "green-201903-cccccccc", "green-201904-dddddddd"
    return [
        e(ok, "queue", RunState.QUEUED, 0, 0, attempt=0),
        e(ok, "download", RunState.RUNNING, 0.5, 0.5),
        e(ok, "download", RunState.SUCCESS, 0.5, 2.25, rows=3000, bytes=81234),
        e(ok, "register", RunState.RUNNING, 2.25, 2.25),
        e(ok, "register", RunState.SUCCESS, 2.25, 2.5, bytes=81234),
        e(ok, "merge", RunState.RUNNING, 2.5, 4.0),
        e(ok, "merge", RunState.SUCCESS, 2.5, 5.0, rows=2998, details={"rows_in_file": "3000"}),
        e(retry, "queue", RunState.QUEUED, 1, 1, attempt=0),
        e(retry, "download", RunState.RUNNING, 1.5, 1.5),
        e(retry, "download", RunState.RETRYING, None, 2, error="TransientError: HTTP 503"),
        e(retry, "download", RunState.RUNNING, 3, 3, attempt=2),
        e(retry, "download", RunState.SUCCESS, 3, 4, attempt=2, rows=10),
        e(retry, "register", RunState.SUCCESS, 4, 4.5),
        e(retry, "merge", RunState.SUCCESS, 5, 6, rows=10),
        e(skip, "download", RunState.RUNNING, 6, 6),
        e(skip, "download", RunState.SKIPPED, None, 6.5, error="x is not published (HTTP 404)"),
        e(fail, "download", RunState.RUNNING, 7, 7),
        e(fail, "download", RunState.FAILED, None, 7.5, error="header does not match"),
    ]


def test_bigquery_and_duckdb_give_the_same_derived_history(
    warehouse: BigQueryWarehouse, tmp_path: Path
) -> None:
    events = _scripted_history()
    local_store = SqliteHistory(tmp_path / "runs.sqlite")
    try:
        local_store.append_run_events(events)
        local = history.derive_runs(local_store.run_events())
    finally:
        local_store.close()
    warehouse.append_run_events(events[:7])  # one batch per call, as the steps append
    for event in events[7:]:
        warehouse.append_run_events([event])
    cloud = history.derive_runs(warehouse.run_events())

    assert [(r.run_id, r.state) for r in cloud] == [
        ("green-201901-aaaaaaaa", RunState.SUCCESS),
        ("green-201902-bbbbbbbb", RunState.SUCCESS),
        ("green-201903-cccccccc", RunState.SKIPPED),
        ("green-201904-dddddddd", RunState.FAILED),
    ]
    assert cloud == local
    now = T0 + timedelta(minutes=1)
    assert render_text.runs_table(cloud, now) == render_text.runs_table(local, now)
    shown = render_text.describe_run(cloud[0], width=20, now=now)
    assert shown == render_text.describe_run(local[0], width=20, now=now)
    assert "duration  4.50s" in shown
    assert any(line.startswith("merge") and "░░░" in line for line in shown)
    assert cloud[3].error == "header does not match"
    assert cloud[1].attempts == 2
    cut = T0 + timedelta(seconds=6)
    later = warehouse.run_events(dataset="green", since=cut)
    assert later == [e for e in events if e.recorded_at and e.recorded_at >= cut]
    assert [e.run_id for e in warehouse.run_events(run_id="green-201904-dddddddd")] == [
        "green-201904-dddddddd"
    ] * 2


def test_backfill_cloud_publishes_labelled_requests_and_runs_lists_them_queued(
    bigquery_emulator: BigQueryEmulator,
    pubsub_env: PubSubEmulator,
    warehouse: BigQueryWarehouse,
    bq_dataset: str,
    tmp_path: Path,
) -> None:
    topic = pubsub_env.create_topic("ingest-requests", exist_ok=True)
    subscriber = pubsub_env.subscriber()
    subscription = f"projects/{pubsub_env.project}/subscriptions/bf-{uuid.uuid4().hex[:8]}"
    subscriber.create_subscription(name=subscription, topic=topic)
    # 2019-01 is loaded already: --only-missing reads that from BigQuery's pipeline_loads.
    warehouse.record_load(
        LoadRecord(Dataset.GREEN, Month(2019, 1), "raw/x", "1", "green-201901-00000000", 5, 5, T0)
    )
    env = {
        "TAXI_PIPELINE_HOME": str(tmp_path / "home"),
        "TAXI_PIPELINE_WAREHOUSE_URL": f"bigquery://{bigquery_emulator.project}/{bq_dataset}",
        "TAXI_PIPELINE_BIGQUERY_API_ENDPOINT": bigquery_emulator.url,
        "TAXI_PIPELINE_GCP_PROJECT": pubsub_env.project,
        "COLUMNS": "200",
    }
    runner = CliRunner()
    try:
        result = runner.invoke(
            app,
            [
                "backfill",
                "green",
                "--from",
                "2019-01",
                "--to",
                "2019-04",
                "--cloud",
                "--only-missing",
            ],
            env=env,
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        assert "3 requests published" in result.output
        assert "1 already loaded and skipped" in result.output

        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=30)
        messages = [m.message for m in response.received_messages]
    finally:
        subscriber.close()
    assert len(messages) == 3
    requests = sorted(
        (IngestRequest.model_validate_json(m.data) for m in messages), key=lambda r: r.month or ""
    )
    assert [r.month for r in requests] == ["2019-02", "2019-03", "2019-04"]
    for message, request in zip(
        sorted(messages, key=lambda m: m.attributes["month"]), requests, strict=True
    ):
        assert message.attributes["run_id"] == request.run_id
        assert message.attributes["label_backfill"] == "true"
        assert request.labels["backfill"] == "true"
        assert request.labels["trigger"] == "manual"

    listed = runner.invoke(app, ["runs", "--label", "backfill=true"], env=env)
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if line.startswith("green-")]
    assert sorted(line.split()[0] for line in lines) == sorted(r.run_id or "" for r in requests)
    assert all(line.split()[3] == "QUEUED" for line in lines)
    queued = history.derive_runs(warehouse.run_events(dataset="green"))
    assert {r.state for r in queued} == {RunState.QUEUED}
