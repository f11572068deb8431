"""API keys through GraphQL: create, authenticate, rotate, revoke, ownership."""

from __future__ import annotations

import asyncio
import base64

import pytest
import sqlalchemy as sa
from conftest import CREATE_KEY, PASSWORD, SIGN_UP, GraphQLClient, http_client, started
from pydantic import SecretStr
from sqlmodel import select

from infer.config import Settings
from infer.db import Database
from infer.keys.rekey import rekey_api_keys
from infer.keys.service import KeyMaterial
from infer.models import ApiKey, AuditLog
from infer.resources import Resources
from infer.security import apikeys
from infer.security.crypto import DecryptionError, Keyring

ME_KEYS = "{ me { email apiKeys { id name prefix lastUsedAt revokedAt expiresAt } } }"
ROTATE = (
    "mutation($id: ID!, $g: Int! = 0) "
    "{ rotateApiKey(id: $id, gracePeriodSeconds: $g) { apiKey { id prefix } secret } }"
)
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"


def _code(body: dict[str, object]) -> str:
    return str(body["errors"][0]["extensions"]["code"])  # type: ignore[index]


async def _key_id(graphql: GraphQLClient, key: str) -> str:
    body = await graphql(ME_KEYS, key=key)
    return str(body["data"]["me"]["apiKeys"][0]["id"])  # type: ignore[index]


async def test_a_new_key_is_well_formed_and_works_as_bearer(
    graphql: GraphQLClient, user_key: str
) -> None:
    assert apikeys.is_well_formed(user_key)
    body = await graphql(ME_KEYS, key=user_key)
    keys = body["data"]["me"]["apiKeys"]  # type: ignore[index]
    assert body["data"]["me"]["email"] == "ann@example.com"  # type: ignore[index]
    assert [k["prefix"] for k in keys] == [user_key[:12]]


async def test_the_secret_is_stored_encrypted_and_only_as_a_digest(
    graphql: GraphQLClient, user_key: str, db: Database
) -> None:
    async with db.session() as session:
        row = (await session.exec(select(ApiKey))).one()
    stored = f"{row.digest}{row.ciphertext!r}{row.prefix}{row.name}"
    assert user_key not in stored
    assert user_key[12:] not in stored


async def test_the_stored_ciphertext_decrypts_to_the_key_for_its_own_id_only(
    resources: Resources, user_key: str, db: Database
) -> None:
    async with db.session() as session:
        row = (await session.exec(select(ApiKey))).one()
    keyring = resources.key_material.keyring
    assert keyring.decrypt(row.key_version, row.ciphertext, aad=row.id.bytes).decode() == user_key
    with pytest.raises(DecryptionError):
        keyring.decrypt(row.key_version, row.ciphertext, aad=b"another key id!!")


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "not-a-key",
        "inf_" + "A" * 49,
        "Basic dXNlcjpwYXNz",
    ],
)
async def test_malformed_keys_get_a_plain_401(graphql: GraphQLClient, presented: str) -> None:
    response = await graphql.http.post(
        "/graphql", json={"query": ME_KEYS}, headers={"Authorization": f"Bearer {presented}"}
    )
    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_well_formed_unknown_key_gets_a_401(graphql: GraphQLClient, user_key: str) -> None:
    response = await graphql.http.post(
        "/graphql",
        json={"query": ME_KEYS},
        headers={"Authorization": f"Bearer {apikeys.generate_key()}"},
    )
    assert response.status_code == 401


async def test_a_typo_in_a_key_fails_its_checksum(user_key: str) -> None:
    typo = user_key[:20] + ("a" if user_key[20] != "a" else "b") + user_key[21:]
    assert not apikeys.is_well_formed(typo)


async def test_rotation_ends_the_old_secret_at_once_by_default(
    graphql: GraphQLClient, user_key: str
) -> None:
    key_id = await _key_id(graphql, user_key)
    body = await graphql(ROTATE, {"id": key_id}, key=user_key)
    new_secret = body["data"]["rotateApiKey"]["secret"]  # type: ignore[index]
    assert new_secret != user_key
    old = await graphql.http.post(
        "/graphql", json={"query": ME_KEYS}, headers={"Authorization": f"Bearer {user_key}"}
    )
    assert old.status_code == 401
    keys = (await graphql(ME_KEYS, key=str(new_secret)))["data"]["me"]["apiKeys"]  # type: ignore[index]
    assert sorted(k["revokedAt"] is None for k in keys) == [False, True]


