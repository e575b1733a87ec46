"""The README says what the code does: settings table and commands."""

from __future__ import annotations

from pathlib import Path

from taxi_pipeline.settings import settings_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_settings_table_matches_the_settings_class() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table -->") + len("<!-- settings-table -->\n")
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end] == settings_markdown(), (
        "README settings table is stale: regenerate it with `python -m taxi_pipeline.settings`"
    )
