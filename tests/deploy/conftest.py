"""Fixtures of the deploy.sh tests (helpers in tests/support/deploy_bed.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.deploy_bed import DeployBed, make_bed


@pytest.fixture
def bed(tmp_path: Path) -> DeployBed:
    """A scratch copy of the repo with the recording gcloud on PATH."""
    return make_bed(tmp_path)
