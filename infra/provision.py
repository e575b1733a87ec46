"""Provision what ``gcloud functions deploy`` does not: data, topics, dead letters, schedules.

Each step is "ensure" style: read the resource, create it when missing, update it when it
differs, leave it alone otherwise; every change is reported as one line, so a second run prints
nothing but ``ok`` lines. ``--dry-run`` prints the intended state and touches no client.

Subcommands (``python -m infra.provision SUBCOMMAND --project P --region R [...]``):

- ``spec``: the declared resources as tab-separated lines for ``deploy.sh`` (no Google call).
- ``data``: lake bucket, dataset (+ dataEditor for the function accounts; with ``--with-ui``
  dataViewer for the UI's), final tables, topics.
- ``dead-letters``: the dead-letter policy on each trigger's Eventarc subscription; prints the
  subscription paths (``deploy.sh`` grants the Pub/Sub service agent subscriber on them).
- ``schedules``: the Cloud Scheduler jobs of ``infra/schedules.toml``.
- ``destroy``: scheduler jobs and topics; with ``--delete-data`` also the bucket and dataset.

Credentials: ``TAXI_PIPELINE_ACCESS_TOKEN`` (``deploy.sh`` passes ``gcloud auth
print-access-token``, so no separate application-default login is needed), else ADC.
"""

# google-cloud-storage and google-cloud-pubsub ship no py.typed: their names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from infra.resources import (
    ALERT_FILTER,
    ALERT_METRIC,
    ALERT_POLICY,
    APIS,
    FUNCTIONS,
    LAKE_LIFECYCLE,
    MAX_DELIVERY_ATTEMPTS,
    TOPICS,
    TRIGGER_ACCOUNT,
    UI,
    Target,
    schedules,
)
from taxi_pipeline.domain.datasets import Dataset
from taxi_pipeline.domain.messages import SCHEDULE_TIME_ZONE_ATTRIBUTE, Topic
from taxi_pipeline.domain.schedules import Schedule

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud import bigquery
    from google.cloud.scheduler_v1 import Job

Report = Callable[[str], None]


class SchedulerApi(Protocol):
    """The slice of ``CloudSchedulerClient`` used here (a recording stand-in in tests)."""

    def get_job(self, *, name: str) -> Job: ...
    def create_job(self, *, parent: str, job: Job) -> Job: ...
    def update_job(self, *, job: Job, update_mask: Any) -> Job: ...
    def delete_job(self, *, name: str) -> None: ...


class FinalTables(Protocol):
    """The warehouse adapter's table bootstrap (``BigQueryWarehouse``)."""

    def ensure_final_table(self, dataset: Dataset) -> None: ...

    def run_events(self, run_id: str | None = None) -> Sequence[object]:
        """Reading the run history creates ``pipeline_runs``/``pipeline_loads`` when missing."""
        ...


@dataclass
class Clients:
    """Google clients, built once; tests pass emulator-backed ones."""

    storage: Any
    bigquery: bigquery.Client
    publisher: Any
    subscriber: Any
    scheduler: SchedulerApi | None = None
    final_tables: FinalTables | None = None

    @classmethod
    def connect(cls, target: Target, credentials: Credentials | None) -> Clients:
        from google.cloud import bigquery
        from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
        from google.cloud.scheduler_v1 import CloudSchedulerClient
        from google.cloud.storage import Client as StorageClient

        return cls(
            storage=StorageClient(project=target.project, credentials=credentials),
            bigquery=bigquery.Client(
                project=target.project, credentials=credentials, location=target.location
            ),
            publisher=PublisherClient(credentials=credentials),
            subscriber=SubscriberClient(credentials=credentials),
            scheduler=CloudSchedulerClient(credentials=credentials),
        )


# --------------------------------------------------------------------------------- data


