"""The ports: what the steps need from the outside world, as small protocols.

Each port has a local adapter (folder, DuckDB + SQLite, in-process) and a GCP adapter (GCS,
BigQuery, Pub/Sub), and the warehouse a PostgreSQL one; ``tests/contract`` runs one suite per
port over every adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.lookups import LookupTable
from taxi_pipeline.domain.messages import Topic
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.domain.uris import local_path
from taxi_pipeline.pipeline.cancellation import Cancellation
from taxi_pipeline.settings import Settings


@dataclass(frozen=True)
class ObjectInfo:
    """A lake object as the store reports it (GCS semantics: generation changes on overwrite)."""

    bucket: str
    name: str
    generation: str
    size: int
    uri: str
    md5_base64: str | None = None
    crc32c_base64: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def local_file(self) -> Path | None:
        """The object as a file on this machine (the folder lake's ``file://`` URI), for a
        reader that opens files itself (DuckDB); ``None`` where it is remote (a ``gs://``
        object: stream it with :meth:`LakeReader.open_read`)."""
        return local_path(self.uri)


class ObjectWriter(Protocol):
    """Receives the bytes of an object being written; nothing is visible until commit."""

    def write(self, chunk: bytes) -> None: ...


class LakeReader(Protocol):
    """Reading a lake object whole, as a stream: what a warehouse that cannot read the lake
    itself (one fed through its client) stages from."""

    def open_read(self, name: str) -> AbstractContextManager[BinaryIO]:
        """The whole object as a stream, read in chunks (never all in memory); a missing
        object raises :class:`PermanentError`."""


class Lake(LakeReader, Protocol):
    """The raw-file store: a folder locally, a GCS bucket in the cloud."""

    def stat(self, name: str) -> ObjectInfo | None:
        """The object's current info, or ``None`` when there is none."""

    def writer(
        self, name: str, metadata: Mapping[str, str]
    ) -> AbstractContextManager[ObjectWriter]:
        """Write ``name``: committed (and announced) on clean exit, discarded on an exception."""

    def read_head(self, name: str, size: int) -> bytes:
        """The first ``size`` bytes of the object (fewer if it is shorter)."""

    def delete(self, name: str) -> None:
        """Remove the object; no error when it is already gone."""

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose name starts with ``prefix``."""


@dataclass(frozen=True)
class JobContext:
    """What every warehouse job is labelled with."""

    run_id: str
    dataset: Dataset
    month: Month
    step: str
    generation: str = ""
    """The lake object generation the job reads: with the run and step, what names the job
    (BigQuery job ids), so a redelivery attaches to the job instead of running it twice."""


@dataclass(frozen=True)
class StagingSummary:
    """What a staging table holds, measured before anything touches the final table."""

    rows: int
    rows_bad: int
    rows_out_of_month: int
    rows_without_pickup: int
    pickup_dates: tuple[date, ...]
    """The dates the target is read on: each row's pickup date, its dropoff date without one."""
    bad_samples: tuple[str, ...] = ()
    rows_without_dropoff: int = 0


@dataclass(frozen=True)
class DateRange:
    """Half-open ``[start, end)`` range of pickup dates."""

    start: date
    end: date


@dataclass(frozen=True)
class Replacement:
    """The month's rows a replacing merge deletes before it inserts the staged ones."""

    filenames: tuple[str, ...]
    """``filename`` values of the month's files, every source's."""
    pickup_ranges: tuple[DateRange, ...] | None
    """The dates those rows sit on (each row's pickup, or its dropoff without one), besides
    NULL pickups; ``None``: unknown, so every date is read."""


@dataclass(frozen=True)
class MergePlan:
    """One merge of a month's staged rows into its final table (:meth:`Staging.merge_staged`)."""

    context: JobContext
    """The run, dataset and month, and the object generation the rows come from."""
    pickup_ranges: Sequence[DateRange]
    """Only target rows inside these ranges are read (and NULL pickups when
    ``include_null_pickup``)."""
    include_null_pickup: bool
    replacing: Replacement | None = None
    """A replacing merge: these rows of the month are deleted first, atomically with the insert."""
    load: LoadRecord | None = None
    """The load to record with the rows (its ``rows_inserted`` replaced by the count)."""

    @property
    def dataset(self) -> Dataset:
        return self.context.dataset

    @property
    def month(self) -> Month:
        return self.context.month

    def recorded_load(self, inserted: int) -> LoadRecord | None:
        """The load to record once ``inserted`` rows are in (``None``: nothing to record)."""
        return None if self.load is None else replace(self.load, rows_inserted=inserted)


@dataclass(frozen=True)
class MergeOutcome:
    """What a merge did to the final table."""

    inserted: int
    deleted: int | None = None
    """Rows a replacing merge deleted (``None``: it did not replace)."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[object, ...]]


class Staging(Protocol):
    """Staging a lake object and merging it into the final table (the merge step's port)."""

    @property
    def stages_in_final_table(self) -> bool:
        """Whether :meth:`stage` may write the month's rows into the final table itself, in a
        transaction that :meth:`merge_staged` / :meth:`replace_staged` commit and
        :meth:`drop_month_objects` rolls back (one pass from the lake object to the final
        table). The rows are checked against the table as it was when staging began, so the
        merge step holds the dataset's insert lock from staging to the merge, and drops the
        month's objects on any failure (a redelivery stages again)."""

    def ensure_final_table(self, dataset: Dataset) -> None:
        """Create the final table when missing (partitioned / pruned by pickup date)."""

    def create_external_table(
        self, dataset: Dataset, month: Month, source: ObjectInfo, lake: LakeReader
    ) -> str:
        """(Re)create the month's table over the lake object; returns its name. ``lake`` reads
        the object for a warehouse that cannot read the lake by ``source.uri`` itself."""

    def stage(self, source: ObjectInfo, lake: LakeReader, context: JobContext) -> StagingSummary:
        """(Re)build the month's staging table (the context's dataset and month) with
        ``unique_row_id`` and ``filename``."""

    def merge_staged(self, plan: MergePlan) -> MergeOutcome:
        """Insert the staged rows whose id is not in the final table; a replacing plan first
        deletes the month's rows it names, atomically with the insert.

        Only target rows inside the plan's pickup ranges (and NULL pickups when asked) are read.
        With a ``load``, the load is recorded too (its ``rows_inserted`` the count), in the
        same transaction where the warehouse has one (PostgreSQL), right after the insert
        committed where the ledger is elsewhere or there is no transaction (the embedded
        default's SQLite ledger, BigQuery: a crash in between re-stages and inserts 0).
        """

    def drop_month_objects(self, dataset: Dataset, month: Month) -> None:
        """Drop the month's staging and external tables; no error when already gone."""


class Lookups(Protocol):
    """The lookup tables (the taxi zones): replaced whole, never merged."""

    def replace_lookup(self, lookup: LookupTable, source: ObjectInfo, lake: LakeReader) -> int:
        """Replace the table with the rows of the lake object (a verified CSV with the lookup's
        header) in one atomic step: readers see the old rows or the new ones, a failure changes
        nothing. Returns the rows the table holds now."""

    def lookup_rows(self, lookup: LookupTable) -> int | None:
        """The rows the table holds; ``None`` when there is no such table."""


class UserQueries(Protocol):
    """``taxi-pipeline sql``."""

    def query(self, sql: str) -> QueryResult:
        """Run the user's query. The embedded warehouse refuses anything but SELECT / EXPLAIN
        (its file is all the user's state); BigQuery runs what the caller's IAM allows."""


class RunHistory(Protocol):
    """The append-only run history (``pipeline_runs``)."""

    def append_run_events(self, events: Sequence[RunEvent]) -> None:
        """Append to ``pipeline_runs``; never updates."""

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        """Run history lines, oldest first."""


class LoadLedger(Protocol):
    """Completed loads (``pipeline_loads``): what makes a re-run of a loaded object a no-op."""

    def record_load(self, record: LoadRecord) -> None:
        """Remember that an object generation was merged completely."""

    def find_load(self, object_name: str, generation: str) -> LoadRecord | None:
        """The load of that exact object generation, if one completed."""

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        """Every completed load, oldest first."""


class Closeable(Protocol):
    def close(self) -> None:
        """Release what the adapter holds (connections, clients); idempotent."""


class Warehouse(Staging, Lookups, UserQueries, RunHistory, LoadLedger, Closeable, Protocol):
    """DuckDB locally, BigQuery in the cloud, PostgreSQL in either: every warehouse port in one
    adapter. Code that needs one part takes that part's protocol."""


class Bus(Protocol):
    """Pub/Sub in the cloud, an in-process queue locally."""

    def publish(self, topic: Topic, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish and wait for the confirmation; returns the message id."""


@dataclass(frozen=True)
class UpstreamVersion:
    """What an upstream says about a file's version: its validators and size. The TLC
    re-uploads months in batches; a change of any of these means another file."""

    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None

    METADATA_KEYS = ("upstream_etag", "upstream_last_modified", "upstream_size")
    """Where the lake object's metadata keeps them."""

    @property
    def known(self) -> bool:
        return any(v is not None for v in (self.etag, self.last_modified, self.size))

    def as_metadata(self) -> dict[str, str]:
        values = (self.etag, self.last_modified, None if self.size is None else str(self.size))
        return {k: v for k, v in zip(self.METADATA_KEYS, values, strict=True) if v is not None}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> UpstreamVersion:
        etag, modified, size = (metadata.get(k) for k in cls.METADATA_KEYS)
        return cls(etag, modified, int(size) if size and size.isdigit() else None)

    def differences(self, other: UpstreamVersion) -> list[str]:
        """``ETag "a" -> "b"``, ... for each validator both know and that differs."""
        out = []
        for label, mine, theirs in (
            ("ETag", self.etag, other.etag),
            ("Last-Modified", self.last_modified, other.last_modified),
            ("size", self.size, other.size),
        ):
            if mine is not None and theirs is not None and mine != theirs:
                out.append(f"{label} {mine} -> {theirs}")
        return out


class SourceResponse(Protocol):
    status_code: int
    content_length: int | None
    etag: str | None
    last_modified: str | None

    def iter_bytes(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class HeadAnswer:
    """The answer to a HEAD request: status and the file's version."""

    status_code: int
    version: UpstreamVersion


class Source(Closeable, Protocol):
    """The HTTP source of the published files."""

    def get(
        self, url: str, deadline: float | None = None
    ) -> AbstractContextManager[SourceResponse]:
        """Start a streaming GET; raises :class:`TransientError` on connection failures and
        past ``deadline`` (a ``time.monotonic()`` instant, for the whole GET and its body),
        :class:`PermanentError` on a redirect that may not be followed."""

    def head(self, url: str) -> HeadAnswer:
        """A HEAD request (redirects followed and checked like :meth:`get`'s): the file's
        validators without its bytes."""


class Locks(Protocol):
    """Mutual exclusion between runs (one merge per dataset-month at a time)."""

    def hold(self, key: str) -> AbstractContextManager[None]:
        """Wait until ``key`` is free, hold it for the block."""


class ProgressTask(Protocol):
    def advance(self, amount: int) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    """Where long work reports progress (a progress bar in the CLI, nothing in the cloud).

    ``description`` starts with the phase (``download``, ``verify``, ``stage``, ``merge``);
    ``unit`` is what ``total`` counts: ``bytes``, ``rows`` or ``%``."""

    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask: ...


class _NullTask:
    def advance(self, amount: int) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """No progress display (the cloud, tests)."""

    def task(self, description: str, total: int | None, unit: str = "bytes") -> ProgressTask:
        return _NullTask()


@dataclass
class Ports:
    """Everything a step may use, built once by :mod:`taxi_pipeline.bootstrap`."""

    settings: Settings
    lake: Lake
    warehouse: Warehouse
    bus: Bus
    source: Source
    locks: Locks
    progress: Progress = field(default_factory=NullProgress)
    cancellation: Cancellation = field(default_factory=Cancellation)

    def close(self) -> None:
        """Close the ports that hold resources (the warehouse's connection, the HTTP client)."""
        self.warehouse.close()
        self.source.close()
