"""Every gcloud command deploy.sh can issue, checked by the real gcloud's own argument parser.

The commands are the ones the recording stand-in saw across a deploy, a redeploy that updates the
alert metric, and a destroy. Each is then run by the real gcloud with every API endpoint pointed
at a local server that answers 403 to everything (see docs on CLOUDSDK_API_ENDPOINT_OVERRIDES in
/work/shared/reference/offline-google-stack.md; a refused port makes gcloud retry for ~30 s, a
fast 403 does not): a command that reaches the server was fully parsed and validated; a parse
error (unknown flag, missing required flag, bad value) exits 2 before any request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.deploy_bed import Call, DeployBed

APIS = (
    "artifactregistry",
    "cloudbilling",
    "cloudbuild",
    "cloudfunctions",
    "cloudresourcemanager",
    "cloudscheduler",
    "eventarc",
    "iam",
    "logging",
    "monitoring",
    "pubsub",
    "run",
    "serviceusage",
    "storage",
)
MARKER = "offline-parser-check"
PARSE_ERRORS = ("unrecognized arguments", "Invalid choice", "is required", "must be specified")


class _Deny(BaseHTTPRequestHandler):
    def _deny(self) -> None:
        body = json.dumps(
            {"error": {"code": 403, "message": MARKER, "status": "PERMISSION_DENIED"}}
        ).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _deny

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def deny_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Deny)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _every_command(bed: DeployBed) -> list[Call]:
    calls: list[Call] = []
    first = bed.deploy()
    assert first.returncode == 0, first.stderr
    calls += first.gcloud_calls
    state = bed.read_state()
    state["metrics"] = {"taxi-pipeline-run-failed": "severity>=ERROR"}  # an outdated filter
    bed.state.write_text(json.dumps(state))
    again = bed.deploy()
    assert again.returncode == 0, again.stderr
    calls += again.gcloud_calls
    # --delete-data issues no gcloud command of its own (it only skips the bucket's bindings).
    gone = bed.deploy("--destroy")
    assert gone.returncode == 0, gone.stderr
    return calls + list(gone.gcloud_calls)


def _shape(call: Call) -> tuple[str, ...]:
    """Calls that differ only in values of the same flags are checked once (keeps this fast),
    except function deploys, whose values (trigger, memory, timeout) differ per function."""
    words = tuple(a for a in call.argv if not a.startswith("-"))
    flags = tuple(sorted(a.split("=", 1)[0] for a in call.argv if a.startswith("-")))
    key = words[:4] if "deploy" in words else words[:3]
    return (*key, *flags)


def test_every_gcloud_command_passes_the_real_parser(
    bed: DeployBed, deny_server: str, tmp_path: Path
) -> None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud (google-cloud-cli) is not installed: cannot check the commands")
    calls = _every_command(bed)
    unique = list({_shape(call): call for call in calls}.values())
    assert any("deploy" in c.argv for c in unique)
    assert any("delete" in c.argv for c in unique)
    source = tmp_path / "source"
    source.mkdir()
    (source / "main.py").write_text("")
    token = tmp_path / "token"
    token.write_text("offline-token")
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    } | {f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api.upper()}": deny_server for api in APIS}

    def check(index_call: tuple[int, Call]) -> tuple[Call, int, str]:
        index, call = index_call
        argv = [a if not a.startswith("--source=") else f"--source={source}" for a in call.argv]
        config = tmp_path / f"config-{index}"
        env = base_env | {"CLOUDSDK_CONFIG": str(config)}
        proc = subprocess.run(
            [gcloud, *argv[1:]], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        return call, proc.returncode, proc.stderr

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(check, enumerate(unique)))
    problems = []
    for call, returncode, stderr in results:
        parsed = returncode != 2 and not any(marker in stderr for marker in PARSE_ERRORS)
        reached_api = returncode == 0 or MARKER in stderr or "403" in stderr
        if not (parsed and reached_api):
            problems.append(f"{call.normalized()}\n  exit {returncode}: {stderr.strip()[-600:]}")
    print(f"checked {len(unique)} distinct gcloud commands of {len(calls)} issued")
    assert problems == [], "\n".join(problems)
