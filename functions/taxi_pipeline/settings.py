"""All settings, one class, read from ``TAXI_PIPELINE_*`` environment variables.

Loaded once by the composition root (:mod:`taxi_pipeline.bootstrap`) and passed down; nothing
else reads the environment.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Final

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taxi_pipeline.domain.datasets import Upstream

DEFAULT_SOURCE_URL: Final = "https://github.com/DataTalksClub/nyc-tlc-data/releases/download"
DEFAULT_TLC_URL: Final = "https://d37ci6vzurychx.cloudfront.net/trip-data"
# What DuckDB's memory_limit accepts, from KB up (a few bytes only make every query fail).
_MEMORY_SIZE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?\s*(?:[kmgt]i?b)", re.IGNORECASE)


class StagingMode(StrEnum):
    """How BigQuery stages a month (ignored by DuckDB, which reads the lake file directly)."""

    EXTERNAL = "external"
    LOAD = "load"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


class Settings(BaseSettings):
    """Every knob of the pipeline; env prefix ``TAXI_PIPELINE_``."""

    model_config = SettingsConfigDict(env_prefix="TAXI_PIPELINE_", extra="ignore")

    home: Path = Path(".taxi-pipeline")
    """Folder of the embedded default: ``lake/`` and ``warehouse.duckdb`` live here."""

    lake_url: str | None = None
    """Where raw files go: ``file:///abs/path`` or ``gs://bucket``. Unset: ``{home}/lake``
    (made absolute) as a ``file://`` URL."""

    warehouse_url: str | None = None
    """``duckdb:///abs/path.duckdb``, ``bigquery://project/dataset`` or
    ``postgresql://user@host:port/db?schema=NAME`` (a libpq URL; ``?host=/cloudsql/...`` for a
    socket). Unset: ``{home}/warehouse.duckdb`` (made absolute) as a ``duckdb://`` URL."""

    warehouse_password: SecretStr | None = None
    """PostgreSQL password when the warehouse URL has none; unset: libpq's ``PGPASSWORD`` or
    ``~/.pgpass``. Never printed."""

    source: Upstream = Upstream.AUTO
    """Where a run without ``--source`` downloads from: ``mirror`` (the DataTalksClub CSV
    backups, 2019-01..2021-07: yellow, green, fhv), ``tlc`` (the TLC's Parquet files, yellow from
    2011-01, green from 2013-08, fhv from 2015-01, fhvhv from 2019-02), or ``auto``: the mirror
    for its months, the TLC for every other."""

    source_url: str = DEFAULT_SOURCE_URL
    """Base of the mirror's files: ``{source_url}/{dataset}/{dataset}_tripdata_YYYY-MM.csv.gz``,
    and of the taxi zones (``{source_url}/misc/taxi_zone_lookup.csv``)."""

    tlc_url: str = DEFAULT_TLC_URL
    """Base of the TLC's files: ``{tlc_url}/{dataset}_tripdata_YYYY-MM.parquet``."""

    allow_insecure_source: bool = False
    """Allow a plain-http source base on a non-loopback host (loopback is always allowed)."""

    http_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Connect/read timeout of the source download (each read; see the download timeout)."""

    download_timeout_seconds: float = Field(default=480.0, gt=0)
    """Most time one delivery spends downloading a file, all attempts and redirects included;
    past it the download fails as transient (redelivered). Below the functions' 540 s timeout,
    so the failure is recorded rather than the instance killed."""

    download_min_bytes_per_second: int = Field(default=16 * 1024, ge=0)
    """Slowest acceptable download, averaged over the speed window; slower fails as transient.
    0: no minimum."""

    download_speed_window_seconds: float = Field(default=30.0, gt=0)
    """Window of the minimum-speed check, and its grace period after the answer starts."""

    max_inflated_bytes: int = Field(default=8 * 1024**3, ge=1)
    """Largest uncompressed size of one month's file (the default source's largest months
    inflate to about 0.7 GiB); a file that inflates past it fails verification (a decompression
    bomb)."""

    http_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts of a download inside one step on transient HTTP failures, before redelivery.
    The CLI's default is 2: offline, a month fails in seconds."""

    min_rows_per_file: int = Field(default=1, ge=1)
    """A downloaded file with fewer data rows than this fails verification."""

    bad_row_threshold: float = Field(default=0.001, ge=0.0, le=1.0)
    """Largest fraction of rows whose values do not fit the column types a merge accepts."""

    max_event_age_seconds: int = Field(default=24 * 3600, ge=60)
    """Events older than this are dropped (and recorded) instead of retried again."""

    max_delivery_attempts: int = Field(default=5, ge=1, le=100)
    """Deliveries of one event before it goes to the dead-letter path (in-process bus). The
    CLI's default is 2."""

    max_concurrent_runs_per_dataset: int = Field(default=4, ge=1, le=64)
    """Runs of one dataset that may be in flight at once (local backfills and schedules)."""

    schedule_lag_months: int = Field(default=0, ge=0, le=24)
    """A scheduled run loads the scheduled date's month minus this many months."""

    staging_mode: StagingMode = StagingMode.EXTERNAL
    """BigQuery: ``external`` (external table + CTAS, as the reference) or ``load`` (load job)."""

    maximum_bytes_billed: int = Field(default=50 * 1024**3, ge=1)
    """Cap on every BigQuery query job of the pipeline (bytes)."""

    bigquery_location: str | None = None
    """BigQuery location of the dataset (e.g. ``US``); unset, BigQuery chooses."""

    bigquery_api_endpoint: str | None = None
    """BigQuery REST endpoint of an emulator (``http://127.0.0.1:9050``), used with anonymous
    credentials; unset: Google's (BigQuery's client has no ``*_EMULATOR_HOST`` variable)."""

    gcp_project: str | None = None
    """Project of the Pub/Sub topics and of the Cloud Storage client. Unset: Pub/Sub (the cloud
    bus, ``backfill --cloud``) takes the project of a ``bigquery://`` warehouse URL and fails
    without one; Cloud Storage takes its client's default project."""

    access_token: SecretStr | None = None
    """An OAuth 2 access token the Cloud Storage and BigQuery clients use instead of Application
    Default Credentials (``deploy.sh`` passes ``gcloud auth print-access-token`` to
    ``zones --cloud`` and to its provisioning). Unset: Application Default Credentials."""

    bus_url: str | None = None
    """Cloud functions' bus: ``pubsub://project`` (unset: ``pubsub://{gcp_project}``), or
    ``memory://`` (in-process, records what is published: tests of the functions, no Pub/Sub)."""

    upload_chunk_mib: int = Field(default=8, ge=1, le=256)
    """Resumable upload chunk (MiB); held in memory, so it bounds the download's RSS."""

    log_format: LogFormat = LogFormat.AUTO
    """``json`` (one line per record, for Cloud Logging), ``text``, or ``auto`` (text on a tty)."""

    log_level: str = "INFO"
    """Level of the log records (the CLI shows only warnings unless this is set)."""

    duckdb_memory_limit: str = "600MB"
    """DuckDB's memory limit; past it DuckDB spills to disk instead of growing. 600MB keeps a
    full yellow month under 1 GiB peak RSS at the same speed (BENCHMARKS.md)."""

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        if not _MEMORY_SIZE.fullmatch(value.strip()):
            raise ValueError(
                f"TAXI_PIPELINE_DUCKDB_MEMORY_LIMIT must be a size like 600MB, 2GB or 1.5GiB,"
                f" got {value[:40]!r}"
            )
        return value.strip()

    duckdb_threads: int | None = Field(default=None, ge=1, le=256)
    """DuckDB worker threads; unset, DuckDB uses every core."""

    ui_token: SecretStr | None = None
    """Token the write actions of ``taxi-pipeline ui`` need (``Authorization: Bearer TOKEN``, or
    the pages' token field); required to listen on any address but loopback. Unset: the UI
    serves loopback only."""

    @property
    def resolved_lake_url(self) -> str:
        return self.lake_url or (self.home.resolve() / "lake").as_uri()

    @property
    def resolved_warehouse_url(self) -> str:
        return self.warehouse_url or f"duckdb://{self.home.resolve() / 'warehouse.duckdb'}"


_DERIVED_DEFAULTS: Final = {
    "lake_url": "`file://{home}/lake`",
    "warehouse_url": "`duckdb://{home}/warehouse.duckdb`",
    "gcp_project": "the warehouse URL's project (Pub/Sub)",
    "bus_url": "`pubsub://{gcp_project}`",
}
"""What an unset field becomes, for the fields something derives (``resolved_*`` above,
``bootstrap.build_bus``, ``backfill --cloud``); every other ``None`` default stays unset, and
its docstring says what unset means."""


def settings_markdown() -> str:
    """The README's settings table, from the field docstrings (a test keeps them equal)."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(Settings)).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(after.value.value).split()).replace("``", "`")
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name in _DERIVED_DEFAULTS:
            default = _DERIVED_DEFAULTS[name]
        elif field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`"
        lines.append(f"| `TAXI_PIPELINE_{name.upper()}` | {default} | {docs.get(name, '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m taxi_pipeline.settings`
    print(settings_markdown(), end="")
