"""Email normalisation and a deliberately modest syntax check."""

from __future__ import annotations

import re
import unicodedata

from infer.errors import BadInput
from infer.security.text import refused_characters

_EMAIL = re.compile(r"^[^\s@\"<>(),;:\\\[\]]+@[^\s@\"<>(),;:\\\[\]]+\.[^\s@\"<>(),;:\\\[\].]{2,}$")


def normalize_email(email: str) -> str:
    """Lower-cased, NFKC, trimmed: two spellings of one address are one account."""
    normal = unicodedata.normalize("NFKC", email).strip().lower()
    bad = len(normal) > 254 or not _EMAIL.match(normal) or ".." in normal
    if bad or any(refused_characters(normal)):
        raise BadInput("enter a valid email address", param="email")
    return normal
