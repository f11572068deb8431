"""Email normalisation and a deliberately modest syntax check."""

from __future__ import annotations

import re
import unicodedata

from infer.errors import BadInput

_EMAIL = re.compile(r"^[^\s@\"<>(),;:\\\[\]]+@[^\s@\"<>(),;:\\\[\]]+\.[^\s@\"<>(),;:\\\[\].]{2,}$")


def normalize_email(email: str) -> str:
    """Lower-cased, NFKC, trimmed: two spellings of one address are one account."""
    normal = unicodedata.normalize("NFKC", email).strip().lower()
    if len(normal) > 254 or not _EMAIL.match(normal) or ".." in normal:
        raise BadInput("enter a valid email address", param="email")
    return normal
