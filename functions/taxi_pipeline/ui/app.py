"""The web UI: executions, a run's Gantt, coverage, and a JSON API, as one Starlette app.

Server-rendered Jinja templates (autoescaped: every value from the data is escaped) with one
stylesheet and one small script shipped in the package; nothing from a CDN, no build step. The
script only refreshes the live part of a page while runs are in flight and posts the forms as
JSON. Nothing the browser sends becomes SQL: filters are applied to the derived runs in Python.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taxi_pipeline.domain import history
from taxi_pipeline.domain.datasets import Dataset, Month, published_months
from taxi_pipeline.domain.history import Cell, Run
from taxi_pipeline.domain.messages import RunState
from taxi_pipeline.errors import PipelineError
from taxi_pipeline.local.backfill import BackfillPlan, plan_backfill
from taxi_pipeline.render.text import format_duration
from taxi_pipeline.ui import views
from taxi_pipeline.ui.backend import Orchestrator, UiBackend
from taxi_pipeline.ui.history_cache import HistoryCache, Snapshot
from taxi_pipeline.ui.security import CONTENT_SECURITY_POLICY, Access, Refused

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
MAX_BODY_BYTES: Final = 16 * 1024
REFRESH_SECONDS: Final = 2


@dataclass(frozen=True)
class Filters:
    """The executions filters, from the query string (``?dataset=&state=&label=k=v&since=``)."""

    dataset: Dataset | None = None
    states: tuple[RunState, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    since: str = ""
    since_at: datetime | None = None
    page: int = 1
    per_page: int = PAGE_SIZE

    @classmethod
    def parse(cls, query: QueryParams) -> Filters:
        """Raises ``ValueError`` with a message for the user."""
        dataset = query.get("dataset") or None
        try:
            chosen = Dataset(dataset.lower()) if dataset else None
        except ValueError:
            raise ValueError(
                f"unknown dataset {dataset!r} (one of {', '.join(d.value for d in Dataset)})"
            ) from None
        states = []
        for value in query.getlist("state"):
            if not value:
                continue
            try:
                states.append(RunState(value.upper()))
            except ValueError:
                raise ValueError(
                    f"unknown state {value!r} (one of {', '.join(s.value for s in RunState)})"
                ) from None
        labels: dict[str, str] = {}
        for item in query.getlist("label"):
            if not item.strip():
                continue
            key, sep, value = item.strip().partition("=")
            if not sep or not key:
                raise ValueError(f"label filter {item!r} is not key=value")
            labels[key] = value
        since = (query.get("since") or "").strip()
        since_at = history.parse_since(since) if since else None
        return cls(
            chosen,
            tuple(dict.fromkeys(states)),
            labels,
            since,
            since_at,
            _positive(query.get("page"), "page", 1, 1_000_000),
            _positive(query.get("per_page"), "per_page", PAGE_SIZE, MAX_PAGE_SIZE),
        )

    def apply(self, runs: Sequence[Run]) -> list[Run]:
        return history.filter_runs(
            runs,
            dataset=self.dataset.value if self.dataset else None,
            states=self.states,
            since=self.since_at,
            labels=self.labels,
        )

    def query(self, **changes: object) -> str:
        """This filter's query string, with ``changes`` (e.g. another page)."""
        params: list[tuple[str, str]] = []
        if self.dataset:
            params.append(("dataset", self.dataset.value))
        params += [("state", s.value) for s in self.states]
        params += [("label", f"{k}={v}") for k, v in self.labels.items()]
        if self.since:
            params.append(("since", self.since))
        page = changes.get("page", self.page)
        if page != 1:
            params.append(("page", str(page)))
        if self.per_page != PAGE_SIZE:
            params.append(("per_page", str(self.per_page)))
        return urlencode(params)

    @property
    def active(self) -> bool:
        return bool(self.dataset or self.states or self.labels or self.since)


