"""The Cloud Run entry points served by functions-framework's test client, and their ports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from taxi_pipeline import bootstrap
from taxi_pipeline.adapters.memory.bus import InProcessBus
from taxi_pipeline.devkit.generator import GeneratedFile
from taxi_pipeline.devkit.source_server import SourceServer
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.runs import RunEvent
from taxi_pipeline.pipeline.ports import Ports

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"
GREEN_2019_01 = (Dataset.GREEN, Month(2019, 1))
TARGETS = ("on_ingest_request", "on_object_finalized", "on_merge_request", "on_dead_letter")


@dataclass
class Source:
    server: SourceServer
    green: GeneratedFile


@dataclass
class Functions:
    """The four entry points over HTTP, and the ports they built from the environment."""

    clients: dict[str, FlaskClient]

    def post(self, target: str, event: CloudEvent, *, mode: str = "binary") -> TestResponse:
        convert = to_binary if mode == "binary" else to_structured
        headers, body = convert(event)
        return self.clients[target].post("/", headers=headers, data=body)

    def post_raw(self, target: str, headers: Mapping[str, str], body: bytes) -> TestResponse:
        return self.clients[target].post("/", headers=dict(headers), data=body)

    @property
    def ports(self) -> Ports:
        return bootstrap.cloud_ports()

    @property
    def bus(self) -> InProcessBus:
        bus = self.ports.bus
        assert isinstance(bus, InProcessBus)
        return bus

    def events(self, step: str | None = None) -> list[RunEvent]:
        found = self.ports.warehouse.run_events()
        return [e for e in found if step is None or e.step == step]

    def count(self, sql: str) -> int:
        (row,) = self.ports.warehouse.query(sql).rows
        value = row[0]
        assert isinstance(value, int)
        return value
