"""The console's pages and the tray's JSON calls, over the running agent."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from infer.agent.console.access import Access, ConsoleGuard, denied, require_csrf
from infer.agent.console.control import NodeControl
from infer.agent.console.logbook import Logbook
from infer.agent.console.prices import PriceRow, read_form, rows_for
from infer.agent.errors import AgentError, PlatformError
from infer.agent.loop import LOG, Agent
from infer.agent.platform import NodeState
from infer.agent.register import choose_runtime
from infer.errors import BadInput, InferError
from infer.middleware import BodySizeLimit, SecurityHeaders
from infer.web.templates import STATIC_DIR, Templates

PAGE = "console/page.html"
BLOCKS = frozenset({"status", "prices", "log"})  # what htmx may ask for by its HX-Target
MAX_BODY = 64 * 1024


@dataclass
class Console:
    """What the views work with: the agent, its node on the platform, its log, the access."""

    agent: Agent
    control: NodeControl
    logbook: Logbook
    access: Access
    platform_url: str
    templates: Templates

    async def node_state(self) -> tuple[NodeState | None, str | None]:
        """The platform's view of the node (None before it is registered), or a problem."""
        node = self.agent.node
        if node is None:
            return None, None
        try:
            return await run_in_threadpool(self.control.state, node.id), None
        except PlatformError as exc:
            return None, exc.message

    async def context(self, **extra: Any) -> dict[str, Any]:
        detection = await run_in_threadpool(self.agent.detected)
        models: tuple[str, ...] = ()
        runtime_note = None
        try:
            models = choose_runtime(detection, self.agent.options.runtime).models
        except (AgentError, BadInput) as exc:
            runtime_note = exc.message
        state, problem = await self.node_state()
        status = self.agent.status
        if self.agent.node is None:
            button = "Register"
        elif status is not None and status.state != "online":
            button = "Go online"
        else:
            button = "Save prices"
        context: dict[str, Any] = {
            "csrf_token": self.access.csrf_token,
            "platform_url": self.platform_url,
            "detection": detection,
            "runtime_note": runtime_note,
            "rows": rows_for(models, self.agent.options),
            "button": button,
            "agent_status": status,
            # Live, where the status's own mention of it is as old as the last round.
            "tunnel": self.agent.tunnel.describe() if self.agent.tunnel is not None else None,
            "node": state,
            "registered": self.agent.node is not None,
            "problem": problem,
            "log": self.logbook.lines(),
            "notice": None,
            "alert": None,
        }
        return context | extra

    async def render(self, request: Request, status_code: int = 200, **extra: Any) -> HTMLResponse:
        """The page, or for htmx the block it targets (HX-Target)."""
        asked = request.headers.get("hx-target", "")
        target = asked if request.headers.get("hx-request") and asked in BLOCKS else None
        context = await self.context(target=target, **extra)
        if target is not None:
            html = self.templates.block(PAGE, target, {}, context)
        else:
            html = self.templates.page(PAGE, {}, context)
        response = HTMLResponse(html, status_code=status_code)
        response.headers["vary"] = "HX-Request, HX-Target"
        response.headers["cache-control"] = "no-store"
        return response

    async def failure(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        """A failure: for htmx, the message in the page's alert area (which no poll
        replaces); for a plain form post, the page with the message on top."""
        if not request.headers.get("hx-request"):
            return await self.render(request, status_code, alert=message)
        context = {"alert": message, "notice": None, "target": None}
        html = self.templates.block(PAGE, "alert", {}, context)
        headers = {"HX-Retarget": "#alerts", "HX-Reswap": "innerHTML", "cache-control": "no-store"}
        return HTMLResponse(html, status_code=status_code, headers=headers)


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def show(request: Request) -> Response:
    return await _console(request).render(request)


async def _form(request: Request) -> dict[str, str] | Response:
    console = _console(request)
    form = await require_csrf(request, console.access)
    if form is None:
        return denied(request, "This form is out of date: reload the console and try again.")
    return form


def _done(request: Request) -> Response | None:
    """A plain form post (no htmx) goes back to the page."""
    return None if request.headers.get("hx-request") else RedirectResponse("/", status_code=303)


async def save_prices(request: Request) -> Response:
    console = _console(request)
    form = await _form(request)
    if isinstance(form, Response):
        return form
    agent = console.agent
    detection = await run_in_threadpool(agent.detected)
    try:
        models = choose_runtime(detection, agent.options.runtime).models
    except (AgentError, BadInput) as exc:
        return await console.failure(request, 409, exc.message)
    rows, prices = read_form(form, models)
    if any(row.errors for row in rows):
        return await _invalid(request, console, rows)
    try:
        status = await run_in_threadpool(agent.register_with, replace(agent.options, prices=prices))
    except InferError as exc:
        return await console.failure(request, 502, exc.message)
    console.control.forget()
    if status.state != "online":
        return await console.failure(request, 502, status.detail)
    LOG.info("prices saved for %d models", len(prices))
    return _done(request) or await console.render(request, notice="Saved: the node is registered.")


async def _invalid(request: Request, console: Console, rows: list[PriceRow]) -> Response:
    return await console.render(request, 422, rows=rows, alert="Check the prices marked below.")


async def pause(request: Request) -> Response:
    return await _set_paused(request, paused=True)


async def resume(request: Request) -> Response:
    return await _set_paused(request, paused=False)


async def _set_paused(request: Request, *, paused: bool) -> Response:
    console = _console(request)
    form = await _form(request)
    if isinstance(form, Response):
        return form
    node = console.agent.node
    if node is None:
        return await console.failure(request, 409, "Register the node first.")
    try:
        await run_in_threadpool(console.control.set_paused, node.id, paused=paused)
    except PlatformError as exc:
        return await console.failure(request, 502, exc.message)
    LOG.info("paused: no new requests" if paused else "resumed: taking requests again")
    return _done(request) or await console.render(request)


async def api_status(request: Request) -> Response:
    console = _console(request)
    state, problem = await console.node_state()
    return JSONResponse(_status_json(console, state, problem))


async def api_pause(request: Request) -> Response:
    return await _api_set_paused(request, paused=True)


async def api_resume(request: Request) -> Response:
    return await _api_set_paused(request, paused=False)


async def _api_set_paused(request: Request, *, paused: bool) -> Response:
    console = _console(request)
    form = await _form(request)
    if isinstance(form, Response):
        return form
    node = console.agent.node
    if node is None:
        return JSONResponse({"error": "the node is not registered yet"}, status_code=409)
    try:
        state = await run_in_threadpool(console.control.set_paused, node.id, paused=paused)
    except PlatformError as exc:
        return JSONResponse({"error": exc.message}, status_code=502)
    LOG.info("paused from the tray" if paused else "resumed from the tray")
    return JSONResponse(_status_json(console, state, None))


def _status_json(console: Console, state: NodeState | None, problem: str | None) -> dict[str, Any]:
    """The tray's view: `state` is online, degraded, paused, offline, pending, or unknown."""
    if state is not None:
        return {
            "state": state.status,
            "reason": state.status_reason,
            "paused": state.paused,
            "name": state.name,
        }
    agent = console.agent.status
    if agent is not None and agent.state == "offline":
        return {"state": "offline", "reason": agent.detail, "paused": False, "name": None}
    reason = problem or ("not registered yet" if console.agent.node is None else None)
    return {"state": "unknown", "reason": reason, "paused": False, "name": None}


def create_console_app(console: Console) -> Starlette:
    """The console's ASGI app: every route behind the guard, the CSP on every answer."""
    app = Starlette(
        routes=[
            Route("/", show),
            Route("/prices", save_prices, methods=["POST"]),
            Route("/pause", pause, methods=["POST"]),
            Route("/resume", resume, methods=["POST"]),
            Route("/api/status", api_status),
            Route("/api/pause", api_pause, methods=["POST"]),
            Route("/api/resume", api_resume, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(BodySizeLimit, max_bytes=MAX_BODY),
            Middleware(ConsoleGuard, access=console.access),
        ],
    )
    app.state.console = console
    return app
