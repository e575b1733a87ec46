"""The web UI's pages and JSON API through Starlette's TestClient, over the real embedded pipeline.

Each test opens the UI's backend on a fresh home (folder lake, DuckDB, in-process bus, the
background run worker) against the generated months served over local HTTP, exactly as
``taxi-pipeline ui`` does; runs started through the API really download and merge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from support.e2e import Source
from support.ui import wait_until
from taxi_pipeline.adapters.memory.bus import InProcessBus
from taxi_pipeline.cli.app import app as cli_app
from taxi_pipeline.devkit.run_history import synthetic_history
from taxi_pipeline.domain.datasets import Dataset, Month
from taxi_pipeline.domain.messages import IngestRequest, RunState, Topic
from taxi_pipeline.domain.runs import LoadRecord, RunEvent
from taxi_pipeline.errors import TransientError
from taxi_pipeline.settings import Settings
from taxi_pipeline.ui.app import create_app
from taxi_pipeline.ui.backend import CloudOrchestrator, UiBackend, open_backend
from taxi_pipeline.ui.history_cache import HistoryCache
from taxi_pipeline.ui.security import Access
from taxi_pipeline.ui.server import serve

TOKEN = "test-token-0123456789abcdef"
LOOPBACK = "http://127.0.0.1:8765"
JSON = {"Content-Type": "application/json"}
_RUN_LINK = re.compile(r'href="/runs/([a-z]+-\d{6}-[0-9a-f]{8})"')


@pytest.fixture
def backend(tmp_path: Path, source: Source) -> Iterator[UiBackend]:
    opened = open_backend(Settings(home=tmp_path / "home", source_url=source.url))
    yield opened
    opened.close()


def _client(backend: UiBackend, access: Access | None = None) -> TestClient:
    app = create_app(backend, access or Access.for_bind("127.0.0.1", None))
    return TestClient(app, base_url=LOOPBACK)


def _run(client: TestClient, dataset: str, month: str) -> str:
    answer = client.post("/api/runs", json={"dataset": dataset, "month": month})
    assert answer.status_code == 202, answer.text
    run_id: str = answer.json()["run_id"]
    return run_id


def _finished(client: TestClient, run_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/api/runs/{run_id}").json()
        return run if run.get("state") in ("SUCCESS", "FAILED", "SKIPPED") else None

    return wait_until(done, timeout=120, what=f"run {run_id} to end")


def _rows(backend: UiBackend, dataset: str, month: str) -> int:
    result = backend.warehouse.query(
        f"SELECT count(*) FROM {dataset}_tripdata WHERE filename = '{dataset}_tripdata_{month}.csv'"
    )
    count = result.rows[0][0]
    assert isinstance(count, int)
    return count


def test_a_run_posted_answers_202_runs_in_the_background_and_loads_its_month(
    backend: UiBackend, source: Source
) -> None:
    with _client(backend) as client:
        answer = client.post("/api/runs", json={"dataset": "green", "month": "2019-01"})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        run_id = body["run_id"]
        assert body == {
            "run_id": run_id,
            "dataset": "green",
            "month": "2019-01",
            "state": "QUEUED",
            "url": f"/runs/{run_id}",
        }
        # Recorded before the answer: the executions list shows it at once.
        assert run_id in [r["run_id"] for r in client.get("/api/runs").json()["runs"]]
        run = _finished(client, run_id)
        expected = source.files[(Dataset.GREEN, Month(2019, 1))].rows
        assert run["state"] == "SUCCESS"
        assert run["rows_in_file"] == run["rows_inserted"] == expected
        assert run["labels"] == {"trigger": "manual", "via": "ui"}
        assert [s["step"] for s in run["steps"]] == ["download", "register", "merge"]
        assert run["steps"][0]["bytes"] > 0
        assert run["steps"][0]["rows"] == expected
        assert run["actions"] == []
        assert _rows(backend, "green", "2019-01") == expected

        page = client.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert f'<h1 class="id">{run_id}</h1>' in page.text
        assert page.text.count('<g class="bar ') == 4  # queue + three steps on the time axis
        assert f"{expected:,}" in page.text
        assert "/actions/" not in page.text  # no orchestrator action offered: no button

        listing = client.get("/")
        assert listing.status_code == 200
        assert _RUN_LINK.findall(listing.text) == [run_id]
        assert 'data-active="false"' in listing.text

        coverage = client.get("/api/coverage").json()
        cell = next(
            c for c in coverage["cells"] if (c["dataset"], c["month"]) == ("green", "2019-01")
        )
        assert cell == {
            "dataset": "green",
            "month": "2019-01",
            "state": "loaded",
            "loaded_rows": expected,
            "source": "mirror",
            "run_id": run_id,
            "error": None,
        }
        calendar = client.get("/coverage").text
        assert 'data-month="2019-01" data-state="loaded"' in calendar
        assert f'href="/runs/{run_id}"' in calendar


def test_a_backfill_only_missing_starts_the_months_without_a_load(
    backend: UiBackend, source: Source
) -> None:
    with _client(backend) as client:
        first = _run(client, "yellow", "2019-01")
        _finished(client, first)
        answer = client.post(
            "/api/backfills",
            json={"dataset": "yellow", "from": "2019-01", "to": "2019-03", "only_missing": True},
        )
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["already_loaded"] == ["2019-01"]
        assert [r["month"] for r in body["runs"]] == ["2019-02", "2019-03"]
        assert body["state"] == "QUEUED"
        for run in body["runs"]:
            finished = _finished(client, run["run_id"])
            assert finished["state"] == "SUCCESS"
            assert finished["labels"] == {
                "backfill": "true",
                "backfill_id": body["backfill_id"],
                "trigger": "manual",
                "via": "ui",
            }
        for month in ("2019-01", "2019-02", "2019-03"):
            expected = source.files[(Dataset.YELLOW, Month.parse(month))].rows
            assert _rows(backend, "yellow", month) == expected
        labelled = client.get("/api/runs", params={"label": f"backfill_id={body['backfill_id']}"})
        assert labelled.json()["total"] == 2

        # Everything loaded: a second backfill over the range starts nothing.
        again = client.post(
            "/api/backfills",
            json={"dataset": "yellow", "from": "2019-01", "to": "2019-03", "only_missing": True},
        )
        assert again.status_code == 202
        assert again.json()["runs"] == []
        assert again.json()["already_loaded"] == ["2019-01", "2019-02", "2019-03"]


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/api/runs", {"dataset": "blue", "month": "2019-01"}, 422, "dataset: Input should be"),
        ("/api/runs", {"dataset": "green", "month": "2019-13"}, 422, "month:"),
        ("/api/runs", {"dataset": "green", "month": "2999-01"}, 422, "is in the future"),
        ("/api/runs", {"dataset": "green"}, 422, "month: Field required"),
        ("/api/runs", {"dataset": "green", "month": "2019-01", "sql": "x"}, 422, "sql: Extra"),
        ("/api/runs", {"dataset": "green", "month": "2019-01", "source": "tlc"}, 422, "source"),
        (
            "/api/backfills",
            {"dataset": "green", "from": "2019-05", "to": "2019-01"},
            422,
            "to (2019-01) is before from (2019-05)",
        ),
        (
            "/api/backfills",
            {"dataset": "green", "from": "2019-01", "to": "2999-01"},
            422,
            "to 2999-01 is in the future",
        ),
    ],
)
def test_bad_submissions_are_refused_with_their_reason_and_start_nothing(
    backend: UiBackend, path: str, body: dict[str, str], status: int, reason: str
) -> None:
    with _client(backend) as client:
        answer = client.post(path, json=body)
        assert answer.status_code == status, answer.text
        assert reason in answer.json()["error"]
        assert client.get("/api/runs").json()["total"] == 0


def test_writes_take_json_from_our_own_origin_only(backend: UiBackend) -> None:
    with _client(backend) as client:
        form = client.post("/api/runs", data={"dataset": "green", "month": "2019-01"})
        assert form.status_code == 415
        text = client.post(
            "/api/runs",
            content=b'{"dataset": "green", "month": "2019-01"}',
            headers={"Content-Type": "text/plain"},
        )
        assert text.status_code == 415
        foreign = client.post(
            "/api/runs",
            json={"dataset": "green", "month": "2019-01"},
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status_code == 403
        broken = client.post("/api/runs", content=b"{not json", headers=JSON)
        assert broken.status_code == 400
        huge = client.post("/api/runs", content=b" " * 20_000 + b"{}", headers=JSON)
        assert huge.status_code == 413
        assert client.get("/api/runs").json()["total"] == 0
        # DNS rebinding: a page of another name that resolves to 127.0.0.1 gets nothing.
        rebound = client.get("/api/runs", headers={"Host": "evil.example:8765"})
        assert rebound.status_code == 400
        page = client.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert 'name="_token"' not in page.text  # loopback: no token field


def test_a_token_guards_writes_when_listening_beyond_loopback(backend: UiBackend) -> None:
    with _client(backend, Access.for_bind("0.0.0.0", TOKEN)) as client:
        body = {"dataset": "green", "month": "2019-02"}
        assert client.post("/api/runs", json=body).status_code == 401
        wrong = client.post("/api/runs", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert client.get("/api/runs").json()["total"] == 0
        # Reads are open; the page asks for the token next to each write form.
        page = client.get("/", headers={"Host": "ui.example:8765"})
        assert page.status_code == 200
        assert page.text.count('name="_token"') == 1
        assert 'name="_token"' in client.get("/coverage").text
        right = client.post("/api/runs", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 202
        assert _finished(client, right.json()["run_id"])["state"] == "SUCCESS"


def test_listening_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(Exception, match="set TAXI_PIPELINE_UI_TOKEN"):
        serve(Settings(home=home), "0.0.0.0", 0)
    assert not home.exists(), "nothing is opened before the refusal"

    result = CliRunner().invoke(
        cli_app,
        ["ui", "--host", "0.0.0.0", "--port", "0", "--home", str(home)],
        env={"TAXI_PIPELINE_UI_TOKEN": "", "COLUMNS": "200"},
    )
    assert result.exit_code == 2
    # The app's one error line (cli/common), no traceback.
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "set TAXI_PIPELINE_UI_TOKEN" in lines[0]
    assert not home.exists()


def test_an_unusable_home_is_one_error_line_and_status_2(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    result = CliRunner().invoke(
        cli_app, ["ui", "--port", "0", "--home", str(a_file)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert str(a_file) in lines[0]
    assert "Traceback" not in result.output


HOSTILE = '<script>alert("x")</script>'


def test_every_value_from_the_data_is_escaped(backend: UiBackend) -> None:
    now = datetime.now(UTC)
    run_id = "green-201903-0badc0de"
    line = RunEvent(
        run_id=run_id,
        dataset="green",
        month="2019-03",
        step="download",
        state=RunState.FAILED,
        started_at=now,
        finished_at=now,
        recorded_at=now,
        labels={"note": '"><img src=x onerror=alert(1)>'},
        error=f"header does not match: {HOSTILE}",
        details={"reason": "<b>bold</b>"},
    )
    backend.warehouse.append_run_events([line])
    with _client(backend) as client:
        for path in ("/", f"/runs/{run_id}", "/coverage", "/?state=FAILED"):
            html = client.get(path).text
            assert "<script>alert" not in html, path
            assert "<img src=x" not in html, path
            assert "<b>bold" not in html, path
        run_page = client.get(f"/runs/{run_id}").text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in run_page
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in run_page
        assert "&lt;b&gt;bold&lt;/b&gt;" in run_page
        # JSON carries the text as it is; a browser never renders it as markup.
        assert client.get(f"/api/runs/{run_id}").json()["error"].endswith(HOSTILE)
        missing = client.get("/runs/%3Cscript%3E").text
        assert "&lt;script&gt;" in missing
        assert "<script>" not in missing.split("</head>")[1]


def test_executions_filter_and_paginate_many_runs(backend: UiBackend) -> None:
    made = synthetic_history(250, end=datetime.now(UTC) - timedelta(hours=1), seed=8, in_flight=2)
    backend.warehouse.append_run_events(made.events)
    with _client(backend) as client:
        first = client.get("/")
        assert first.status_code == 200
        ids = _RUN_LINK.findall(first.text)
        assert ids == made.run_ids[::-1][:100]  # latest first, 100 a page
        assert 'rel="next"' in first.text
        assert 'rel="prev"' not in first.text
        assert 'data-active="true"' in first.text  # two runs in flight: the page refreshes
        last = client.get("/?page=3")
        assert _RUN_LINK.findall(last.text) == made.run_ids[::-1][200:]
        assert 'rel="prev"' in last.text
        assert 'rel="next"' not in last.text
        beyond = client.get("/api/runs", params={"page": "9"}).json()
        assert beyond["page"] == 3
        assert len(beyond["runs"]) == 50

        everything = client.get("/api/runs", params={"per_page": "1000"}).json()
        assert everything["total"] == 250
        assert everything["active"] == 2
        runs = everything["runs"]
        green_failed = [r for r in runs if r["dataset"] == "green" and r["state"] == "FAILED"]
        answer = client.get("/api/runs", params={"dataset": "green", "state": "failed"}).json()
        assert [r["run_id"] for r in answer["runs"]] == [r["run_id"] for r in green_failed]
        scheduled = client.get(
            "/api/runs", params=[("label", "trigger=schedule"), ("per_page", "1000")]
        ).json()
        assert scheduled["total"] == sum(1 for r in runs if r["labels"]["trigger"] == "schedule")
        two_states = client.get(
            "/api/runs", params=[("state", "SKIPPED"), ("state", "RUNNING"), ("per_page", "1000")]
        ).json()
        assert {r["state"] for r in two_states["runs"]} == {"SKIPPED", "RUNNING"}
        assert client.get("/api/runs", params={"since": "10m"}).json()["total"] == 0
        assert client.get("/api/runs", params={"since": "40d"}).json()["total"] == 250
        # The page keeps the filters in its links.
        page = client.get("/", params=[("state", "SUCCESS"), ("label", "trigger=manual")])
        assert 'href="/?state=SUCCESS&amp;label=trigger%3Dmanual&amp;page=2"' in page.text

        for bad, reason in [
            ({"state": "DONE"}, "unknown state 'DONE'"),
            ({"dataset": "blue"}, "unknown dataset 'blue'"),
            ({"label": "trigger"}, "is not key=value"),
            ({"since": "yesterday"}, "neither a duration"),
            ({"page": "0"}, "page must be a whole number"),
        ]:
            api = client.get("/api/runs", params=bad)
            assert api.status_code == 400
            assert reason in api.json()["error"]
            html = client.get("/", params=bad)
            assert html.status_code == 400
            assert 'role="alert"' in html.text


def test_unknown_runs_and_actions_answer_404(backend: UiBackend) -> None:
    made = synthetic_history(1, end=datetime.now(UTC), seed=2)
    backend.warehouse.append_run_events(made.events)
    (run_id,) = made.run_ids
    with _client(backend) as client:
        assert client.get("/runs/green-201901-00000000").status_code == 404
        assert client.get("/api/runs/green-201901-00000000").status_code == 404
        restart = client.post(f"/api/runs/{run_id}/actions/restart", json={})
        assert restart.status_code == 404
        assert "not offered" in restart.json()["error"]
        assert client.post(f"/api/runs/{run_id}/actions/restart", data={}).status_code == 415


def test_in_the_cloud_mode_runs_are_published_and_nothing_is_written(
    backend: UiBackend,
) -> None:
    bus = InProcessBus(project="taxi-project")
    cloud = UiBackend(
        HistoryCache(backend.warehouse, min_interval=0),
        CloudOrchestrator(bus),
        "bigquery://taxi-project/taxi",
        backend.warehouse,
    )
    with TestClient(create_app(cloud, Access.for_bind("127.0.0.1", None)), base_url=LOOPBACK) as c:
        answer = c.post("/api/runs", json={"dataset": "yellow", "month": "2019-03"})
        assert answer.status_code == 202
        assert answer.json()["state"] == "PUBLISHED"
        backfill = c.post(
            "/api/backfills", json={"dataset": "green", "from": "2019-01", "to": "2019-02"}
        )
        assert backfill.status_code == 202
        assert "cloud · bigquery://taxi-project/taxi" in c.get("/").text
        # The cloud UI's account only reads: no QUEUED line was written for these runs.
        assert backend.warehouse.run_events() == []
    topics = [topic for topic, _, _ in bus.published]
    assert topics == [Topic.INGEST_REQUESTS.value] * 3
    requests = [IngestRequest.model_validate_json(data) for _, data, _ in bus.published]
    assert requests[0].run_id == answer.json()["run_id"]
    assert requests[0].labels == {"trigger": "manual", "via": "ui"}
    assert [r.month for r in requests[1:]] == ["2019-01", "2019-02"]
    assert requests[1].labels["via"] == "ui"
    assert requests[1].labels["backfill"] == "true"
    attributes = bus.published[0][2]
    assert attributes["run_id"] == requests[0].run_id
    assert attributes["label_via"] == "ui"
    assert json.loads(bus.published[0][1])["dataset"] == "yellow"


class _UnreachableHistory:
    """Injects the fault: a warehouse that cannot be read right now."""

    def run_events(
        self, run_id: str | None = None, dataset: str | None = None, since: datetime | None = None
    ) -> list[RunEvent]:
        raise TransientError("read run events: 503 Service Unavailable")

    def loads(self, dataset: Dataset | None = None) -> list[LoadRecord]:
        raise TransientError("read loads: 503 Service Unavailable")


def test_an_unreadable_history_answers_503_with_the_reason(backend: UiBackend) -> None:
    broken = UiBackend(
        HistoryCache(_UnreachableHistory()),
        CloudOrchestrator(InProcessBus()),
        "bigquery://taxi-project/taxi",
        backend.warehouse,
    )
    app = create_app(broken, Access.for_bind("127.0.0.1", None))
    with TestClient(app, base_url=LOOPBACK) as client:
        page = client.get("/")
        assert page.status_code == 503
        assert "read run events: 503 Service Unavailable" in page.text
        api = client.get("/api/coverage")
        assert api.status_code == 503
        assert api.json()["error"].startswith("the run history is unavailable: read")


def test_a_failed_run_is_restarted_from_its_page_and_loads_its_month(
    backend: UiBackend, source: Source
) -> None:
    history = backend.orchestrator.pipeline.history  # type: ignore[attr-defined]
    at = datetime.now(UTC) - timedelta(minutes=5)
    failed = "green-201901-0badf00d"
    history.append_run_events(
        [
            RunEvent(failed, "green", "2019-01", "queue", RunState.QUEUED, recorded_at=at),
            RunEvent(
                failed, "green", "2019-01", "download", RunState.FAILED,
                started_at=at, finished_at=at, error="the source was down", recorded_at=at,
                labels={"trigger": "manual"},
            ),
        ]
    )  # fmt: skip
    with _client(backend) as client:
        detail = client.get(f"/api/runs/{failed}").json()
        assert detail["state"] == "FAILED"
        assert detail["actions"] == ["restart"]
        assert f"/api/runs/{failed}/actions/restart" in client.get(f"/runs/{failed}").text
        answer = client.post(f"/api/runs/{failed}/actions/restart", json={})
        assert answer.status_code == 202, answer.text
        new_run = answer.json()["message"].removeprefix("restarted as ")
        run = _finished(client, new_run)
        expected = source.files[(Dataset.GREEN, Month(2019, 1))].rows
        assert run["state"] == "SUCCESS"
        assert run["labels"]["restarted_from"] == failed
        assert _rows(backend, "green", "2019-01") == expected
        # A loaded run offers nothing more; restarting it again is refused.
        assert client.get(f"/api/runs/{new_run}").json()["actions"] == []
        refused = client.post(f"/api/runs/{new_run}/actions/restart", json={})
        assert refused.status_code == 404
