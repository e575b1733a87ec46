"""Every Google Cloud resource of the pipeline, declared once.

``deploy.sh`` reads this through ``python -m infra.provision spec ...`` (tab-separated lines) and
``infra/provision.py`` through imports, so the functions, their triggers, sizes and roles are
written down here only.

Sizing, for the largest month the pipeline loads (yellow 2019-01: 7.7 M rows, ~130 MB gzip,
~690 MB of CSV):

- ``taxi-download`` streams the file from HTTP to GCS in 8 MiB resumable chunks while a streaming
  verifier inflates it on a second thread (ISA-L's inflate via python-isal, see
  ``taxi_pipeline/pipeline/verify.py``: gzip CRC and size, header, row count): RSS stays near the
  interpreter + clients (~200 MB) + one upload chunk + at most 8 MiB queued for the verifier, but
  inflating ~690 MB is CPU work, so 1 GiB buys 0.583 vCPU (vs 0.333 at 512 MiB) and keeps a month
  at well under a minute. ``/tmp`` is never used.
- ``taxi-register`` and ``taxi-merge`` only submit BigQuery jobs and wait: 512 MiB (the imported
  clients need ~200 MB; 256 MiB is too tight). Merge waits on a CTAS over the external CSV and a
  pruned MERGE, which take one to three minutes for a yellow month.
- Every timeout is 540 s: under Eventarc's 600 s push deadline, past which a still-running
  delivery would be redelivered on top of itself.
- Max instances: a backfill publishes a month per request; the steps hold per-dataset locks and
  BigQuery allows two concurrent DML statements per table, so more merges only queue. Four
  downloads and merges (the default ``max_concurrent_runs_per_dataset``) bound cost and load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.domain.schedules import Schedule, load_schedules

ROOT: Final = Path(__file__).resolve().parent.parent
SCHEDULES_FILE: Final = ROOT / "infra" / "schedules.toml"

APIS: Final = (
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "eventarc.googleapis.com",
    "pubsub.googleapis.com",
    "storage.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "cloudscheduler.googleapis.com",
    "bigquery.googleapis.com",
    "iam.googleapis.com",
)
"""APIs the deploy enables (monitoring for the alert policy, iam for the service accounts)."""

RUNTIME: Final = "python312"
GCS_FINALIZED: Final = "google.cloud.storage.object.v1.finalized"
MAX_DELIVERY_ATTEMPTS: Final = 15
"""Deliveries of one event before Pub/Sub moves it to ``ingest-dead-letter`` (range 5..100).

Not the minimum 5: a cloud backfill publishes every month at once, and a delivery that Cloud Run
turns away at max instances, or a step that gives up waiting for a month's lock, counts as an
attempt. With the triggers' 10 s..600 s exponential backoff, 15 attempts keep retrying for about
an hour and a half before an event is dead-lettered; permanent errors are acknowledged at once
and never use them."""

TRIGGER_ACCOUNT: Final = "taxi-trigger"
"""Identity Eventarc uses to invoke the functions: run.invoker on each, eventarc.eventReceiver."""

ALERT_METRIC: Final = "taxi-pipeline-run-failed"
"""Log-based metric counting failed runs; the alert policy fires on any."""
ALERT_POLICY: Final = "taxi-pipeline: a run failed"
ALERT_FILTER: Final = (
    'resource.type="cloud_run_revision" AND severity>=ERROR'
    ' AND jsonPayload.alert="taxi-pipeline-run-failed"'
)
"""Matches the ERROR line of ``handlers._record_failure`` (``alert=ALERT_LABEL``)."""

TOPICS: Final = tuple(Topic)

BucketRole = Literal["roles/storage.objectAdmin", "roles/storage.objectViewer"]


@dataclass(frozen=True)
class Function:
    """One Cloud Run function (2nd gen) and what its runtime account may touch."""

    name: str
    entry_point: str
    trigger_topic: Topic | None
    """Pub/Sub trigger; ``None`` means the lake bucket's finalize event."""
    memory: str
    timeout: str
    max_instances: int
    bucket_role: BucketRole | None
    publishes: tuple[Topic, ...]
    dead_letter: bool = True
    """Dead-letter policy on its trigger subscription (not on the dead-letter consumer's)."""
    bucket_reader_extras: bool = False
    """Needs ``storage.buckets.get`` (external tables over the lake): legacyBucketReader."""
    roles_on_dataset: tuple[str, ...] = ("roles/bigquery.dataEditor",)
    roles_on_project: tuple[str, ...] = ("roles/bigquery.jobUser",)

    @property
    def account(self) -> str:
        """Service account id (``ACCOUNT@PROJECT.iam.gserviceaccount.com``), <= 30 chars."""
        return f"{self.name}-fn"


