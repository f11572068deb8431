"""The schema: Query and Mutation, limits on query size, and error masking."""

from __future__ import annotations

import strawberry
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.schema.config import StrawberryConfig

from infer.schema import api_key, user
from infer.schema.errors import InferErrors, Schema
from infer.schema.scalars import SCALARS


@strawberry.type
class Query:
    me: user.User = strawberry.field(resolver=user.me, description="The signed-in user.")


@strawberry.type
class Mutation:
    sign_up: user.User = strawberry.mutation(
        resolver=user.sign_up, description="Create an account and start a session (cookie)."
    )
    log_in: user.User = strawberry.mutation(
        resolver=user.log_in, description="Start a session (cookie)."
    )
    log_out: bool = strawberry.mutation(resolver=user.log_out, description="End this session.")
    change_password: user.User = strawberry.mutation(
        resolver=user.change_password,
        description="Replace the password; every other session ends.",
    )
    create_api_key: api_key.IssuedApiKey = strawberry.mutation(resolver=api_key.create_api_key)
    rotate_api_key: api_key.IssuedApiKey = strawberry.mutation(
        resolver=api_key.rotate_api_key,
        description="Issue a new secret for a key; the old one ends now or after a grace period.",
    )
    revoke_api_key: api_key.ApiKey = strawberry.mutation(
        resolver=api_key.revoke_api_key, description="End a key at once."
    )


def build_schema(*, max_depth: int = 12, max_aliases: int = 30, max_tokens: int = 2000) -> Schema:
    return Schema(
        query=Query,
        mutation=Mutation,
        config=StrawberryConfig(scalar_map=SCALARS),
        extensions=[
            lambda: QueryDepthLimiter(max_depth=max_depth),
            lambda: MaxAliasesLimiter(max_alias_count=max_aliases),
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            InferErrors,
        ],
    )


schema = build_schema()
