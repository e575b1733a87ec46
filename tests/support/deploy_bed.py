"""``deploy.sh`` run from a scratch copy of the repo with a recording ``gcloud`` on PATH.

The ``bed`` fixture of tests/deploy builds a :class:`DeployBed`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parents[1] / "deploy"
PROJECT, REGION = "demo-proj", "europe-west1"

READ_VERBS = frozenset(
    {"describe", "list", "get-iam-policy", "print-access-token", "service-agent"}
)


@dataclass(frozen=True)
class Call:
    argv: tuple[str, ...]

    @property
    def is_read(self) -> bool:
        words = [a for a in self.argv[1:] if not a.startswith("-")]
        return self.argv[0] == "gcloud" and bool(READ_VERBS & set(words[:5]))

    def normalized(self) -> str:
        """One line, with the run-specific source folder, token file and spec label replaced."""
        line = shlex.join(self.argv)
        line = re.sub(r"--source=\S+", "--source=SRC", line)
        line = re.sub(r"--data-file=\S+", "--data-file=TOKEN_FILE", line)
        return re.sub(r"deploy_spec=[0-9a-f]{12}", "deploy_spec=LABEL", line)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str
    calls: tuple[Call, ...]

    @property
    def actions(self) -> list[str]:
        """Every call that changes something (gcloud writes and provisioning), in order."""
        return [c.normalized() for c in self.calls if not c.is_read]

    @property
    def gcloud_calls(self) -> list[Call]:
        return [c for c in self.calls if c.argv[0] == "gcloud"]


@dataclass
class DeployBed:
    """A copy of deploy.sh, infra/ and functions/ plus the fake gcloud's state."""

    root: Path
    env: dict[str, str]
    log: Path
    state: Path

    def run(self, *args: str, path: str | None = None) -> Result:
        self.log.write_text("")
        env = dict(self.env)
        if path is not None:
            env["PATH"] = path
        proc = subprocess.run(
            ["/bin/bash", str(self.root / "deploy.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = self.log.read_text().splitlines()
        calls = tuple(Call(tuple(json.loads(line))) for line in lines)
        return Result(proc.returncode, proc.stdout, proc.stderr, calls)

    def deploy(self, *extra: str) -> Result:
        return self.run("--project", PROJECT, "--region", REGION, *extra)

    def read_state(self) -> dict[str, object]:
        state: dict[str, object] = json.loads(self.state.read_text())
        return state


def _wrapper(path: Path, role: str) -> None:
    fake = HERE / "fake_gcloud.py"
    # -I -S: the stand-in needs only the standard library, and starts twice as fast.
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{fake}" {role} "$@"\n')
    path.chmod(0o755)


def make_bed(tmp_path: Path) -> DeployBed:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(ROOT / "deploy.sh", root / "deploy.sh")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".mypy_cache")
    shutil.copytree(ROOT / "infra", root / "infra", ignore=ignore)
    shutil.copytree(ROOT / "functions", root / "functions", symlinks=True, ignore=ignore)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _wrapper(bin_dir / "gcloud", "gcloud")
    _wrapper(bin_dir / "python", "python")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TAXI_PIPELINE_PYTHON": str(bin_dir / "python"),
        "FAKE_GCLOUD_REAL_PYTHON": sys.executable,
        "FAKE_GCLOUD_LOG": str(tmp_path / "calls.jsonl"),
        "FAKE_GCLOUD_STATE": str(tmp_path / "state.json"),
        "FAKE_GCLOUD_ACCOUNT": "ada@example.com",
        "FAKE_GCLOUD_BILLING": "True",
        # The real interpreter finds the editable install; infra/ comes from the copy (cwd).
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for key in ("LANG", "LC_ALL"):
        if key in os.environ:
            env[key] = os.environ[key]
    return DeployBed(root, env, Path(env["FAKE_GCLOUD_LOG"]), Path(env["FAKE_GCLOUD_STATE"]))