def _positive(text: str | None, name: str, default: int, most: int) -> int:
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= most:
        raise ValueError(f"{name} must be a whole number from 1 to {most}")
    return int(text)


class RunBody(BaseModel):
    """``POST /api/runs``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: Dataset
    month: str
    source: str | None = None


class BackfillBody(BaseModel):
    """``POST /api/backfills``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    dataset: Dataset
    first: str = Field(alias="from")
    last: str = Field(alias="to")
    only_missing: bool = False


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def templates() -> Environment:
    """The package's templates; autoescape on for every one of them."""
    env = Environment(
        loader=PackageLoader("taxi_pipeline.ui", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = views.number
    env.filters["stamp"] = views.stamp
    env.filters["duration"] = format_duration
    env.globals["states"] = [s.value for s in RunState]
    env.globals["datasets"] = [d.value for d in Dataset]
    return env


def create_app(
    backend: UiBackend, access: Access, *, clock: Callable[[], datetime] | None = None
) -> ASGIApp:
    """The app over ``backend``, guarded by ``access``; its shutdown closes the backend."""
    ui = _Ui(backend, access, templates(), clock or (lambda: datetime.now(UTC)))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Reading and deriving a long history takes seconds: start at once, so the first page
        # a browser asks for finds the cache warm (or waits on the lock, not from scratch).
        primer = threading.Thread(target=_prime, args=(backend.history,), name="ui-prime")
        primer.start()
        try:
            yield
        finally:
            await run_in_threadpool(primer.join)
            await run_in_threadpool(backend.close)

    routes = [
        Route("/", ui.executions),
        Route("/runs/{run_id}", ui.run_page),
        Route("/coverage", ui.coverage_page),
        Route("/api/runs", ui.api_runs, methods=["GET"]),
        Route("/api/runs", ui.api_submit_run, methods=["POST"]),
        Route("/api/runs/{run_id}", ui.api_run, methods=["GET"]),
        Route("/api/runs/{run_id}/actions/{action}", ui.api_run_action, methods=["POST"]),
        Route("/api/coverage", ui.api_coverage, methods=["GET"]),
        Route("/api/backfills", ui.api_submit_backfill, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("taxi_pipeline.ui", "static")]), name="static"),
    ]

    def unavailable(request: Request, exc: Exception) -> Response:
        """The warehouse could not be read (or written): say so, as JSON or as a page."""
        reason = f"the run history is unavailable: {exc}"
        log.warning("%s %s: %s", request.method, request.url.path, reason)
        if request.url.path.startswith("/api/"):
            return _error(503, reason)
        return ui.page(request, "unavailable.html", 503, reason=reason)

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={PipelineError: unavailable}
    )
    return _Guard(app, access)


