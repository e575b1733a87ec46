"""Who this process is, and whether another one is still alive: what the processes sharing a
home tell each other through the run history (heartbeats) and the lock files (holders)."""

from __future__ import annotations

import os
import secrets
import socket
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

_COMMAND_LIMIT: Final = 200
_ENTRY_POINTS: Final = ("taxi_pipeline/cli/app.py", "taxi-pipeline")


@dataclass(frozen=True)
class ProcessInfo:
    """One process: its host, pid and a random token (pids are reused), and its command line."""

    host: str
    pid: int
    token: str
    command: str

    @property
    def id(self) -> str:
        """``host:pid:token``, as history lines name the process that wrote them."""
        return f"{self.host}:{self.pid}:{self.token}"

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command})"


def _command() -> str:
    argv = list(sys.argv) or ["?"]
    program = "taxi-pipeline" if argv[0].endswith(_ENTRY_POINTS) else Path(argv[0]).name
    text = " ".join([program, *argv[1:]])
    return text if len(text) <= _COMMAND_LIMIT else text[: _COMMAND_LIMIT - 1] + "…"


@cache
def this_process() -> ProcessInfo:
    """This process (a forked child gets its own: the cache is keyed on nothing, so it is
    cleared after fork)."""
    return ProcessInfo(socket.gethostname(), os.getpid(), secrets.token_hex(3), _command())


os.register_at_fork(after_in_child=this_process.cache_clear)


def parse_process_id(process: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a ``host:pid:token`` id, None if it is not one."""
    host, _, rest = process.partition(":")
    pid = rest.partition(":")[0]
    return (host, int(pid)) if host and pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all there is
    # The state follows the command name in parentheses, which may itself hold spaces.
    state = stat.rpartition(")")[2].split()
    return not state or state[0] not in ("Z", "X")


def is_gone(process: str) -> bool:
    """Whether the process named by a ``host:pid:token`` id is known dead: on this host its
    pid runs no more (elsewhere nothing can tell)."""
    parsed = parse_process_id(process)
    if parsed is None:
        return False
    host, pid = parsed
    return host == this_process().host and not pid_alive(pid)
