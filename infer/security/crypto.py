"""AES-256-GCM envelope encryption with versioned keys."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


class DecryptionError(Exception):
    """The ciphertext is corrupt, was made for other associated data, or its key is gone."""


@dataclass(frozen=True)
class Keyring:
    """Encryption keys by version; new ciphertext always uses `current`."""

    keys: dict[int, bytes]
    current: int

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """Parse `VERSION:BASE64KEY[,VERSION:BASE64KEY…]`; the first entry is current."""
        keys: dict[int, bytes] = {}
        order: list[int] = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            version_text, _, encoded = part.partition(":")
            try:
                version = int(version_text)
                key = base64.urlsafe_b64decode(encoded.strip())
            except (ValueError, binascii.Error) as exc:
                raise ValueError("encryption keys must look like 1:BASE64") from exc
            if len(key) != 32:
                raise ValueError(f"encryption key version {version} is not 32 bytes")
            if version in keys:
                raise ValueError(f"encryption key version {version} is listed twice")
            keys[version] = key
            order.append(version)
        if not order:
            raise ValueError("no encryption key configured")
        return cls(keys=keys, current=order[0])

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> tuple[int, bytes]:
        """Return (key version, nonce + ciphertext + tag); `aad` binds it to its owner."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self.keys[self.current]).encrypt(nonce, plaintext, aad)
        return self.current, nonce + sealed

    def decrypt(self, version: int, blob: bytes, *, aad: bytes) -> bytes:
        key = self.keys.get(version)
        if key is None or len(blob) <= _NONCE_BYTES:
            raise DecryptionError("cannot decrypt")
        try:
            return AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except InvalidTag as exc:
            raise DecryptionError("cannot decrypt") from exc