@dataclass
class _Ui:
    """The endpoints. Pages and reads are sync (Starlette runs them on its thread pool);
    writes are async for the body and hand the submit to the pool."""

    backend: UiBackend
    access: Access
    env: Environment
    clock: Callable[[], datetime]

    @property
    def history(self) -> HistoryCache:
        return self.backend.history

    @property
    def orchestrator(self) -> Orchestrator:
        return self.backend.orchestrator

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        body = self.env.get_template(name).render(
            request_path=request.url.path,
            mode=self.orchestrator.mode,
            warehouse_url=self.backend.warehouse_url,
            token_required=self.access.token_required,
            refresh_seconds=REFRESH_SECONDS,
            **context,
        )
        return HTMLResponse(body, status_code=status)

    # -- pages ----------------------------------------------------------------------------------

    def executions(self, request: Request) -> Response:
        now = self.clock()
        try:
            filters = Filters.parse(request.query_params)
        except ValueError as exc:
            return self.page(request, "executions.html", 400, error=str(exc), **_no_listing(now))
        listing = _listing(self.history.snapshot(), filters, now)
        return self.page(request, "executions.html", filters=filters, **listing)

    def run_page(self, request: Request) -> Response:
        now = self.clock()
        run_id = request.path_params["run_id"]
        run = self.history.snapshot().by_id.get(run_id)
        if run is None:
            return self.page(request, "missing.html", 404, run_id=run_id)
        return self.page(
            request,
            "run.html",
            run=run,
            gantt=views.gantt(run, now),
            actions=self.orchestrator.actions(run),
            duration=run.duration(now),
        )

    def coverage_page(self, request: Request) -> Response:
        snapshot = self.history.snapshot()
        datasets, months, cells = self._coverage(snapshot)
        return self.page(
            request,
            "coverage.html",
            calendars=views.calendars(datasets, months, cells, views.latest_runs(snapshot.runs)),
            month_names=views.MONTH_NAMES,
            first_month=str(months[0]),
            last_month=str(months[-1]),
            live=any(c.state == "running" for c in cells.values()),
        )

    def _coverage(
        self, snapshot: Snapshot
    ) -> tuple[list[Dataset], list[Month], dict[tuple[Dataset, Month], Cell]]:
        datasets, months = list(Dataset), published_months()
        cells = history.coverage(datasets, months, self.history.loads(), snapshot.runs)
        return datasets, months, cells

    # -- JSON reads -----------------------------------------------------------------------------

    def api_runs(self, request: Request) -> Response:
        now = self.clock()
        try:
            filters = Filters.parse(request.query_params)
        except ValueError as exc:
            return _error(400, str(exc))
        listing = _listing(self.history.snapshot(), filters, now)
        return JSONResponse(
            {
                "runs": [views.run_summary(r, now) for r in listing["runs"]],
                "total": listing["total"],
                "page": listing["page"],
                "pages": listing["pages"],
                "per_page": filters.per_page,
                "active": listing["active"],
            }
        )

    def api_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        run = self.history.snapshot().by_id.get(run_id)
        if run is None:
            return _error(404, f"no run {run_id!r}")
        actions = [a.name for a in self.orchestrator.actions(run)]
        return JSONResponse(views.run_detail(run, self.clock(), actions))

    def api_coverage(self, request: Request) -> Response:
        return JSONResponse(views.coverage_json(*self._coverage(self.history.snapshot())))

    # -- writes ---------------------------------------------------------------------------------

    async def api_submit_run(self, request: Request) -> Response:
        try:
            body = RunBody.model_validate(await _json_body(request, self.access))
            if body.source is not None:
                raise _BadRequest(
                    422,
                    "this pipeline reads one source (TAXI_PIPELINE_SOURCE_URL); choosing the"
                    " source of a run is not available",
                )
            month = _month(body.month, "month", self.clock())
            run_id = await run_in_threadpool(self.orchestrator.submit_run, body.dataset, month)
        except (Refused, _BadRequest) as exc:
            return _error(exc.status, exc.reason)
        except ValidationError as exc:
            return _error(422, _validation_message(exc))
        except PipelineError as exc:
            return _error(503, f"the run could not be submitted: {exc}")
        self.history.invalidate()
        answer = {
            "run_id": run_id,
            "dataset": body.dataset.value,
            "month": str(month),
            "state": self.orchestrator.submitted_state,
            "url": f"/runs/{run_id}",
        }
        return JSONResponse(answer, status_code=202)

    async def api_submit_backfill(self, request: Request) -> Response:
        try:
            body = BackfillBody.model_validate(await _json_body(request, self.access))
            first = _month(body.first, "from", self.clock())
            last = _month(body.last, "to", self.clock())
            if last < first:
                raise _BadRequest(422, f"to ({last}) is before from ({first})")
            plan, run_ids = await run_in_threadpool(self._backfill, body, first, last)
        except (Refused, _BadRequest) as exc:
            return _error(exc.status, exc.reason)
        except ValidationError as exc:
            return _error(422, _validation_message(exc))
        except ValueError as exc:  # the plan's own checks (an empty or future range)
            return _error(422, str(exc))
        except PipelineError as exc:
            return _error(503, f"the backfill could not be submitted: {exc}")
        self.history.invalidate()
        answer = {
            "backfill_id": plan.backfill_id,
            "dataset": body.dataset.value,
            "from": str(first),
            "to": str(last),
            "only_missing": body.only_missing,
            "state": self.orchestrator.submitted_state,
            "runs": [{"month": str(m), "run_id": r} for m, r in run_ids.items()],
            "already_loaded": [str(m) for m in plan.already_loaded],
        }
        return JSONResponse(answer, status_code=202)

    def _backfill(
        self, body: BackfillBody, first: Month, last: Month
    ) -> tuple[BackfillPlan, dict[Month, str]]:
        plan = plan_backfill(
            body.dataset,
            first,
            last,
            only_missing=body.only_missing,
            warehouse=self.backend.warehouse,
            today=self.clock(),
        )
        return plan, self.orchestrator.submit_backfill(plan)

    async def api_run_action(self, request: Request) -> Response:
        try:
            await _json_body(request, self.access)
        except (Refused, _BadRequest) as exc:
            return _error(exc.status, exc.reason)
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        run = self.history.snapshot().by_id.get(run_id)
        if run is None:
            return _error(404, f"no run {run_id!r}")
        if action not in {a.name for a in self.orchestrator.actions(run)}:
            return _error(404, f"{action!r} is not offered for run {run_id} ({run.state.value})")
        message = await run_in_threadpool(self.orchestrator.perform, action, run)
        self.history.invalidate()
        return JSONResponse({"run_id": run_id, "action": action, "message": message}, 202)


