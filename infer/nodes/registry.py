"""The node registry: register (upsert by name), update, prices, deregister, ownership."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer import audit
from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.db import Database, group_by
from infer.errors import BadInput, NotFound
from infer.models import HealthCheck, Node, NodeModel, NodeStatus, Runtime, utcnow
from infer.nodes.clients.details import MAX_CONTEXT_LENGTH
from infer.routing.capabilities import check_declared
from infer.security.crypto import Keyring
from infer.security.outbound import AddressPolicy, check_endpoint
from infer.security.text import check_model_name, check_name, refused_characters
from infer.tunnel.hub import tunnel_endpoint

MAX_NODES_PER_OPERATOR = 100  # the default of INFER_MAX_NODES_PER_OPERATOR
MAX_PRICE_PER_MILLION = 1_000 * 1_000_000  # 1,000 USD per million tokens
MAX_GPU_JSON = 4096
MAX_GPU_DEPTH = 8
MAX_MODELS_PER_NODE = 256  # listed per node; a runtime's further models are ignored


@dataclass(frozen=True)
class ModelPrice:
    model: str
    input_per_million: int
    output_per_million: int


@dataclass(frozen=True)
class NodeRegistration:
    name: str
    runtime: Runtime
    endpoint: str | None  # None for a tunnel: the agent's WebSocket is the way in
    prices: tuple[ModelPrice, ...] = ()
    gpu: dict[str, Any] | None = None
    token: str | None = None
    capacity: int | None = None
    tunnel: bool = False


@dataclass(frozen=True)
class NodeUpdate:
    name: str | None = None
    endpoint: str | None = None
    token: str | None = None
    clear_token: bool = False
    capacity: int | None = None


def _clean_name(name: str) -> str:
    return check_name(name, param="name", what="a node name")


def _check_capacity(capacity: int | None) -> None:
    if capacity is not None and not 1 <= capacity <= 1024:
        raise BadInput("capacity is 1 to 1024 concurrent requests", param="capacity")


def _gpu_strings(value: object, depth: int = 0) -> Iterator[str]:
    """Every key and string in the GPU document; BadInput past MAX_GPU_DEPTH levels."""
    if depth > MAX_GPU_DEPTH:
        raise BadInput(f"GPU information is nested deeper than {MAX_GPU_DEPTH}", param="gpu")
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _gpu_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _gpu_strings(item, depth + 1)


def _check_gpu(gpu: dict[str, Any] | None) -> None:
    if gpu is None:
        return
    # Depth first: the size check serialises the document, which must not recurse too far.
    if any(any(refused_characters(text)) for text in _gpu_strings(gpu)):
        raise BadInput("GPU information may not hold control characters", param="gpu")
    if len(json.dumps(gpu)) > MAX_GPU_JSON:
        raise BadInput("GPU information is too large", param="gpu")


def _check_prices(prices: Sequence[ModelPrice]) -> None:
    if len(prices) > MAX_MODELS_PER_NODE:
        raise BadInput(f"a node has at most {MAX_MODELS_PER_NODE} models", param="prices")
    seen: set[str] = set()
    for price in prices:
        check_model_name(price.model, param="prices")
        if price.model in seen:
            raise BadInput(f"model {price.model!r} is priced twice", param="prices")
        seen.add(price.model)
        for amount in (price.input_per_million, price.output_per_million):
            if not 0 <= amount <= MAX_PRICE_PER_MILLION:
                raise BadInput("a price is 0 to 1000 USD per million tokens", param="prices")


def _seal_token(node: Node, token: str, keyring: Keyring) -> None:
    if not 1 <= len(token) <= 4096 or not token.isprintable():
        raise BadInput("the upstream token is 1 to 4096 printable characters", param="token")
    node.token_key_version, node.token_ciphertext = keyring.encrypt(
        token.encode(), aad=node.id.bytes
    )


def open_token(node: Node, keyring: Keyring) -> str | None:
    """The node's upstream bearer token in clear, for the runtime client only."""
    if node.token_ciphertext is None or node.token_key_version is None:
        return None
    return keyring.decrypt(
        node.token_key_version, node.token_ciphertext, aad=node.id.bytes
    ).decode()


async def owned_node(session: AsyncSession, principal: Principal, node_id: uuid.UUID) -> Node:
    node = await session.get(Node, node_id, with_for_update=True)
    if node is None or node.operator_id != principal.user_id:
        raise NotFound("no such node", param="id")
    return node


