"""The composition root: the one place that picks adapters (by URL) and wires the handlers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Unpack
from urllib.parse import urlsplit

from taxi_pipeline.adapters.memory.bus import InProcessBus
from taxi_pipeline.adapters.memory.locks import ThreadLocks
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.history import Liveness
from taxi_pipeline.domain.messages import IngestRequest, IngestResult, RunState, Topic, parse_model
from taxi_pipeline.domain.runs import RunEvent, RunIdentity, new_run_id, object_event_attributes
from taxi_pipeline.domain.uris import local_path
from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.local.admission import RunGate, RunOptions, Ticket
from taxi_pipeline.local.orchestrator import MirroredProgress, Watcher
from taxi_pipeline.local.process import ProcessInfo, this_process
from taxi_pipeline.logs import redact
from taxi_pipeline.pipeline import handlers
from taxi_pipeline.pipeline.cancellation import Cancellation, current_run_id
from taxi_pipeline.pipeline.cloudevents import CloudEventLike, build_gcs_event
from taxi_pipeline.pipeline.ports import (
    Bus,
    Closeable,
    Lake,
    LoadLedger,
    NullProgress,
    ObjectInfo,
    Ports,
    Progress,
    RunHistory,
    Source,
    Warehouse,
)
from taxi_pipeline.pipeline.recorder import cancel_event, cancel_reason, queued_event
from taxi_pipeline.pipeline.steps.common import publish_result
from taxi_pipeline.pipeline.steps.download import check_source_base, check_tlc_base
from taxi_pipeline.settings import LogFormat, Settings

if TYPE_CHECKING:
    from taxi_pipeline.adapters.faults.wrappers import Faults
    from taxi_pipeline.adapters.filelock.locks import FileLocks
    from taxi_pipeline.adapters.sqlite.history import SqliteHistory

log = logging.getLogger(__name__)


class HistoryStore(RunHistory, LoadLedger, Closeable, Protocol):
    """What ``runs``, ``status`` and ``runs cancel`` need: the run history and the ledger (the
    home's SQLite history, or the warehouse itself)."""


POSTGRES_SCHEMES = ("postgresql", "postgres")
"""The PostgreSQL warehouse's URL schemes (libpq's)."""

LAKE_EVENTS_TOPIC = "lake-object-finalized"
"""In-process stand-in for the GCS trigger (Eventarc) of the register function."""


@dataclass
class LocalPipeline:
    """The embedded default: folder lake, DuckDB warehouse, in-process bus, same handlers.

    Several processes may share one home: ``history`` (the home's SQLite run history) is where
    this process beats and finds the cancel requests of other processes for its runs, and the
    gate's slots and the steps' locks are lock files of the home.
    """

    ports: Ports
    bus: InProcessBus
    results: dict[str, IngestResult] = field(default_factory=dict)
    gate: RunGate = field(default_factory=lambda: RunGate(1_000_000))
    history: SqliteHistory | None = None
    notice: Callable[[str], None] = field(default=lambda message: log.warning("%s", message))
    """Where a waiting process says what it waits for (the CLI prints it)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: dict[str, IngestRequest] = field(default_factory=dict)
    _watcher: Watcher | None = None
    _slot_notices: set[Dataset] = field(default_factory=set)
    _closed: bool = False

    def start(self) -> None:
        """Begin beating and watching for cancel requests (the embedded default's history)."""
        if self.history is not None and self._watcher is None:
            self._watcher = Watcher(
                self.history,
                cancel=lambda run_id, reason: self.cancel(run_id, reason, record=False),
                retry=self._retry_admission,
            )
            self._watcher.start()

    def submit(self, dataset: Dataset, month: Month, **options: Unpack[RunOptions]) -> str:
        """Record the run QUEUED and put its request on the bus once the dataset has a free
        slot (:class:`RunGate`); returns its run id. After Ctrl-C, raises
        :class:`RunCancelled`."""
        self.ports.cancellation.check(None)
        run_id = options.get("run_id") or new_run_id(dataset, month)
        run = RunIdentity(run_id, dataset, month, dict(options.get("labels") or {}))
        request = IngestRequest(
            dataset=dataset,
            month=str(month),
            run_id=run.run_id,
            labels=dict(run.labels),
            force=options.get("force", False),
            source=options.get("source"),
            replace=options.get("replace", False),
        )
        self.ports.warehouse.append_run_events([queued_event(run)])
        with self._lock:
            self._active[run.run_id] = request

        def publish() -> None:
            self.bus.publish(Topic.INGEST_REQUESTS, request.to_bytes(), run.attributes())

        self.gate.offer(Ticket(run.run_id, dataset, publish))
        return run.run_id

    def drain(self, workers: int = 1) -> None:
        """Process the bus until it is idle and no request waits for a slot (a slot held by
        another process is waited for)."""
        while True:
            held = self.gate.holding()
            self.bus.drain(workers)
            # The bus was idle: a run that held its slot since before has ended unseen.
            released = self.gate.release(held)
            if not self.gate.waiting() and self.bus.idle():
                return
            if not released and not self.gate.retry() and self.bus.idle():
                self._say_who_holds_the_slots()
                time.sleep(_SLOT_POLL_SECONDS)

    @property
    def cancelled(self) -> str | None:
        """Why every run of this process stops (Ctrl-C, SIGTERM), or None."""
        return self.ports.cancellation.everything

    def active_runs(self) -> list[IngestRequest]:
        """The runs submitted here that have not ended yet."""
        with self._lock:
            return list(self._active.values())

    def cancel(self, run_id: str, reason: str, *, record: bool = True) -> bool:
        """Stop a run of this process (queued: withdrawn; running: interrupted, recorded
        CANCELLED by its step); ``record`` appends the cancel line (False: another process
        did). Returns whether the run is this process's."""
        with self._lock:
            request = self._active.get(run_id)
        if request is None:
            return False
        if record:
            self.ports.warehouse.append_run_events([_cancel_line(request, reason)])
        self.ports.cancellation.cancel(run_id, reason)
        if self.gate.withdraw(run_id) is not None:
            self._publish_cancelled(request, reason)
        return True

    def cancel_everything(self, reason: str) -> list[IngestRequest]:
        """Ctrl-C / SIGTERM: every run of this process is recorded cancelled at once (so a
        second Ctrl-C may end the process right away), its work interrupted, the queued ones
        withdrawn. Returns the runs cancelled."""
        active = self.active_runs()
        if active:
            try:
                self.ports.warehouse.append_run_events([_cancel_line(r, reason) for r in active])
            except Exception:  # the steps still record their own CANCELLED lines
                log.warning("could not record the cancel of %d runs", len(active), exc_info=True)
        self.ports.cancellation.cancel_everything(reason)
        withdrawn = {t.run_id for t in self.gate.withdraw_all()}
        for request in active:
            if request.run_id in withdrawn:
                self._publish_cancelled(request, reason)
        return active

    def _publish_cancelled(self, request: IngestRequest, reason: str) -> None:
        publish_result(
            self.ports,
            IngestResult(
                run_id=request.run_id or "",
                dataset=request.dataset,
                month=request.month or "",
                state=RunState.CANCELLED,
                error=reason[:2000],
                labels=request.labels,
            ),
        )

    def _retry_admission(self) -> None:
        if self.gate.waiting():
            self.gate.retry()

    def _say_who_holds_the_slots(self) -> None:
        """Once per wait: the dataset's runs wait for slots that other processes hold."""
        for dataset in self.gate.waiting_datasets():
            if dataset in self._slot_notices:
                continue
            holders = self.gate.slots.holders(dataset)
            if holders:
                self._slot_notices.add(dataset)
                self.notice(
                    f"{self.gate.waiting(dataset)} {dataset.value} run(s) wait for a slot"
                    f" ({self.gate.limit} {dataset.value} runs at a time in this home);"
                    f" {len(holders)} taken by other processes, e.g. {holders[0]}"
                )
        self._slot_notices &= set(self.gate.waiting_datasets())

    def _collect(self, data: bytes, attributes: Mapping[str, str]) -> None:
        result = parse_model(IngestResult, data, "ingest result")
        with self._lock:
            earlier = self.results.get(result.run_id)
            # A redelivered merge repeats a loaded run's result with fewer figures: keep the first.
            if earlier is None or earlier.state is not RunState.SUCCESS:
                self.results[result.run_id] = result
            self._active.pop(result.run_id, None)
        self.gate.done(result.run_id, result.dataset)
        if self.history is not None:
            try:
                self.history.clear_progress(result.run_id)
            except Exception:
                log.debug("could not clear the progress of %s", result.run_id, exc_info=True)

    def close(self) -> None:
        """Stop watching for cancels, leave the history, close the ports; idempotent (the web
        UI's shutdown and its owner may both close it)."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        try:
            if self.history is not None:
                self.history.leave()
        finally:
            self.ports.close()


_SLOT_POLL_SECONDS = 0.2


def _cancel_line(request: IngestRequest, reason: str) -> RunEvent:
    return cancel_event(
        request.run_id or "", request.dataset.value, request.month or "", reason, request.labels
    )


def _file_path(url: str, what: str) -> Path:
    path = local_path(url)
    if path is None:
        raise ConfigurationError(f"{what} must be a file:// URL with a path, got {url!r}")
    return path


def _log_notice(message: str) -> None:
    log.warning("%s", message)


def build_local(
    settings: Settings,
    progress: Progress | None = None,
    notice: Callable[[str], None] | None = None,
    *,
    faults: Faults | None = None,
) -> LocalPipeline:
    """Wire the embedded default. Lake and warehouse may still be chosen by URL.

    ``notice`` hears what a waiting process waits for (a lock, the warehouse file, a slot that
    another process of the home holds). ``faults``: the adapters wrapped to crash, fail or lie
    where it says, and the bus delivering as it says (the reliability tests, drills)."""
    from taxi_pipeline.adapters.filelock.locks import FileLocks, FileSlots
    from taxi_pipeline.adapters.folder.store import FolderStore

    check_source_base(settings)
    check_tlc_base(settings)
    say = notice or _log_notice
    bus = _in_process_bus(settings, faults)
    lake_url = settings.resolved_lake_url
    if not lake_url.startswith("file://"):
        raise ConfigurationError(
            f"the embedded default needs a file:// lake, got {lake_url!r}; the cloud functions"
            " use gs:// lakes"
        )
    lake = FolderStore(_file_path(lake_url, "TAXI_PIPELINE_LAKE_URL"), on_finalized=_announcer(bus))
    embedded = urlsplit(settings.resolved_warehouse_url).scheme == "duckdb"
    history = open_history(settings, process=this_process()) if embedded else None
    # Another warehouse (PostgreSQL) keeps the history itself: built first, since it is asked.
    other = None if embedded else build_warehouse(settings)
    recorded_in: RunHistory | None = history if history is not None else other
    # At a step's start the history is asked too: a cancel recorded since the last poll (with a
    # warehouse that has no heartbeats, how a `runs cancel` reaches this process's runs).
    cancellation = Cancellation(
        recorded=_recorded_cancels(recorded_in) if recorded_in is not None else None
    )
    locks = FileLocks(
        _locks_folder(settings),
        on_wait=say,
        stop=lambda: cancellation.reason(current_run_id()),
    )
    shown: Progress = progress or NullProgress()
    if history is not None:
        shown = MirroredProgress(shown, history)
        warehouse = _embedded_warehouse(settings, history, locks, cancellation, shown, say)
    else:
        assert other is not None
        warehouse = other
    ports = Ports(
        settings=settings,
        lake=lake,
        warehouse=warehouse,
        bus=bus,
        source=_http_source(settings),
        locks=locks,
        progress=shown,
        cancellation=cancellation,
    )
    limit = settings.max_concurrent_runs_per_dataset
    gate = RunGate(limit, FileSlots(_locks_folder(settings) / "slots", limit))
    pipeline = LocalPipeline(_injected(ports, faults), bus, gate=gate, history=history, notice=say)
    _run_in_process(pipeline, faults)
    pipeline.start()
    return pipeline


def build_in_process(settings: Settings, *, faults: Faults | None = None) -> LocalPipeline:
    """The cloud functions' chain run in this process: :func:`build_cloud`'s lake, warehouse,
    source and locks, the in-process bus in Pub/Sub's place, each committed lake object
    announced on it as Eventarc would, and the handlers subscribed to it; ``faults`` as
    :func:`build_local` takes them (the reliability tests over the emulators, drills)."""
    bus = _in_process_bus(settings, faults)
    ports = build_cloud(settings, bus=bus, on_finalized=_announcer(bus))
    pipeline = LocalPipeline(_injected(ports, faults), bus)
    _run_in_process(pipeline, faults)
    return pipeline


def _in_process_bus(settings: Settings, faults: Faults | None) -> InProcessBus:
    return InProcessBus(
        project="local",
        max_attempts=settings.max_delivery_attempts,
        copies=faults.copies if faults is not None else 1,
        seed=faults.seed if faults is not None else None,
    )


def _announcer(bus: InProcessBus) -> Callable[[ObjectInfo], None]:
    """The lake's object-finalized event on the in-process bus (Eventarc's part)."""

    def announce(info: ObjectInfo) -> None:
        attributes = object_event_attributes(info.name, info.metadata)
        bus.deliver(LAKE_EVENTS_TOPIC, build_gcs_event(info), attributes)

    return announce


def _injected(ports: Ports, faults: Faults | None) -> Ports:
    """``ports`` with the lake, the warehouse and the bus the steps publish to wrapped in
    ``faults`` (the ports themselves without)."""
    if faults is None:
        return ports
    return replace(
        ports,
        lake=faults.lake(ports.lake),
        warehouse=faults.warehouse(ports.warehouse),
        bus=faults.bus(ports.bus),
    )


def _run_in_process(pipeline: LocalPipeline, faults: Faults | None) -> None:
    """Deliver every topic on the pipeline's bus to its handler, and collect the results."""
    ports, bus = pipeline.ports, pipeline.bus
    for topic, handle in (
        (Topic.INGEST_REQUESTS, handlers.handle_ingest_request),
        (LAKE_EVENTS_TOPIC, handlers.handle_object_finalized),
        (Topic.MERGE_REQUESTS, handlers.handle_merge_request),
        (Topic.DEAD_LETTER, handlers.handle_dead_letter),
    ):
        handler: Callable[[CloudEventLike], None] = partial(handle, ports=ports)
        bus.subscribe(topic, faults.delivering(handler) if faults is not None else handler)
    bus.listen(Topic.INGEST_RESULTS, pipeline._collect)


def history_in_warehouse(settings: Settings) -> bool:
    """Whether the warehouse keeps the run history in its own database (BigQuery, PostgreSQL);
    the embedded default's is the home's SQLite file, beside DuckDB's."""
    return urlsplit(settings.resolved_warehouse_url).scheme in ("bigquery", *POSTGRES_SCHEMES)


def warehouse_is_cloud(settings: Settings) -> bool:
    """Whether the warehouse is the cloud's: runs are then started by publishing to Pub/Sub, and
    the cloud functions run them. BigQuery always; PostgreSQL serves either, so it is the cloud's
    when a ``pubsub://`` bus URL says so (``deploy.sh --with-ui --warehouse postgres`` sets it),
    else a local pipeline runs over it."""
    scheme = urlsplit(settings.resolved_warehouse_url).scheme
    if scheme in POSTGRES_SCHEMES:
        return urlsplit(settings.bus_url or "").scheme == "pubsub"
    return scheme == "bigquery"


def _recorded_cancels(history: RunHistory) -> Callable[[str], str | None]:
    """Why the history says a run is cancelled (a cancel line), or None."""

    def lookup(run_id: str) -> str | None:
        return cancel_reason(history.run_events(run_id=run_id))

    return lookup


def _embedded_folder(settings: Settings) -> Path:
    """The folder of the embedded warehouse file (the home, unless the URL names another):
    its run history and lock files live beside it, since they describe it (a ledger line is
    about rows in that file)."""
    path = _duckdb_path(settings)
    return path.parent if path is not None else settings.home.resolve()


def _locks_folder(settings: Settings) -> Path:
    return _embedded_folder(settings) / "locks"


def history_path(settings: Settings) -> Path:
    """The embedded default's run history: ``runs.sqlite`` beside the warehouse file
    (``{home}/runs.sqlite``)."""
    return _embedded_folder(settings) / "runs.sqlite"


def open_history(
    settings: Settings, *, process: ProcessInfo | None = None, create: bool = True
) -> SqliteHistory:
    """The home's run history (SQLite). A home from before it kept the history in the
    warehouse file: the first open takes it over (and drops the old tables)."""
    from taxi_pipeline.adapters.sqlite.history import SqliteHistory

    path = history_path(settings)
    warehouse_file = _duckdb_path(settings)
    legacy = not path.exists() and warehouse_file is not None and warehouse_file.exists()
    history = SqliteHistory(path, process=process, create=create or legacy)
    if legacy and history.created:
        _take_over_history(settings, history)
    return history


def _take_over_history(settings: Settings, history: SqliteHistory) -> None:
    from taxi_pipeline.adapters.duckdb.warehouse import DuckDbWarehouse

    url = settings.resolved_warehouse_url
    tables = DuckDbWarehouse.from_url(url, threads=settings.duckdb_threads)
    try:
        events, loads = tables.legacy_history()
        if history.import_history(events, loads) or events or loads:
            tables.drop_legacy_history()
        log.info("took over %d run history lines and %d loads", len(events), len(loads))
    finally:
        tables.close()


def check_embedded_exists(settings: Settings) -> None:
    """For reading: the embedded default's warehouse file or its run history exists (a home
    whose runs never merged has only the history), else :class:`ConfigurationError`."""
    warehouse_file = _duckdb_path(settings)
    if warehouse_file is not None and not (
        warehouse_file.is_file() or history_path(settings).is_file()
    ):
        raise ConfigurationError(f"no warehouse at {warehouse_file}")


def _duckdb_path(settings: Settings) -> Path | None:
    return local_path(settings.resolved_warehouse_url, scheme="duckdb")


def _embedded_warehouse(
    settings: Settings,
    history: SqliteHistory,
    locks: FileLocks,
    cancellation: Cancellation,
    progress: Progress,
    notice: Callable[[str], None],
    *,
    read_only: bool = False,
) -> Warehouse:
    from taxi_pipeline.adapters.duckdb.warehouse import DuckDbWarehouse
    from taxi_pipeline.adapters.embedded import EmbeddedWarehouse

    tables = DuckDbWarehouse.from_url(
        settings.resolved_warehouse_url,
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
        guard=lambda purpose: locks.hold("warehouse", purpose),
        cancellation=cancellation,
        progress=progress,
        on_wait=notice,
        read_only=read_only,
    )
    return EmbeddedWarehouse(tables, history)


def build_history(settings: Settings) -> HistoryStore:
    """Where ``runs`` and ``status`` read: the home's SQLite history for the embedded default
    (never the DuckDB file, which a merge may hold), the warehouse itself otherwise (BigQuery's
    or PostgreSQL's ``pipeline_runs`` / ``pipeline_loads``, in its database). Nothing is created
    for a home without one."""
    if urlsplit(settings.resolved_warehouse_url).scheme == "duckdb":
        return open_history(settings, create=False)
    return build_warehouse(settings)


def liveness_of(history: HistoryStore) -> Liveness:
    """How ``history``'s runs tell a dead process: the home's heartbeats (SQLite), else the
    cloud's bound, the function timeout (BigQuery; PostgreSQL, which keeps no heartbeats: a
    local process's run goes ABANDONED after that long without a line)."""
    from taxi_pipeline.adapters.sqlite.history import SqliteHistory

    if isinstance(history, SqliteHistory):
        return history.liveness()
    return Liveness.cloud()


def build_warehouse(
    settings: Settings, notice: Callable[[str], None] | None = None, *, read_only: bool = False
) -> Warehouse:
    """The warehouse named by ``TAXI_PIPELINE_WAREHOUSE_URL`` (the embedded default's: DuckDB
    for the tables plus the home's SQLite history, waiting for other processes' merges).
    ``read_only``: an existing one, opened for reading without creating anything (DuckDB: no
    file, no folder, no tables; the history is not created either)."""
    url = settings.resolved_warehouse_url
    scheme = urlsplit(url).scheme
    if scheme in POSTGRES_SCHEMES:
        from taxi_pipeline.adapters.postgres.warehouse import PostgresWarehouse

        password = settings.warehouse_password
        return PostgresWarehouse.from_url(
            url,
            password=password.get_secret_value() if password else None,
            read_only=read_only,
        )
    if scheme == "duckdb":
        from taxi_pipeline.adapters.filelock.locks import FileLocks

        say = notice or _log_notice
        if read_only:
            check_embedded_exists(settings)
        cancellation = Cancellation()
        locks = FileLocks(
            _locks_folder(settings), on_wait=say, stop=lambda: cancellation.everything
        )
        return _embedded_warehouse(
            settings,
            open_history(settings, create=not read_only),
            locks,
            cancellation,
            NullProgress(),
            say,
            read_only=read_only,
        )
    if scheme == "bigquery":
        from taxi_pipeline.adapters.bigquery.warehouse import BigQueryWarehouse

        return BigQueryWarehouse.from_url(url, settings, client=_bigquery_emulator_client(settings))
    raise ConfigurationError(
        f"unknown warehouse URL scheme in {redact(url)!r}"
        " (use duckdb://, bigquery:// or postgresql://)"
    )


def _bigquery_emulator_client(settings: Settings) -> Any:
    """A client aimed at ``bigquery_api_endpoint`` (an emulator); ``None``: the default client."""
    endpoint = settings.bigquery_api_endpoint
    if not endpoint:
        return None
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    project = urlsplit(settings.resolved_warehouse_url).netloc
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
        location=settings.bigquery_location,
    )


