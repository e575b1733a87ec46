"""One cold start, in a fresh process: stdlib only until the clock starts (see bench.cold_start).

``python bench/cold_start_worker.py --bare``: time and RSS of ``import functions_framework``.
``python bench/cold_start_worker.py TARGET MAIN_PY EVENT_JSON``: also ``create_app`` (which
imports ``main.py``) and the first event through ``test_client()``; prints JSON.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import base64  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"rss_start_bytes": _rss()}
    t0 = time.perf_counter()
    import functions_framework

    t1 = time.perf_counter()
    result |= {"import_ff_seconds": t1 - t0, "rss_after_ff_bytes": _rss()}
    if argv[0] == "--bare":
        return result
    target, main_py, event_file = argv
    app = functions_framework.create_app(target, main_py, "cloudevent")  # type: ignore[no-untyped-call]
    client = app.test_client()
    t2 = time.perf_counter()
    result |= {"import_main_seconds": t2 - t1, "rss_after_import_bytes": _rss()}
    with open(event_file) as handle:
        event = json.load(handle)
    response = client.post("/", headers=event["headers"], data=base64.b64decode(event["body"]))
    t3 = time.perf_counter()
    if response.status_code != 200:
        raise SystemExit(f"{target} answered {response.status_code}: {response.data[:500]!r}")
    result |= {
        "first_event_seconds": t3 - t2,
        "rss_after_event_bytes": _rss(),
        "status": response.status_code,
        "total_seconds": t3 - t0,
    }
    return result


if __name__ == "__main__":
    out = main(sys.argv[1:])
    out["since_interpreter_seconds"] = time.perf_counter() - _STARTED
    sys.stdout.write(json.dumps(out) + "\n")
