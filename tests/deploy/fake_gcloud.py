"""A recording stand-in for ``gcloud`` (and for the provisioning Python) that keeps a tiny state.

Run as ``fake_gcloud.py gcloud ARGS...`` or ``fake_gcloud.py python ARGS...`` through wrapper
scripts named ``gcloud`` / ``python`` on PATH. Every call is appended as a JSON list to
``$FAKE_GCLOUD_LOG``; the state (accounts, bindings, functions, ...) lives in
``$FAKE_GCLOUD_STATE`` so a second ``deploy.sh`` run sees what the first created. Only the
commands ``deploy.sh`` issues are understood: anything else exits 97 so a test notices.
Notification channels are kept as name -> email address, alert policies as name -> channel names.

Knobs (environment): ``FAKE_GCLOUD_ACCOUNT`` (empty: not logged in), ``FAKE_GCLOUD_BILLING``
(``True``/``False``), ``FAKE_GCLOUD_FOREIGN_BUCKETS`` (comma list of names owned elsewhere),
``FAKE_GCLOUD_REAL_PYTHON`` (interpreter for ``python -m infra.provision spec`` / ``-c``),
``FAKE_GCLOUD_SECRETS`` (comma list of the Secret Manager secrets that exist).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

PROJECT_NUMBER = "123456789"


def _flags(args: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    positional: list[str] = []
    flags: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            flags.setdefault(key, []).append(value)
        else:
            positional.append(arg)
    return positional, flags


def _load() -> dict[str, Any]:
    path = Path(os.environ["FAKE_GCLOUD_STATE"])
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        return state
    return {
        "accounts": [],
        "iam": {},
        "functions": {},
        "metrics": {},
        "channels": {},
        "policies": {},
    }


def _save(state: dict[str, Any]) -> None:
    Path(os.environ["FAKE_GCLOUD_STATE"]).write_text(json.dumps(state, indent=1, sort_keys=True))


def _record(argv: list[str]) -> None:
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")


def gcloud(args: list[str]) -> int:  # noqa: C901 (one branch per command)
    _record(["gcloud", *args])
    state = _load()
    pos, flags = _flags(args)
    words = " ".join(pos)
    project = flags.get("project", [""])[0]

    def out(text: str) -> int:
        print(text)
        return 0

    if words == "auth list":
        account = os.environ.get("FAKE_GCLOUD_ACCOUNT", "")
        return out(account) if account else 0
    if words == "auth print-access-token":
        return out("fake-token")
    if words.startswith("billing projects describe"):
        return out(os.environ.get("FAKE_GCLOUD_BILLING", "True"))
    if words.startswith("projects describe"):
        return out(PROJECT_NUMBER)
    if words == "storage buckets list":
        return out("\n".join(state.get("buckets", [])))
    if words.startswith("storage buckets describe"):
        name = pos[-1].removeprefix("gs://")
        if name in os.environ.get("FAKE_GCLOUD_FOREIGN_BUCKETS", "").split(","):
            return out(name)
        print(
            f"ERROR: (gcloud.storage.buckets.describe) gs://{name} not found: 404.", file=sys.stderr
        )
        return 1
    if words == "storage service-agent":
        return out(f"service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com")
    if words == "services list":
        return out("\n".join(state.get("services", [])))
    if words.startswith("services enable"):
        state["services"] = sorted({*state.get("services", []), *pos[2:]})
        _save(state)
        return 0
    if words.startswith("iam service-accounts"):
        verb, target = pos[2], pos[3]
        email = target if "@" in target else f"{target}@{project}.iam.gserviceaccount.com"
        if verb == "describe":
            return out(email) if email in state["accounts"] else 1
        if verb == "create":
            state["accounts"].append(email)
        elif verb == "delete":
            state["accounts"].remove(email)
        _save(state)
        return 0
    for verb in ("get-iam-policy", "add-iam-policy-binding", "remove-iam-policy-binding"):
        if verb in pos:
            index = pos.index(verb)
            resource = " ".join([*pos[:index], pos[index + 1]])
            bindings: list[list[str]] = state["iam"].setdefault(resource, [])
            if verb == "get-iam-policy":
                return out("\n".join(f"{role}\t{member}" for role, member in bindings))
            binding = [flags["role"][0], flags["member"][0]]
            if verb == "add-iam-policy-binding" and binding not in bindings:
                bindings.append(binding)
            elif verb == "remove-iam-policy-binding":
                bindings.remove(binding)
            _save(state)
            return 0
    # The user's secrets (the database password: never created here); the UI's token is below.
    if words.startswith("secrets describe") and pos[2] in os.environ.get(
        "FAKE_GCLOUD_SECRETS", ""
    ).split(","):
        return out(pos[2])
    # A function's Cloud Run service (its Cloud SQL connection); the UI's service is below.
    if (
        pos[:2] == ["run", "services"]
        and pos[2] in ("describe", "update")
        and pos[3] in state["functions"]
    ):
        attached: dict[str, str] = state.setdefault("cloudsql", {})
        if pos[2] == "describe":
            return out(attached.get(pos[3], ""))
        attached[pos[3]] = flags["set-cloudsql-instances"][0]
        _save(state)
        return 0
    if pos[:1] == ["functions"]:
        verb, name = pos[1], pos[2]
        if verb == "describe":
            if name not in state["functions"]:
                return 1
            fmt = flags["format"][0]
            return out(name if "name" in fmt else f"ACTIVE\t{state['functions'][name]}")
        if verb == "deploy":
            state["functions"][name] = flags["update-labels"][0].split("=", 1)[1]
        elif verb == "delete":
            del state["functions"][name]
        _save(state)
        return 0
    if pos[:1] == ["run"] and pos[1:3] != ["services", "add-iam-policy-binding"]:
        run_services: dict[str, str] = state.setdefault("run_services", {})
        verb, name = (pos[1], pos[2]) if pos[1] == "deploy" else (pos[2], pos[3])
        if verb == "describe":
            if name not in run_services:
                return 1
            return out(name if "name" in flags["format"][0] else run_services[name])
        if verb == "deploy":
            run_services[name] = flags["update-labels"][0].split("=", 1)[1]
            if "set-cloudsql-instances" in flags:
                state.setdefault("cloudsql", {})[name] = flags["set-cloudsql-instances"][0]
        elif verb == "delete":
            del run_services[name]
        _save(state)
        return 0
    if pos[:1] == ["secrets"] and pos[1] in ("describe", "create", "delete"):
        secrets: dict[str, int] = state.setdefault("secrets", {})
        verb, name = pos[1], pos[2]
        if verb == "describe":
            return out(name) if name in secrets else 1
        if verb == "create":
            # The token's length only: the fake never keeps (or logs) a secret's value.
            secrets[name] = len(Path(flags["data-file"][0]).read_text().strip())
        else:
            del secrets[name]
        _save(state)
        return 0
    if pos[:2] == ["logging", "metrics"]:
        verb, name = pos[2], pos[3]
        if verb == "describe":
            return out(state["metrics"][name]) if name in state["metrics"] else 1
        if verb in ("create", "update"):
            state["metrics"][name] = flags["log-filter"][0]
        elif verb == "delete":
            del state["metrics"][name]
        _save(state)
        return 0
    channels: dict[str, str] = state["channels"]
    policies: dict[str, list[str]] = state["policies"]
    if words == "beta monitoring channels list":
        only = re.search(r'labels\.email_address="([^"]*)"', flags["filter"][0])
        return out("\n".join(n for n, e in channels.items() if not only or e == only[1]))
    if words == "beta monitoring channels create":
        number = 42
        while f"projects/{project}/notificationChannels/{number}" in channels:
            number += 1
        name = f"projects/{project}/notificationChannels/{number}"
        channels[name] = flags["channel-labels"][0].removeprefix("email_address=")
        _save(state)
        return out(name)
    if pos[:4] == ["beta", "monitoring", "channels", "delete"]:
        del channels[pos[4]]
        _save(state)
        return 0
    if words == "alpha monitoring policies list":  # value(name,notificationChannels), as gcloud
        return out("\n".join(f"{n}\t{';'.join(c)}" for n, c in policies.items()))
    if words == "alpha monitoring policies create":
        wanted = flags["notification-channels"][0].split(",")
        policies[f"projects/{project}/alertPolicies/7"] = wanted
        _save(state)
        return 0
    if pos[:4] == ["alpha", "monitoring", "policies", "update"]:
        policies[pos[4]] = flags["set-notification-channels"][0].split(",")
        _save(state)
        return 0
    if pos[:4] == ["alpha", "monitoring", "policies", "delete"]:
        del policies[pos[4]]
        _save(state)
        return 0
    print(f"fake gcloud: unexpected command {args}", file=sys.stderr)
    return 97


def python(args: list[str]) -> int:
    """``-c``/``spec``/``--dry-run`` run for real (no Google call); the rest is recorded:
    ``infra.provision`` as ``provision ...``, the CLI (``zones --cloud``) as ``taxi-pipeline
    ...`` with the settings it was given."""
    if args[:1] == ["-c"] or "spec" in args[:3] or "--dry-run" in args:
        real = os.environ["FAKE_GCLOUD_REAL_PYTHON"]
        os.execv(real, [real, *args])
    if args[:2] == ["-m", "taxi_pipeline.cli.app"]:
        given = [
            f"{key}={'TOKEN' if key.endswith('ACCESS_TOKEN') and value else value}"
            for key, value in sorted(os.environ.items())
            if key.startswith("TAXI_PIPELINE_") and key != "TAXI_PIPELINE_PYTHON"
        ]
        _record(["taxi-pipeline", *args[2:], *given])
        return 0
    _record(["provision", *args[2:]])
    if args[2] == "data":
        state = _load()
        bucket = next(a.split("=", 1)[1] for a in args if a.startswith("--bucket="))
        state["buckets"] = sorted({*state.get("buckets", []), bucket})
        _save(state)
    if args[2] == "dead-letters":
        state = _load()
        value = {a[2:].split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
        prefix = f"projects/{value['project']}/subscriptions/eventarc-{value['region']}"
        for name in sorted(state["functions"]):
            if name != "taxi-dead-letter":
                print(f"{prefix}-{name}-123-sub-456")
    return 0


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    sys.exit(gcloud(rest) if role == "gcloud" else python(rest))
