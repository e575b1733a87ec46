"""A throw-away PostgreSQL server for the peer baselines, and the peer venv (pandas et al.).

The server comes from Debian's ``postgresql`` package (installed with apt-get when absent and we
are root), is initialised in a temporary folder, listens on a free 127.0.0.1 port with trust
authentication, and is stopped and removed afterwards. PostgreSQL refuses to run as root, so as
root it runs as the ``postgres`` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import REPO, free_port, new_venv, say, tree_rss

PEER_PACKAGES = ("pandas", "sqlalchemy", "psycopg2-binary", "psutil")


def peer_python() -> Path:
    """``bench/.work/venv``'s interpreter, with the peer's packages (created once, reused)."""
    venv = REPO / "bench" / ".work" / "venv"
    python = venv / "bin" / "python"
    probe = "import pandas, sqlalchemy, psycopg2"
    if python.exists() and subprocess.run([python, "-c", probe], check=False).returncode == 0:
        return python
    say(f"creating the peer venv {venv} ({', '.join(PEER_PACKAGES)})")
    return new_venv(venv, *PEER_PACKAGES)


def peer_versions(python: Path) -> dict[str, str]:
    code = (
        "import json, pandas, sqlalchemy, psycopg2;"
        "print(json.dumps({'pandas': pandas.__version__, 'sqlalchemy': sqlalchemy.__version__,"
        " 'psycopg2': psycopg2.__version__.split()[0]}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    import json

    return dict(json.loads(out.stdout))


def _bin_dir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if candidates:
        return candidates[-1]
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing PostgreSQL from Debian (apt-get install -y postgresql)")
        subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True)
        return _bin_dir()
    raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")


@dataclass
class PgServer:
    bin_dir: Path
    port: int
    data: Path
    version: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def psql_argv(self, *args: str) -> list[str]:
        return [
            str(self.bin_dir / "psql"),
            "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-qAt", *args,
        ]  # fmt: skip

    def sql(self, statement: str) -> str:
        return subprocess.run(
            self.psql_argv("-c", statement), capture_output=True, text=True, check=True
        ).stdout.strip()

    def rss(self) -> int:
        """Resident bytes of the postmaster and its backends."""
        pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        try:
            return tree_rss(psutil.Process(pid))
        except psutil.Error:
            return 0

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])


@contextmanager
def postgres_server(settings: dict[str, str] | None = None) -> Iterator[PgServer]:
    """Start a fresh server in a temporary folder; stop it and remove the folder afterwards.

    ``settings``: server parameters (``-c name=value``) on top of the defaults.
    """
    bin_dir = _bin_dir()
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="taxi-bench-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    port = free_port()
    started = False
    try:
        subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
             "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1" + "".join(
            f" -c {key}={value}" for key, value in (settings or {}).items()
        )
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
             "-l", str(root / "server.log"), "-w", "start"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        started = True
        version = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        yield PgServer(bin_dir, port, data, version)
    finally:
        if started:
            subprocess.run(
                [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                 "stop"],
                check=False, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
