"""Sign up, log in and log out: the forms, and where they lead."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from infer.security.passwords import MIN_LENGTH
from infer.web.edge import Web, public_view, safe_next
from infer.web.operations import OperationFailed


async def _form_page(
    web: Web, template: str, block: str, *, failed: OperationFailed | None = None
) -> Response:
    form = await web.form() if web.request.method == "POST" else {}
    next_ = safe_next(form.get("next") or web.request.query_params.get("next"))
    status = 200 if failed is None else (429 if failed.code == "RATE_LIMITED" else 422)
    return await web.page(
        template,
        block=block if failed else None,
        status=status,
        form=form,
        next=next_,
        errors=failed.by_field() if failed else {},
        problems=failed.general() if failed else [],
        ended=web.request.query_params.get("ended") == "1",
        google=web.resources.settings.google_enabled,
        min_length=MIN_LENGTH,
    )


async def log_in_page(web: Web) -> Response:
    if web.principal is not None:
        return web.redirect(safe_next(web.request.query_params.get("next")))
    return await _form_page(web, "login.html", "login_form")


async def _submit(web: Web, operation: str, template: str, block: str) -> Response:
    """Sign up or log in with the form's email and password, then go where `next` says."""
    form = await web.form()
    try:
        await web.run(operation, email=form.get("email", ""), password=form.get("password", ""))
    except OperationFailed as failed:
        return await _form_page(web, template, block, failed=failed)
    return web.redirect(safe_next(form.get("next")))


async def log_in(web: Web) -> Response:
    return await _submit(web, "LogIn", "login.html", "login_form")


async def sign_up_page(web: Web) -> Response:
    if web.principal is not None:
        return web.redirect("/")
    return await _form_page(web, "signup.html", "signup_form")


async def sign_up(web: Web) -> Response:
    return await _submit(web, "SignUp", "signup.html", "signup_form")


async def log_out(web: Web) -> Response:
    if web.principal is not None:
        await web.run("LogOut")
    return web.redirect("/login")


routes = [
    Route("/login", public_view(log_in_page), methods=["GET"]),
    Route("/login", public_view(log_in), methods=["POST"]),
    Route("/signup", public_view(sign_up_page), methods=["GET"]),
    Route("/signup", public_view(sign_up), methods=["POST"]),
    Route("/logout", public_view(log_out), methods=["POST"]),
]