def ensure_bucket(target: Target, clients: Clients, report: Report) -> None:
    """Lake bucket: uniform access, public access prevention, lifecycle on leftovers."""
    from google.api_core.exceptions import NotFound

    try:
        bucket = clients.storage.get_bucket(target.bucket)
    except NotFound:
        bucket = clients.storage.bucket(target.bucket)
        _shape_bucket(bucket, target)
        clients.storage.create_bucket(bucket, location=target.location)
        report(f"created bucket gs://{target.bucket} in {target.location}")
        return
    wanted = _lifecycle_rules()
    if (
        not bucket.iam_configuration.uniform_bucket_level_access_enabled
        or bucket.iam_configuration.public_access_prevention != "enforced"
        or _normalized_rules(bucket.lifecycle_rules) != _normalized_rules(wanted)
        or any(bucket.labels.get(k) != v for k, v in target.labels.items())
    ):
        _shape_bucket(bucket, target)
        bucket.patch()
        report(f"updated bucket gs://{target.bucket} (access, lifecycle, labels)")
    else:
        report(f"ok bucket gs://{target.bucket}")


def _lifecycle_rules() -> list[dict[str, Any]]:
    return [
        {"action": {"type": "Delete"}, "condition": {"age": age, "matchesPrefix": [prefix]}}
        for prefix, age in LAKE_LIFECYCLE
    ]


def _normalized_rules(rules: Iterable[Any]) -> list[dict[str, Any]]:
    return sorted((dict(rule) for rule in rules), key=repr)


def _shape_bucket(bucket: Any, target: Target) -> None:
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    bucket.iam_configuration.public_access_prevention = "enforced"
    bucket.lifecycle_rules = _lifecycle_rules()
    bucket.labels = {**bucket.labels, **target.labels}


def ensure_dataset(
    target: Target, clients: Clients, report: Report, *, with_ui: bool = False
) -> None:
    """Dataset in the bucket's location; dataEditor (WRITER) for every function account and,
    ``with_ui``, dataViewer (READER) for the UI's."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    ref = f"{target.project}.{target.dataset}"
    wanted = {
        ("WRITER", target.account_email(function.account))
        for function in FUNCTIONS
        if "roles/bigquery.dataEditor" in function.roles_on_dataset
    }
    if with_ui:
        wanted.add((UI.dataset_role, target.account_email(UI.account)))
    try:
        dataset = clients.bigquery.get_dataset(ref)
    except NotFound:
        dataset = bigquery.Dataset(ref)
        dataset.location = target.location
        dataset.labels = dict(target.labels)
        dataset = clients.bigquery.create_dataset(dataset, exists_ok=True)
        report(f"created dataset {ref} in {target.location}")
    present = {
        (str(entry.role), str(entry.entity_id))
        for entry in dataset.access_entries
        if entry.entity_type == "userByEmail"
    }
    missing = sorted(wanted - present)
    if missing:
        dataset.access_entries = [
            *dataset.access_entries,
            *(bigquery.AccessEntry(role, "userByEmail", email) for role, email in missing),
        ]
        clients.bigquery.update_dataset(dataset, ["access_entries"])
        names = {"WRITER": "dataEditor", "READER": "dataViewer"}
        granted = ", ".join(f"{names.get(role, role)} to {email}" for role, email in missing)
        report(f"granted on {ref}: {granted}")
    else:
        report(f"ok dataset {ref}")


def ensure_tables(clients: Clients, report: Report) -> None:
    """Final and run-history tables, created by the warehouse adapter (one schema definition)."""
    if clients.final_tables is None:
        raise RuntimeError("no warehouse adapter to create the final tables with")
    for dataset in Dataset:
        clients.final_tables.ensure_final_table(dataset)
        report(f"ok table {dataset.final_table}")
    # So `bq query ... pipeline_runs` answers (with no rows) before the first run.
    clients.final_tables.run_events(run_id="provisioning")
    report("ok tables pipeline_runs, pipeline_loads")


def ensure_topics(target: Target, clients: Clients, report: Report) -> None:
    """The pipeline's topics (``Topic``), labelled."""
    from google.api_core.exceptions import AlreadyExists, NotFound

    for topic in TOPICS:
        path = target.topic_path(topic)
        try:
            clients.publisher.get_topic(topic=path)
        except NotFound:
            try:
                clients.publisher.create_topic(
                    request={"name": path, "labels": dict(target.labels)}
                )
                report(f"created topic {topic}")
            except AlreadyExists:
                report(f"ok topic {topic}")
        else:
            report(f"ok topic {topic}")


