"""``taxi-pipeline zones --cloud`` against the cloud's shape, offline: the zone file served over
local HTTP goes through a GCS lake (fake-gcs-server) into the BigQuery emulator's dataset, the
way ``deploy.sh`` runs it once after provisioning."""

# google-cloud-storage ships no py.typed: its names are Any here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from emulators import BigQueryEmulator, FakeGcs
from typer.testing import CliRunner

from taxi_pipeline.cli.app import app
from taxi_pipeline.devkit.source_server import SourceServer, serve_directory
from taxi_pipeline.devkit.zone_lookup import GeneratedZones, write_zone_lookup, zone_rows

pytestmark = pytest.mark.emulator


@dataclass
class Cloud:
    env: dict[str, str]
    bucket: Any
    bigquery: Any
    dataset: str
    server: SourceServer
    zones: GeneratedZones

    def zones_command(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["zones", *args], env=self.env, catch_exceptions=False)
        return result.exit_code, result.output

    def table(self) -> list[tuple[Any, ...]]:
        return [
            tuple(row.values())
            for row in self.bigquery.query_and_wait(
                f"SELECT LocationID, Borough, Zone, service_zone FROM {self.dataset}"
                ".taxi_zone_lookup ORDER BY LocationID"
            )
        ]


@pytest.fixture
def cloud(
    tmp_path: Path, fake_gcs: FakeGcs, bigquery_emulator: BigQueryEmulator
) -> Iterator[Cloud]:
    suffix = uuid.uuid4().hex[:8]
    gcs = fake_gcs.client()
    bucket = gcs.create_bucket(f"lake-zones-{suffix}")
    bigquery = bigquery_emulator.client()
    dataset = f"zones_{suffix}"
    bigquery.create_dataset(dataset)
    zones = write_zone_lookup(tmp_path / "source")
    with serve_directory(tmp_path / "source") as server:
        env = {
            **fake_gcs.env(),
            "TAXI_PIPELINE_HOME": str(tmp_path / "home"),
            "TAXI_PIPELINE_LAKE_URL": f"gs://{bucket.name}",
            "TAXI_PIPELINE_WAREHOUSE_URL": f"bigquery://{bigquery_emulator.project}/{dataset}",
            "TAXI_PIPELINE_BIGQUERY_API_ENDPOINT": bigquery_emulator.url,
            "TAXI_PIPELINE_GCP_PROJECT": bigquery_emulator.project,
            "TAXI_PIPELINE_SOURCE_URL": server.base_url,
            "COLUMNS": "200",
        }
        yield Cloud(env, bucket, bigquery, dataset, server, zones)
    bigquery.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
    bigquery.close()  # type: ignore[no-untyped-call]


def test_zones_cloud_loads_through_the_gcs_lake_and_reloads_without_duplicates(
    cloud: Cloud, tmp_path: Path
) -> None:
    code, out = cloud.zones_command("--cloud")
    assert code == 0, out
    assert "265 zones" in out
    assert cloud.table() == list(cloud.zones.rows)
    blob = cloud.bucket.get_blob("lookup/taxi_zone_lookup.csv")
    assert blob.size == cloud.zones.path.stat().st_size
    assert blob.metadata["rows"] == "265"
    # Nothing under raw/: the register function ignores lookup/ objects.
    assert [b.name for b in cloud.bucket.list_blobs()] == ["lookup/taxi_zone_lookup.csv"]

    # deploy.sh's --if-missing finds it loaded: no request reaches the source.
    cloud.server.reset_log()
    code, out = cloud.zones_command("--cloud", "--if-missing")
    assert code == 0, out
    assert "already in" in out
    assert cloud.server.requests == []

    # A new version replaces the table whole.
    write_zone_lookup(tmp_path / "source", zone_rows(count=263, seed=2))
    code, out = cloud.zones_command("--cloud")
    assert code == 0, out
    assert cloud.table() == list(zone_rows(count=263, seed=2))
    names = {row[2] for row in cloud.table()}
    assert any(", " in str(name) for name in names)


def test_zones_without_cloud_urls_or_with_a_broken_file_changes_nothing(cloud: Cloud) -> None:
    code, out = cloud.zones_command("--cloud")
    assert code == 0, out
    # An error page instead of the CSV: refused before the lake or the table is touched.
    cloud.zones.path.write_text("<html><body>rate limited</body></html>\n")
    generation = cloud.bucket.get_blob("lookup/taxi_zone_lookup.csv").generation
    code, out = cloud.zones_command("--cloud")
    assert code == 1, out
    assert "error: taxi_zone_lookup: taxi_zone_lookup.csv: header" in " ".join(out.split())
    assert cloud.bucket.get_blob("lookup/taxi_zone_lookup.csv").generation == generation
    assert len(cloud.table()) == 265

    # The cloud's lake without --cloud is refused: nothing is written into the cloud by accident.
    code, out = cloud.zones_command()
    assert code == 2, out
    assert "add --cloud" in out
