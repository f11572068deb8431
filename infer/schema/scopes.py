"""Which fields an API key's scopes reach; checked over the whole document before it runs.

Every field of Query, Mutation and User is classified below; a field left out needs
the ACCOUNT scope, so a new field is closed to narrower keys until it is listed. Other
types are reached only through these fields (Provider.myReview, the one exception
that reads the caller's own data, is listed too). Keys with the ACCOUNT scope, and
dashboard sessions, skip the check: they may do everything, as before scopes.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

from graphql import FieldNode, GraphQLError, ValidationRule
from strawberry.extensions import SchemaExtension

from infer.keys.scopes import names
from infer.models import ApiKeyScope

OPEN = None  # any caller: the public marketplace, and who the caller is

# (type, field) → the scope it needs; NODES is also granted by ACCOUNT.
FIELD_SCOPES: dict[tuple[str, str], ApiKeyScope | None] = {
    ("Query", "me"): OPEN,
    ("Query", "providers"): OPEN,
    ("Query", "provider"): OPEN,
    ("Query", "models"): OPEN,
    ("Query", "model"): OPEN,
    ("Query", "node"): ApiKeyScope.NODES,
    ("User", "id"): OPEN,
    ("User", "email"): OPEN,
    ("User", "nodes"): ApiKeyScope.NODES,
    ("Mutation", "redeemEnrollmentCode"): OPEN,
    ("Mutation", "registerNode"): ApiKeyScope.NODES,
    ("Mutation", "updateNode"): ApiKeyScope.NODES,
    ("Mutation", "setModelPrices"): ApiKeyScope.NODES,
    ("Mutation", "setModelCapabilities"): ApiKeyScope.NODES,
    ("Mutation", "deregisterNode"): ApiKeyScope.NODES,
    ("Mutation", "setNodePaused"): ApiKeyScope.NODES,
    ("Provider", "myReview"): ApiKeyScope.ACCOUNT,
}
CHECKED_TYPES = frozenset({"Query", "Mutation", "User"})


def needed_scope(type_name: str, field_name: str) -> ApiKeyScope | None:
    if (type_name, field_name) in FIELD_SCOPES:
        return FIELD_SCOPES[type_name, field_name]
    if type_name in CHECKED_TYPES and not field_name.startswith("__"):
        return ApiKeyScope.ACCOUNT
    return OPEN


def allows(scopes: frozenset[ApiKeyScope], needed: ApiKeyScope | None) -> bool:
    if needed is None or ApiKeyScope.ACCOUNT in scopes:
        return True
    return needed in scopes


@cache
def _rule_for(scopes: frozenset[ApiKeyScope]) -> type[ValidationRule]:
    class ScopeRule(ValidationRule):
        def enter_field(self, node: FieldNode, *_args: Any) -> None:
            parent = self.context.get_parent_type()
            if parent is None:
                return
            field = node.name.value
            needed = needed_scope(parent.name, field)
            if not allows(scopes, needed):
                assert needed is not None
                message = (
                    f"this API key may not use {parent.name}.{field}: it needs the"
                    f" {needed.value} scope (its scopes: {names(scopes)})"
                )
                self.report_error(GraphQLError(message, node, extensions={"code": "FORBIDDEN"}))

    return ScopeRule


class KeyScopes(SchemaExtension):
    """Adds the rule for the caller's scopes to operations of narrower API keys."""

    def on_operation(self) -> Iterator[None]:
        principal = getattr(self.execution_context.context, "principal", None)
        scopes = getattr(principal, "scopes", None)
        if scopes is not None and ApiKeyScope.ACCOUNT not in scopes:
            self.execution_context.validation_rules = (
                *self.execution_context.validation_rules,
                _rule_for(scopes),
            )
        yield
