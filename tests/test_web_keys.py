"""The API keys page: the secret shown once, rotation, revocation, limits, errors, others' keys."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from dashboard import Dashboard, Page
from sqlmodel import col

from infer.db import Database
from infer.models import ApiKey, UsageRecord, User

SECRET = re.compile(r'id="new-secret"[^>]*value="([^"]+)"')
KEY_ID = re.compile(r'id="key-([0-9a-f-]{36})"')


@pytest.fixture
def dashboard(client: httpx.AsyncClient) -> Dashboard:
    return Dashboard(client)


async def _models(dashboard: Dashboard, secret: str) -> int:
    response = await dashboard.http.get(
        "/api/v1/models", headers={"Authorization": f"Bearer {secret}"}
    )
    return response.status_code


async def _create(dashboard: Dashboard, name: str = "laptop") -> tuple[str, str]:
    """A new key's id and secret, made with the form."""
    await dashboard.get("/keys")
    page = await dashboard.post("/keys", {"name": name})
    assert page.status == 201, page.text
    secret = SECRET.search(page.html)
    key_id = KEY_ID.search(page.html)
    assert secret
    assert key_id
    return key_id.group(1), secret.group(1)


async def _signed_up(dashboard: Dashboard) -> Dashboard:
    await dashboard.sign_up("ada@example.com")
    return dashboard


