"""The whole chain in the cloud's shape, offline.

Pub/Sub emulator -> a small Eventarc stand-in (pull, convert to the binary CloudEvent Eventarc
sends, POST, ack on 2xx / nack otherwise) -> ``functions/main.py`` served by ``functions-framework``
(one subprocess per target, configured only by environment variables, as deployed) ->
GcsStore on fake-gcs-server, whose OBJECT_FINALIZE notification (Pub/Sub notification shape) the
stand-in turns into the Eventarc ``storage.object.v1.finalized`` event -> register -> merge in the
BigQuery emulator (staging mode ``load``: local-bigquery has no external tables; its load jobs
read Parquet, so the TLC's months run the very path the cloud's load mode runs: a load job with
``source_format = PARQUET``, then the staging casts).
"""

# google-cloud-pubsub and google-cloud-storage ship no py.typed: their names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from emulators import BigQueryEmulator, FakeGcs, PubSubEmulator, free_port
from google.api_core import exceptions as gexc

from taxi_pipeline.devkit.generator import GeneratedFile, generate_month
from taxi_pipeline.devkit.parquet_generator import GeneratedParquet, generate_parquet_month
from taxi_pipeline.devkit.source_server import SourceServer, serve_directory
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.pipeline.cloudevents import GCS_FINALIZED, PUBSUB_PUBLISHED

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS_FRAMEWORK = Path(sys.executable).parent / "functions-framework"
TARGETS = {
    Topic.INGEST_REQUESTS: "on_ingest_request",
    Topic.MERGE_REQUESTS: "on_merge_request",
    Topic.DEAD_LETTER: "on_dead_letter",
}
GCS_TARGET = "on_object_finalized"
MONTHS = {
    (Dataset.GREEN, Month(2019, 1)): 1_500,
    (Dataset.YELLOW, Month(2019, 1)): 2_000,
    (Dataset.GREEN, Month(2019, 5)): 1_200,  # also published by the TLC: the source guard
    (Dataset.FHV, Month(2019, 2)): 1_100,  # fhv from the mirror: "80.0" zones, empty ones
}
TLC_MONTHS = {
    (Dataset.YELLOW, Month(2024, 1)): 2_500,  # Airport_fee, INT32 ids, INT64 counts
    (Dataset.YELLOW, Month(2020, 10)): 1_800,  # counts as DOUBLE, airport_fee null-typed
    (Dataset.GREEN, Month(2025, 2)): 1_000,  # cbd_congestion_fee
    (Dataset.GREEN, Month(2019, 5)): 1_300,
    (Dataset.FHV, Month(2019, 4)): 900,  # location ids DOUBLE
    (Dataset.FHVHV, Month(2025, 2)): 1_000,  # 25 columns, cbd_congestion_fee
}
TAXIS = (Dataset.YELLOW, Dataset.GREEN)
TIMEOUT = 90.0


# --------------------------------------------------------------------------- functions served


@dataclass
class Served:
    target: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _serve(target: str, env: dict[str, str], logs: Path) -> Served:
    port = free_port()
    log = logs / f"{target}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(FUNCTIONS_FRAMEWORK),
                "--source",
                str(REPO / "functions" / "main.py"),
                "--target",
                target,
                "--signature-type",
                "cloudevent",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=REPO / "functions",
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() reaches its workers
        )
    return Served(target, f"http://127.0.0.1:{port}/", process, log)


def _wait_ready(served: Served, deadline: float) -> None:
    while True:
        if served.process.poll() is not None:
            raise AssertionError(f"{served.target} exited:\n{served.log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(served.url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # answering HTTP at all: the function is loaded
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{served.target} not ready:\n{served.log.read_text()}"
                ) from None
            time.sleep(0.1)


# --------------------------------------------------------------------------- Eventarc stand-in


@dataclass
class Delivery:
    target: str
    headers: dict[str, str]
    body: bytes
    status: int


