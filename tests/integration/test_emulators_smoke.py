"""Smoke tests: the emulated Google stack answers the official clients the way the pipeline needs.

Each test checks values (bytes, hashes, row counts, attributes), not merely the absence of errors.
"""

# google-cloud-storage and google-cloud-pubsub ship no py.typed: their names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import uuid
from collections.abc import Iterator

import pytest
from emulators import BigQueryEmulator, FakeGcs, PubSubEmulator
from google.api_core import exceptions as gexc
from google.cloud import bigquery
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
from google.cloud.storage import Bucket
from google.cloud.storage import Client as StorageClient
from google.pubsub_v1 import PubsubMessage

pytestmark = pytest.mark.emulator

CHUNK = 256 * 1024  # resumable upload chunks must be multiples of 256 KiB


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def bucket(storage_client: StorageClient) -> Bucket:
    """A fresh bucket per test (the emulator lives for the whole session)."""
    return storage_client.create_bucket(_name("lake"))


@pytest.fixture
def dataset(bigquery_client: bigquery.Client) -> Iterator[str]:
    """A fresh dataset per test, dropped afterwards."""
    dataset_id = _name("smoke").replace("-", "_")
    bigquery_client.create_dataset(dataset_id)
    yield dataset_id
    bigquery_client.delete_dataset(dataset_id, delete_contents=True, not_found_ok=True)


# --------------------------------------------------------------------------- Cloud Storage


def test_gcs_streaming_upload_reads_back(bucket: Bucket, fake_gcs: FakeGcs) -> None:
    payload = os.urandom(3 * CHUNK + 1234)  # several resumable chunks plus a partial one
    blob = bucket.blob("raw/green/green_tripdata_2019-01.csv.gz")
    with blob.open("wb", chunk_size=CHUNK, if_generation_match=0) as out:
        for start in range(0, len(payload), 100_000):
            out.write(payload[start : start + 100_000])

    blob.reload()
    assert blob.size == len(payload)
    assert blob.md5_hash == base64.b64encode(hashlib.md5(payload).digest()).decode()
    assert blob.download_as_bytes() == payload
    assert blob.download_as_bytes(start=10, end=19) == payload[10:20]  # ranged read
    small = bucket.blob("raw/small.txt")
    small.upload_from_string(b"a", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):  # create-only: enforced on small uploads
        small.upload_from_string(b"b", if_generation_match=0)
    assert small.download_as_bytes() == b"a"
    # The filesystem backend lays objects out as <root>/<bucket>/<name>.
    assert (fake_gcs.root / bucket.name / blob.name).read_bytes() == payload


def test_gcs_finalize_notification_reaches_pubsub(
    gcs_env: FakeGcs, pubsub_emulator: PubSubEmulator
) -> None:
    assert gcs_env.notification_topic is not None
    subscriber = pubsub_emulator.subscriber()
    subscription = subscriber.subscription_path(pubsub_emulator.project, _name("gcs-events"))
    subscriber.create_subscription(name=subscription, topic=gcs_env.notification_topic)

    client = StorageClient()  # through STORAGE_EMULATOR_HOST, as deployed code would build it
    bucket = client.create_bucket(_name("lake"))
    bucket.blob("other/ignored.txt").upload_from_string(b"not under raw/")
    body = b"VendorID,lpep_pickup_datetime\n2,2019-01-01 00:10:16\n"
    blob = bucket.blob("raw/green/green_tripdata_2019-01.csv")
    blob.upload_from_string(body, content_type="text/csv")

    messages: list[PubsubMessage] = []
    for _ in range(20):
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        # Other tests share the topic: keep only this bucket's events.
        messages.extend(
            m.message
            for m in response.received_messages
            if m.message.attributes.get("bucketId") == bucket.name
        )
        if response.received_messages:
            subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )
        if any(m.attributes.get("objectId") == blob.name for m in messages):
            break
    subscriber.transport.close()

    # Only the -event.object-prefix raw/ object is announced.
    assert [m.attributes["objectId"] for m in messages] == [blob.name]
    attributes = dict(messages[0].attributes)
    assert attributes["eventType"] == "OBJECT_FINALIZE"
    assert attributes["payloadFormat"] == "JSON_API_V1"
    assert attributes["bucketId"] == bucket.name
    assert attributes["objectGeneration"] == str(blob.generation)
    data = json.loads(messages[0].data)
    assert data["bucket"] == bucket.name
    assert data["name"] == blob.name
    assert data["size"] == str(len(body))  # a string, as in GCS
    assert data["generation"] == str(blob.generation)
    assert data["md5Hash"] == base64.b64encode(hashlib.md5(body).digest()).decode()
    assert data["contentType"] == "text/csv"


# --------------------------------------------------------------------------- BigQuery