def _prime(cache: HistoryCache) -> None:
    try:
        cache.snapshot()
    except Exception:
        # The pages will ask again and show the error; here it is only logged.
        log.exception("could not read the run history at start")


def _listing(snapshot: Snapshot, filters: Filters, now: datetime) -> dict[str, Any]:
    found = filters.apply(snapshot.runs)
    found.reverse()  # latest first
    pages = max(1, math.ceil(len(found) / filters.per_page))
    page = min(filters.page, pages)
    start = (page - 1) * filters.per_page
    shown = found[start : start + filters.per_page]
    return {
        "runs": shown,
        "total": len(found),
        "all_runs": len(snapshot.runs),
        "page": page,
        "pages": pages,
        "active": sum(1 for r in found if r.is_active),
        "counts": views.state_counts(found),
        "now": now,
    }


def _no_listing(now: datetime) -> dict[str, Any]:
    return {
        "runs": [],
        "total": 0,
        "all_runs": 0,
        "page": 1,
        "pages": 1,
        "active": 0,
        "counts": views.state_counts(()),
        "now": now,
        "filters": Filters(),
    }


def _month(text: str, name: str, now: datetime) -> Month:
    try:
        month = Month.parse(text)
    except ValueError as exc:
        raise _BadRequest(422, f"{name}: {exc}") from exc
    current = Month(now.year, now.month)
    if current < month:
        raise _BadRequest(422, f"{name} {month} is in the future (this is {current})")
    return month


async def _json_body(request: Request, access: Access) -> Any:
    access.check_write(
        content_type=request.headers.get("content-type", ""),
        origin=request.headers.get("origin"),
        authorization=request.headers.get("authorization"),
    )
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _BadRequest(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError as exc:
        raise _BadRequest(400, f"the body is not JSON: {exc}") from exc


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


class _Guard:
    """Host check (loopback servers) and security headers on every response."""

    _HEADERS: Final = [
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),
    ]

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.access.check_host(Headers(scope=scope).get("host", ""))
        except Refused as exc:
            response = JSONResponse({"error": exc.reason}, status_code=exc.status)
            await response(scope, receive, self._secured(send))
            return
        await self.app(scope, receive, self._secured(send))

    def _secured(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((n, v) for n, v in self._HEADERS if n not in names),
                ]
            await send(message)

        return wrapped