# --------------------------------------------------------------------------------- dead letters


def ensure_dead_letters(target: Target, clients: Clients, report: Report) -> list[str]:
    """Dead-letter policy (bounded attempts) on each trigger subscription; returns their paths.

    Eventarc names a function's subscription ``eventarc-REGION-FUNCTION-NNN-sub-NNN`` (the
    trigger is named after the function), and may recreate it on a redeploy: hence re-applied.
    """
    from google.protobuf import field_mask_pb2
    from google.pubsub_v1 import DeadLetterPolicy, Subscription

    dead_letter_topic = target.topic_path(Topic.DEAD_LETTER)
    names = [
        sub.name
        for sub in clients.subscriber.list_subscriptions(project=f"projects/{target.project}")
    ]
    paths: list[str] = []
    for function in FUNCTIONS:
        if not function.dead_letter:
            continue
        prefix = (
            f"projects/{target.project}/subscriptions/eventarc-{target.region}-{function.name}-"
        )
        matching = sorted(name for name in names if name.startswith(prefix))
        if not matching:
            raise SystemExit(
                f"no trigger subscription for {function.name} (looked for {prefix}*):"
                " deploy the function first"
            )
        for name in matching:
            # list_subscriptions may omit the policy (the emulator does): read each one.
            current = clients.subscriber.get_subscription(subscription=name).dead_letter_policy
            if (
                current.dead_letter_topic == dead_letter_topic
                and current.max_delivery_attempts == MAX_DELIVERY_ATTEMPTS
            ):
                report(f"ok dead-letter policy on {name.rsplit('/', 1)[-1]}")
            else:
                policy = DeadLetterPolicy(
                    dead_letter_topic=dead_letter_topic,
                    max_delivery_attempts=MAX_DELIVERY_ATTEMPTS,
                )
                clients.subscriber.update_subscription(
                    request={
                        "subscription": Subscription(name=name, dead_letter_policy=policy),
                        "update_mask": field_mask_pb2.FieldMask(paths=["dead_letter_policy"]),
                    }
                )
                report(
                    f"set dead-letter policy on {name.rsplit('/', 1)[-1]}"
                    f" ({MAX_DELIVERY_ATTEMPTS} attempts -> {Topic.DEAD_LETTER})"
                )
            paths.append(name)
    return paths


# --------------------------------------------------------------------------------- schedules


def job_for(target: Target, schedule: Schedule) -> Job:
    """The Cloud Scheduler job of one schedule."""
    from google.cloud.scheduler_v1 import Job, PubsubTarget

    return Job(
        name=f"projects/{target.project}/locations/{target.region}/jobs/{schedule.name}",
        description=f"taxi-pipeline: monthly {schedule.dataset.value} ingest request",
        schedule=schedule.cron,
        time_zone=schedule.time_zone,
        pubsub_target=PubsubTarget(
            topic_name=target.topic_path(schedule.topic),
            data=schedule.data,
            # The month a fire loads is its local month (see handlers.handle_ingest_request).
            attributes={**schedule.attributes, SCHEDULE_TIME_ZONE_ATTRIBUTE: schedule.time_zone},
        ),
    )


_JOB_FIELDS = ("description", "schedule", "time_zone", "pubsub_target")


def ensure_schedules(
    target: Target, scheduler: SchedulerApi, report: Report, wanted: Sequence[Schedule]
) -> None:
    """One job per schedule, created or updated to match (never duplicated)."""
    from google.api_core.exceptions import NotFound
    from google.protobuf import field_mask_pb2

    parent = f"projects/{target.project}/locations/{target.region}"
    for schedule in wanted:
        job = job_for(target, schedule)
        try:
            current = scheduler.get_job(name=job.name)
        except NotFound:
            scheduler.create_job(parent=parent, job=job)
            report(f"created scheduler job {schedule.name} ({schedule.cron} {schedule.time_zone})")
            continue
        changed = [f for f in _JOB_FIELDS if getattr(current, f) != getattr(job, f)]
        if changed:
            scheduler.update_job(job=job, update_mask=field_mask_pb2.FieldMask(paths=changed))
            report(f"updated scheduler job {schedule.name} ({', '.join(changed)})")
        else:
            report(f"ok scheduler job {schedule.name}")


