"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, in a temp folder.

:func:`start_postgres` runs ``initdb`` in a fresh temporary folder and starts the server on a
free loopback port (and a unix socket in the same folder), password authentication over TCP
(``scram-sha-256``, so a wrong password is refused as in production) and trust over the socket.
PostgreSQL refuses to run as root: as root the folder is handed to the ``postgres`` user and the
server commands run as that user (``runuser``). Durability is switched off (``fsync``,
``synchronous_commit``, ``full_page_writes``): these servers live for one test session.

``scripts/setup-dev`` installs the package; a missing install fails the tests that need it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from emulators import EmulatorNotInstalledError

MINIMUM_MAJOR = 15
"""MERGE appeared in PostgreSQL 15."""

SUPERUSER = "postgres"


class PostgresNotInstalledError(EmulatorNotInstalledError):
    """No PostgreSQL 15+ installed: a failure of the tests that need it, never a skip."""


def find_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin`` (Debian's layout) with N >= 15."""
    candidates = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if p.parent.name.isdigit() and int(p.parent.name) >= MINIMUM_MAJOR
    ]
    if not candidates:
        raise PostgresNotInstalledError(
            f"no PostgreSQL {MINIMUM_MAJOR}+ under /usr/lib/postgresql"
            " (apt-get install -y postgresql; scripts/setup-dev does)"
        )
    return max(candidates, key=lambda p: int(p.parent.name))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresServer:
    """A running server: TCP on 127.0.0.1:``port``, its unix socket in ``socket_dir``."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    version: str

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", *, password: bool = False) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DATABASE`` (with the password if asked)."""
        secret = f":{quote(self.password, safe='')}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """The same database through the unix socket (``?host=/dir``, as Cloud SQL's)."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql over the socket (trust); returns the unaligned output."""
        done = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port),
             "-U", SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _as_postgres() -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--"] if os.geteuid() == 0 else []


@contextmanager
def start_postgres(
    bin_dir: Path | None = None, *, settings: dict[str, str] | None = None
) -> Iterator[PostgresServer]:
    """Start a fresh server; stop it and remove its folder afterwards."""
    bin_dir = bin_dir or find_bin_dir()
    # Not under pytest's tmp folder: its parents are private to root, and as root the server
    # runs as the postgres user, who must reach its folder.
    root = Path(tempfile.mkdtemp(prefix="taxi-pg-"))
    password = uuid.uuid4().hex
    if os.geteuid() == 0:
        user = pwd.getpwnam(SUPERUSER)
        os.chown(root, user.pw_uid, user.pw_gid)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        os.chown(pwfile, pwd.getpwnam(SUPERUSER).pw_uid, -1)
    data = root / "data"
    port = _free_port()
    options = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(root),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        **(settings or {}),
    }
    started = False
    try:
        subprocess.run(
            [*_as_postgres(), str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER,
             "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        pwfile.unlink()
        flags = f"-p {port} " + " ".join(f"-c {key}={value}" for key, value in options.items())
        subprocess.run(
            [*_as_postgres(), str(bin_dir / "pg_ctl"), "-D", str(data), "-o", flags,
             "-l", str(root / "server.log"), "-w", "-t", "60", "start"],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
        started = True
        version = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        yield PostgresServer(bin_dir, root, port, password, version)
    finally:
        if started:
            subprocess.run(
                [*_as_postgres(), str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                 "-w", "stop"],
                check=False, capture_output=True, timeout=90,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
