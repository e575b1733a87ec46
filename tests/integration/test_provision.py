"""infra/provision.py against the emulators (twice, same end state) and a recording Scheduler.

The project is a private one (``provision-test``) so the shared emulators' ``test-project``
topics of other tests are never touched. Eventarc's trigger subscriptions are made here the
way Eventarc names them, since the emulators have no Eventarc.
"""

# google-cloud-storage / google-cloud-pubsub ship no py.typed: their names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from emulators import BigQueryEmulator, FakeGcs, PubSubEmulator
from google.api_core.exceptions import NotFound
from google.cloud.scheduler_v1 import CloudSchedulerClient, Job, PubsubTarget
from google.protobuf import field_mask_pb2

from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.domain.schedules import load_schedules
from taxi_pipeline.settings import Settings

# infra/ sits at the repo root, which pytest's pythonpath ("tests") does not include.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from infra.provision import (
    Clients,
    destroy,
    ensure_dead_letters,
    ensure_schedules,
    provision_data,
)
from infra.resources import MAX_DELIVERY_ATTEMPTS, Target

PROJECT = "provision-test"
REGION = "us-central1"

pytestmark = pytest.mark.emulator


@pytest.fixture
def target() -> Target:
    suffix = uuid.uuid4().hex[:8]
    return Target(PROJECT, REGION, bucket=f"lake-{suffix}", dataset=f"taxi_{suffix}")


@pytest.fixture
def clients(
    target: Target,
    fake_gcs: FakeGcs,
    bigquery_emulator: BigQueryEmulator,
    pubsub_emulator: PubSubEmulator,
) -> Iterator[Clients]:
    bigquery = bigquery_emulator.client()
    settings = Settings(
        warehouse_url=f"bigquery://{PROJECT}/{target.dataset}", bigquery_location=REGION
    )
    warehouse = BigQueryWarehouse.from_url(
        settings.resolved_warehouse_url, settings, client=bigquery
    )
    clients = Clients(
        storage=fake_gcs.client(),
        bigquery=bigquery,
        publisher=pubsub_emulator.publisher(),
        subscriber=pubsub_emulator.subscriber(),
        final_tables=warehouse,
    )
    yield clients
    clients.publisher.transport.close()
    clients.subscriber.close()
    bigquery.close()  # type: ignore[no-untyped-call]


def _eventarc_subscriptions(target: Target, clients: Clients) -> dict[str, str]:
    """What Eventarc makes on deploy: one subscription per trigger (GCS: on its own topic)."""
    gcs_topic = target.topic_path(f"eventarc-{REGION}-taxi-register-481-topic")
    clients.publisher.create_topic(name=gcs_topic)
    made = {
        "taxi-download": target.topic_path(Topic.INGEST_REQUESTS),
        "taxi-register": gcs_topic,
        "taxi-merge": target.topic_path(Topic.MERGE_REQUESTS),
        "taxi-dead-letter": target.topic_path(Topic.DEAD_LETTER),
    }
    paths = {}
    for function, topic in made.items():
        path = f"projects/{PROJECT}/subscriptions/eventarc-{REGION}-{function}-481-sub-602"
        clients.subscriber.create_subscription(name=path, topic=topic)
        paths[function] = path
    return paths


def _end_state(target: Target, clients: Clients) -> dict[str, Any]:
    topics = sorted(t.name for t in clients.publisher.list_topics(project=f"projects/{PROJECT}"))
    subscriptions = {}
    for sub in clients.subscriber.list_subscriptions(project=f"projects/{PROJECT}"):
        policy = clients.subscriber.get_subscription(subscription=sub.name).dead_letter_policy
        subscriptions[sub.name] = (
            sub.topic,
            policy.dead_letter_topic,
            policy.max_delivery_attempts,
        )
    dataset = clients.bigquery.get_dataset(f"{PROJECT}.{target.dataset}")
    writers = sorted(
        str(e.entity_id) for e in dataset.access_entries if e.entity_type == "userByEmail"
    )
    tables = sorted(t.table_id for t in clients.bigquery.list_tables(dataset))
    bucket = clients.storage.get_bucket(target.bucket)
    return {
        "topics": topics,
        "subscriptions": subscriptions,
        "dataset": (dataset.location, writers),
        "tables": tables,
        "bucket": bucket.name,
    }


