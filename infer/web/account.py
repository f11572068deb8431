"""The account page: profile, password, my sessions and my own audit log."""

from __future__ import annotations

import uuid

from starlette.responses import Response
from starlette.routing import Route

from infer.security.passwords import MIN_LENGTH
from infer.web.edge import Web, view
from infer.web.operations import OperationFailed

# What a finished form says; the URL carries only the key, so no text is reflected.
DONE = {
    "name": "Display name saved.",
    "description": "Description saved.",
    "password": "Password changed; your other sessions have ended.",
    "password-set": "Password set: you can now log in with your email and this password.",
    "session": "Session ended; that browser is signed out.",
    "google": "Google account linked: you can now sign in with Google.",
}
# The audit log's actions in words; an action not listed shows as the API names it.
ACTIONS = {
    "user.signed_up": "Signed up",
    "user.logged_in": "Logged in",
    "user.logged_out": "Logged out",
    "user.login_failed": "Failed log-in",
    "user.password_changed": "Password changed",
    "user.password_set": "Password set",
    "user.google_linked": "Google account linked",
    "user.display_name_set": "Display name set",
    "user.description_set": "Description set",
    "session.end": "Session ended",
    "api_key.created": "API key created",
    "api_key.rotated": "API key rotated",
    "api_key.revoked": "API key revoked",
    "api_key.limits_set": "API key limits set",
    "credits.granted": "Credits granted",
    "node.registered": "Node registered",
    "node.updated": "Node updated",
    "node.deregistered": "Node removed",
    "node.prices_set": "Node prices set",
    "review.created": "Review written",
    "review.updated": "Review changed",
    "review.deleted": "Review deleted",
    "review.replied": "Review answered",
}
# The API names the new password "password"; the page has three password fields.
PASSWORD_FIELDS = {"password": "new_password", "newPassword": "new_password"}
_BROWSERS = [("Edg", "Edge"), ("OPR", "Opera"), ("Firefox", "Firefox"), ("Chrome", "Chrome")]
_SYSTEMS = [
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
]


def short_agent(agent: str | None) -> str:
    """A user agent as people say it ("Firefox on Linux"), or its name when unknown."""
    if not agent:
        return "Unknown browser"
    browser = next((name for token, name in _BROWSERS if f"{token}/" in agent), None)
    if browser is None and "Safari/" in agent and "Version/" in agent:
        browser = "Safari"
    system = next((name for token, name in _SYSTEMS if token in agent), None)
    if browser:
        return f"{browser} on {system}" if system else browser
    product = agent.split("(", 1)[0].strip()  # a script's name, before any details
    return product[:40] or "Unknown browser"


async def _description(web: Web, user_id: str) -> tuple[bool, str | None]:
    """Whether I have a provider page (a node), and its description."""
    try:
        provider = (await web.run("AccountDescription", id=user_id))["provider"]
    except OperationFailed as failed:
        if failed.code == "NOT_FOUND":
            return False, None  # no node yet: the description waits for a provider page
        raise
    return True, provider["description"]


async def _render(
    web: Web,
    *,
    block: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    problems: dict[str, list[str]] | None = None,
    done: str | None = None,
) -> Response:
    after = web.request.query_params.get("after") or None
    done = done or web.request.query_params.get("done")
    account = (await web.run("Account", after=after))["me"]
    provider, description = await _description(web, account["id"])
    return await web.page(
        "account.html",
        block=block,
        status=status,
        account=account,
        provider=provider,
        description=description,
        after=after,
        form=form or {},
        errors=errors or {},
        problems=problems or {},
        done=done,
        notice=DONE.get(done or ""),
        min_length=MIN_LENGTH,
        actions=ACTIONS,
        google=web.resources.settings.google_enabled,
        short_agent=short_agent,
    )


async def _refused(web: Web, block: str, form: dict[str, str], failed: OperationFailed) -> Response:
    status = 429 if failed.code == "RATE_LIMITED" else 422
    errors = {PASSWORD_FIELDS.get(k, k): v for k, v in failed.by_field().items()}
    problems = failed.general()
    if block == "password" and failed.code == "UNAUTHENTICATED":
        errors, problems = {"current_password": str(failed)}, []  # the current one was wrong
    return await _render(
        web, block=block, status=status, form=form, errors=errors, problems={block: problems}
    )


async def account_page(web: Web) -> Response:
    # htmx GETs come from the audit log's paging links.
    return await _render(web, block="audit" if web.is_htmx else None)


async def set_display_name(web: Web) -> Response:
    form = await web.form()
    try:
        await web.run("AccountSetDisplayName", name=form.get("name", ""))
    except OperationFailed as failed:
        return await _refused(web, "profile", form, failed)
    return web.redirect("/account?done=name")


async def set_description(web: Web) -> Response:
    form = await web.form()
    try:
        await web.run("AccountSetDescription", description=form.get("description") or None)
    except OperationFailed as failed:
        return await _refused(web, "profile", form, failed)
    return web.redirect("/account?done=description")


async def change_password(web: Web) -> Response:
    form = await web.form()
    current = form.get("current_password", "")
    return await _new_password(
        web, form, "AccountChangePassword", "password", currentPassword=current
    )


async def set_password(web: Web) -> Response:
    # An account made through Google has no current password to give.
    return await _new_password(web, await web.form(), "AccountSetPassword", "password-set")


async def _new_password(
    web: Web, form: dict[str, str], operation: str, done: str, **variables: str
) -> Response:
    """Both password forms: the repeat must match, then the API checks the rest."""
    new = form.get("new_password", "")
    if new != form.get("repeat_password", ""):
        errors = {"repeat_password": "the two new passwords are not the same"}
        return await _render(web, block="password", status=422, errors=errors)
    try:
        await web.run(operation, newPassword=new, **variables)
    except OperationFailed as failed:
        return await _refused(web, "password", {}, failed)
    return web.redirect(f"/account?done={done}")


def _is_this_session(web: Web, session_id: str) -> bool:
    try:
        return web.principal is not None and uuid.UUID(session_id) == web.principal.session_id
    except ValueError:
        return False


async def end_session(web: Web) -> Response:
    session_id: str = web.request.path_params["id"]
    ending_this = _is_this_session(web, session_id)
    await web.run("AccountEndSession", id=session_id)  # another's or a gone one: 404
    if ending_this:
        return web.redirect("/login?next=%2Faccount&ended=1")  # signed out: the page says so
    if web.is_htmx:
        return await _render(web, block="sessions", done="session")
    return web.redirect("/account?done=session#sessions")


routes = [
    Route("/account", view(account_page), methods=["GET"]),
    Route("/account/name", view(set_display_name), methods=["POST"]),
    Route("/account/description", view(set_description), methods=["POST"]),
    Route("/account/password", view(change_password), methods=["POST"]),
    Route("/account/password/set", view(set_password), methods=["POST"]),
    Route("/account/sessions/{id}/end", view(end_session), methods=["POST"]),
]
