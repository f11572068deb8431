"""The schema: Query and Mutation, limits on query size, and error masking."""

from __future__ import annotations

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.schema.config import StrawberryConfig

from infer.schema import api_key, enrollment, marketplace, notification, user
from infer.schema import model as catalogue
from infer.schema import node as nodes
from infer.schema.errors import InferErrors, Schema
from infer.schema.inputs import InputExecutor, InputRules
from infer.schema.introspection import AnonymousIntrospection
from infer.schema.scalars import SCALARS
from infer.schema.scopes import KeyScopes


@strawberry.type
class Query:
    me: user.User = strawberry.field(resolver=user.me, description="The signed-in user.")
    node: nodes.Node = strawberry.field(resolver=nodes.node, description="One of your nodes.")
    providers: list[marketplace.Provider] = strawberry.field(
        resolver=marketplace.providers, description="Operators selling inference now."
    )
    provider: marketplace.Provider = strawberry.field(
        resolver=marketplace.provider, description="One provider's page; no sign-in needed."
    )
    models: list[catalogue.Model] = strawberry.field(
        resolver=catalogue.models, description="Models on sale now, with their offers; no sign-in."
    )
    model: catalogue.Model = strawberry.field(
        resolver=catalogue.model, description="One model on sale and its offers; no sign-in needed."
    )


@strawberry.type
class Mutation:
    sign_up: user.User = strawberry.mutation(
        resolver=user.sign_up, description="Create an account and start a session (cookie)."
    )
    log_in: user.User = strawberry.mutation(
        resolver=user.log_in, description="Start a session (cookie)."
    )
    log_out: bool = strawberry.mutation(resolver=user.log_out, description="End this session.")
    end_session: bool = strawberry.mutation(
        resolver=user.end_session,
        description="End one of your sessions (`me.sessions`); ending this one logs you out.",
    )
    change_password: user.User = strawberry.mutation(
        resolver=user.change_password,
        description="Replace the password; every other session ends.",
    )
    set_password: user.User = strawberry.mutation(
        resolver=user.set_password,
        description=(
            "Give an account without a password (made through Google) one, from a signed-in"
            " session; every other session ends."
        ),
    )
    set_display_name: user.User = strawberry.mutation(
        resolver=user.set_display_name,
        description="Choose the name buyers see for you as a provider (unique in any case).",
    )
    create_api_key: api_key.IssuedApiKey = strawberry.mutation(resolver=api_key.create_api_key)
    rotate_api_key: api_key.IssuedApiKey = strawberry.mutation(
        resolver=api_key.rotate_api_key,
        description="Issue a new secret for a key; the old one ends now or after a grace period.",
    )
    revoke_api_key: api_key.ApiKey = strawberry.mutation(
        resolver=api_key.revoke_api_key, description="End a key at once."
    )
    register_node: nodes.Node = strawberry.mutation(
        resolver=nodes.register_node,
        description="Add a node, or update your node of the same name; it is checked at once.",
    )
    update_node: nodes.Node = strawberry.mutation(resolver=nodes.update_node)
    set_model_prices: nodes.Node = strawberry.mutation(
        resolver=nodes.set_model_prices, description="Set prices per model (USD per 1M tokens)."
    )
    set_model_capabilities: nodes.Node = strawberry.mutation(
        resolver=nodes.set_model_capabilities,
        description=(
            "Declare what one of your node's models can do (completion, tools, vision,"
            " json_object, json_schema, logprobs, embedding) and its context length;"
            " routing takes these over what the runtime says. Null clears either."
        ),
    )
    create_review: marketplace.Review = strawberry.mutation(
        resolver=marketplace.create_review,
        description="Rate a provider you have used, once (1 to 5).",
    )
    update_review: marketplace.Review = strawberry.mutation(
        resolver=marketplace.update_review,
        description="Change your review; an omitted field stays, an empty comment clears it.",
    )
    delete_review: bool = strawberry.mutation(
        resolver=marketplace.delete_review, description="Remove your review."
    )
    reply_to_review: marketplace.Review = strawberry.mutation(
        resolver=marketplace.reply_to_review,
        description="As the reviewed provider, answer a review, once.",
    )
    update_provider_profile: user.User = strawberry.mutation(
        resolver=marketplace.update_provider_profile,
        description="Set the description buyers see on your provider page (500 characters).",
    )
    mark_notifications_read: int = strawberry.mutation(
        resolver=notification.mark_notifications_read,
        description="Mark these notifications read (all unread ones without ids); the count.",
    )
    set_api_key_limits: api_key.ApiKey = strawberry.mutation(
        resolver=api_key.set_api_key_limits,
        description="Set a key's own rate limits (null: the platform's defaults).",
    )
    set_api_key_budget: api_key.ApiKey = strawberry.mutation(
        resolver=api_key.set_api_key_budget,
        description=(
            "Set a key's spend limit and its reset, expiry and allowed models; an argument"
            " left out stays as it is, null clears it."
        ),
    )
    deregister_node: bool = strawberry.mutation(
        resolver=nodes.deregister_node, description="Remove a node from the market."
    )
    set_node_paused: nodes.Node = strawberry.mutation(
        resolver=nodes.set_node_paused,
        description="Pause (no new requests; in-flight ones finish) or resume your node.",
    )
    create_enrollment_code: enrollment.EnrollmentCode = strawberry.mutation(
        resolver=enrollment.create_enrollment_code,
        description="A one-time code that enrols a new node (`infer node join`).",
    )
    redeem_enrollment_code: enrollment.EnrolledKey = strawberry.mutation(
        resolver=enrollment.redeem_enrollment_code,
        description="Exchange an enrolment code for a key that manages its operator's nodes.",
    )


def build_schema(
    *,
    max_depth: int = 12,
    max_aliases: int = 30,
    max_tokens: int = 2000,
    anonymous_introspection: bool = True,
) -> Schema:
    """The schema with its limits; production passes anonymous_introspection=False."""
    extensions = [
        lambda: QueryDepthLimiter(max_depth=max_depth),
        lambda: MaxAliasesLimiter(max_alias_count=max_aliases),
        lambda: MaxTokensLimiter(max_token_count=max_tokens),
        InputRules,
        KeyScopes,
        InferErrors,
    ]
    if not anonymous_introspection:
        extensions.append(AnonymousIntrospection)
    return Schema(
        query=Query,
        mutation=Mutation,
        config=StrawberryConfig(scalar_map=SCALARS),
        execution_context_class=InputExecutor,
        extensions=extensions,
    )


schema = build_schema()
