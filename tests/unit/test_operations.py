"""The dashboard's operations: every one fits the schema, and every one the views run exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infer.schema.root import build_schema
from infer.web.operations import OPERATIONS_DIR, Operations, load_documents

WEB = Path(__file__).resolve().parents[2] / "infer" / "web"


@pytest.fixture(scope="module")
def operations() -> Operations:
    return Operations(build_schema())


def test_every_operation_fits_the_schema(operations: Operations) -> None:
    assert {"Header", "LogIn", "SignUp", "LogOut", "Overview"} <= set(operations.sources)


def test_every_operation_a_view_runs_is_defined(operations: Operations) -> None:
    used = {
        name
        for path in WEB.glob("*.py")
        for name in re.findall(r'\.run\(\s*"(\w+)"', path.read_text(encoding="utf-8"))
    }
    assert used, "no view runs an operation"
    assert used <= set(operations.sources), used - set(operations.sources)


def test_an_operation_that_does_not_fit_the_schema_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "bad.graphql").write_text("query Bad { me { noSuchField } }")
    with pytest.raises(ValueError, match="Bad does not fit the schema"):
        Operations(build_schema(), tmp_path)


def test_an_operation_carries_only_the_fragments_it_uses(tmp_path: Path) -> None:
    (tmp_path / "a.graphql").write_text(
        "fragment A on User { email ...B } fragment B on User { id }"
        " fragment C on User { role } query One { me { ...A } }"
    )
    (tmp_path / "b.graphql").write_text("query Two { me { ...C } }")
    documents = load_documents(sorted(tmp_path.glob("*.graphql")))
    names = {
        name: [d.name.value for d in doc.definitions if d.name] for name, doc in documents.items()
    }
    assert names == {"One": ["One", "A", "B"], "Two": ["Two", "C"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("query { me { id } }", "needs a name"),
        ("query X { me { id } } query X { me { email } }", "X is defined twice"),
    ],
)
def test_unnamed_or_twice_named_operations_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "x.graphql").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_documents([tmp_path / "x.graphql"])


def test_the_operations_folder_is_the_checkouts() -> None:
    assert OPERATIONS_DIR.is_dir()
