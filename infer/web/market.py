"""The marketplace: the model catalogue, the providers, a model's offers, a provider and reviews."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, urlencode

from starlette.responses import Response
from starlette.routing import Route

from infer.web.edge import Web, public_view, view
from infer.web.operations import OperationFailed

MODELS, PROVIDERS = "models", "providers"
PAGE = 50  # rows of a listing (the providers listing allows at most 50)
REVIEWS = 10
CAPABILITIES = ("completion", "tools", "vision", "embedding", "thinking")
MODEL_SORTS = {
    "name": "NAME",
    "price": "PRICE",
    "popular": "POPULARITY",
    "context": "CONTEXT_LENGTH",
}
PROVIDER_SORTS = {
    "rating": "RATING",
    "price": "PRICE",
    "latency": "LATENCY",
    "throughput": "THROUGHPUT",
    "uptime": "UPTIME",
}
# What the API answers when a buyer may not write that review, or wrote it wrong: shown
# beside the form. Anything else (an unknown provider, a signed-out buyer) is the edge's.
REFUSALS = {"BAD_USER_INPUT", "FORBIDDEN", "CONFLICT"}
FORM_FIELDS = ("rating", "comment")


def _price(text: str) -> str | None:
    try:
        price = Decimal(text)
    except InvalidOperation:
        return None
    return str(price) if price.is_finite() and 0 <= price <= 1_000_000 else None


def _whole(text: str, low: int, high: int) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if low <= value <= high else None


def listing_filter(form: dict[str, str], tab: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The API's filter from the filter form's fields, and a message per wrong field."""
    found: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if form.get("search"):
        found["search"] = form["search"]
    if capability := form.get("capability"):
        if capability in CAPABILITIES:
            found["capability"] = capability
        else:
            errors["capability"] = f"Choose one of: {', '.join(CAPABILITIES)}."
    if form.get("max_price"):
        if (price := _price(form["max_price"])) is None:
            errors["max_price"] = "A price in USD per million tokens, such as 2.50."
        found["maxPrice"] = price
    if tab == MODELS and form.get("min_context"):
        if (context := _whole(form["min_context"], 0, 100_000_000)) is None:
            errors["min_context"] = "A number of tokens, such as 8192."
        found["minContextLength"] = context
    if tab == PROVIDERS and form.get("min_rating"):
        if (rating := _whole(form["min_rating"], 1, 5)) is None:
            errors["min_rating"] = "From 1 to 5 stars."
        found["minRating"] = rating
    return found, errors


async def _rows(web: Web, tab: str, form: dict[str, str], found: dict[str, Any]) -> list[Any]:
    sorts = MODEL_SORTS if tab == MODELS else PROVIDER_SORTS
    sort = sorts.get(form.get("sort", ""), next(iter(sorts.values())))
    operation = "MarketModels" if tab == MODELS else "MarketProviders"
    variables = {"filter": found or None, "sort": sort, "first": PAGE, "after": form.get("after")}
    rows: list[Any] = (await web.run(operation, **variables))[tab]
    return rows


async def marketplace(web: Web) -> Response:
    form = {name: value.strip() for name, value in web.request.query_params.items()}
    tab = PROVIDERS if form.get("view") == PROVIDERS else MODELS
    found, errors = listing_filter(form, tab)
    rows: list[Any] = []
    problems: list[str] = []
    if not errors:
        try:
            rows = await _rows(web, tab, form, found)
        except OperationFailed as failed:
            if failed.code != "BAD_USER_INPUT":
                raise
            problems = failed.general() + list(failed.by_field().values())
    more = None
    if len(rows) == PAGE and rows[-1].get("cursor"):
        more = "/marketplace?" + urlencode({**form, "view": tab, "after": rows[-1]["cursor"]})
    return await web.page(
        "market.html",
        block="listing",
        status=422 if errors or problems else 200,
        tab=tab,
        form=form,
        rows=rows,
        errors=errors,
        problems=problems,
        more=more,
        capabilities=[("", "Any"), *((c, c) for c in CAPABILITIES)],
    )


async def model_page(web: Web) -> Response:
    name = web.request.path_params["name"]
    model = (await web.run("MarketModel", name=name))["model"]
    return await web.page("model.html", model=model)


def distribution(counts: list[dict[str, int]]) -> list[tuple[int, int]]:
    """(stars, reviews) from 5 down to 1, with the stars nobody gave as 0."""
    by_stars = {row["stars"]: row["count"] for row in counts}
    return [(stars, by_stars.get(stars, 0)) for stars in range(5, 0, -1)]


async def _provider(
    web: Web,
    provider_id: str,
    *,
    block: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    problems: list[str] | None = None,
) -> Response:
    after = web.request.query_params.get("after") or None
    variables = {"id": provider_id, "first": REVIEWS, "after": after}
    provider = (await web.run("MarketProvider", **variables))["provider"]
    return await web.page(
        "provider.html",
        block=block,
        status=status,
        provider=provider,
        after=after,
        stars=distribution(provider["ratingDistribution"]),
        signed_in=web.principal is not None,
        form=form or {},
        errors=errors or {},
        problems=problems or [],
    )


async def provider_page(web: Web) -> Response:
    return await _provider(web, web.request.path_params["id"])


async def _write_review(web: Web, provider_id: str, form: dict[str, str], rating: int) -> None:
    comment = form.get("comment", "")
    if form.get("review"):  # an empty comment clears the one the review had
        await web.run("MarketUpdateReview", id=form["review"], rating=rating, comment=comment)
    else:
        await web.run(
            "MarketCreateReview", providerId=provider_id, rating=rating, comment=comment or None
        )


async def save_review(web: Web) -> Response:
    """Writes the buyer's review, or changes it when the form names it."""
    provider_id = web.request.path_params["id"]
    form = await web.form()
    refused = _provider_with_errors(web, provider_id, form)
    rating = _whole(form.get("rating", ""), 1, 5)
    if rating is None:
        return await refused({"rating": "Choose from 1 to 5 stars."}, [])
    try:
        await _write_review(web, provider_id, form, rating)
    except OperationFailed as failed:
        if failed.code not in REFUSALS:
            raise
        fields = failed.by_field()
        errors = {k: v for k, v in fields.items() if k in FORM_FIELDS}
        return await refused(
            errors, failed.general() + [v for k, v in fields.items() if k not in errors]
        )
    return web.redirect(f"/marketplace/providers/{quote(provider_id, safe='')}#reviews")


def _provider_with_errors(
    web: Web, provider_id: str, form: dict[str, str]
) -> Callable[[dict[str, str], list[str]], Awaitable[Response]]:
    """The review block again (the page without JS), with what was typed and what is wrong."""

    async def render(errors: dict[str, str], problems: list[str]) -> Response:
        return await _provider(
            web,
            provider_id,
            block="review",
            status=422,
            form=form,
            errors=errors,
            problems=problems,
        )

    return render


async def delete_review(web: Web) -> Response:
    provider_id = web.request.path_params["id"]
    form = await web.form()
    await web.run("MarketDeleteReview", id=form.get("review", ""))
    return web.redirect(f"/marketplace/providers/{quote(provider_id, safe='')}#reviews")


routes = [
    Route("/marketplace", public_view(marketplace), methods=["GET"]),
    Route("/marketplace/models/{name:path}", public_view(model_page), methods=["GET"]),
    Route("/marketplace/providers/{id}", public_view(provider_page), methods=["GET"]),
    Route("/marketplace/providers/{id}/review", view(save_review), methods=["POST"]),
    Route("/marketplace/providers/{id}/review/delete", view(delete_review), methods=["POST"]),
]
