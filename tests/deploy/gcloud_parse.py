"""Run many gcloud commands in one gcloud process (its own CLI object), report each exit code.

Run by gcloud's own interpreter: ``PYTHON -I -S gcloud_parse.py SDK_ROOT COMMANDS.json``; prints
a JSON list of ``[exit code, stderr tail]``. Exit code 2 is gcloud's "could not parse" (unknown
flag, missing required flag, bad value). One process instead of one per command: building the CLI
costs about a second, executing a command after that a few milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
import tempfile
from typing import Any, Final

_LOOPBACK: Final = "127.0.0.1"


def _resolve_regional_hosts_to_loopback() -> None:
    """Cloud Run's regional calls go to ``REGION-<override host>`` (``europe-west1-127.0.0.1``):
    resolve such names to the loopback, so the call reaches the local server at once instead of
    waiting ~30 s for a name lookup that cannot succeed offline."""
    resolve = socket.getaddrinfo

    def getaddrinfo(host: bytes | str | None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(f"-{_LOOPBACK}"):
            host = _LOOPBACK
        return resolve(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


def main() -> None:
    sdk_root, commands_file = sys.argv[1], sys.argv[2]
    _resolve_regional_hosts_to_loopback()
    sys.path[:0] = [f"{sdk_root}/lib", f"{sdk_root}/lib/third_party"]
    from googlecloudsdk import gcloud_main  # type: ignore[import-not-found]

    cli = gcloud_main.CreateCLI([])
    with open(commands_file) as handle:
        commands: list[list[str]] = json.load(handle)
    results: list[tuple[object, str]] = []
    for argv in commands:
        # gcloud's log handler holds the original stderr: capture at the file-descriptor level.
        with tempfile.TemporaryFile("w+") as err:
            saved = os.dup(2)
            os.dup2(err.fileno(), 2)
            code: object = 0
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    cli.Execute(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException as exc:  # an API error after parsing is a pass
                code = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            err.seek(0)
            results.append((code, err.read()[-800:]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