async def test_rotation_with_a_grace_period_keeps_the_old_secret_working(
    graphql: GraphQLClient, user_key: str
) -> None:
    key_id = await _key_id(graphql, user_key)
    await graphql(ROTATE, {"id": key_id, "g": 3600}, key=user_key)
    # Still a gateway key; GraphQL (the account) is for the replacement and the session.
    models = await graphql.http.get(
        "/api/v1/models", headers={"Authorization": f"Bearer {user_key}"}
    )
    assert models.status_code == 200
    body = await graphql(ME_KEYS)
    old = next(k for k in body["data"]["me"]["apiKeys"] if k["id"] == key_id)  # type: ignore[index]
    assert old["expiresAt"] is not None
    assert old["revokedAt"] is None


async def test_revoking_a_key_rejects_it_immediately(graphql: GraphQLClient, user_key: str) -> None:
    await graphql(CREATE_KEY, {"n": "second"})
    body = await graphql(ME_KEYS)
    keys = body["data"]["me"]["apiKeys"]  # type: ignore[index]
    target = next(k for k in keys if k["prefix"] == user_key[:12])
    revoked = await graphql(REVOKE, {"id": target["id"]})
    assert revoked["data"]["revokeApiKey"]["revokedAt"] is not None  # type: ignore[index]
    response = await graphql.http.post(
        "/graphql", json={"query": ME_KEYS}, headers={"Authorization": f"Bearer {user_key}"}
    )
    assert response.status_code == 401


async def test_another_users_key_looks_like_not_found(
    graphql: GraphQLClient, user_key: str
) -> None:
    key_id = await _key_id(graphql, user_key)
    await graphql("mutation { logOut }")
    await graphql(SIGN_UP, {"e": "mallory@example.com", "p": PASSWORD})
    for operation in (REVOKE, ROTATE):
        body = await graphql(operation, {"id": key_id}, expect_errors=True)
        assert _code(body) == "NOT_FOUND"
    missing = await graphql(REVOKE, {"id": "not-a-uuid"}, expect_errors=True)
    assert _code(missing) == "NOT_FOUND"
    assert (await graphql(ME_KEYS, key=user_key))["data"]["me"]["apiKeys"][0]["revokedAt"] is None  # type: ignore[index]


async def test_key_names_are_validated(graphql: GraphQLClient, user_key: str) -> None:
    for name in ("", "   ", "x" * 101):
        body = await graphql(CREATE_KEY, {"n": name}, key=user_key, expect_errors=True)
        assert _code(body) == "BAD_USER_INPUT"


async def test_last_used_is_shown_at_once_and_written_in_a_batch(
    resources: Resources, graphql: GraphQLClient, user_key: str, db: Database
) -> None:
    body = await graphql(ME_KEYS, key=user_key)
    assert body["data"]["me"]["apiKeys"][0]["lastUsedAt"] is not None  # type: ignore[index]
    async with db.session() as session:
        assert (await session.exec(select(ApiKey))).one().last_used_at is None
    assert await resources.authenticator.flush_last_used() == 1
    async with db.session() as session:
        assert (await session.exec(select(ApiKey))).one().last_used_at is not None


async def test_concurrent_requests_with_an_uncached_key_share_one_lookup(
    resources: Resources, user_key: str
) -> None:
    lookups: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM api_keys" in statement:
            lookups.append(statement)

    authenticator = resources.authenticator
    authenticator.forget((await authenticator.authenticate(user_key)).api_key_id)  # type: ignore[arg-type]
    engine = resources.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        principals = await asyncio.gather(
            *(authenticator.authenticate(user_key) for _ in range(20))
        )
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len({p.user_id for p in principals}) == 1
    assert len(lookups) == 1