# --------------------------------------------------------------------------------- destroy


def destroy(target: Target, clients: Clients, report: Report, *, delete_data: bool) -> None:
    """Remove scheduler jobs and topics; the bucket and dataset only with ``delete_data``."""
    from google.api_core.exceptions import NotFound

    if clients.scheduler is not None:
        for schedule in schedules():
            name = job_for(target, schedule).name
            try:
                clients.scheduler.delete_job(name=name)
                report(f"deleted scheduler job {schedule.name}")
            except NotFound:
                report(f"absent scheduler job {schedule.name}")
    for topic in TOPICS:
        try:
            clients.publisher.delete_topic(topic=target.topic_path(topic))
            report(f"deleted topic {topic}")
        except NotFound:
            report(f"absent topic {topic}")
    if not delete_data:
        report(f"kept bucket gs://{target.bucket} and dataset {target.dataset} (--delete-data)")
        return
    ref = f"{target.project}.{target.dataset}"
    clients.bigquery.delete_dataset(ref, delete_contents=True, not_found_ok=True)
    report(f"deleted dataset {ref}")
    try:
        bucket = clients.storage.get_bucket(target.bucket)
    except NotFound:
        report(f"absent bucket gs://{target.bucket}")
        return
    for blob in clients.storage.list_blobs(bucket):
        blob.delete()
    bucket.delete()
    report(f"deleted bucket gs://{target.bucket}")


# --------------------------------------------------------------------------------- spec


def spec_lines(target: Target) -> list[str]:
    """Tab-separated declarations ``deploy.sh`` turns into gcloud commands (see its loops)."""
    lines = [f"api\t{api}" for api in APIS]
    lines += [f"account\t{f.account}\t{f.name} runtime" for f in FUNCTIONS]
    lines.append(f"account\t{TRIGGER_ACCOUNT}\tEventarc trigger identity")
    lines.append(f"project-role\t{TRIGGER_ACCOUNT}\troles/eventarc.eventReceiver")
    for function in FUNCTIONS:
        lines += [f"project-role\t{function.account}\t{role}" for role in function.roles_on_project]
        if function.bucket_role is not None:
            lines.append(f"bucket-role\t{function.account}\t{function.bucket_role}")
        if function.bucket_reader_extras:
            lines.append(f"bucket-role\t{function.account}\troles/storage.legacyBucketReader")
        lines += [
            f"topic-role\t{function.account}\t{topic}\troles/pubsub.publisher"
            for topic in function.publishes
        ]
    for function in FUNCTIONS:
        trigger = f"topic:{function.trigger_topic}" if function.trigger_topic else "bucket"
        lines.append(
            "\t".join(
                [
                    "function",
                    function.name,
                    function.entry_point,
                    trigger,
                    function.memory,
                    function.timeout,
                    str(function.max_instances),
                    function.account,
                ]
            )
        )
    env = ",".join(f"{k}={v}" for k, v in target.env_vars().items())
    lines.append(f"env\t{env}")
    # The UI's lines (deploy.sh --with-ui uses them; --destroy removes what exists of them).
    lines += [f"ui-api\t{api}" for api in UI.apis]
    lines.append(f"ui-account\t{UI.account}\t{UI.name} web UI runtime")
    lines += [f"ui-project-role\t{UI.account}\t{role}" for role in UI.roles_on_project]
    lines += [f"ui-topic-role\t{UI.account}\t{t}\troles/pubsub.publisher" for t in UI.publishes]
    lines.append(f"ui-secret\t{UI.token_secret}")
    lines.append(
        "\t".join(
            [
                "ui-service",
                UI.name,
                UI.entry_point,
                UI.memory,
                UI.timeout,
                str(UI.max_instances),
                UI.account,
            ]
        )
    )
    lines += [f"schedule\t{s.name}" for s in schedules()]
    lines.append(f"alert\t{ALERT_METRIC}\t{ALERT_POLICY}\t{ALERT_FILTER}")
    return lines


