"""``functions/requirements.txt`` is pyproject's runtime dependencies minus a local-only set.

The rule: the same names as ``[project].dependencies`` except :data:`LOCAL_ONLY`, each pinned with
``==`` to a version inside pyproject's range and equal to the version installed here (so the
tests run what the cloud runs), and no cloud entry point imports a local-only package.
``constraints.txt`` pins the rest the same way: the local-only packages and the dev extras.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCAL_ONLY = frozenset({"duckdb", "pgpq", "filelock", "typer", "rich"})
"""Embedded warehouse (duckdb), the lock files its processes share (filelock) and CLI (typer,
rich): the cloud runtime never imports them."""


def _pyproject(extra: str | None = None) -> dict[str, Requirement]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)["project"]
    deps = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


def _pinned(path: Path = ROOT / "functions" / "requirements.txt") -> dict[str, Requirement]:
    lines = path.read_text().splitlines()
    requirements = [
        Requirement(line) for line in lines if line.strip() and not line.startswith("#")
    ]
    return {canonicalize_name(r.name): r for r in requirements}


def _assert_exact_in_range_and_installed(
    pinned: dict[str, Requirement], declared: dict[str, Requirement]
) -> None:
    for name, requirement in pinned.items():
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name} is not pinned with =="
        assert declared[name].specifier.contains(spec.version), (
            f"{name}=={spec.version} is outside pyproject's {declared[name].specifier}"
        )
        assert importlib.metadata.version(name) == spec.version, (
            f"{name}: the venv differs from the pin (scripts/setup-dev installs the pins)"
        )


def test_names_are_pyproject_minus_local_only() -> None:
    assert set(_pinned()) == set(_pyproject()) - LOCAL_ONLY
    assert set(_pyproject()) >= LOCAL_ONLY, "a local-only name left pyproject: update LOCAL_ONLY"


def test_every_pin_is_exact_in_range_and_installed() -> None:
    _assert_exact_in_range_and_installed(_pinned(), _pyproject())


def test_the_local_constraints_pin_the_local_only_packages_and_the_dev_extras() -> None:
    declared = {**_pyproject(), **_pyproject("dev")}
    constraints = _pinned(ROOT / "constraints.txt")
    assert set(constraints) == LOCAL_ONLY | set(_pyproject("dev"))
    _assert_exact_in_range_and_installed(constraints, declared)


def test_cloud_entry_points_import_without_local_only_packages() -> None:
    # A fresh interpreter where importing duckdb/typer/rich fails, as in the cloud runtime.
    blocked = sorted(LOCAL_ONLY)
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import main\n"
        "from taxi_pipeline import bootstrap\n"
        "from taxi_pipeline.adapters import google_errors\n"
        # The UI service's entry point (python -m taxi_pipeline.ui) and everything it serves.
        "from taxi_pipeline.ui import __main__, app, backend, server\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "functions",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
