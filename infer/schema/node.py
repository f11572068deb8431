"""The Node type (for its operator only) and the registry's queries and mutations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from infer.errors import BadInput, NotFound
from infer.models import Node as NodeRow
from infer.models import NodeModel as NodeModelRow
from infer.models import NodeStatus as NodeStatusValue
from infer.models import Runtime as RuntimeValue
from infer.nodes import registry
from infer.routing import capabilities as abilities
from infer.schema.context import Context
from infer.schema.permissions import require_principal
from infer.schema.scalars import Money
from infer.tunnel.hub import is_tunnel

Runtime = strawberry.enum(RuntimeValue, name="Runtime", description="The kind of LLM runtime.")
NodeStatus = strawberry.enum(NodeStatusValue, name="NodeStatus")


@strawberry.type(name="NodeModel")
class NodeModel:
    name: str
    available: bool = strawberry.field(description="The runtime offered it at the last check.")
    loaded: bool = strawberry.field(description="It was in memory at the last check.")
    input_per_million: Money
    output_per_million: Money
    capabilities: list[str] = strawberry.field(
        description="What routing takes it to do: declared, else what the runtime said."
    )
    context_length: int | None = strawberry.field(
        description="Tokens of context, declared or as the runtime said (null: unknown)."
    )
    declared_capabilities: list[str] | None = strawberry.field(
        description="What its operator declared (null: nothing; the runtime's word is used)."
    )
    declared_context_length: int | None

    @classmethod
    def from_model(cls, row: NodeModelRow, runtime: RuntimeValue) -> NodeModel:
        able = abilities.effective(
            runtime, detected=row.capabilities, declared=row.declared_capabilities
        )
        declared = row.declared_capabilities
        return cls(
            name=row.model,
            available=row.available,
            loaded=row.loaded,
            input_per_million=Money(row.input_price_per_million),
            output_per_million=Money(row.output_price_per_million),
            capabilities=[name for name in abilities.CAPABILITIES if name in able],
            context_length=row.declared_context_length or row.context_length,
            declared_capabilities=None if declared is None else declared.split(","),
            declared_context_length=row.declared_context_length,
        )


async def _models(root: Node, info: Info[Context, Any]) -> list[NodeModel]:
    rows = await info.context.loaders.node_models.load(uuid.UUID(root.id))
    return [NodeModel.from_model(row, RuntimeValue(root.runtime)) for row in rows]


@strawberry.type(name="HealthCheck")
class HealthCheck:
    checked_at: datetime
    ok: bool
    latency_ms: float | None
    model_count: int
    error: str | None


async def _health_checks(root: Node, info: Info[Context, Any], last: int = 20) -> list[HealthCheck]:
    if not 1 <= last <= 100:
        raise BadInput("last is 1 to 100", param="last")
    rows = await info.context.loaders.health_checks.load((uuid.UUID(root.id), last))
    return [
        HealthCheck(
            checked_at=r.checked_at,
            ok=r.ok,
            latency_ms=r.latency_ms,
            model_count=r.model_count,
            error=r.error,
        )
        for r in rows
    ]


@strawberry.type(name="NodeDay")
class NodeDay:
    requests: int = strawberry.field(description="Settled requests it served this UTC day.")
    earnings: Money = strawberry.field(description="What you earned from them.")


async def _served_today(root: Node, info: Info[Context, Any]) -> NodeDay:
    served = await info.context.loaders.served_today.load(uuid.UUID(root.id))
    return NodeDay(requests=served.requests, earnings=Money(served.earnings))


@strawberry.type(name="Node")
class Node:
    id: strawberry.ID
    name: str
    runtime: Runtime  # type: ignore[valid-type]
    endpoint: str = strawberry.field(
        description="Where the platform calls the runtime; `tunnel://<id>` for a tunnelled node."
    )
    tunnel: bool = strawberry.field(
        description="Reached through its agent's outbound tunnel, not a public endpoint."
    )
    status: NodeStatus = strawberry.field(  # type: ignore[valid-type]
        description="PAUSED while paused; otherwise what its health checks found."
    )
    paused: bool = strawberry.field(
        description="Its operator stopped new requests to it; in-flight ones finish."
    )
    status_reason: str | None = strawberry.field(description="Why the node is not online.")
    models_note: str | None = strawberry.field(
        description="Which of the runtime's models are not listed, and why (too many, bad names)."
    )
    has_token: bool = strawberry.field(description="An upstream bearer token is stored.")
    gpu: JSON | None
    capacity: int
    latency_ms: float | None
    last_checked_at: datetime | None
    created_at: datetime
    models: list[NodeModel] = strawberry.field(resolver=_models)
    health_checks: list[HealthCheck] = strawberry.field(
        resolver=_health_checks,
        description="The newest checks first (each node's last 100 are kept by default).",
    )
    served_today: NodeDay = strawberry.field(
        resolver=_served_today, description="What it served this UTC day, so far."
    )

    @classmethod
    def from_model(cls, row: NodeRow) -> Node:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            runtime=row.runtime,
            endpoint=row.endpoint,
            tunnel=is_tunnel(row.endpoint),
            status=NodeStatusValue.PAUSED if row.paused else row.status,
            paused=row.paused,
            status_reason=row.status_reason,
            models_note=row.models_note,
            has_token=row.token_ciphertext is not None,
            gpu=cast(JSON, row.gpu),
            capacity=row.capacity,
            latency_ms=row.latency_ms,
            last_checked_at=row.last_checked_at,
            created_at=row.created_at,
        )


@strawberry.input
class ModelPriceInput:
    model: str
    input_per_million: Money = strawberry.field(description="USD per million prompt tokens.")
    output_per_million: Money = strawberry.field(description="USD per million completion tokens.")


@strawberry.input
class RegisterNodeInput:
    name: str
    runtime: Runtime  # type: ignore[valid-type]
    endpoint: str | None = strawberry.field(
        default=None,
        description="Base URL of the runtime, as the platform sees it (not with `tunnel`).",
    )
    prices: list[ModelPriceInput] | None = None
    gpu: JSON | None = None
    token: str | None = strawberry.field(
        default=None, description="A bearer token the runtime's proxy expects; never shown again."
    )
    capacity: int | None = strawberry.field(default=None, description="Concurrent requests.")
    tunnel: bool = strawberry.field(
        default=False,
        description="Reached through its agent's outbound tunnel (`infer node agent --tunnel`); "
        "no endpoint.",
    )


@strawberry.input
class UpdateNodeInput:
    name: str | None = None
    endpoint: str | None = None
    token: str | None = None
    clear_token: bool = False
    capacity: int | None = None


def parse_node_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound("no such node", param="id") from exc


def _prices(prices: list[ModelPriceInput] | None) -> tuple[registry.ModelPrice, ...]:
    return tuple(
        registry.ModelPrice(p.model.strip(), int(p.input_per_million), int(p.output_per_million))
        for p in prices or ()
    )


async def _checked(info: Info[Context, Any], node_id: uuid.UUID) -> Node:
    """Check the node at once, so its owner sees the outcome in the mutation's answer."""
    resources = info.context.resources
    await resources.monitor.check_now(node_id, force=True)
    resources.router.catalog.invalidate()
    async with resources.db.session() as session:
        row = await session.get(NodeRow, node_id)
    if row is None:
        raise NotFound("no such node", param="id")
    return Node.from_model(row)


