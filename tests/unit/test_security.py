"""Pure security pieces: AES-GCM keyring, key format, passwords, session tokens."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from infer.errors import BadInput, Unauthenticated
from infer.security import apikeys, passwords
from infer.security.crypto import DecryptionError, Keyring
from infer.security.tokens import SessionSigner

K1 = base64.urlsafe_b64encode(b"1" * 32).decode()
K2 = base64.urlsafe_b64encode(b"2" * 32).decode()


def test_ciphertext_round_trips_and_uses_a_fresh_nonce() -> None:
    keyring = Keyring.parse(f"1:{K1}")
    v1, a = keyring.encrypt(b"secret", aad=b"id")
    _, b = keyring.encrypt(b"secret", aad=b"id")
    assert a != b
    assert keyring.decrypt(v1, a, aad=b"id") == b"secret"


def test_ciphertext_is_bound_to_its_associated_data_and_untampered() -> None:
    keyring = Keyring.parse(f"1:{K1}")
    version, blob = keyring.encrypt(b"secret", aad=b"id-1")
    with pytest.raises(DecryptionError):
        keyring.decrypt(version, blob, aad=b"id-2")
    with pytest.raises(DecryptionError):
        keyring.decrypt(version, blob[:-1] + bytes([blob[-1] ^ 1]), aad=b"id-1")


def test_new_key_version_encrypts_while_old_versions_still_decrypt() -> None:
    version, blob = Keyring.parse(f"1:{K1}").encrypt(b"old", aad=b"x")
    rotated = Keyring.parse(f"2:{K2},1:{K1}")
    assert rotated.current == 2
    assert rotated.decrypt(version, blob, aad=b"x") == b"old"
    assert rotated.encrypt(b"new", aad=b"x")[0] == 2


@pytest.mark.parametrize("spec", ["", "1:short", "x:" + K1, f"1:{K1},1:{K2}"])
def test_bad_keyring_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        Keyring.parse(spec)


def test_generated_keys_are_unique_well_formed_and_recognisable() -> None:
    keys = {apikeys.generate_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(k.startswith("inf_") and apikeys.is_well_formed(k) for k in keys)


def test_lookup_digest_depends_on_the_platform_secret() -> None:
    key = apikeys.generate_key()
    assert apikeys.lookup_digest(key, "a") != apikeys.lookup_digest(key, "b")
    assert len(apikeys.lookup_digest(key, "a")) == 64


def test_password_hashes_are_argon2id_and_verify() -> None:
    hashed = passwords.hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify_password(hashed, "correct horse battery staple")
    assert not passwords.verify_password(hashed, "correct horse battery stapl")
    assert not passwords.verify_password(None, "anything at all")


@pytest.mark.parametrize("password", ["123456789", "1234567890", "Password123", "zzzzzzzzzzzz"])
def test_weak_passwords_are_refused(password: str) -> None:
    with pytest.raises(BadInput):
        passwords.check_policy(password)


def test_session_tokens_verify_and_expire() -> None:
    signer = SessionSigner("k" * 40)
    sid, uid = uuid.uuid4(), uuid.uuid4()
    token = signer.issue(
        session_id=sid, user_id=uid, expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    claims = signer.verify(token)
    assert (claims.session_id, claims.user_id) == (sid, uid)
    expired = signer.issue(
        session_id=sid, user_id=uid, expires_at=datetime.now(UTC) - timedelta(seconds=5)
    )
    with pytest.raises(Unauthenticated):
        signer.verify(expired)


def test_session_tokens_from_another_secret_or_alg_none_are_refused() -> None:
    uid = uuid.uuid4()
    later = datetime.now(UTC) + timedelta(hours=1)
    foreign = SessionSigner("other" * 10).issue(session_id=uid, user_id=uid, expires_at=later)
    with pytest.raises(Unauthenticated):
        SessionSigner("k" * 40).verify(foreign)
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = (
        base64.urlsafe_b64encode(
            f'{{"iss":"infer","sub":"{uid}","jti":"{uid}","exp":{int(later.timestamp())}}}'.encode()
        )
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(Unauthenticated):
        SessionSigner("k" * 40).verify(f"{header}.{body}.")
