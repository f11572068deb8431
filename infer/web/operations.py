"""The dashboard's named GraphQL operations (graphql/operations/*.graphql), run in process."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    Node,
    OperationDefinitionNode,
    parse,
    print_ast,
    validate,
    visit,
)
from graphql.language import Visitor
from strawberry import Schema

from infer.schema.context import Context

# Installed, graphql/ ships inside the package (setup.py); in a checkout it is the
# top-level folder beside infer/ (as for migrations/).
_PACKAGE = Path(__file__).resolve().parent.parent
GRAPHQL_DIR = (
    _PACKAGE / "graphql" if (_PACKAGE / "graphql").is_dir() else _PACKAGE.parent / "graphql"
)
OPERATIONS_DIR = GRAPHQL_DIR / "operations"


@dataclass(frozen=True)
class Problem:
    """One error of an operation, as the API reported it."""

    message: str
    code: str
    field: str | None = None


class OperationFailed(Exception):
    """An operation answered with errors; the first one decides what the page shows."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems[0].message)
        self.problems = problems

    @property
    def code(self) -> str:
        return self.problems[0].code

    def by_field(self) -> dict[str, str]:
        """Messages of the errors about one input field, for showing beside it."""
        return {p.field: p.message for p in self.problems if p.field}

    def general(self) -> list[str]:
        """Messages of the errors that name no field."""
        return [p.message for p in self.problems if not p.field]


class _Spreads(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_fragment_spread(self, node: FragmentSpreadNode, *_: Any) -> None:
        self.names.add(node.name.value)


def _spreads(node: Node) -> set[str]:
    visitor = _Spreads()
    visit(node, visitor)
    return visitor.names


def _with_fragments(
    operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode]
) -> DocumentNode:
    """The operation and every fragment it uses, directly or through other fragments."""
    needed: dict[str, FragmentDefinitionNode] = {}
    pending = _spreads(operation)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed[name] = fragments[name]
            pending |= _spreads(needed[name])
    return DocumentNode(definitions=(operation, *sorted(needed.values(), key=_name)))


def _name(node: FragmentDefinitionNode) -> str:
    return node.name.value


def load_documents(files: Iterable[Path]) -> dict[str, DocumentNode]:
    """Each named operation of these files as a document of its own, with its fragments.

    Fragments are shared by all the files; a name defined twice is an error.
    """
    operations: dict[str, OperationDefinitionNode] = {}
    fragments: dict[str, FragmentDefinitionNode] = {}
    for path in sorted(files):
        for definition in parse(path.read_text(encoding="utf-8")).definitions:
            if isinstance(definition, OperationDefinitionNode):
                if definition.name is None:
                    raise ValueError(f"{path.name}: every operation needs a name")
                found: dict[str, Any] = operations
                name = definition.name.value
            elif isinstance(definition, FragmentDefinitionNode):
                found, name = fragments, definition.name.value
            else:
                raise ValueError(f"{path.name}: only operations and fragments belong here")
            if name in found:
                raise ValueError(f"{path.name}: {name} is defined twice")
            found[name] = definition
    return {name: _with_fragments(op, fragments) for name, op in operations.items()}


class Operations:
    """The operations by name, validated against the schema once, at start-up."""

    def __init__(self, schema: Schema, directory: Path = OPERATIONS_DIR) -> None:
        self.schema = schema
        documents = load_documents(directory.glob("*.graphql"))
        for name, document in documents.items():
            errors = validate(schema._schema, document)
            if errors:
                raise ValueError(f"operation {name} does not fit the schema: {errors[0].message}")
        self.sources = {name: print_ast(document) for name, document in documents.items()}

    async def run(self, name: str, variables: dict[str, Any], context: Context) -> dict[str, Any]:
        """The operation's data; OperationFailed when the API answered with errors."""
        result = await self.schema.execute(
            self.sources[name],
            variable_values=variables,
            context_value=context,
            operation_name=name,
        )
        if result.errors:
            raise OperationFailed(
                [
                    Problem(
                        message=error.message,
                        code=str((error.extensions or {}).get("code", "INTERNAL_SERVER_ERROR")),
                        field=(error.extensions or {}).get("field"),
                    )
                    for error in result.errors
                ]
            )
        assert result.data is not None
        return result.data