# --------------------------------------------------------------------------------- CLI


def _credentials() -> Credentials | None:
    token = os.environ.get("TAXI_PIPELINE_ACCESS_TOKEN")
    if not token:
        return None  # application default credentials
    from google.oauth2.credentials import Credentials

    return Credentials(token)  # type: ignore[no-untyped-call]


def _final_tables(target: Target, clients: Clients) -> FinalTables:
    from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse
    from taxi_pipeline.settings import Settings

    settings = Settings(
        warehouse_url=f"bigquery://{target.project}/{target.dataset}",
        bigquery_location=target.location,
        gcp_project=target.project,
    )
    return BigQueryWarehouse.from_url(
        settings.resolved_warehouse_url, settings, client=clients.bigquery
    )


def provision_data(
    target: Target, clients: Clients, report: Report, *, with_ui: bool = False
) -> None:
    """Bucket, dataset, final tables, topics."""
    ensure_bucket(target, clients, report)
    ensure_dataset(target, clients, report, with_ui=with_ui)
    ensure_tables(clients, report)
    ensure_topics(target, clients, report)


def _dry_run(command: str, target: Target, delete_data: bool, with_ui: bool = False) -> list[str]:
    where = f"{target.location}"
    if command == "data":
        rules = ", ".join(f"{p} after {d}d" for p, d in LAKE_LIFECYCLE)
        viewer = f", dataViewer for {UI.account}" if with_ui else ""
        return [
            f"ensure bucket gs://{target.bucket} in {where}: uniform access, public access"
            f" prevention enforced, lifecycle delete {rules}",
            f"ensure dataset {target.project}.{target.dataset} in {where}, dataEditor for"
            f" {', '.join(f.account for f in FUNCTIONS)}{viewer}",
            *(f"ensure table {target.dataset}.{d.final_table}" for d in Dataset),
            f"ensure tables {target.dataset}.pipeline_runs, {target.dataset}.pipeline_loads",
            *(f"ensure topic {t}" for t in TOPICS),
        ]
    if command == "dead-letters":
        return [
            f"ensure dead-letter policy on eventarc-{target.region}-{f.name}-*:"
            f" {MAX_DELIVERY_ATTEMPTS} attempts -> {Topic.DEAD_LETTER}"
            for f in FUNCTIONS
            if f.dead_letter
        ]
    if command == "schedules":
        return [
            f"ensure scheduler job {s.name}: {s.cron} {s.time_zone} -> {s.topic} {s.body}"
            f" {dict(s.attributes)}"
            for s in schedules()
        ]
    lines = [f"delete scheduler job {s.name}" for s in schedules()]
    lines += [f"delete topic {t}" for t in TOPICS]
    if delete_data:
        lines += [
            f"delete dataset {target.project}.{target.dataset}",
            f"delete bucket gs://{target.bucket}",
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.provision", description=__doc__)
    parser.add_argument("command", choices=["spec", "data", "dead-letters", "schedules", "destroy"])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", default="")
    parser.add_argument("--dataset", default="taxi")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--delete-data", action="store_true")
    parser.add_argument("--with-ui", action="store_true", help="data: dataViewer for the UI")
    args = parser.parse_args(argv)
    target = Target(args.project, args.region, args.bucket, args.dataset)

    def report(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    if args.command == "spec":
        print("\n".join(spec_lines(target)))
        return 0
    if args.dry_run:
        for line in _dry_run(args.command, target, args.delete_data, args.with_ui):
            print(f"+ {line}", file=sys.stderr)
        return 0
    clients = Clients.connect(target, _credentials())
    if args.command == "data":
        clients.final_tables = _final_tables(target, clients)
        provision_data(target, clients, report, with_ui=args.with_ui)
    elif args.command == "dead-letters":
        print("\n".join(ensure_dead_letters(target, clients, report)))
    elif args.command == "schedules":
        assert clients.scheduler is not None
        ensure_schedules(target, clients.scheduler, report, schedules())
    else:
        destroy(target, clients, report, delete_data=args.delete_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
