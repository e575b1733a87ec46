"""Which loaded months changed upstream since their load (``status --check-upstream``).

The TLC re-uploads months in batches (every file up to 2022-03 carries Last-Modified 2022-06-30,
further batches since). A download keeps the upstream's ETag, Last-Modified and size in the lake
object's metadata; this asks the upstream again with a HEAD request per loaded month (no bytes of
the file) and compares. A changed month reloads only with ``--replace``: merged insert-only, the
new file's rows would sit beside the old file's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.runs import LoadRecord
from taxi_pipeline.domain.sources import display_url
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.pipeline.ports import Lake, Source, UpstreamVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamCheck:
    """One loaded month's object against its upstream."""

    dataset: Dataset
    month: Month
    object_name: str
    url: str | None
    """Where the object was downloaded from (``None``: uploaded by hand, nothing to ask)."""
    changes: tuple[str, ...] = ()
    """``ETag "a" -> "b"``, ...: what differs (empty: unchanged)."""
    problem: str | None = None
    """Why the upstream could not tell (not published any more, unreachable, no validators)."""

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def line(self) -> str:
        where = f"{self.dataset.value} {self.month}"
        if self.changes:
            return (
                f"{where}: changed upstream since its load ({'; '.join(self.changes)});"
                f" reload it with: taxi-pipeline run {self.dataset.value} {self.month} --replace"
            )
        if self.problem:
            return f"{where}: {self.problem}"
        return f"{where}: unchanged"


def latest_loads(loads: Iterable[LoadRecord]) -> list[LoadRecord]:
    """Each dataset-month's latest completed load, by dataset and month."""
    latest: dict[tuple[Dataset, Month], LoadRecord] = {}
    for load in sorted(loads, key=lambda each: each.loaded_at):
        latest[(load.dataset, load.month)] = load
    return [latest[key] for key in sorted(latest, key=lambda k: (k[0].value, k[1]))]


def check_upstream(loads: Iterable[LoadRecord], lake: Lake, source: Source) -> list[UpstreamCheck]:
    """HEAD the upstream of each month's latest load and compare it with what was loaded."""
    checks = []
    for load in latest_loads(loads):
        checks.append(_check(load, lake, source))
    return checks


def _check(load: LoadRecord, lake: Lake, source: Source) -> UpstreamCheck:
    stored = lake.stat(load.object_name)
    base = UpstreamCheck(load.dataset, load.month, load.object_name, None)
    if stored is None:
        return _with(base, problem="its lake object is gone")
    url = stored.metadata.get("source_url")
    if not url:
        return _with(base, problem="uploaded by hand: no upstream to ask")
    base = UpstreamCheck(load.dataset, load.month, load.object_name, url)
    if stored.generation != load.generation:
        return _with(base, problem="its lake object was replaced since the load; run it again")
    loaded = UpstreamVersion.from_metadata(stored.metadata)
    if not loaded.known:
        return _with(base, problem="loaded before upstream versions were kept: cannot tell")
    try:
        answer = source.head(url)
    except PipelineError as exc:
        return _with(base, problem=f"cannot ask {display_url(url)}: {exc}")
    # CloudFront over S3 answers 403 for a missing key; elsewhere a 403 is just a refusal.
    gone = (404, 410, 403) if stored.metadata.get("source") == "tlc" else (404, 410)
    if answer.status_code in gone:
        return _with(base, problem=f"not published upstream any more (HTTP {answer.status_code})")
    if answer.status_code != 200:
        return _with(base, problem=f"{display_url(url)} answered HTTP {answer.status_code}")
    return UpstreamCheck(
        load.dataset,
        load.month,
        load.object_name,
        url,
        changes=tuple(loaded.differences(answer.version)),
    )


def _with(check: UpstreamCheck, *, problem: str) -> UpstreamCheck:
    return UpstreamCheck(check.dataset, check.month, check.object_name, check.url, (), problem)
