"""Values a request cannot pass in, inline or as variables, are BAD_USER_INPUT alike.

graphql-core reports a bad inline value while validating the document and a bad variable
while building the execution, wrapping the scalar's own error (a BadInput for Money, a
ValueError for DateTime) in its own; both are coded here where they are reported, so the
error masking shows them instead of hiding them as unexpected. NUL is refused in every
string argument, inline or not: PostgreSQL cannot store it and no argument needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError, StringValueNode, ValidationRule, ValuesOfCorrectTypeRule
from graphql.execution import Executor
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

BAD_USER_INPUT = "BAD_USER_INPUT"
NUL_MESSAGE = "text may not contain NUL characters"


def bad_user_input(error: GraphQLError) -> GraphQLError:
    """The same error, coded as a value the caller sent that the schema cannot take."""
    error.extensions = {**(error.extensions or {}), "code": BAD_USER_INPUT}
    return error


def is_bad_user_input(error: GraphQLError) -> bool:
    return (error.extensions or {}).get("code") == BAD_USER_INPUT


def holds_nul(value: object) -> bool:
    """Whether NUL is in any string (or key) of a JSON-like value; iterative, as JSON
    values may be nested deeper than Python's recursion limit."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


class ValuesOfCorrectType(ValuesOfCorrectTypeRule):
    """graphql-core's check of inline values, its errors coded like bad variables."""

    def report_error(self, error: GraphQLError) -> None:
        super().report_error(bad_user_input(error))


class NoNulInStrings(ValidationRule):
    """Refuses a string literal holding NUL (written `\\u0000` in the document)."""

    def enter_string_value(self, node: StringValueNode, *_args: object) -> None:
        if "\x00" in node.value:
            self.report_error(bad_user_input(GraphQLError(NUL_MESSAGE, node)))


class InputExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor; the errors of coercing variables come out coded."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> list[GraphQLError] | Executor[Any]:
        built = super().build(*args, **kwargs)
        if isinstance(built, list):  # the variables (or the operation asked for) are wrong
            return [bad_user_input(error) for error in built]
        if holds_nul(built.variable_values.coerced):
            return [bad_user_input(GraphQLError(NUL_MESSAGE))]
        return built


class InputRules(SchemaExtension):
    """Swaps in the coded check of inline values and adds the NUL check."""

    def on_operation(self) -> Iterator[None]:
        rules = self.execution_context.validation_rules
        self.execution_context.validation_rules = (
            *(ValuesOfCorrectType if rule is ValuesOfCorrectTypeRule else rule for rule in rules),
            NoNulInStrings,
        )
        yield