async def test_a_new_key_is_shown_once_and_works(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    await dashboard.get("/keys")
    page = await dashboard.post("/keys", {"name": "laptop"})
    assert page.status == 201
    assert page.response.headers["cache-control"] == "no-store"
    assert "will not be shown again" in page
    match = SECRET.search(page.html)
    assert match
    secret = match.group(1)
    assert re.search(r'id="new-secret"[^>]*readonly', page.html)
    assert 'data-copy="#new-secret"' in page.html
    assert secret not in page.response.headers.get("location", "")
    assert secret not in page.response.headers.get("set-cookie", "")
    assert await _models(dashboard, secret) == 200
    later = await dashboard.get("/keys")
    assert secret not in later.html
    assert "laptop" in later
    assert "Active" in later


async def test_with_htmx_create_answers_the_secret_and_the_list_only(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    await dashboard.get("/keys")
    page = await dashboard.post("/keys", {"name": "ci"}, htmx=True)
    assert page.status == 201
    assert "<html" not in page.html
    assert page.html.lstrip().startswith('<div id="keys">')
    assert SECRET.search(page.html)
    assert KEY_ID.search(page.html)  # the refreshed list holds the new key
    assert "HX-Request" in page.response.headers["vary"]


async def test_the_page_block_alone_for_htmx(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    await _create(dashboard)
    page = await dashboard.get("/keys", htmx=True)
    assert page.status == 200
    assert "<html" not in page.html
    assert "laptop" in page


async def test_rotation_with_grace_keeps_the_old_secret_until_it_retires(
    dashboard: Dashboard,
) -> None:
    await _signed_up(dashboard)
    key_id, old = await _create(dashboard)
    page = await dashboard.post(f"/keys/{key_id}/rotate", {"gracePeriodSeconds": "3600"})
    assert page.status == 200
    assert "will not be shown again" in page
    assert "New secret for “laptop”" in page
    match = SECRET.search(page.html)
    assert match
    assert match.group(1) != old
    assert await _models(dashboard, old) == 200
    assert await _models(dashboard, match.group(1)) == 200
    assert "Retiring until" in await dashboard.get("/keys")


async def test_a_retiring_key_stops_working_at_its_expiry(
    dashboard: Dashboard, db: Database
) -> None:
    await _signed_up(dashboard)
    key_id, old = await _create(dashboard)
    await dashboard.post(f"/keys/{key_id}/rotate", {"gracePeriodSeconds": "604800"})
    async with db.transaction() as session:  # a week later
        await session.exec(
            sa.update(ApiKey)
            .where(col(ApiKey.id) == uuid.UUID(key_id))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await _models(dashboard, old) == 401
    page = await dashboard.get("/keys")
    assert "Expired" in page
    assert "Retiring" not in page


async def test_a_key_with_an_expiry_of_its_own_is_active_until_then_not_retiring(
    dashboard: Dashboard, db: Database
) -> None:
    await _signed_up(dashboard)
    key_id, _ = await _create(dashboard)
    async with db.transaction() as session:  # as setApiKeyBudget(expiresAt: …) sets it
        await session.exec(
            sa.update(ApiKey)
            .where(col(ApiKey.id) == uuid.UUID(key_id))
            .values(expires_at=datetime.now(UTC) + timedelta(days=3))
        )
    page = await dashboard.get("/keys")
    assert "Active until" in page
    assert "Retiring" not in page


async def test_rotation_now_ends_the_old_secret(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    key_id, old = await _create(dashboard)
    page = await dashboard.post(f"/keys/{key_id}/rotate", {"gracePeriodSeconds": "0"}, htmx=True)
    assert page.status == 200
    assert "<html" not in page.html
    assert SECRET.search(page.html)
    assert await _models(dashboard, old) == 401
    assert "Revoked" in await dashboard.get("/keys")


async def test_a_bad_grace_period_is_shown_beside_it(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    key_id, old = await _create(dashboard)
    for grace in ("soon", "9999999999"):
        page = await dashboard.post(f"/keys/{key_id}/rotate", {"gracePeriodSeconds": grace})
        assert page.status == 422
        assert 'aria-invalid="true"' in page.html
    assert "0 to 604800 seconds" in page
    assert "Retiring" not in page
    assert await _models(dashboard, old) == 200


async def test_each_key_shows_its_usage_over_30_days(dashboard: Dashboard, db: Database) -> None:
    await _signed_up(dashboard)
    key_id, _ = await _create(dashboard, "busy")
    await _create(dashboard, "idle")
    now = datetime.now(UTC)
    async with db.transaction() as session:
        buyer = (await session.exec(sa.select(User.id))).one()[0]
        for n, (cost, age) in enumerate([(1_500_000, 0), (250_000, 3), (9_000_000, 40)]):
            session.add(
                UsageRecord(
                    request_id=f"r{n}",
                    buyer_id=buyer,
                    api_key_id=uuid.UUID(key_id),
                    model="llama3.2",
                    cost=cost,
                    status="completed",
                    created_at=now - timedelta(days=age),
                )
            )
    page = await dashboard.get("/keys")
    busy = re.search(rf'id="key-{key_id}".*?</dl>', page.html, re.S)
    assert busy
    assert "Requests, 30 days</dt><dd>2<" in busy.group(0)
    assert "Spent, 30 days</dt><dd>$1.75<" in busy.group(0)
    assert page.html.count("Spent, 30 days</dt><dd>$0.00<") == 1  # the idle key


async def test_revoking_with_the_form_ends_the_key_at_once(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    key_id, secret = await _create(dashboard)
    page = await dashboard.post(f"/keys/{key_id}/revoke")
    assert page.status == 303
    assert await _models(dashboard, secret) == 401
    listing = await dashboard.get("/keys")
    assert "Revoked" in listing
    assert "no active keys" in listing


async def test_revoking_with_htmx_answers_the_block(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    key_id, secret = await _create(dashboard, "old laptop")
    page = await dashboard.post(f"/keys/{key_id}/revoke", htmx=True)
    assert page.status == 200
    assert "<html" not in page.html
    assert "“old laptop” is revoked" in page
    assert await _models(dashboard, secret) == 401


async def test_the_revoke_button_is_behind_a_confirmation(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    key_id, _ = await _create(dashboard, "prod")
    page = await dashboard.get("/keys")
    confirm = re.search(r'<details class="confirm">(.*?)</details>', page.html, re.S)
    assert confirm
    assert f'action="/keys/{key_id}/revoke"' in confirm.group(1)
    assert "Yes, revoke “prod”" in Page(httpx.Response(200, text=confirm.group(1)))
    assert "confirm(" not in page.html


async def test_limits_are_saved_and_cleared(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    key_id, _ = await _create(dashboard)
    limits = {"requestsPerMinute": "120", "tokensPerMinute": "50000"}
    page = await dashboard.post(f"/keys/{key_id}/limits", limits)
    assert page.status == 303
    listing = await dashboard.get("/keys")
    assert "Requests / min 120" in listing
    assert "Tokens / min 50,000" in listing
    assert 'value="120"' in listing.html
    page = await dashboard.post(
        f"/keys/{key_id}/limits", {"requestsPerMinute": "", "tokensPerMinute": ""}, htmx=True
    )
    assert page.status == 200
    assert "<html" not in page.html
    assert "Requests / min Platform default" in page
    assert "Tokens / min Platform default" in page


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-5", "requestsPerMinute is 1 to 1000000"),
        ("ten", "Enter a whole number"),
        ("2.5", "Enter a whole number"),
        ("99999999999999", "requestsPerMinute is 1 to 1000000"),
    ],
)
async def test_a_bad_limit_is_shown_beside_it_and_changes_nothing(
    dashboard: Dashboard, value: str, message: str
) -> None:
    await _signed_up(dashboard)
    key_id, _ = await _create(dashboard)
    await dashboard.post(f"/keys/{key_id}/limits", {"requestsPerMinute": "60"})
    for htmx in (False, True):
        page = await dashboard.post(
            f"/keys/{key_id}/limits", {"requestsPerMinute": value}, htmx=htmx
        )
        assert page.status == 422
        error = re.search(rf'id="rpm-{key_id}-error" class="error">([^<]*)<', page.html)
        assert error
        assert message in error.group(1)
        assert f'value="{value}"' in page.html  # what was typed stays, to correct it
    assert (await dashboard.get("/keys", htmx=True)).html.count("Requests / min</dt><dd>60<") == 1


async def test_a_bad_name_is_shown_beside_it(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    await dashboard.get("/keys")
    page = await dashboard.post("/keys", {"name": ""})
    assert page.status == 422
    assert re.search(r'id="f-name-error" class="error">[^<]+<', page.html)
    assert not SECRET.search(page.html)
    assert "no active keys" in page


async def test_names_are_escaped(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    await _create(dashboard, "<script>alert(1)</script>")
    page = await dashboard.get("/keys")
    assert "<script>alert(1)" not in page.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.html


async def test_another_users_key_is_not_found_and_unchanged(dashboard: Dashboard) -> None:
    await _signed_up(dashboard)
    key_id, secret = await _create(dashboard)
    await dashboard.post("/logout")
    await dashboard.sign_up("eve@example.com")
    await dashboard.get("/keys")
    attempts = [
        ("revoke", {}),
        ("rotate", {"gracePeriodSeconds": "0"}),
        ("rotate", {"gracePeriodSeconds": "soon"}),
        ("limits", {"requestsPerMinute": "1"}),
        ("limits", {"requestsPerMinute": "ten"}),
    ]
    for action, data in attempts:
        page = await dashboard.post(f"/keys/{key_id}/{action}", data)
        assert page.status == 404, (action, data)
    assert (await dashboard.post("/keys/not-a-key/revoke")).status == 404
    assert await _models(dashboard, secret) == 200
    assert "laptop" not in await dashboard.get("/keys")


async def test_a_form_without_the_csrf_token_changes_nothing(
    dashboard: Dashboard, client: httpx.AsyncClient
) -> None:
    await _signed_up(dashboard)
    key_id, secret = await _create(dashboard)
    origin = {"Origin": str(client.base_url).rstrip("/")}
    for path in ("/keys", f"/keys/{key_id}/revoke", f"/keys/{key_id}/rotate"):
        response = await client.post(path, data={"name": "x"}, headers=origin)
        assert response.status_code == 403
        assert "new-secret" not in response.text
    assert await _models(dashboard, secret) == 200
    assert (await dashboard.get("/keys")).html.count('class="key"') == 1
