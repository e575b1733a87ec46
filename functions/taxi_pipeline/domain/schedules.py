"""The pipeline's schedules, as data: ``schedules.toml`` (a link to ``infra/schedules.toml``).

One file feeds both the Cloud Scheduler jobs that ``deploy.sh`` provisions and the local
scheduler, so the two can never disagree. Each ``[[schedule]]`` table becomes a frozen
:class:`Schedule`; a malformed entry fails loading with the entry's name and the reason.

A schedule names its ``source`` and its ``lag_months``; both go into the ingest request's body
(``{"dataset": "green", "source": "tlc", "lag_months": 2}``), so the download function reads the
fire's month as the local scheduler does: the fire date's month (in the schedule's time zone)
minus the lag. The TLC publishes a month about two months after it ends, hence lag 2: the fire of
2026-12-01 asks for 2026-10, and a month not out yet ends SKIPPED.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from taxi_pipeline.domain.datasets import Dataset, Upstream
from taxi_pipeline.domain.messages import IngestRequest, Topic, parse_model
from taxi_pipeline.errors import ConfigurationError, InvalidMessage

DEFAULT_PATH: Final = Path(__file__).parent.parent / "schedules.toml"
"""The packaged copy (a symlink in the source tree, a plain file in the deployed source)."""

_JOB_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
"""Cloud Scheduler's job id rule."""

_KEYS: Final = frozenset(
    {"name", "dataset", "cron", "time_zone", "topic", "body", "attributes", "source", "lag_months"}
)


@dataclass(frozen=True)
class Schedule:
    """A recurring ingest request: publish ``body`` + ``attributes`` to ``topic`` on ``cron``."""

    name: str
    """Job id (Cloud Scheduler job name within the region)."""
    dataset: Dataset
    cron: str
    """Five-field unix cron, evaluated in ``time_zone``."""
    time_zone: str
    """IANA time zone name, e.g. ``Etc/UTC``."""
    body: str
    """The message body published verbatim: an :class:`IngestRequest` as JSON."""
    attributes: Mapping[str, str] = field(default_factory=dict)
    topic: Topic = Topic.INGEST_REQUESTS
    source: Upstream | None = None
    """Where its runs download from (``None``: ``TAXI_PIPELINE_SOURCE``)."""
    lag_months: int | None = None
    """A fire loads its date's month minus this many months (``None``: the setting
    ``TAXI_PIPELINE_SCHEDULE_LAG_MONTHS``)."""

    @property
    def data(self) -> bytes:
        """The body as the bytes Pub/Sub carries."""
        return self.body.encode()


def load_schedules(path: Path | str | None = None) -> tuple[Schedule, ...]:
    """Read and validate every ``[[schedule]]`` of ``path`` (default: the packaged file)."""
    source = Path(path) if path is not None else DEFAULT_PATH
    try:
        with source.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read schedules from {source}: {exc}") from exc
    entries = document.get("schedule", [])
    if not isinstance(entries, list):
        raise ConfigurationError(f"{source}: 'schedule' must be an array of tables ([[schedule]])")
    schedules = tuple(_parse(entry, index, source) for index, entry in enumerate(entries))
    names = [schedule.name for schedule in schedules]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(f"{source}: duplicate schedule names {duplicates}")
    return schedules


def _parse(entry: object, index: int, source: Path) -> Schedule:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{source}: schedule #{index + 1} is not a table")
    where = f"{source}: schedule {entry.get('name', f'#{index + 1}')!r}"
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown keys {unknown}")
    try:
        name = _text(entry, "name")
        dataset = Dataset(_text(entry, "dataset"))
        cron = _text(entry, "cron")
        time_zone = _text(entry, "time_zone", "Etc/UTC")
        topic = Topic(_text(entry, "topic", Topic.INGEST_REQUESTS.value))
        upstream = Upstream(_text(entry, "source")) if "source" in entry else None
        lag = _lag(entry)
        body = _body(entry, dataset, upstream, lag)
        attributes = _attributes(entry.get("attributes", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc
    if not _JOB_NAME_RE.match(name):
        raise ConfigurationError(f"{where}: name must match {_JOB_NAME_RE.pattern}")
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise ConfigurationError(f"{where}: {cron!r} is not a five-field cron expression")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"{where}: unknown time zone {time_zone!r}") from exc
    try:
        request = parse_model(IngestRequest, body, "body")
    except InvalidMessage as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc
    if request.dataset is not dataset:
        raise ConfigurationError(
            f"{where}: body is for {request.dataset.value}, not {dataset.value}"
        )
    return Schedule(
        name,
        dataset,
        cron,
        time_zone,
        body,
        attributes,
        topic,
        request.source,
        request.lag_months,
    )


def _lag(entry: Mapping[str, object]) -> int | None:
    value = entry.get("lag_months")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 24:
        raise ValueError(f"'lag_months' must be a whole number of months 0..24, got {value!r}")
    return value


def _body(
    entry: Mapping[str, object], dataset: Dataset, source: Upstream | None, lag: int | None
) -> str:
    """The entry's ``body``, or one made of its dataset, source and lag. Given both, the body
    and the keys must agree (one job, one meaning); the body's dataset is checked by the
    caller."""
    wanted: dict[str, object] = {}
    if source is not None:
        wanted["source"] = source.value
    if lag is not None:
        wanted["lag_months"] = lag
    if "body" not in entry:
        return json.dumps({"dataset": dataset.value, **wanted})
    body = _text(entry, "body")
    try:
        given = json.loads(body)
    except ValueError:
        return body  # refused with its reason when parsed as a request
    if isinstance(given, dict):
        for key, value in wanted.items():
            if key in given and given[key] != value:
                raise ValueError(f"body says {key} {given[key]!r}, the entry {value!r}")
        if set(wanted) - set(given):
            return json.dumps({**given, **wanted})
    return body


def _text(entry: Mapping[str, object], key: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if value is None:
        raise KeyError(f"missing {key!r}")
    if not isinstance(value, str) or not value:
        raise TypeError(f"{key!r} must be a non-empty string")
    return value


def _attributes(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError("'attributes' must be a table of strings")
    return dict(value)
