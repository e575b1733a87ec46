"""Step 2, register: a finalized ``raw/`` object becomes the month's external table.

Triggered by the lake's object-finalized event, so a file a user uploads by hand into ``raw/``
is loaded exactly like a downloaded one. Objects outside ``raw/`` are ignored. An object the
download step did not write (a hand upload, ``taxi-pipeline load``) was never verified: it is
verified whole by its format's object verifier before anything is staged (a ``.csv.gz``: read once
in full, every gzip member's CRC and size, the header, the row count, the inflated size; a
``.parquet``: ``PAR1`` at both ends, the footer, its schema and row count).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from taxi_pipeline.domain.datasets import parse_object
from taxi_pipeline.domain.messages import GcsObject, RunState, is_run_id
from taxi_pipeline.domain.runs import RunIdentity
from taxi_pipeline.errors import PermanentError
from taxi_pipeline.pipeline.ports import Ports
from taxi_pipeline.pipeline.recorder import StepRecorder
from taxi_pipeline.pipeline.steps.common import request_merge, verify_lake_object
from taxi_pipeline.pipeline.steps.download import REPLACE_KEY

log = logging.getLogger(__name__)

RAW_PREFIX = "raw/"


def registers(obj: GcsObject) -> bool:
    """Whether the step registers ``obj``: objects outside ``raw/`` are ignored."""
    if obj.name.startswith(RAW_PREFIX):
        return True
    log.info("ignoring gs://%s/%s: not under %s", obj.bucket, obj.name, RAW_PREFIX)
    return False


def run(obj: GcsObject, run: RunIdentity, attempt: int, ports: Ports) -> str:
    """Create the external table and ask for the merge; returns the table's name. ``run`` is
    the object's (:func:`runs.run_of_object`)."""
    dataset, month = run.dataset, run.month
    _, _, fmt = parse_object(obj.name)
    ports.cancellation.check(run.run_id, recorded=True)

    recorder = StepRecorder(ports.warehouse, run, "register", attempt)
    recorder.running()
    current = ports.lake.stat(obj.name)
    if current is None:
        raise PermanentError(f"{obj.name} no longer exists in the lake")
    if current.generation != obj.generation:
        log.info(
            "%s was replaced (generation %s -> %s); registering the current one",
            obj.name,
            obj.generation,
            current.generation,
        )
    # Cheap check first (the format's head check), then, for an object nobody verified (a
    # hand upload), the whole object as a download is verified.
    fmt.check_head(ports.lake.read_head(obj.name, fmt.head_bytes), dataset.layout, dataset.value)
    downloaded = _written_by_download(current.metadata)
    if not downloaded:
        verified = verify_lake_object(ports, fmt, dataset, month, current)
        log.info("verified hand-uploaded %s: %d rows", obj.name, verified.rows)

    ports.warehouse.ensure_final_table(dataset)
    table = ports.warehouse.create_external_table(dataset, month, current, ports.lake)
    replace = downloaded and current.metadata.get(REPLACE_KEY) == "true"
    request_merge(ports, run, current, replace=replace)
    recorder.finish(RunState.SUCCESS, bytes_=current.size, details={"external_table": table})
    return table


def _written_by_download(metadata: Mapping[str, str]) -> bool:
    """The download step commits an object only after verifying it, and marks it so."""
    return is_run_id(metadata.get("run_id", "")) and bool(metadata.get("source_url"))
