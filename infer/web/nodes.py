"""The operator's nodes: the list with its self-refreshing status, registering a node,
and enrolment codes for new ones."""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from infer.web.edge import Web, view
from infer.web.operations import OperationFailed

RUNTIMES = {"OLLAMA": "Ollama", "EXO": "Exo", "OPENAI": "OpenAI-compatible"}
REGISTER_FIELDS = ("name", "runtime", "endpoint", "token", "capacity")
# Digits only, and few enough that GraphQL's 32-bit Int takes them; the API checks the range.
_WHOLE = re.compile(r"[0-9]{1,9}")
CAPACITY_ERROR = "Capacity is a whole number of concurrent requests, such as 4."


def capacity_of(text: str, errors: dict[str, str]) -> int | None:
    """The capacity field as a number (None when left empty); a note in errors if not one."""
    if not text:
        return None
    if not _WHOLE.fullmatch(text):
        errors["capacity"] = CAPACITY_ERROR
        return None
    return int(text)


def split_problems(
    failed: OperationFailed, fields: tuple[str, ...]
) -> tuple[dict[str, str], list[str]]:
    """The API's messages beside the form's own fields; the rest above the form."""
    by_field = failed.by_field()
    errors = {name: message for name, message in by_field.items() if name in fields}
    others = [message for name, message in by_field.items() if name not in fields]
    return errors, failed.general() + others


def registration(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """RegisterNodeInput from the form, and the mistakes the API would word less kindly."""
    errors: dict[str, str] = {}
    runtime = form.get("runtime", "")
    if runtime not in RUNTIMES:
        errors["runtime"] = "Choose the kind of runtime: Ollama, Exo or OpenAI-compatible."
    registration: dict[str, Any] = {
        "name": form.get("name", ""),
        "runtime": runtime,
        "endpoint": form.get("endpoint", ""),
    }
    if form.get("token"):
        registration["token"] = form["token"]
    capacity = capacity_of(form.get("capacity", ""), errors)
    if capacity is not None:
        registration["capacity"] = capacity
    return registration, errors


async def render_nodes(
    web: Web,
    *,
    block: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    problems: list[str] | None = None,
    enrollment: dict[str, Any] | None = None,
    enrol_problems: list[str] | None = None,
) -> Response:
    nodes = (await web.run("OperatorNodes"))["me"]["nodes"]
    return await web.page(
        "nodes.html",
        block=block,
        status=status,
        nodes=nodes,
        enrollment=enrollment,
        enrol_problems=enrol_problems or [],
        runtimes=RUNTIMES,
        form=form or {"runtime": "OLLAMA"},
        errors=errors or {},
        problems=problems or [],
    )


async def nodes_page(web: Web) -> Response:
    return await render_nodes(web, block="node_status")


async def register_node(web: Web) -> Response:
    form = await web.form()
    shown = {k: v for k, v in form.items() if k in REGISTER_FIELDS and k != "token"}
    node, errors = registration(form)
    if not errors:
        try:
            created = (await web.run("OperatorRegisterNode", input=node))["registerNode"]
        except OperationFailed as failed:
            if failed.code not in ("BAD_USER_INPUT", "CONFLICT"):
                raise
            errors, problems = split_problems(failed, REGISTER_FIELDS)
        else:
            return web.redirect(f"/nodes/{created['id']}")
        return await render_nodes(
            web, block="register_form", status=422, form=shown, errors=errors, problems=problems
        )
    return await render_nodes(web, block="register_form", status=422, form=shown, errors=errors)


async def create_enrollment_code(web: Web) -> Response:
    """A one-time code and its join command, rendered here: it must not travel in a URL."""
    try:
        issued = (await web.run("OperatorCreateEnrollmentCode"))["createEnrollmentCode"]
    except OperationFailed as failed:
        if failed.code != "BAD_USER_INPUT":
            raise
        problems = failed.general() + list(failed.by_field().values())
        return await render_nodes(web, block="enrol", status=422, enrol_problems=problems)
    return await render_nodes(web, block="enrol", status=201, enrollment=issued)


routes = [
    Route("/nodes", view(nodes_page), methods=["GET"]),
    Route("/nodes", view(register_node), methods=["POST"]),
    Route("/nodes/enrol", view(create_enrollment_code), methods=["POST"]),
]
