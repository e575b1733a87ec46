"""Loading a lookup table (the taxi zones): download, verify, into the lake, replace the table.

Not a step of the event chain: a lookup has no months and no merge, and ``taxi-pipeline zones``
(locally, or with ``--cloud`` against the cloud's lake and warehouse; ``deploy.sh`` runs it once)
calls :func:`load_lookup` directly. The file comes from the mirror's base
(``{TAXI_PIPELINE_SOURCE_URL}/misc/taxi_zone_lookup.csv``) through the same checked HTTP source
as the months, is verified whole (:func:`domain.lookups.check_lookup_csv`) before it is written
to the lake as ``lookup/{file}``, and the warehouse then replaces its table from that object in
one atomic statement: a failure anywhere changes nothing, a reload never duplicates a row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from taxi_pipeline.domain.lookups import LookupTable, check_lookup_csv
from taxi_pipeline.domain.sources import display_url
from taxi_pipeline.errors import NotPublished, PermanentError, TransientError, VerificationFailed
from taxi_pipeline.pipeline.ports import Lake, Lookups, ObjectInfo, Source, UpstreamVersion
from taxi_pipeline.pipeline.steps.download import check_source_base, source_retrying
from taxi_pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LookupOutcome:
    """What :func:`load_lookup` did."""

    lookup: LookupTable
    url: str
    rows: int
    """The rows the table holds now."""
    object: ObjectInfo | None
    """The lake object the table was replaced from (``None``: nothing was loaded)."""
    replaced: bool
    """``False``: ``if_missing`` found the table loaded and left it alone."""


def lookup_url(settings: Settings, lookup: LookupTable) -> str:
    """``{source_url}/{lookup.source_path}`` from the checked base."""
    return f"{check_source_base(settings)}/{lookup.source_path}"


def load_lookup(
    lookup: LookupTable,
    settings: Settings,
    source: Source,
    lake: Lake,
    warehouse: Lookups,
    *,
    if_missing: bool = False,
) -> LookupOutcome:
    """Download ``lookup``'s file, verify it, write it to the lake and replace the table.

    ``if_missing``: leave a table that exists with rows alone (what ``deploy.sh`` asks: loaded
    once, not on every deploy). Raises :class:`NotPublished` for a file the source does not
    have, :class:`VerificationFailed` for one that is not the lookup's CSV, and
    :class:`TransientError` once the attempts (``http_attempts``) are spent.
    """
    url = lookup_url(settings, lookup)
    if if_missing:
        present = warehouse.lookup_rows(lookup)
        if present:
            log.info("%s holds %d rows; not loading again", lookup.table, present)
            return LookupOutcome(lookup, url, present, None, replaced=False)
    data, version = _fetch(url, lookup, settings, source)
    checked = check_lookup_csv(lookup, data)
    metadata = {"source_url": url, "rows": str(checked.rows), **version.as_metadata()}
    with lake.writer(lookup.object_name, metadata) as writer:
        writer.write(data)
    stored = lake.stat(lookup.object_name)
    if stored is None:
        raise TransientError(
            f"{lookup.object_name} is not visible in the lake right after its upload"
        )
    rows = warehouse.replace_lookup(lookup, stored, lake)
    if rows != checked.rows:
        raise PermanentError(
            f"{lookup.table} holds {rows:,} rows after its replacement, but"
            f" {lookup.object_name} has {checked.rows:,}"
        )
    log.info("replaced %s: %d rows from %s", lookup.table, rows, display_url(url))
    return LookupOutcome(lookup, url, rows, stored, replaced=True)


def _fetch(
    url: str, lookup: LookupTable, settings: Settings, source: Source
) -> tuple[bytes, UpstreamVersion]:
    """The whole (small) file, retried like a month's download within one deadline."""
    deadline = time.monotonic() + settings.download_timeout_seconds
    return source_retrying(settings)(_fetch_once, url, lookup, source, deadline)


def _fetch_once(
    url: str, lookup: LookupTable, source: Source, deadline: float
) -> tuple[bytes, UpstreamVersion]:
    shown = display_url(url)
    with source.get(url, deadline=deadline) as response:
        status = response.status_code
        if status in (404, 410):
            raise NotPublished(f"{shown} is not published (HTTP {status})")
        if status in (408, 425, 429) or status >= 500:
            raise TransientError(f"{shown} answered HTTP {status}")
        if status != 200:
            raise PermanentError(f"{shown} answered HTTP {status}")
        length = response.content_length
        too_large = VerificationFailed(
            f"{shown} is larger than the {lookup.max_bytes:,} bytes a {lookup.table} file may hold"
        )
        if length is not None and length > lookup.max_bytes:
            raise too_large
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > lookup.max_bytes:
                raise too_large
        if length is not None and len(body) != length:
            raise TransientError(f"{shown} ended after {len(body):,} of {length:,} bytes")
        return bytes(body), UpstreamVersion(response.etag, response.last_modified, length)