def _pubsub_cloud_event(project: str, topic: str, subscription: str, message: Any) -> CloudEvent:
    stamp = message.publish_time.isoformat().replace("+00:00", "Z")
    return CloudEvent(
        {
            "type": PUBSUB_PUBLISHED,
            "source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
            "id": message.message_id,
            "time": stamp,
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        {
            "subscription": subscription,
            "message": {
                "data": base64.b64encode(message.data).decode(),
                "attributes": dict(message.attributes),
                "messageId": message.message_id,
                "publishTime": stamp,
            },
        },
    )


def _gcs_cloud_event(message: Any) -> CloudEvent:
    """A fake-gcs OBJECT_FINALIZE notification (JSON_API_V1) as Eventarc's GCS event."""
    obj = json.loads(message.data)
    return CloudEvent(
        {
            "type": GCS_FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{obj['bucket']}",
            "subject": f"objects/{obj['name']}",
            "id": message.message_id,
            "time": obj.get("updated") or message.publish_time.isoformat(),
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        obj,
    )


@dataclass
class Relay:
    """Pulls subscriptions and POSTs each message to its function like Eventarc would."""

    subscriber: Any
    routes: dict[str, tuple[str, Callable[[Any], CloudEvent | None]]]
    deliveries: list[Delivery] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8))
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for subscription in self.routes:
            thread = threading.Thread(target=self._pull, args=(subscription,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(15)
        self._pool.shutdown(wait=True)

    def _pull(self, subscription: str) -> None:
        while not self.stopping.is_set():
            try:
                response = self.subscriber.pull(
                    subscription=subscription, max_messages=10, timeout=2
                )
            except (gexc.DeadlineExceeded, gexc.ServiceUnavailable):
                continue
            for received in response.received_messages:
                self._pool.submit(self._forward, subscription, received)

    def _forward(self, subscription: str, received: Any) -> None:
        url, convert = self.routes[subscription]
        event = convert(received.message)
        status = 200
        if event is not None:
            headers, body = to_binary(event)
            status = self.post(url, dict(headers), body)
        if 200 <= status < 300:
            self.subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
        else:  # nack: the emulator redelivers, as Pub/Sub does for a push endpoint's 500
            self.subscriber.modify_ack_deadline(
                subscription=subscription, ack_ids=[received.ack_id], ack_deadline_seconds=0
            )

    def post(self, url: str, headers: dict[str, str], body: bytes) -> int:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        with self._lock:
            self.deliveries.append(Delivery(url, headers, body, status))
        return status


# --------------------------------------------------------------------------- the stack


@dataclass
class Chain:
    project: str
    bucket: str
    dataset: str
    relay: Relay
    publisher: Any
    subscriber: Any
    results_subscription: str
    source: SourceServer
    files: dict[tuple[Dataset, Month], GeneratedFile]
    bigquery: Any
    gcs: Any
    parquet: dict[tuple[Dataset, Month], GeneratedParquet] = field(default_factory=dict)

    def publish_ingest(
        self, dataset: Dataset, month: Month, run_id: str, **fields: str | bool
    ) -> None:
        body = json.dumps(
            {"dataset": dataset.value, "month": str(month), "run_id": run_id, **fields}
        )
        topic = f"projects/{self.project}/topics/{Topic.INGEST_REQUESTS.value}"
        self.publisher.publish(topic, body.encode(), origin="test").result(timeout=30)

    def results(self, count: int) -> list[dict[str, Any]]:
        """Wait until ``count`` ingest results arrived (bounded); return them."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count:
            assert time.monotonic() < deadline, f"only {len(got)} of {count} results: {got}"
            response = self.subscriber.pull(
                subscription=self.results_subscription, max_messages=10, timeout=5
            )
            got.extend(json.loads(m.message.data) for m in response.received_messages)
            if response.received_messages:
                self.subscriber.acknowledge(
                    subscription=self.results_subscription,
                    ack_ids=[m.ack_id for m in response.received_messages],
                )
        return got

    def count(self, table: str) -> int:
        (row,) = self.bigquery.query_and_wait(f"SELECT count(*) AS n FROM {self.dataset}.{table}")
        return int(row["n"])


@pytest.fixture(scope="module")
def chain(
    tmp_path_factory: pytest.TempPathFactory,
    pubsub_emulator: PubSubEmulator,
    fake_gcs: FakeGcs,
    bigquery_emulator: BigQueryEmulator,
) -> Iterator[Chain]:
    project = pubsub_emulator.project  # fake-gcs notifies into this project
    assert fake_gcs.notification_topic is not None
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    dataset = f"chain_{uuid.uuid4().hex[:8]}"
    gcs = fake_gcs.client()
    gcs.create_bucket(bucket)
    bigquery = bigquery_emulator.client()
    bigquery.create_dataset(dataset)

    publisher, subscriber = pubsub_emulator.publisher(), pubsub_emulator.subscriber()
    for topic in Topic:
        with contextlib.suppress(gexc.AlreadyExists):
            publisher.create_topic(name=f"projects/{project}/topics/{topic.value}")

    def subscribe(topic_path: str, name: str) -> str:
        path = f"projects/{project}/subscriptions/{name}-{uuid.uuid4().hex[:6]}"
        subscriber.create_subscription(name=path, topic=topic_path, ack_deadline_seconds=120)
        return path

    directory = tmp_path_factory.mktemp("chain-source")
    files = {key: generate_month(directory, *key, rows=rows, seed=11) for key, rows in
             MONTHS.items()}  # fmt: skip
    parquet = {
        key: generate_parquet_month(directory, key[0].value, key[1], rows, seed=12)
        for key, rows in TLC_MONTHS.items()
    }
    logs = tmp_path_factory.mktemp("chain-functions")
    with serve_directory(directory) as source:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_PIPELINE_")}
        env |= fake_gcs.env() | pubsub_emulator.env()
        env |= {
            "TAXI_PIPELINE_LAKE_URL": f"gs://{bucket}",
            "TAXI_PIPELINE_WAREHOUSE_URL": f"bigquery://{bigquery_emulator.project}/{dataset}",
            "TAXI_PIPELINE_BIGQUERY_API_ENDPOINT": bigquery_emulator.url,
            "TAXI_PIPELINE_BUS_URL": f"pubsub://{project}",
            "TAXI_PIPELINE_GCP_PROJECT": project,
            "TAXI_PIPELINE_STAGING_MODE": "load",
            "TAXI_PIPELINE_SOURCE_URL": source.base_url,
            "TAXI_PIPELINE_TLC_URL": source.tlc_base_url,
            "TAXI_PIPELINE_LOG_FORMAT": "json",
            "TAXI_PIPELINE_UPLOAD_CHUNK_MIB": "1",
        }
        served = {t: _serve(t, env, logs) for t in [*TARGETS.values(), GCS_TARGET]}
        try:
            deadline = time.monotonic() + 60
            for one in served.values():
                _wait_ready(one, deadline)

            def for_bucket(message: Any) -> CloudEvent | None:
                if message.attributes.get("bucketId") != bucket:
                    return None  # another test's bucket on the shared notification topic
                return _gcs_cloud_event(message)

            routes: dict[str, tuple[str, Callable[[Any], CloudEvent | None]]] = {}
            for topic, target in TARGETS.items():
                topic_path = f"projects/{project}/topics/{topic.value}"
                sub = subscribe(topic_path, f"eventarc-{topic.value}")
                convert = functools.partial(_pubsub_cloud_event, project, topic.value, sub)
                routes[sub] = (served[target].url, convert)
            gcs_sub = subscribe(fake_gcs.notification_topic, "eventarc-gcs")
            routes[gcs_sub] = (served[GCS_TARGET].url, for_bucket)
            results = subscribe(f"projects/{project}/topics/{Topic.INGEST_RESULTS.value}", "res")
            relay = Relay(subscriber, routes)
            relay.start()
            try:
                yield Chain(project, bucket, dataset, relay, publisher, subscriber, results,
                            source, files, bigquery, gcs, parquet)  # fmt: skip
            finally:
                relay.stop()
        finally:
            for one in served.values():
                one.stop()
            publisher.transport.close()
            subscriber.close()
            bigquery.close()  # type: ignore[no-untyped-call]


def test_two_months_through_the_cloud_chain_then_redelivery_inserts_nothing(
    chain: Chain,
) -> None:
    runs = {
        key: f"{key[0].value}-{key[1]}-chain".replace("_", "-")
        for key in MONTHS
        if key[1] == Month(2019, 1)
    }
    for (dataset, month), run_id in runs.items():
        chain.publish_ingest(dataset, month, run_id)

    first = chain.results(len(runs))
    by_run = {r["run_id"]: r for r in first}
    assert set(by_run) == set(runs.values())
    for key, run_id in runs.items():
        result = by_run[run_id]
        assert result["state"] == "SUCCESS", str(result)
        assert result["rows_in_file"] == chain.files[key].rows
        assert result["rows_inserted"] == chain.files[key].rows
    assert chain.count("green_tripdata") == chain.files[(Dataset.GREEN, Month(2019, 1))].rows
    assert chain.count("yellow_tripdata") == chain.files[(Dataset.YELLOW, Month(2019, 1))].rows

    # The raw objects carry the run's metadata; no lock object is left behind.
    names = {b.name: b for b in chain.gcs.list_blobs(chain.bucket)}
    green = names["raw/green/green_tripdata_2019-01.csv.gz"]
    assert green.metadata["run_id"] == runs[(Dataset.GREEN, Month(2019, 1))]
    assert green.size == chain.files[(Dataset.GREEN, Month(2019, 1))].size_bytes
    assert not [n for n in names if n.startswith("locks/")]

    delivered = list(chain.relay.deliveries)
    assert {d.status for d in delivered} == {200}
    assert len({d.target for d in delivered}) == 3  # ingest, object finalized, merge
    downloads = len([r for r in chain.source.requests if r[1] == 200])
    assert downloads == len(runs)

    # At-least-once: every event delivered again. Each redelivered ingest and object event
    # leads to one more merge, and every merge reports; nothing is inserted twice (the table
    # counts below), and each redelivered run repeats its own load's figures.
    for delivery in delivered:
        assert chain.relay.post(delivery.target, delivery.headers, delivery.body) == 200
    again = chain.results(3 * len(runs))
    assert {r["state"] for r in again} == {"SUCCESS"}
    assert [r["rows_inserted"] for r in again] == [
        by_run[r["run_id"]]["rows_inserted"] for r in again
    ]
    assert chain.count("green_tripdata") == chain.files[(Dataset.GREEN, Month(2019, 1))].rows
    assert chain.count("yellow_tripdata") == chain.files[(Dataset.YELLOW, Month(2019, 1))].rows
    assert len([r for r in chain.source.requests if r[1] == 200]) == downloads  # not refetched


def test_a_file_uploaded_by_hand_into_raw_is_loaded(chain: Chain, tmp_path: Path) -> None:
    """``gcloud storage cp green_tripdata_2019-02.csv.gz gs://BUCKET/raw/green/``: no metadata,
    no ingest request; the object event alone starts a run."""
    generated = generate_month(tmp_path, Dataset.GREEN, Month(2019, 2), rows=700, seed=5)
    blob = chain.gcs.bucket(chain.bucket).blob("raw/green/green_tripdata_2019-02.csv.gz")
    blob.upload_from_filename(str(generated.path), content_type="application/gzip")

    (result,) = chain.results(1)
    assert (result["dataset"], result["month"], result["state"]) == ("green", "2019-02", "SUCCESS")
    assert result["labels"] == {"trigger": "upload"}
    assert result["rows_inserted"] == generated.rows
    counts = {
        row["filename"]: row["n"]
        for row in chain.bigquery.query_and_wait(
            f"SELECT filename, count(*) AS n FROM {chain.dataset}.green_tripdata GROUP BY 1"
        )
    }
    assert counts["green_tripdata_2019-02.csv"] == generated.rows  # the reference's filename


def _reference_ids(generated: GeneratedParquet) -> list[str]:
    """The zoomcamp id computed here from the file's description (BigQuery's ``+00``)."""
    ids = []
    for vendor, pickup, dropoff, pu, do in generated.expected_id_texts():
        parts = [vendor, f"{pickup}+00" if pickup else None, f"{dropoff}+00" if dropoff else None]
        text = "".join(p or "" for p in (*parts, pu, do))
        ids.append(hashlib.md5(text.encode()).hexdigest())
    return sorted(ids)


def _by_file(chain: Chain, table: str, filename: str, select: str) -> list[Any]:
    return list(
        chain.bigquery.query_and_wait(
            f"SELECT {select} FROM {chain.dataset}.{table} WHERE filename = '{filename}'"
        )
    )


def test_the_tlc_parquet_months_through_the_cloud_chain(chain: Chain) -> None:
    """Download -> load job (PARQUET) -> typed staging -> MERGE, for three schema periods: the
    counts are the files', the ids an independent computation's, the fees filled."""
    keys = [k for k in TLC_MONTHS if k[1] != Month(2019, 5) and k[0] in TAXIS]
    for dataset, month in keys:
        chain.publish_ingest(dataset, month, f"{dataset.value}-{month}-tlc", source="tlc")
    results = {r["run_id"]: r for r in chain.results(len(keys))}
    for dataset, month in keys:
        generated = chain.parquet[(dataset, month)]
        result = results[f"{dataset.value}-{month}-tlc"]
        assert result["state"] == "SUCCESS", str(result)
        assert result["rows_in_file"] == result["rows_inserted"] == generated.rows
        table = f"{dataset.value}_tripdata"
        ids = [r["id"] for r in _by_file(chain, table, generated.name, "TO_HEX(unique_row_id) id")]
        assert sorted(ids) == _reference_ids(generated), f"{dataset.value} {month}"

    blob = chain.gcs.bucket(chain.bucket).get_blob("raw/yellow/yellow_tripdata_2024-01.parquet")
    assert blob.metadata["upstream_etag"].startswith('"')
    assert blob.metadata["upstream_size"] == str(
        chain.parquet[(Dataset.YELLOW, Month(2024, 1))].size_bytes
    )
    yellow = chain.parquet[(Dataset.YELLOW, Month(2024, 1))].expected_table()
    airport = [v for v in yellow.column("Airport_fee").to_pylist() if v is not None]
    ((fees,),) = [
        tuple(r.values())
        for r in _by_file(chain, "yellow_tripdata", "yellow_tripdata_2024-01.parquet",
                          "COUNT(airport_fee) n")
    ]  # fmt: skip
    assert fees == len(airport) > 0
    green = chain.parquet[(Dataset.GREEN, Month(2025, 2))].expected_table()
    cbd = [v for v in green.column("cbd_congestion_fee").to_pylist() if v is not None]
    (row,) = _by_file(chain, "green_tripdata", "green_tripdata_2025-02.parquet",
                      "COUNT(cbd_congestion_fee) n")  # fmt: skip
    assert row["n"] == len(cbd) > 0


def test_one_source_per_month_and_replace_in_one_bigquery_transaction(chain: Chain) -> None:
    """green 2019-05 from the mirror; the TLC's file of it is refused, then replaces it."""
    key = (Dataset.GREEN, Month(2019, 5))
    csv, parquet = chain.files[key], chain.parquet[key]
    chain.publish_ingest(*key, "green-2019-05-mirror")
    (first,) = chain.results(1)
    assert (first["state"], first["rows_inserted"]) == ("SUCCESS", csv.rows), str(first)

    chain.publish_ingest(*key, "green-2019-05-tlc", source="tlc")
    (refused,) = chain.results(1)
    assert refused["state"] == "FAILED"
    assert "is loaded from the DataTalksClub mirror" in refused["error"]
    assert chain.gcs.bucket(chain.bucket).get_blob("raw/green/" + parquet.name) is None

    chain.publish_ingest(*key, "green-2019-05-replace", source="tlc", replace=True)
    (replaced,) = chain.results(1)
    assert replaced["state"] == "SUCCESS", str(replaced)
    assert (replaced["rows_replaced"], replaced["rows_inserted"]) == (csv.rows, parquet.rows)
    counts = {
        row["filename"]: row["n"]
        for row in chain.bigquery.query_and_wait(
            f"SELECT filename, count(*) AS n FROM {chain.dataset}.green_tripdata"
            " WHERE filename LIKE 'green_tripdata_2019-05%' GROUP BY 1"
        )
    }
    assert counts == {parquet.name: parquet.rows}


def _dataset_ids(dataset: Dataset, texts: list[tuple[str | None, ...]]) -> list[str]:
    """The id over ``dataset``'s id columns, timestamps as BigQuery writes them (``+00``)."""
    times = {dataset.layout.pickup, dataset.layout.dropoff}
    ids = []
    for row in texts:
        parts = [
            f"{t}+00" if name in times and t else (t or "")
            for name, t in zip(dataset.layout.id_columns, row, strict=True)
        ]
        ids.append(hashlib.md5("".join(parts).encode()).hexdigest())
    return sorted(ids)


def _csv_id_texts(generated: GeneratedFile) -> list[tuple[str | None, ...]]:
    """fhv's id columns read from the CSV itself: zones as integers ("80.0" -> "80")."""
    import csv
    import gzip

    with gzip.open(generated.path, "rt", newline="") as text:
        return [
            tuple(
                (str(int(float(row[n]))) if row[n] and n.endswith("locationID") else row[n]) or None
                for n in Dataset.FHV.layout.id_columns
            )
            for row in csv.DictReader(text)
        ]


def test_fhv_from_both_sources_and_fhvhv_through_the_cloud_chain(chain: Chain) -> None:
    """fhv's CSV (integer zones written 80.0) and Parquet (DOUBLE zones), fhvhv's 25 columns:
    counts exact, ids an independent computation's, a redelivered request inserts nothing."""
    requests = {
        (Dataset.FHV, Month(2019, 2)): {},
        (Dataset.FHV, Month(2019, 4)): {"source": "tlc"},
        (Dataset.FHVHV, Month(2025, 2)): {},
    }
    # fhv's first month alone: the emulator's DuckLake fails two concurrent first CREATE TABLEs
    # of one table ("Failed to commit"), which BigQuery serialises.
    results: dict[str, dict[str, Any]] = {}
    for batch in (list(requests)[:1], list(requests)[1:]):
        for dataset, month in batch:
            fields = requests[(dataset, month)]
            chain.publish_ingest(dataset, month, f"{dataset.value}-{month}-chain", **fields)
        results |= {r["run_id"]: r for r in chain.results(len(batch))}
    expected = {
        (Dataset.FHV, Month(2019, 2)): (
            chain.files[(Dataset.FHV, Month(2019, 2))].rows,
            "fhv_tripdata_2019-02.csv",
            _csv_id_texts(chain.files[(Dataset.FHV, Month(2019, 2))]),
        ),
        **{
            key: (chain.parquet[key].rows, chain.parquet[key].name,
                  chain.parquet[key].expected_id_texts())
            for key in ((Dataset.FHV, Month(2019, 4)), (Dataset.FHVHV, Month(2025, 2)))
        },
    }  # fmt: skip
    for (dataset, month), (rows, filename, texts) in expected.items():
        result = results[f"{dataset.value}-{month}-chain"]
        assert result["state"] == "SUCCESS", str(result)
        assert result["rows_in_file"] == result["rows_inserted"] == rows
        found = _by_file(chain, dataset.final_table, filename, "TO_HEX(unique_row_id) id")
        assert sorted(r["id"] for r in found) == _dataset_ids(dataset, texts), filename
    (row,) = _by_file(chain, "fhvhv_tripdata", "fhvhv_tripdata_2025-02.parquet",
                      "COUNT(cbd_congestion_fee) n, SUM(trip_time) s")  # fmt: skip
    table = chain.parquet[(Dataset.FHVHV, Month(2025, 2))].expected_table()
    assert row["s"] == sum(table.column("trip_time").to_pylist())
    assert row["n"] == table.num_rows

    # A re-run of a loaded month inserts nothing.
    chain.publish_ingest(Dataset.FHV, Month(2019, 2), "fhv-2019-02-again")
    (again,) = chain.results(1)
    assert (again["state"], again["rows_inserted"]) == ("SUCCESS", 0), str(again)
    assert chain.count("fhv_tripdata") == sum(
        rows for (dataset, _), (rows, _, _) in expected.items() if dataset is Dataset.FHV
    )