def test_provisioning_twice_converges_on_one_end_state(target: Target, clients: Clients) -> None:
    first: list[str] = []
    provision_data(target, clients, first.append)
    subscriptions = _eventarc_subscriptions(target, clients)
    returned = ensure_dead_letters(target, clients, first.append)
    state = _end_state(target, clients)

    second: list[str] = []
    provision_data(target, clients, second.append)
    assert ensure_dead_letters(target, clients, second.append) == returned
    assert _end_state(target, clients) == state

    assert any(line.startswith("created bucket") for line in first)
    # The fake GCS drops uniform access / public access prevention / lifecycle, so only the
    # bucket line may say "updated" on the second run; everything else is already right.
    assert [line for line in second if not line.startswith(("ok ", "updated bucket"))] == []

    dead_letter = target.topic_path(Topic.DEAD_LETTER)
    assert state["topics"] == sorted(
        [target.topic_path(t) for t in Topic]
        + [target.topic_path(f"eventarc-{REGION}-taxi-register-481-topic")]
    )
    policies = {path: state["subscriptions"][path][1:] for path in subscriptions.values()}
    assert policies == {
        subscriptions["taxi-download"]: (dead_letter, MAX_DELIVERY_ATTEMPTS),
        subscriptions["taxi-register"]: (dead_letter, MAX_DELIVERY_ATTEMPTS),
        subscriptions["taxi-merge"]: (dead_letter, MAX_DELIVERY_ATTEMPTS),
        subscriptions["taxi-dead-letter"]: ("", 0),  # the dead-letter consumer has none
    }
    assert sorted(returned) == sorted(
        subscriptions[f] for f in ("taxi-download", "taxi-register", "taxi-merge")
    )
    assert state["dataset"] == (
        REGION,
        sorted(
            f"{fn}-fn@{PROJECT}.iam.gserviceaccount.com"
            for fn in ("taxi-dead-letter", "taxi-download", "taxi-merge", "taxi-register")
        ),
    )
    assert state["tables"] == sorted(
        [*(d.final_table for d in Dataset), "pipeline_runs", "pipeline_loads"]
    )

    # A redeploy that recreated a subscription: the policy is put back.
    clients.subscriber.delete_subscription(subscription=subscriptions["taxi-merge"])
    clients.subscriber.create_subscription(
        name=subscriptions["taxi-merge"], topic=target.topic_path(Topic.MERGE_REQUESTS)
    )
    third: list[str] = []
    ensure_dead_letters(target, clients, third.append)
    assert [line for line in third if line.startswith("set dead-letter")] == [
        f"set dead-letter policy on {subscriptions['taxi-merge'].rsplit('/', 1)[-1]}"
        f" ({MAX_DELIVERY_ATTEMPTS} attempts -> {Topic.DEAD_LETTER})"
    ]
    assert _end_state(target, clients) == state

    # Destroy with --delete-data: topics, dataset and bucket are gone.
    gone: list[str] = []
    destroy(target, clients, gone.append, delete_data=True)
    remaining = [t.name for t in clients.publisher.list_topics(project=f"projects/{PROJECT}")]
    assert not set(remaining) & {target.topic_path(t) for t in Topic}
    with pytest.raises(NotFound):
        clients.bigquery.get_dataset(f"{PROJECT}.{target.dataset}")
    with pytest.raises(NotFound):
        clients.storage.get_bucket(target.bucket)


def test_with_ui_the_ui_account_may_only_read_the_dataset(target: Target, clients: Clients) -> None:
    provision_data(target, clients, lambda _line: None)
    granted: list[str] = []
    provision_data(target, clients, granted.append, with_ui=True)
    ui = f"taxi-ui@{PROJECT}.iam.gserviceaccount.com"
    assert f"granted on {PROJECT}.{target.dataset}: dataViewer to {ui}" in granted
    dataset = clients.bigquery.get_dataset(f"{PROJECT}.{target.dataset}")
    roles = {str(e.entity_id): e.role for e in dataset.access_entries}
    assert roles[ui] == "READER"
    assert {roles[f"{fn}-fn@{PROJECT}.iam.gserviceaccount.com"] for fn in ("taxi-merge",)} == {
        "WRITER"
    }
    again: list[str] = []
    provision_data(target, clients, again.append, with_ui=True)
    assert not [line for line in again if line.startswith("granted")]
    destroy(target, clients, lambda _line: None, delete_data=True)


