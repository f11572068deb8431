"""Expected failures keep their message and gain `extensions.code`; the rest are masked."""

from __future__ import annotations

import logging

import strawberry
from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors
from strawberry.types import ExecutionContext

from infer.errors import InferError, RateLimited, Unavailable
from infer.outages import database_unavailable, unavailable
from infer.schema.inputs import is_bad_user_input

log = logging.getLogger(__name__)


def _original(error: GraphQLError) -> Exception | None:
    """The exception behind an error, through graphql-core's wrappers (bad variables)."""
    original = error.original_error
    while isinstance(original, GraphQLError):
        original = original.original_error
    return original


def _is_expected(error: GraphQLError) -> bool:
    # Parse and validation errors have no original error and describe the query only;
    # bad values, inline or in variables, were coded where graphql-core reported them.
    original = _original(error)
    return (
        original is None
        or isinstance(original, InferError)
        or database_unavailable(original)
        or is_bad_user_input(error)
    )


def _as_unavailable(error: GraphQLError) -> GraphQLError:
    """A database outage that reached GraphQL as the driver's error becomes `Unavailable`."""
    original = error.original_error
    if original is None or isinstance(original, InferError) or not database_unavailable(original):
        return error
    replaced = unavailable()
    return GraphQLError(
        replaced.message, error.nodes, error.source, error.positions, error.path, replaced
    )


class InferErrors(MaskErrors):
    """Adds stable codes to InferErrors and hides everything else behind one message."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda error: not _is_expected(error))

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        masked.extensions = {"code": "INTERNAL_SERVER_ERROR"}
        return masked

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed = super()._process_errors([_as_unavailable(error) for error in errors])
        for error in processed:
            original = _original(error)
            extensions = dict(error.extensions or {})
            if isinstance(original, InferError):
                extensions["code"] = original.code
                if original.param:
                    extensions["field"] = original.param
                if isinstance(original, RateLimited | Unavailable):
                    extensions["retryAfter"] = original.retry_after
            extensions.setdefault("code", "GRAPHQL_VALIDATION_FAILED")
            error.extensions = extensions
        return processed


class Schema(strawberry.Schema):
    """Logs unexpected errors only: expected ones are the caller's business, not ours."""

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            if not _is_expected(error):
                log.error("unexpected error in GraphQL", exc_info=error.original_error)
