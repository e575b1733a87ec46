"""Every gcloud command deploy.sh can issue, checked by the real gcloud's own argument parser.

The commands are the ones the recording stand-in saw across a deploy with the web UI, a redeploy
that updates the alert metric and mails another address (a policy update), and a destroy. Each
is then executed by the real gcloud CLI (one gcloud process for all, ``gcloud_parse.py``) with
every API endpoint pointed at a local server that answers 403 to everything
(CLOUDSDK_API_ENDPOINT_OVERRIDES_*; a refused port would make gcloud retry for ~30 s, and Cloud
Run's regional host ``europe-west1-127.0.0.1`` is resolved to the loopback by ``gcloud_parse.py``):
a command that reaches the server was fully parsed and validated; a parse error (unknown flag,
missing required flag, bad value) exits 2 before any request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.deploy_bed import HERE, Call, DeployBed

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
    "secretmanager",
    "serviceusage",
    "sqladmin",
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
    first = bed.deploy("--with-ui")
    assert first.returncode == 0, first.stderr
    calls += first.gcloud_calls
    state = bed.read_state()
    state["metrics"] = {"taxi-pipeline-run-failed": "severity>=ERROR"}  # an outdated filter
    bed.state.write_text(json.dumps(state))
    again = bed.deploy("--alert-email", "bob@example.com")
    assert again.returncode == 0, again.stderr
    calls += again.gcloud_calls
    # --delete-data issues no gcloud command of its own (it only skips the bucket's bindings).
    gone = bed.deploy("--destroy")
    assert gone.returncode == 0, gone.stderr
    calls += gone.gcloud_calls
    # The PostgreSQL (Cloud SQL) variant, with the UI: its secret, connection and roles, and their
    # removal.
    bed.env["FAKE_GCLOUD_SECRETS"] = "taxi-pipeline-db-password"
    postgres = ("--warehouse", "postgres", "--cloudsql-instance", "demo-proj:europe-west1:pg")
    for extra in (("--with-ui",), ("--destroy",)):
        result = bed.deploy(*postgres, *extra)
        assert result.returncode == 0, result.stderr
        calls += result.gcloud_calls
    return calls


def _gcloud_sdk() -> tuple[Path, str]:
    """The SDK root of the gcloud on PATH and the interpreter gcloud itself runs on."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud (google-cloud-cli) is not installed: cannot check the commands")
    root = Path(gcloud).resolve().parent.parent  # .../google-cloud-sdk/bin/gcloud
    if not (root / "lib" / "googlecloudsdk" / "gcloud_main.py").is_file():
        pytest.skip(f"gcloud at {gcloud} has no SDK lib/ next to it: cannot check the commands")
    bundled = root / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = os.environ.get("CLOUDSDK_PYTHON") or (
        str(bundled) if bundled.is_file() else shutil.which("python3") or "python3"
    )
    return root, python


def test_every_gcloud_command_passes_the_real_parser(
    bed: DeployBed, deny_server: str, tmp_path: Path
) -> None:
    root, python = _gcloud_sdk()
    calls = _every_command(bed)
    unique = list(dict.fromkeys(calls))
    assert any("deploy" in c.argv for c in unique)
    assert any("delete" in c.argv for c in unique)
    assert any(c.argv[1:5] == ("alpha", "monitoring", "policies", "update") for c in unique)
    assert any(c.argv[1:3] == ("run", "deploy") for c in unique)
    assert any(c.argv[1:3] == ("secrets", "create") for c in unique)
    source = tmp_path / "source"
    source.mkdir()
    (source / "main.py").write_text("")
    token = tmp_path / "token"
    token.write_text("offline-token")
    ui_token = tmp_path / "ui-token"
    ui_token.write_text("0123456789abcdef0123456789abcdef")
    swapped = {"--source": f"--source={source}", "--data-file": f"--data-file={ui_token}"}
    commands = [[swapped.get(a.split("=")[0], a) for a in call.argv[1:]] for call in unique]
    # Two commands that must fail, proving the check can fail: an unknown and a missing flag.
    canaries = [
        ["functions", "deploy", "taxi-merge", "--gen2", "--region=europe-west1", "--no-such"],
        ["logging", "metrics", "create", "taxi-pipeline-run-failed", "--project=demo-proj"],
    ]
    commands_file = tmp_path / "commands.json"
    commands_file.write_text(json.dumps(commands + canaries))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    } | {f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api.upper()}": deny_server for api in APIS}
    proc = subprocess.run(
        [python, "-I", "-S", str(HERE / "gcloud_parse.py"), str(root), str(commands_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    *results, unknown_flag, missing_flag = json.loads(proc.stdout.splitlines()[-1])
    assert unknown_flag[0] == 2, unknown_flag
    assert "unrecognized arguments: --no-such" in unknown_flag[1]
    assert missing_flag[0] == 2, missing_flag
    assert len(results) == len(unique)
    problems = []
    for call, (code, stderr) in zip(unique, results, strict=True):
        parsed = code != 2 and not any(marker in stderr for marker in PARSE_ERRORS)
        reached_api = code in (0, None) or MARKER in stderr or "403" in f"{code} {stderr}"
        if not (parsed and reached_api):
            problems.append(f"{call.normalized()}\n  exit {code}: {stderr.strip()[-600:]}")
    print(f"checked {len(unique)} distinct gcloud commands of {len(calls)} issued")
    assert problems == [], "\n".join(problems)