def test_bigquery_partitioned_ddl_ctas_hash_and_insert_only_merge(
    bigquery_client: bigquery.Client, dataset: str
) -> None:
    client = bigquery_client
    client.query_and_wait(
        f"CREATE TABLE {dataset}.trips (unique_row_id STRING, vendor_id STRING, ts TIMESTAMP)"
        " PARTITION BY DATE(ts) CLUSTER BY vendor_id"
    )
    table = client.get_table(f"{dataset}.trips")
    assert table.time_partitioning is not None
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", "ts")

    client.query_and_wait(
        f"""CREATE TABLE {dataset}.staging AS
        SELECT MD5(CONCAT(COALESCE(CAST(vendor_id AS STRING), ""),
                          COALESCE(CAST(ts AS STRING), ""))) AS row_hash, vendor_id, ts
        FROM UNNEST([
          STRUCT("2" AS vendor_id, TIMESTAMP "2019-01-01 00:46:40" AS ts),
          STRUCT("1", TIMESTAMP "2019-01-02 10:00:00"),
          STRUCT(CAST(NULL AS STRING), TIMESTAMP "2019-01-02 11:00:00")])"""
    )
    rows = list(
        client.query_and_wait(f"SELECT TO_HEX(row_hash) AS h FROM {dataset}.staging ORDER BY ts")
    )
    # BigQuery casts TIMESTAMP to "2019-01-01 00:46:40+00"; NULL becomes "" through COALESCE.
    expected = [
        hashlib.md5(b"22019-01-01 00:46:40+00").hexdigest(),
        hashlib.md5(b"12019-01-02 10:00:00+00").hexdigest(),
        hashlib.md5(b"2019-01-02 11:00:00+00").hexdigest(),
    ]
    assert [r["h"] for r in rows] == expected

    merge = f"""MERGE {dataset}.trips T
        USING (SELECT TO_HEX(row_hash) AS unique_row_id, vendor_id, ts FROM {dataset}.staging) S
        ON T.unique_row_id = S.unique_row_id
           AND T.ts >= TIMESTAMP "2019-01-01" AND T.ts < TIMESTAMP "2019-02-01"
        WHEN NOT MATCHED THEN INSERT (unique_row_id, vendor_id, ts)
          VALUES (S.unique_row_id, S.vendor_id, S.ts)"""
    first = client.query(merge)
    first.result()
    again = client.query(merge)
    again.result()
    assert (first.num_dml_affected_rows, again.num_dml_affected_rows) == (3, 0)

    partitions = {
        r["partition_id"]: r["total_rows"]
        for r in client.query_and_wait(
            f"SELECT partition_id, total_rows FROM {dataset}.INFORMATION_SCHEMA.PARTITIONS"
            " WHERE table_name = 'trips'"
        )
    }
    assert partitions == {"20190101": 1, "20190102": 2}


def test_bigquery_load_job_from_gcs_csv_gz(
    bigquery_client: bigquery.Client,
    bigquery_emulator: BigQueryEmulator,
    bucket: Bucket,
    dataset: str,
) -> None:
    assert bigquery_emulator.gcs is not None
    csv = b"VendorID,pickup,fare_amount\n2,2019-01-01 00:10:16,5.5\n1,2019-01-02 08:00:00,12.25\n"
    blob = bucket.blob("raw/yellow/yellow_tripdata_2019-01.csv.gz")
    blob.upload_from_string(gzip.compress(csv), content_type="application/gzip")

    job = bigquery_client.load_table_from_uri(
        f"gs://{bucket.name}/{blob.name}",
        f"{dataset}.yellow_ext",
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            skip_leading_rows=1,
            schema=[
                bigquery.SchemaField("VendorID", "STRING"),
                bigquery.SchemaField("pickup", "TIMESTAMP"),
                bigquery.SchemaField("fare_amount", "FLOAT64"),
            ],
            time_partitioning=bigquery.TimePartitioning(field="pickup"),
        ),
    )
    job.result(timeout=60)
    assert job.output_rows == 2
    table = bigquery_client.get_table(f"{dataset}.yellow_ext")
    assert table.num_rows == 2
    assert table.time_partitioning is not None
    assert table.time_partitioning.field == "pickup"
    (total,) = bigquery_client.query_and_wait(
        f"SELECT SUM(fare_amount) AS s FROM {dataset}.yellow_ext"
    )
    assert total["s"] == pytest.approx(17.75)


# --------------------------------------------------------------------------- Pub/Sub


def test_pubsub_publish_with_attributes_and_pull(pubsub_env: PubSubEmulator) -> None:
    # Clients built from PUBSUB_EMULATOR_HOST, as deployed code builds them.
    publisher = PublisherClient()
    subscriber = SubscriberClient()
    topic = publisher.topic_path(pubsub_env.project, _name("pipeline"))
    subscription = subscriber.subscription_path(pubsub_env.project, _name("pipeline-sub"))
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=30)

    bodies = [json.dumps({"dataset": "green", "month": f"2019-0{i}"}).encode() for i in (1, 2)]
    ids = [
        publisher.publish(topic, body, run_id="r1", step="download").result(timeout=30)
        for body in bodies
    ]
    publisher.stop()

    received: dict[str, PubsubMessage] = {}
    for _ in range(20):
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        for m in response.received_messages:
            received[m.message.message_id] = m.message
        if response.received_messages:
            subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )
        if len(received) >= len(bodies):
            break
    subscriber.close()

    assert sorted(received) == sorted(ids)
    assert sorted(m.data for m in received.values()) == sorted(bodies)
    assert {tuple(sorted(m.attributes.items())) for m in received.values()} == {
        (("run_id", "r1"), ("step", "download"))
    }
