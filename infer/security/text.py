"""What a stored string may hold: one check per kind (a name, free text, a model name).

Every string a user or a runtime sends that INFER keeps goes through one of these, in
the service that stores it, so both databases see the same clean text: PostgreSQL
refuses NUL in text with an error, SQLite would keep it, and neither should keep
characters that make a name look like another one when shown (bidi overrides,
zero-width characters). Markup is not refused: it is data, and every edge escapes it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from infer.errors import BadInput

MAX_NAME = 100
MAX_TEXT = 2000
MAX_MODEL_NAME = 200
MODEL_NAME_CHARACTERS = "ASCII letters, digits and . _ - : / @ +"

# Controls, format characters (bidi overrides and isolates, zero-width ones), lone
# surrogates, private use, unassigned code points, and line or paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_TEXT_CONTROLS = frozenset("\n\t")  # free text keeps its lines and tabs
_MODEL_NAME = re.compile(rf"[A-Za-z0-9._:/@+-]{{1,{MAX_MODEL_NAME}}}")


def refused_characters(value: str, *, allow: frozenset[str] = frozenset()) -> Iterator[str]:
    """The characters of `value` no stored string may hold (those in `allow` aside)."""
    for char in value:
        if char not in allow and unicodedata.category(char) in _REFUSED_CATEGORIES:
            yield char


def check_name(value: str, *, param: str, what: str = "a name", max_length: int = MAX_NAME) -> str:
    """A one-line label (a node name, a key name): NFC, runs of spaces made one, trimmed."""
    name = " ".join(unicodedata.normalize("NFC", value).split())
    if not 1 <= len(name) <= max_length or any(refused_characters(name)):
        raise BadInput(
            f"{what} is 1 to {max_length} characters, without control or formatting characters",
            param=param,
        )
    return name


def check_text(
    value: str | None, *, param: str, what: str = "a text", max_length: int = MAX_TEXT
) -> str | None:
    """Free text (a review comment): NFC, lines and tabs kept, trimmed; None when empty."""
    if value is None:
        return None
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n")).strip()
    if any(refused_characters(text, allow=_TEXT_CONTROLS)):
        raise BadInput(
            f"{what} may not hold control or formatting characters (lines and tabs are fine)",
            param=param,
        )
    if len(text) > max_length:
        raise BadInput(f"{what} is at most {max_length} characters", param=param)
    return text or None


def is_model_name(value: str) -> bool:
    """Whether a runtime's model name is one INFER lists (the characters of real names)."""
    return _MODEL_NAME.fullmatch(value) is not None


def check_model_name(value: str, *, param: str = "model") -> str:
    """A model name as an operator prices it; the same rule as for runtimes' names."""
    if not is_model_name(value):
        raise BadInput(
            f"a model name is 1 to {MAX_MODEL_NAME} characters: {MODEL_NAME_CHARACTERS}",
            param=param,
        )
    return value