def test_dead_letters_refuse_to_guess_before_the_functions_exist(
    target: Target, clients: Clients
) -> None:
    lonely = replace(target, region="asia-south2")  # no eventarc-asia-south2-* subscription
    with pytest.raises(SystemExit, match="no trigger subscription for taxi-download"):
        ensure_dead_letters(lonely, clients, lambda _line: None)


# ------------------------------------------------------------------------------ Cloud Scheduler


@dataclass
class RecordingScheduler:
    """Cloud Scheduler in a dict, recording every request (the real request types)."""

    jobs: dict[str, Job] = field(default_factory=dict)
    requests: list[tuple[str, Any]] = field(default_factory=list)

    def get_job(self, *, name: str) -> Job:
        if name not in self.jobs:
            raise NotFound(name)  # type: ignore[no-untyped-call]
        copy: Job = Job.deserialize(Job.serialize(self.jobs[name]))  # as from the API
        return copy

    def create_job(self, *, parent: str, job: Job) -> Job:
        assert job.name.startswith(f"{parent}/jobs/")
        self.requests.append(("create", job))
        self.jobs[job.name] = job
        return job

    def update_job(self, *, job: Job, update_mask: field_mask_pb2.FieldMask) -> Job:
        self.requests.append(("update", (job, list(update_mask.paths))))
        self.jobs[job.name] = job
        return job

    def delete_job(self, *, name: str) -> None:
        self.requests.append(("delete", name))
        del self.jobs[name]


def test_recording_scheduler_matches_the_real_client_signatures() -> None:
    import inspect

    for method in ("get_job", "create_job", "update_job", "delete_job"):
        real = set(inspect.signature(getattr(CloudSchedulerClient, method)).parameters)
        ours = set(inspect.signature(getattr(RecordingScheduler, method)).parameters)
        assert ours - {"self"} <= real, method


def test_schedules_become_exactly_the_reference_jobs(tmp_path: Path) -> None:
    target = Target("demo-proj", "europe-west1")
    scheduler = RecordingScheduler()
    ensure_schedules(target, scheduler, lambda _line: None, load_schedules())

    def expected(dataset: str, cron: str) -> Job:
        return Job(
            name=f"projects/demo-proj/locations/europe-west1/jobs/taxi-{dataset}-monthly",
            description=f"taxi-pipeline: monthly {dataset} ingest request",
            schedule=cron,
            time_zone="Etc/UTC",
            pubsub_target=PubsubTarget(
                topic_name="projects/demo-proj/topics/ingest-requests",
                data=f'{{"dataset": "{dataset}", "source": "tlc", "lag_months": 2}}'.encode(),
                attributes={"trigger": "schedule", "time_zone": "Etc/UTC"},
            ),
        )

    assert scheduler.requests == [
        ("create", expected("green", "0 9 1 * *")),
        ("create", expected("yellow", "0 10 1 * *")),
        ("create", expected("fhv", "0 11 1 * *")),
        ("create", expected("fhvhv", "0 12 1 * *")),
    ]

    # Again: nothing changes, nothing is duplicated.
    scheduler.requests.clear()
    ensure_schedules(target, scheduler, lambda _line: None, load_schedules())
    assert scheduler.requests == []
    assert len(scheduler.jobs) == 4

    # An edited schedule file updates just the changed field of just that job.
    edited = tmp_path / "schedules.toml"
    source = Path(__file__).resolve().parents[2] / "infra" / "schedules.toml"
    edited.write_text(source.read_text().replace('cron = "0 10 1 * *"', 'cron = "30 6 2 * *"'))
    ensure_schedules(target, scheduler, lambda _line: None, load_schedules(edited))
    assert scheduler.requests == [("update", (expected("yellow", "30 6 2 * *"), ["schedule"]))]
