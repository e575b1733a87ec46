"""Shared fixtures: the offline Google stack, started lazily (only when a test asks for it).

Session fixtures, each one process for the whole run (per xdist worker):

- ``pubsub_emulator``: :class:`emulators.PubSubEmulator`; skips when the emulator is not installed.
- ``fake_gcs``: :class:`emulators.FakeGcs`; when the Pub/Sub emulator is there, every object
  finalized under ``raw/`` is announced on topic :data:`GCS_NOTIFICATIONS_TOPIC`
  (``fake_gcs.notification_topic`` is then its full path, else None).
- ``bigquery_emulator``: :class:`emulators.BigQueryEmulator`; ``gs://`` URIs in load jobs and
  EXPORT DATA reach fake_gcs through its API (``STORAGE_EMULATOR_HOST``).
- ``storage_client`` / ``bigquery_client``: official clients aimed at those.
- ``postgres_server``: :class:`support.postgres.PostgresServer`, a real PostgreSQL 15+ (Debian's
  ``postgresql``) initialised in a temp folder on a free loopback port; ``postgres_database``
  gives each test a new empty database on it (its name), dropped afterwards.

Function fixtures ``gcs_env`` / ``pubsub_env`` export ``STORAGE_EMULATOR_HOST`` /
``PUBSUB_EMULATOR_HOST`` for one test (restored afterwards) for code that builds its own clients.

A missing fake-gcs-server, local-bigquery or PostgreSQL is a failure (run ``scripts/setup-dev``
or ``.ci/install-emulators.sh``); only the Pub/Sub emulator may be absent, and then its tests skip
with the reason.
"""

# google-cloud-storage ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import pytest
from emulators import (
    BigQueryEmulator,
    EmulatorNotInstalledError,
    FakeGcs,
    PubSubEmulator,
    start_bigquery_emulator,
    start_fake_gcs,
    start_pubsub_emulator,
)

from support.postgres import PostgresServer, find_bin_dir, start_postgres

if TYPE_CHECKING:
    from google.cloud import bigquery
    from google.cloud.storage import Client as StorageClient

GCS_NOTIFICATIONS_TOPIC = "gcs-notifications"

_E = TypeVar("_E")


def _required(start: Callable[[], _E]) -> _E:
    """Start a mandatory emulator: a missing install fails the test (it never skips)."""
    try:
        return start()
    except EmulatorNotInstalledError as exc:
        message = str(exc)
    pytest.fail(f"required emulator missing: {message}", pytrace=False)


@pytest.fixture(scope="session")
def _pubsub_or_reason(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator | str]:
    """The running Pub/Sub emulator, or why there is none (it is the one optional emulator)."""
    try:
        emulator = start_pubsub_emulator(tmp_path_factory.mktemp("pubsub"))
    except EmulatorNotInstalledError as exc:
        yield f"Pub/Sub emulator unavailable: {exc}"
        return
    with emulator:
        yield emulator


@pytest.fixture(scope="session")
def pubsub_emulator(_pubsub_or_reason: PubSubEmulator | str) -> PubSubEmulator:
    """The Pub/Sub emulator (``.host`` is the PUBSUB_EMULATOR_HOST value); skips if absent."""
    if isinstance(_pubsub_or_reason, str):
        pytest.skip(_pubsub_or_reason)
    return _pubsub_or_reason


@pytest.fixture(scope="session")
def fake_gcs(
    tmp_path_factory: pytest.TempPathFactory, _pubsub_or_reason: PubSubEmulator | str
) -> Iterator[FakeGcs]:
    """fake-gcs-server with OBJECT_FINALIZE notifications for ``raw/`` when Pub/Sub is there."""
    pubsub = None if isinstance(_pubsub_or_reason, str) else _pubsub_or_reason
    topic = None
    if pubsub is not None:
        pubsub.create_topic(GCS_NOTIFICATIONS_TOPIC)
        topic = GCS_NOTIFICATIONS_TOPIC
    root = tmp_path_factory.mktemp("gcs")
    with _required(lambda: start_fake_gcs(root, pubsub=pubsub, topic=topic)) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def bigquery_emulator(
    tmp_path_factory: pytest.TempPathFactory, fake_gcs: FakeGcs
) -> Iterator[BigQueryEmulator]:
    """local-bigquery; ``gs://`` URIs (load jobs, EXPORT DATA) go to fake_gcs's API."""
    data_dir = tmp_path_factory.mktemp("bigquery")
    with _required(lambda: start_bigquery_emulator(data_dir, gcs=fake_gcs)) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def storage_client(fake_gcs: FakeGcs) -> StorageClient:
    """A ``google.cloud.storage.Client`` aimed at fake_gcs."""
    return fake_gcs.client()


@pytest.fixture(scope="session")
def bigquery_client(bigquery_emulator: BigQueryEmulator) -> Iterator[bigquery.Client]:
    """A ``google.cloud.bigquery.Client`` aimed at the BigQuery emulator."""
    client = bigquery_emulator.client()
    yield client
    client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def gcs_env(fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> FakeGcs:
    """Export STORAGE_EMULATOR_HOST for this test only."""
    for key, value in fake_gcs.env().items():
        monkeypatch.setenv(key, value)
    return fake_gcs


@pytest.fixture
def pubsub_env(pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> PubSubEmulator:
    """Export PUBSUB_EMULATOR_HOST for this test only."""
    for key, value in pubsub_emulator.env().items():
        monkeypatch.setenv(key, value)
    return pubsub_emulator


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, stopped and removed afterwards."""
    with start_postgres(_required(find_bin_dir)) as server:
        yield server


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A new empty database on ``postgres_server`` for one test (dropped afterwards)."""
    name = postgres_server.create_database()
    yield name
    postgres_server.drop_database(name)