async def _upsert_prices(session: AsyncSession, node: Node, prices: Sequence[ModelPrice]) -> None:
    existing = {
        m.model: m
        for m in await session.exec(select(NodeModel).where(NodeModel.node_id == node.id))
    }
    if len(existing.keys() | {price.model for price in prices}) > MAX_MODELS_PER_NODE:
        raise BadInput(f"a node has at most {MAX_MODELS_PER_NODE} models", param="prices")
    for price in prices:
        row = existing.get(price.model) or NodeModel(node_id=node.id, model=price.model)
        row.input_price_per_million = price.input_per_million
        row.output_price_per_million = price.output_per_million
        session.add(row)


async def register_node(
    db: Database,
    *,
    principal: Principal,
    registration: NodeRegistration,
    policy: AddressPolicy,
    keyring: Keyring,
    client: ClientInfo,
    max_nodes: int = MAX_NODES_PER_OPERATOR,
) -> Node:
    """Add a node, or update the caller's node of the same name; it is checked next."""
    name = _clean_name(registration.name)
    _check_capacity(registration.capacity)
    _check_gpu(registration.gpu)
    _check_prices(registration.prices)
    endpoint = await _registered_endpoint(registration, policy)
    async with db.transaction() as session:
        node = (
            await session.exec(
                select(Node).where(Node.operator_id == principal.user_id, Node.name == name)
            )
        ).first()
        created = node is None
        if node is None:
            count = await session.exec(
                select(sa.func.count())
                .select_from(Node)
                .where(Node.operator_id == principal.user_id)
            )
            if count.one() >= max_nodes:
                raise BadInput(f"at most {max_nodes} nodes per operator")
            node = Node(
                operator_id=principal.user_id,
                name=name,
                runtime=registration.runtime,
                endpoint=endpoint or "",
            )
        endpoint = endpoint or tunnel_endpoint(node.id)
        if not created and (node.endpoint != endpoint or node.runtime != registration.runtime):
            node.status = NodeStatus.PENDING
            node.status_reason = None
        node.runtime = registration.runtime
        node.endpoint = endpoint
        node.gpu = registration.gpu if registration.gpu is not None else node.gpu
        node.capacity = registration.capacity or node.capacity
        if registration.token is not None:
            _seal_token(node, registration.token, keyring)
        node.next_check_at = utcnow()
        node.updated_at = utcnow()
        session.add(node)
        await session.flush()
        await _upsert_prices(session, node, registration.prices)
        audit.record(
            session,
            action="node.registered" if created else "node.updated",
            client=client,
            actor_id=principal.user_id,
            target=f"node:{node.id}",
            details={"runtime": node.runtime.value, "name": name},
        )
    return node


async def _registered_endpoint(registration: NodeRegistration, policy: AddressPolicy) -> str | None:
    """The checked public endpoint, or None for a node reached through its agent's tunnel."""
    if registration.tunnel:
        if registration.endpoint:
            raise BadInput("a node reached through a tunnel has no endpoint", param="endpoint")
        return None
    if not registration.endpoint:
        raise BadInput("give the runtime's endpoint, or register for a tunnel", param="endpoint")
    return (await check_endpoint(registration.endpoint, policy)).url


async def update_node(
    db: Database,
    *,
    principal: Principal,
    node_id: uuid.UUID,
    update: NodeUpdate,
    policy: AddressPolicy,
    keyring: Keyring,
    client: ClientInfo,
) -> Node:
    _check_capacity(update.capacity)
    endpoint = (await check_endpoint(update.endpoint, policy)).url if update.endpoint else None
    async with db.transaction() as session:
        node = await owned_node(session, principal, node_id)
        if update.name is not None:
            node.name = _clean_name(update.name)
            clash = await session.exec(
                select(Node.id).where(
                    Node.operator_id == principal.user_id,
                    Node.name == node.name,
                    Node.id != node.id,
                )
            )
            if clash.first() is not None:
                raise BadInput("you already have a node with this name", param="name")
        if endpoint is not None and endpoint != node.endpoint:
            node.endpoint = endpoint
            node.status = NodeStatus.PENDING
            node.status_reason = None
            node.next_check_at = utcnow()
        if update.clear_token:
            node.token_ciphertext = node.token_key_version = None
        elif update.token is not None:
            _seal_token(node, update.token, keyring)
        if update.capacity is not None:
            node.capacity = update.capacity
        node.updated_at = utcnow()
        session.add(node)
        audit.record(
            session,
            action="node.updated",
            client=client,
            actor_id=principal.user_id,
            target=f"node:{node.id}",
        )
    return node


async def set_model_prices(
    db: Database,
    *,
    principal: Principal,
    node_id: uuid.UUID,
    prices: Sequence[ModelPrice],
    client: ClientInfo,
) -> Node:
    _check_prices(prices)
    async with db.transaction() as session:
        node = await owned_node(session, principal, node_id)
        await _upsert_prices(session, node, prices)
        audit.record(
            session,
            action="node.prices_set",
            client=client,
            actor_id=principal.user_id,
            target=f"node:{node.id}",
            details={"models": [p.model for p in prices]},
        )
    return node