FUNCTIONS: Final = (
    Function(
        name="taxi-download",
        entry_point="on_ingest_request",
        trigger_topic=Topic.INGEST_REQUESTS,
        memory="1Gi",
        timeout="540s",
        max_instances=4,
        bucket_role="roles/storage.objectAdmin",
        publishes=(Topic.MERGE_REQUESTS, Topic.INGEST_RESULTS),
    ),
    Function(
        name="taxi-register",
        entry_point="on_object_finalized",
        trigger_topic=None,
        memory="512Mi",
        timeout="540s",
        max_instances=4,
        bucket_role="roles/storage.objectViewer",
        bucket_reader_extras=True,
        publishes=(Topic.MERGE_REQUESTS, Topic.INGEST_RESULTS),
    ),
    Function(
        name="taxi-merge",
        entry_point="on_merge_request",
        trigger_topic=Topic.MERGE_REQUESTS,
        memory="512Mi",
        timeout="540s",
        max_instances=4,
        # Lock objects under locks/ are created and deleted: object admin.
        bucket_role="roles/storage.objectAdmin",
        bucket_reader_extras=True,
        publishes=(Topic.INGEST_RESULTS,),
    ),
    Function(
        name="taxi-dead-letter",
        entry_point="on_dead_letter",
        trigger_topic=Topic.DEAD_LETTER,
        memory="512Mi",
        timeout="120s",
        max_instances=2,
        bucket_role=None,
        publishes=(Topic.INGEST_RESULTS,),
        dead_letter=False,
    ),
)


@dataclass(frozen=True)
class UiService:
    """The web UI as a Cloud Run service (``deploy.sh --with-ui``).

    IAM in front (``--no-allow-unauthenticated``): only principals granted ``run.invoker`` reach
    it (the project's owners already are), through ``gcloud run services proxy``. Its account
    reads the history (dataViewer on the dataset, jobUser for the queries) and may publish to
    ``ingest-requests`` only: it starts runs and changes nothing else. Write actions also need
    the token kept in Secret Manager (the UI refuses to listen beyond loopback without one).
    """

    name: str
    account: str
    entry_point: str
    """``GOOGLE_ENTRYPOINT`` of the buildpack image: the same source as the functions."""
    memory: str
    timeout: str
    max_instances: int
    token_secret: str
    roles_on_project: tuple[str, ...] = ("roles/bigquery.jobUser",)
    dataset_role: str = "READER"
    """BigQuery dataset access role: READER is roles/bigquery.dataViewer."""
    publishes: tuple[Topic, ...] = (Topic.INGEST_REQUESTS,)
    apis: tuple[str, ...] = ("secretmanager.googleapis.com",)
    """Beyond :data:`APIS` (Cloud Run, Cloud Build and Artifact Registry are there already)."""


UI: Final = UiService(
    name="taxi-ui",
    account="taxi-ui",
    entry_point="python -m taxi_pipeline.ui",
    # The derived history is held in memory (about 250 MB for 10,000 runs, BENCHMARKS.md).
    memory="1Gi",
    timeout="60s",
    max_instances=2,
    token_secret="taxi-ui-token",
)


@dataclass(frozen=True)
class Target:
    """Where one deployment goes: the flags of ``deploy.sh`` with defaults filled in."""

    project: str
    region: str
    bucket: str = ""
    dataset: str = "taxi"
    staging_mode: str = "external"
    labels: dict[str, str] = field(default_factory=lambda: {"app": "taxi-pipeline"})

    def __post_init__(self) -> None:
        if not self.bucket:
            object.__setattr__(self, "bucket", f"{self.project}-taxi-lake")

    @property
    def location(self) -> str:
        """Bucket and dataset share it (the region), as BigQuery needs for external tables."""
        return self.region

    def topic_path(self, topic: Topic | str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def account_email(self, account: str) -> str:
        return f"{account}@{self.project}.iam.gserviceaccount.com"

    def env_vars(self) -> dict[str, str]:
        """``TAXI_PIPELINE_*`` settings every function runs with."""
        return {
            "TAXI_PIPELINE_LAKE_URL": f"gs://{self.bucket}",
            "TAXI_PIPELINE_WAREHOUSE_URL": f"bigquery://{self.project}/{self.dataset}",
            "TAXI_PIPELINE_GCP_PROJECT": self.project,
            "TAXI_PIPELINE_BIGQUERY_LOCATION": self.location,
            "TAXI_PIPELINE_LOG_FORMAT": "json",
            "TAXI_PIPELINE_STAGING_MODE": self.staging_mode,
        }


LAKE_LIFECYCLE: Final = (("locks/", 1),)
"""(prefix, age in days): leftovers the bucket deletes itself. A lock older than a day belongs to
an instance that died (steps time out after 540 s). ``raw/`` is never expired: it is the lake."""


def schedules() -> tuple[Schedule, ...]:
    """The Cloud Scheduler jobs (``infra/schedules.toml``)."""
    return load_schedules(SCHEDULES_FILE)
