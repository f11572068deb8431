"""Introspection only for signed-in callers: anonymous ones read graphql/schema.graphql."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from graphql import FieldNode, GraphQLError, ValidationRule
from strawberry.extensions import SchemaExtension

MESSAGE = (
    "introspection needs a signed-in caller or an API key;"
    " the schema is published as graphql/schema.graphql"
)


class NoAnonymousIntrospection(ValidationRule):
    """Refuses `__schema` and `__type` (`__typename` stays: clients need it for unions)."""

    def enter_field(self, node: FieldNode, *_args: Any) -> None:
        if node.name.value in ("__schema", "__type"):
            self.report_error(GraphQLError(MESSAGE, node, extensions={"code": "UNAUTHENTICATED"}))


class AnonymousIntrospection(SchemaExtension):
    """Adds the rule above to operations whose context has no principal."""

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context.context
        if getattr(context, "principal", None) is None:
            self.execution_context.validation_rules = (
                *self.execution_context.validation_rules,
                NoAnonymousIntrospection,
            )
        yield