async def register_node(info: Info[Context, Any], input: RegisterNodeInput) -> Node:
    ctx = info.context
    row = await registry.register_node(
        ctx.resources.db,
        principal=require_principal(info),
        registration=registry.NodeRegistration(
            name=input.name,
            runtime=RuntimeValue(input.runtime),
            endpoint=input.endpoint,
            prices=_prices(input.prices),
            gpu=cast(dict[str, Any] | None, input.gpu),
            token=input.token,
            capacity=input.capacity,
            tunnel=input.tunnel,
        ),
        policy=ctx.resources.address_policy,
        keyring=ctx.resources.key_material.keyring,
        client=ctx.client,
        max_nodes=ctx.resources.settings.max_nodes_per_operator,
    )
    return await _checked(info, row.id)


async def update_node(
    info: Info[Context, Any],
    id: strawberry.ID,
    input: UpdateNodeInput,
) -> Node:
    ctx = info.context
    row = await registry.update_node(
        ctx.resources.db,
        principal=require_principal(info),
        node_id=parse_node_id(id),
        update=registry.NodeUpdate(
            name=input.name,
            endpoint=input.endpoint,
            token=input.token,
            clear_token=input.clear_token,
            capacity=input.capacity,
        ),
        policy=ctx.resources.address_policy,
        keyring=ctx.resources.key_material.keyring,
        client=ctx.client,
    )
    return await _checked(info, row.id)


async def set_model_prices(
    info: Info[Context, Any], node_id: strawberry.ID, prices: list[ModelPriceInput]
) -> Node:
    ctx = info.context
    row = await registry.set_model_prices(
        ctx.resources.db,
        principal=require_principal(info),
        node_id=parse_node_id(node_id),
        prices=_prices(prices),
        client=ctx.client,
    )
    ctx.resources.router.catalog.invalidate()
    return Node.from_model(row)


async def set_model_capabilities(
    info: Info[Context, Any],
    node_id: strawberry.ID,
    model: str,
    capabilities: list[str] | None = None,
    context_length: int | None = None,
) -> Node:
    ctx = info.context
    row = await registry.set_model_capabilities(
        ctx.resources.db,
        principal=require_principal(info),
        node_id=parse_node_id(node_id),
        model=model,
        capabilities=capabilities,
        context_length=context_length,
        client=ctx.client,
    )
    ctx.resources.router.catalog.invalidate()
    return Node.from_model(row)


async def set_node_paused(info: Info[Context, Any], id: strawberry.ID, paused: bool) -> Node:
    ctx = info.context
    row = await registry.set_paused(
        ctx.resources.db,
        principal=require_principal(info),
        node_id=parse_node_id(id),
        paused=paused,
        client=ctx.client,
    )
    ctx.resources.router.catalog.invalidate()
    return Node.from_model(row)


async def deregister_node(info: Info[Context, Any], id: strawberry.ID) -> bool:
    ctx = info.context
    await registry.deregister_node(
        ctx.resources.db,
        principal=require_principal(info),
        node_id=parse_node_id(id),
        client=ctx.client,
    )
    ctx.resources.router.catalog.invalidate()
    return True


async def node(info: Info[Context, Any], id: strawberry.ID) -> Node:
    principal = require_principal(info)
    async with info.context.resources.db.session() as session:
        row = await session.get(NodeRow, parse_node_id(id))
    if row is None or row.operator_id != principal.user_id:
        raise NotFound("no such node", param="id")
    return Node.from_model(row)
