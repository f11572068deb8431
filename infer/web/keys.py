"""The API keys page: my keys, their limits, budgets and usage; create, rotate, revoke, set
limits and budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from infer.billing.money import format_usd, parse_usd
from infer.errors import BadInput
from infer.web.edge import STATUS_OF, Web, view
from infer.web.operations import OperationFailed
from infer.web.templates import parse_time

DAYS = 30
GRACE_PERIODS = [(0, "End it now"), (3600, "1 hour"), (86400, "24 hours"), (604800, "7 days")]
# GraphQL Int is 32 bits: a larger number would fail as a malformed request, not as a
# value out of range, so it is clamped and the API names its own range.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
INLINE = {"BAD_USER_INPUT", "CONFLICT"}  # failures shown beside the form, not as a page
NOT_A_NUMBER = "Enter a whole number, or leave it empty for the platform's default."
# What each scope lets a key do, as the create form offers them (all ticked by default).
SCOPES = [
    ("GATEWAY", "Call the API", "chat completions and models at /api/v1"),
    ("NODES", "Manage nodes", "register, update and pause your nodes"),
    ("ACCOUNT", "Manage the account", "keys, balance, usage, reviews, settings"),
]
RESETS = [("NEVER", "Never"), ("DAILY", "Daily"), ("WEEKLY", "Weekly"), ("MONTHLY", "Monthly")]


@dataclass
class Failure:
    """A form that came back with errors: which one, what was sent, what is wrong."""

    form: str  # "create", or "rotate" / "limits" / "budget" of key_id
    values: dict[str, str]
    key_id: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, failed: OperationFailed) -> Failure:
        self.errors |= failed.by_field()
        self.problems += failed.general()
        return self


def key_state(key: dict[str, Any], now: datetime, replaced: set[str]) -> str:
    """active, retiring (a rotated key in its grace period: another key replaced it),
    revoked or expired (an expiry set with its budget, or a grace period that ended)."""
    if key["revokedAt"] is not None:
        return "revoked"
    expires = parse_time(key["expiresAt"])
    if expires is not None and expires <= now:
        return "expired"
    return "retiring" if expires is not None and key["id"] in replaced else "active"


def _inline_status(failed: OperationFailed) -> int:
    """The status of a failure shown in its form; any other goes to the error page."""
    if failed.code not in INLINE:
        raise failed
    return STATUS_OF[failed.code]


def _whole_number(text: str) -> int:
    return max(INT_MIN, min(INT_MAX, int(text)))


async def _render(
    web: Web,
    *,
    status: int = 200,
    issued: dict[str, Any] | None = None,
    failure: Failure | None = None,
    notice: str | None = None,
) -> Response:
    now = datetime.now(UTC)
    start = (now - timedelta(days=DAYS - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    me = (await web.run("KeysPage", **{"from": start.isoformat()}))["me"]
    replaced = {key["rotatedFromId"] for key in me["apiKeys"] if key["rotatedFromId"]}
    keys = [{**key, "state": key_state(key, now, replaced)} for key in me["apiKeys"]]
    if failure and failure.key_id and all(key["id"] != failure.key_id for key in keys):
        return await web.failure(404, "no such API key")
    return await web.page(
        "keys.html",
        block="keys",
        status=status,
        live=[key for key in keys if key["state"] in ("active", "retiring")],
        ended=[key for key in keys if key["state"] not in ("active", "retiring")],
        usage={bucket["key"]: bucket for bucket in me["usage"]["byKey"]},
        issued=issued,
        failure=failure,
        notice=notice,
        grace_periods=GRACE_PERIODS,
        days=DAYS,
        origin=web.resources.settings.public_origin,
        scopes=SCOPES,
        resets=RESETS,
    )


async def keys_page(web: Web) -> Response:
    return await _render(web)


async def create_key(web: Web) -> Response:
    form = await web.form()
    # The page's form marks its checkboxes; a form without them gets the API's default (all).
    scopes = None
    if form.get("scopes") == "chosen":
        scopes = [scope for scope, _, _ in SCOPES if form.get(f"scope_{scope.lower()}") == "on"]
    try:
        data = await web.run("KeysCreate", name=form.get("name", ""), scopes=scopes)
    except OperationFailed as failed:
        status = _inline_status(failed)
        return await _render(web, status=status, failure=Failure("create", form).add(failed))
    # Rendered here, never redirected: the secret must not travel in a URL or a cookie.
    return await _render(web, status=201, issued=data["createApiKey"])


async def rotate_key(web: Web) -> Response:
    key_id, form = web.request.path_params["id"], await web.form()
    failure = Failure("rotate", form, key_id=key_id)
    try:
        grace = _whole_number(form.get("gracePeriodSeconds", "0") or "0")
        data = await web.run("KeysRotate", id=key_id, gracePeriodSeconds=grace)
    except ValueError:
        failure.errors["gracePeriodSeconds"] = "Choose how long the old secret keeps working."
        return await _render(web, status=422, failure=failure)
    except OperationFailed as failed:
        return await _render(web, status=_inline_status(failed), failure=failure.add(failed))
    return await _render(web, issued={**data["rotateApiKey"], "rotated": True})


async def revoke_key(web: Web) -> Response:
    key = (await web.run("KeysRevoke", id=web.request.path_params["id"]))["revokeApiKey"]
    if not web.is_htmx:
        return web.redirect("/keys")
    return await _render(web, notice=f"“{key['name']}” is revoked: it no longer works.")


async def set_limits(web: Web) -> Response:
    key_id, form = web.request.path_params["id"], await web.form()
    failure = Failure("limits", form, key_id=key_id)
    limits: dict[str, int | None] = {}
    for name in ("requestsPerMinute", "tokensPerMinute"):
        try:
            limits[name] = _whole_number(form[name]) if form.get(name) else None
        except ValueError:
            failure.errors[name] = NOT_A_NUMBER
    if failure.errors:
        return await _render(web, status=422, failure=failure)
    try:
        key = (await web.run("KeysSetLimits", id=key_id, **limits))["setApiKeyLimits"]
    except OperationFailed as failed:
        return await _render(web, status=_inline_status(failed), failure=failure.add(failed))
    if not web.is_htmx:
        return web.redirect("/keys")
    return await _render(web, notice=f"The limits of “{key['name']}” are saved.")


async def set_budget(web: Web) -> Response:
    key_id, form = web.request.path_params["id"], await web.form()
    failure = Failure("budget", form, key_id=key_id)
    limit = form.get("spendLimit", "").strip()
    reset = form.get("reset", "NEVER")
    models = [name.strip() for name in form.get("models", "").split(",") if name.strip()]
    try:
        spend_limit = format_usd(parse_usd(limit, param="spendLimit")) if limit else None
    except BadInput as error:
        failure.errors["spendLimit"] = error.message
    if reset not in {value for value, _ in RESETS}:
        failure.errors["reset"] = "Choose when the budget starts again."
    if failure.errors:
        return await _render(web, status=422, failure=failure)
    variables = {"spendLimit": spend_limit, "reset": reset, "models": models or None}
    try:
        key = (await web.run("KeysSetBudget", id=key_id, **variables))["setApiKeyBudget"]
    except OperationFailed as failed:
        return await _render(web, status=_inline_status(failed), failure=failure.add(failed))
    if not web.is_htmx:
        return web.redirect("/keys")
    return await _render(web, notice=f"The budget of “{key['name']}” is saved.")


routes = [
    Route("/keys", view(keys_page), methods=["GET"]),
    Route("/keys", view(create_key), methods=["POST"]),
    Route("/keys/{id}/rotate", view(rotate_key), methods=["POST"]),
    Route("/keys/{id}/revoke", view(revoke_key), methods=["POST"]),
    Route("/keys/{id}/limits", view(set_limits), methods=["POST"]),
    Route("/keys/{id}/budget", view(set_budget), methods=["POST"]),
]
