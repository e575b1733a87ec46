"""The README says what the code does: settings table and commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taxi_pipeline.adapters.pubsub.bus import PubSubBus
from taxi_pipeline.bootstrap import build_bus
from taxi_pipeline.cli.common import ExitStatus
from taxi_pipeline.errors import ConfigurationError
from taxi_pipeline.settings import Settings, settings_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_settings_table_matches_the_settings_class() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table -->") + len("<!-- settings-table -->\n")
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end] == settings_markdown(), (
        "README settings table is stale: regenerate it with `python -m taxi_pipeline.settings`"
    )


def _defaults() -> dict[str, tuple[str, str]]:
    """``TAXI_PIPELINE_X`` -> (default column, meaning column) of the settings table."""
    rows = [line.split(" | ") for line in settings_markdown().splitlines()[2:]]
    return {name.strip("|` "): (default, meaning) for name, default, meaning in rows}


def test_a_none_default_is_unset_unless_something_derives_it() -> None:
    table = _defaults()
    shown = {
        name: table[f"TAXI_PIPELINE_{name.upper()}"][0]
        for name, field in Settings.model_fields.items()
        if field.default is None
    }
    assert shown == {
        "lake_url": "`file://{home}/lake`",
        "warehouse_url": "`duckdb://{home}/warehouse.duckdb`",
        "warehouse_password": "unset",
        "bigquery_location": "unset",
        "bigquery_api_endpoint": "unset",
        "gcp_project": "the warehouse URL's project (Pub/Sub)",
        "access_token": "unset",
        "bus_url": "`pubsub://{gcp_project}`",
        "duckdb_threads": "unset",
        "ui_token": "unset",
    }
    assert all("(derived)" not in default for default, _ in table.values())
    for name in shown:
        meaning = table[f"TAXI_PIPELINE_{name.upper()}"][1]
        assert "unset" in meaning.lower(), f"{name}: the docs say what an unset value does"


def test_the_derived_defaults_are_what_the_code_derives(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.resolved_lake_url == f"file://{tmp_path.resolve()}/lake"
    assert settings.resolved_warehouse_url == f"duckdb://{tmp_path.resolve()}/warehouse.duckdb"

    bus = build_bus(Settings(warehouse_url="bigquery://taxi-project/taxi"))
    assert isinstance(bus, PubSubBus)
    assert bus.project == "taxi-project", "gcp_project unset: the warehouse URL's project"
    bus = build_bus(Settings(warehouse_url="bigquery://taxi-project/taxi", gcp_project="other-one"))
    assert isinstance(bus, PubSubBus)
    assert bus.project == "other-one", "bus_url unset: pubsub://{gcp_project}"
    with pytest.raises(ConfigurationError, match="TAXI_PIPELINE_GCP_PROJECT"):
        build_bus(Settings(home=tmp_path))


def test_readme_documents_every_exit_status() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- exit-statuses -->")
    table = readme[start : readme.index("<!-- /exit-statuses -->")]
    documented = {int(cell) for cell in re.findall(r"^\| `(\d+)` \|", table, re.MULTILINE)}
    assert documented == {int(status) for status in ExitStatus}