async def test_key_lifecycle_is_audited_without_secrets(
    graphql: GraphQLClient, user_key: str, db: Database
) -> None:
    key_id = await _key_id(graphql, user_key)
    rotated = await graphql(ROTATE, {"id": key_id}, key=user_key)
    new_secret = str(rotated["data"]["rotateApiKey"]["secret"])  # type: ignore[index]
    new_id = rotated["data"]["rotateApiKey"]["apiKey"]["id"]  # type: ignore[index]
    await graphql(REVOKE, {"id": new_id}, key=new_secret)
    async with db.session() as session:
        rows = (await session.exec(select(AuditLog))).all()
    actions = [r.action for r in rows]
    assert actions.count("api_key.created") == 1
    assert actions.count("api_key.rotated") == 1
    assert actions.count("api_key.revoked") == 1
    dump = " ".join(f"{r.target} {r.details}" for r in rows)
    assert user_key not in dump
    assert new_secret not in dump


async def test_keys_keep_working_after_the_platform_rotates_its_own_keys(
    settings: Settings, user_key: str, db: Database
) -> None:
    new_aes = base64.urlsafe_b64encode(b"n" * 32).decode()
    rotated = settings.model_copy(
        update={
            "lookup_key": SecretStr("a brand new lookup key " * 2),
            "encryption_keys": SecretStr(f"2:{new_aes},{settings.secret('encryption_keys')}"),
        }
    )
    material = KeyMaterial(
        lookup_key=rotated.secret("lookup_key"),
        keyring=Keyring.parse(rotated.secret("encryption_keys")),
    )
    assert await rekey_api_keys(db, material=material) == 1
    async with started(rotated) as (app, _), http_client(app) as http:
        body = await GraphQLClient(http)(ME_KEYS, key=user_key)
    assert body["data"]["me"]["email"] == "ann@example.com"  # type: ignore[index]
    async with db.session() as session:
        assert (await session.exec(select(ApiKey))).one().key_version == 2


async def test_a_key_can_have_its_own_rate_limits(graphql: GraphQLClient, user_key: str) -> None:
    key_id = await _key_id(graphql, user_key)
    limits = (
        "mutation($id: ID!, $r: Int, $t: Int) { setApiKeyLimits(id: $id, requestsPerMinute: $r,"
        " tokensPerMinute: $t) { requestsPerMinute tokensPerMinute } }"
    )
    body = await graphql(limits, {"id": key_id, "r": 5, "t": 1000}, key=user_key)
    assert body["data"]["setApiKeyLimits"] == {"requestsPerMinute": 5, "tokensPerMinute": 1000}  # type: ignore[index]
    bad = await graphql(limits, {"id": key_id, "r": 0}, key=user_key, expect_errors=True)
    assert _code(bad) == "BAD_USER_INPUT"
    cleared = await graphql(limits, {"id": key_id}, key=user_key)
    assert cleared["data"]["setApiKeyLimits"]["requestsPerMinute"] is None  # type: ignore[index]


async def test_a_key_revoked_on_one_replica_is_refused_at_once_by_another(
    settings: Settings, backend: str
) -> None:
    if backend != "postgres":
        pytest.skip("replicas share key changes through Redis, configured on this variant")
    async with (
        started(settings) as (one, _),
        started(settings) as (two, _),
        http_client(one) as http_one,
        http_client(two) as http_two,
    ):
        first, second = GraphQLClient(http_one), GraphQLClient(http_two)
        await first(SIGN_UP, {"e": "ann@example.com", "p": PASSWORD})
        secret = (await first(CREATE_KEY, {"n": "k"}))["data"]["createApiKey"]["secret"]  # type: ignore[index]
        key_id = await _key_id(second, str(secret))  # now cached by the second replica
        await first(REVOKE, {"id": key_id})
        for _ in range(50):  # the change travels through Redis pub/sub
            response = await http_two.post(
                "/graphql",
                json={"query": ME_KEYS},
                headers={"Authorization": f"Bearer {secret}"},
            )
            if response.status_code == 401:
                break
            await asyncio.sleep(0.02)
    assert response.status_code == 401
