"""The marketplace pages: catalogue and providers for anyone, a model's offers, a provider's
page, and reviews written, edited and deleted through the forms by a buyer the provider served."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from dashboard import PASSWORD, Dashboard, Page
from test_gateway import Market, market, platform_settings, simulator
from test_marketplace_reviews import _buy_once, _review_count, _user_id

__all__ = ["market", "platform_settings", "simulator"]  # fixtures shared with test_gateway

XSS = "<script>alert(1)</script>"


@pytest.fixture
async def listed(market: Market, simulator: str) -> str:
    """The operator's provider id, with one online node selling llama3.2:1b at $1 / $2."""
    await market.add_node(simulator, "n1")
    return str(await _user_id(market.db, "operator@example.com"))


@pytest.fixture
async def browser(market: Market) -> AsyncIterator[Dashboard]:
    async with httpx.AsyncClient(base_url=market.url, timeout=30) as http:
        yield Dashboard(http)


async def _log_in_buyer(browser: Dashboard) -> None:
    await browser.get("/login")
    page = await browser.post("/login", {"email": "buyer@example.com", "password": PASSWORD})
    assert page.status == 303, page.text


async def _provider(browser: Dashboard, provider: str) -> Page:
    page = await browser.get(f"/marketplace/providers/{provider}")
    assert page.status == 200, page.text
    return page


async def test_anyone_sees_the_catalogue_and_the_providers(browser: Dashboard, listed: str) -> None:
    models = await browser.get("/marketplace")
    assert models.status == 200
    assert "llama3.2:1b" in models
    assert "$1.00" in models
    assert "$2.00" in models
    assert "Log in" in models
    assert "Sign up" in models
    assert 'href="/marketplace/models/llama3.2%3A1b"' in models.html
    providers = await browser.get("/marketplace?view=providers")
    assert f'href="/marketplace/providers/{listed}"' in providers.html
    assert "unrated" in providers
    assert 'title="Not enough data yet' in providers.html  # no traffic measured yet


async def test_filters_and_sort_narrow_the_list_and_stay_in_the_url(
    browser: Dashboard, listed: str
) -> None:
    cheap = await browser.get("/marketplace?view=models&max_price=2.5&sort=price")
    assert "llama3.2:1b" not in cheap  # $1 + $2 a million is more than $2.50
    assert "No models match" in cheap
    assert 'value="2.5"' in cheap.html
    assert '<option value="price" selected>' in cheap.html
    roomy = await browser.get("/marketplace?view=models&max_price=3")
    assert "llama3.2:1b" in roomy
    rated = await browser.get("/marketplace?view=providers&min_rating=4")
    assert f"/marketplace/providers/{listed}" not in rated.html  # nobody rated it yet
    block = await browser.get("/marketplace?view=models&search=llama", htmx=True)
    assert block.html.lstrip().startswith('<section id="listing"')
    assert "<html" not in block.html
    assert "llama3.2:1b" in block
    assert "HX-Request" in block.response.headers["vary"]


async def test_a_bad_filter_is_shown_beside_its_field(browser: Dashboard, listed: str) -> None:
    page = await browser.get("/marketplace?view=models&max_price=lots")
    assert page.status == 422
    assert "A price in USD per million tokens" in page
    assert 'aria-invalid="true"' in page.html
    junk = await browser.get("/marketplace?view=providers&after=forged&capability=magic")
    assert junk.status == 422
    assert "Choose one of" in junk


async def test_a_model_page_lists_its_offers_and_unknown_models_are_404(
    browser: Dashboard, listed: str
) -> None:
    page = await browser.get("/marketplace/models/llama3.2:1b")
    assert page.status == 200
    assert "Offers" in page
    assert "$1.00" in page
    assert f'href="/marketplace/providers/{listed}"' in page.html
    for name in ["org/nothing:7b", "nothing", XSS]:
        missing = await browser.get(f"/marketplace/models/{name}")
        assert missing.status == 404, name
        assert "<script>alert" not in missing.html