def build_lake(
    settings: Settings, on_finalized: Callable[[ObjectInfo], None] | None = None
) -> Lake:
    """The lake named by ``TAXI_PIPELINE_LAKE_URL``; ``on_finalized`` hears each committed
    object (none: for reading, or where Eventarc announces them)."""
    from taxi_pipeline.adapters.folder.store import FolderStore

    url = settings.resolved_lake_url
    if url.startswith("file://"):
        return FolderStore(_file_path(url, "TAXI_PIPELINE_LAKE_URL"), on_finalized=on_finalized)
    if url.startswith("gs://"):
        from taxi_pipeline.adapters.gcs.store import GcsStore

        return GcsStore.from_url(url, settings, on_finalized=on_finalized)
    raise ConfigurationError(f"unknown lake URL scheme in {url!r} (use file:// or gs://)")


_cloud_ports: Ports | None = None
_cloud_lock = threading.Lock()


def cloud_ports() -> Ports:
    """The ports of a Cloud Run function: built on the first event, then cached per instance.

    Nothing here runs at import time, so ``import main`` stays fast (cold starts).
    """
    global _cloud_ports
    with _cloud_lock:
        if _cloud_ports is None:
            from taxi_pipeline.logs import configure_logging

            try:
                settings = Settings()
                configure_logging(settings.log_format, settings.log_level)
                _cloud_ports = build_cloud(settings)
            except Exception as exc:
                # Every event fails the same way until the function is redeployed: they are
                # redelivered (kept, not dropped) and this line reaches a person through the
                # failed-run alert, which a bare crash outside the handlers would not.
                configure_logging(LogFormat.JSON)
                logging.getLogger(__name__).error(
                    "the function cannot start: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"alert": handlers.ALERT_LABEL},
                )
                raise
        return _cloud_ports