async def set_model_capabilities(
    db: Database,
    *,
    principal: Principal,
    node_id: uuid.UUID,
    model: str,
    capabilities: Sequence[str] | None,
    context_length: int | None,
    client: ClientInfo,
) -> Node:
    """Declare what one of the node's models can do; routing takes it over what the
    runtime says. None clears that part of the declaration (the runtime's word again)."""
    check_model_name(model, param="model")
    try:
        declared = None if capabilities is None else check_declared(capabilities)
    except ValueError as exc:
        raise BadInput(str(exc), param="capabilities") from exc
    if context_length is not None and not 1 <= context_length <= MAX_CONTEXT_LENGTH:
        message = f"a context length is 1 to {MAX_CONTEXT_LENGTH} tokens"
        raise BadInput(message, param="contextLength")
    async with db.transaction() as session:
        node = await owned_node(session, principal, node_id)
        found = await session.exec(
            select(NodeModel).where(NodeModel.node_id == node.id, NodeModel.model == model)
        )
        row = found.first()
        if row is None:
            raise NotFound(f"this node has no model {model!r}; price it first", param="model")
        row.declared_capabilities = declared
        row.declared_context_length = context_length
        session.add(row)
        audit.record(
            session,
            action="node.capabilities_set",
            client=client,
            actor_id=principal.user_id,
            target=f"node:{node.id}",
            details={"model": model, "capabilities": declared, "context_length": context_length},
        )
    return node


async def set_paused(
    db: Database, *, principal: Principal, node_id: uuid.UUID, paused: bool, client: ClientInfo
) -> Node:
    """Stop (or resume) new requests to a node; its health checks go on either way."""
    async with db.transaction() as session:
        node = await owned_node(session, principal, node_id)
        if node.paused != paused:
            node.paused = paused
            node.updated_at = utcnow()
            session.add(node)
            audit.record(
                session,
                action="node.paused" if paused else "node.resumed",
                client=client,
                actor_id=principal.user_id,
                target=f"node:{node_id}",
            )
    return node


async def deregister_node(
    db: Database, *, principal: Principal, node_id: uuid.UUID, client: ClientInfo
) -> None:
    async with db.transaction() as session:
        node = await owned_node(session, principal, node_id)
        await session.delete(node)
        audit.record(
            session,
            action="node.deregistered",
            client=client,
            actor_id=principal.user_id,
            target=f"node:{node_id}",
        )


async def nodes_of_operators(
    session: AsyncSession, operator_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Node]]:
    rows = await session.exec(
        select(Node).where(col(Node.operator_id).in_(operator_ids)).order_by(col(Node.created_at))
    )
    return group_by(rows, operator_ids, lambda node: node.operator_id)


async def models_of_nodes(
    session: AsyncSession, node_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[NodeModel]]:
    rows = await session.exec(
        select(NodeModel).where(col(NodeModel.node_id).in_(node_ids)).order_by(col(NodeModel.model))
    )
    return group_by(rows, node_ids, lambda model: model.node_id)


async def recent_checks(
    session: AsyncSession, node_ids: Sequence[uuid.UUID], *, last: int
) -> dict[uuid.UUID, list[HealthCheck]]:
    """The newest `last` health checks of each node, newest first, in one query.

    Each node's rows are read newest first along the (node_id, checked_at) index and
    stop at `last`: a LATERAL subquery per node on PostgreSQL; on SQLite (no LATERAL) a
    window over the node's rows, which history.py keeps to a few.
    """
    if session.get_bind().dialect.name == "postgresql":
        newest = (
            select(HealthCheck)
            .where(col(HealthCheck.node_id) == col(Node.id))
            .order_by(col(HealthCheck.checked_at).desc())
            .limit(last)
            .lateral()
        )
        checks = aliased(HealthCheck, newest)
        rows = await session.exec(
            select(checks)
            .select_from(Node)
            .join(newest, sa.true())
            .where(col(Node.id).in_(node_ids))
            .order_by(col(checks.checked_at).desc())
        )
        return group_by(rows, node_ids, lambda check: check.node_id)
    rank = (
        sa.func.row_number()
        .over(partition_by=col(HealthCheck.node_id), order_by=col(HealthCheck.checked_at).desc())
        .label("rank")
    )
    ranked = (
        select(col(HealthCheck.id), rank).where(col(HealthCheck.node_id).in_(node_ids)).subquery()
    )
    found = await session.exec(
        select(HealthCheck)
        .join(ranked, ranked.c.id == col(HealthCheck.id))
        .where(ranked.c.rank <= last)
        .order_by(col(HealthCheck.checked_at).desc())
    )
    return group_by(found, node_ids, lambda check: check.node_id)