async def test_unknown_or_malformed_provider_ids_are_404(browser: Dashboard, listed: str) -> None:
    for provider in [str(uuid.uuid4()), "not-an-id", "%3Cscript%3E"]:
        page = await browser.get(f"/marketplace/providers/{provider}")
        assert page.status == 404, provider
        assert "<script>" not in page.html.split("</head>")[1]


async def test_a_served_buyer_writes_edits_and_deletes_a_review(
    market: Market, browser: Dashboard, listed: str
) -> None:
    await _buy_once(market)
    await _log_in_buyer(browser)
    assert "Write a review" in await _provider(browser, listed)

    made = await browser.post(
        f"/marketplace/providers/{listed}/review", {"rating": "4", "comment": XSS}
    )
    assert made.status == 303
    page = await _provider(browser, listed)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert XSS not in page.html
    assert "verified purchase" in page
    assert "Your review" in page
    assert "4.0 out of 5" in page
    review = page.html.split('name="review" value="')[1].split('"')[0]

    edited = await browser.post(
        f"/marketplace/providers/{listed}/review",
        {"review": review, "rating": "2", "comment": "slower today"},
        htmx=True,
    )
    assert edited.status == 204
    assert edited.response.headers["hx-redirect"] == f"/marketplace/providers/{listed}#reviews"
    page = await _provider(browser, listed)
    assert "slower today" in page
    assert "2.0 out of 5" in page

    gone = await browser.post(f"/marketplace/providers/{listed}/review/delete", {"review": review})
    assert gone.status == 303
    page = await _provider(browser, listed)
    assert "No reviews yet" in page
    assert "Write a review" in page
    assert await _review_count(market.db) == 0


async def test_a_missing_rating_is_shown_beside_the_stars(
    market: Market, browser: Dashboard, listed: str
) -> None:
    await _buy_once(market)
    await _log_in_buyer(browser)
    await _provider(browser, listed)
    page = await browser.post(
        f"/marketplace/providers/{listed}/review", {"comment": "kept"}, htmx=True
    )
    assert page.status == 422
    assert page.html.lstrip().startswith('<div id="review"')
    assert "Choose from 1 to 5 stars" in page
    assert "kept" in page
    assert await _review_count(market.db) == 0


async def test_a_buyer_the_provider_never_served_is_refused_inline(
    market: Market, browser: Dashboard, listed: str
) -> None:
    await browser.sign_up("stranger@example.com")
    await _provider(browser, listed)
    page = await browser.post(f"/marketplace/providers/{listed}/review", {"rating": "5"})
    assert page.status == 422
    assert "only buyers with a settled request with this provider may review it" in page
    assert "<html" in page.html
    assert "Write a review" in page
    block = await browser.post(
        f"/marketplace/providers/{listed}/review", {"rating": "5"}, htmx=True
    )
    assert block.status == 422
    assert "<html" not in block.html
    assert await _review_count(market.db) == 0


async def test_a_review_without_the_csrf_token_is_refused(
    market: Market, browser: Dashboard, listed: str
) -> None:
    await _buy_once(market)
    await _log_in_buyer(browser)
    response = await browser.http.post(
        f"/marketplace/providers/{listed}/review",
        data={"rating": "5"},
        headers={"Origin": market.url},
    )
    assert response.status_code == 403
    assert await _review_count(market.db) == 0


async def test_signed_out_visitors_are_asked_to_log_in_to_review(
    browser: Dashboard, listed: str
) -> None:
    page = await _provider(browser, listed)
    assert "Log in to review" in page
    await browser.get("/marketplace")
    posted = await browser.post(f"/marketplace/providers/{listed}/review", {"rating": "5"})
    assert posted.status == 303
    assert posted.response.headers["location"].startswith("/login")


async def test_a_provider_description_is_escaped(
    market: Market, browser: Dashboard, listed: str
) -> None:
    response = await market.http.post(
        "/graphql",
        json={
            "query": "mutation($d: String) { updateProviderProfile(description: $d) { id } }",
            "variables": {"d": XSS},
        },
        headers={"Authorization": f"Bearer {market.operator_key}"},
    )
    assert "errors" not in response.json(), response.json()
    page = await _provider(browser, listed)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html
    assert XSS not in page.html