def build_cloud(
    settings: Settings,
    *,
    bus: Bus | None = None,
    on_finalized: Callable[[ObjectInfo], None] | None = None,
) -> Ports:
    """GCS lake, BigQuery warehouse, Pub/Sub bus (or whatever the URLs name); ``bus`` and
    ``on_finalized``: the in-process chain's (:func:`build_in_process`)."""
    from taxi_pipeline.adapters.gcs.store import GcsLocks, GcsStore

    check_source_base(settings)
    check_tlc_base(settings)
    lake = build_lake(settings, on_finalized)
    warehouse = build_warehouse(settings)
    locks = GcsLocks(lake) if isinstance(lake, GcsStore) else ThreadLocks()
    return Ports(
        settings=settings,
        lake=lake,
        warehouse=warehouse,
        bus=bus if bus is not None else build_bus(settings),
        source=_http_source(settings),
        locks=locks,
        # Each step reads the run's history once at its start: `runs cancel` recorded a cancel
        # line, so the run's next step refuses to go on (nothing interrupts a running one).
        cancellation=Cancellation(recorded=_recorded_cancels(warehouse)),
    )


def build_bus(settings: Settings) -> Bus:
    """The cloud functions' bus named by ``TAXI_PIPELINE_BUS_URL`` (default: Pub/Sub)."""
    url = settings.bus_url
    if url is None:
        project = settings.gcp_project or _project_of(settings.resolved_warehouse_url)
        url = f"pubsub://{project}"
    parts = urlsplit(url)
    if parts.scheme == "pubsub" and parts.netloc and parts.path in ("", "/"):
        from taxi_pipeline.adapters.pubsub.bus import PubSubBus

        return PubSubBus(parts.netloc)
    if parts.scheme == "memory":
        return InProcessBus(project=parts.netloc or "local")
    raise ConfigurationError(f"unknown bus URL {url!r} (use pubsub://project or memory://)")


def build_source(settings: Settings) -> Source:
    """The HTTP source (``status --check-upstream`` asks it with HEAD requests)."""
    return _http_source(settings)


def _http_source(settings: Settings) -> Source:
    # Imported here: httpx pulls in its CLI's dependencies (~0.1 s), which cold starts skip.
    from taxi_pipeline.adapters.http.source import HttpxSource

    return HttpxSource(settings.http_timeout_seconds, allow_insecure=settings.allow_insecure_source)


def reset_cloud_ports() -> None:
    """Forget the cached cloud ports (closing the warehouse): tests that change settings."""
    global _cloud_ports
    with _cloud_lock:
        if _cloud_ports is not None:
            _cloud_ports.close()
        _cloud_ports = None


def _project_of(warehouse_url: str) -> str:
    parts = urlsplit(warehouse_url)
    if parts.scheme != "bigquery" or not parts.netloc:
        raise ConfigurationError(
            "set TAXI_PIPELINE_GCP_PROJECT (or a bigquery://project/dataset warehouse URL)"
        )
    return parts.netloc
