"""API-key format: `inf_` + 43 base62 characters of randomness + a 6-character checksum."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

PREFIX = "inf_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 43  # 256 bits in base62
_CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
DISPLAY_LENGTH = len(PREFIX) + 8


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def generate_key() -> str:
    body = _base62(secrets.randbits(256), _BODY_LENGTH)
    return PREFIX + body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """Offline check (prefix, length, alphabet, checksum): typos never reach the database."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    body, checksum = key[len(PREFIX) : -_CHECKSUM_LENGTH], key[-_CHECKSUM_LENGTH:]
    if any(ch not in _ALPHABET for ch in body):
        return False
    return hmac.compare_digest(checksum, _checksum(body))


def display_prefix(key: str) -> str:
    return key[:DISPLAY_LENGTH]


def lookup_digest(key: str, lookup_key: str) -> str:
    """HMAC-SHA256 of the key: what the database indexes, useless without `lookup_key`."""
    return hmac.new(lookup_key.encode(), key.encode(), hashlib.sha256).hexdigest()
