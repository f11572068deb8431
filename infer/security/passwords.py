"""Password policy and Argon2id hashing."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from infer.errors import BadInput

MIN_LENGTH = 10
MAX_LENGTH = 1024

# The most common passwords of at least MIN_LENGTH characters in public breach lists.
COMMON_PASSWORDS = frozenset(
    {
        "1234567890",
        "12345678910",
        "0123456789",
        "1q2w3e4r5t",
        "1qaz2wsx3edc",
        "123123123123",
        "1111111111",
        "0000000000",
        "qwertyuiop",
        "qwerty1234",
        "qwerty12345",
        "qwertyuiop1",
        "asdfghjkl1",
        "zxcvbnm123",
        "password12",
        "password123",
        "password1234",
        "passw0rd123",
        "iloveyou12",
        "iloveyou123",
        "1234qwerty",
        "abcdefghij",
        "abc1234567",
        "aaaaaaaaaa",
        "9876543210",
        "1234512345",
        "12341234as",
        "football123",
        "baseball12",
        "princess12",
        "sunshine12",
        "superman12",
        "starwars12",
        "trustno123",
        "letmein123",
        "welcome123",
        "welcome1234",
        "monkey1234",
        "dragon1234",
        "master1234",
        "shadow1234",
        "michael123",
        "qazwsxedcrfv",
        "1q2w3e4r5t6y",
        "q1w2e3r4t5",
        "q1w2e3r4t5y6",
        "zaq12wsxcde",
        "administrator",
        "changeme123",
        "changeme12",
        "password12345",
        "p@ssw0rd12",
        "p@ssword123",
        "123456789a",
        "a123456789",
        "1234567890a",
        "1234567890q",
        "abcd123456",
        "asdf123456",
        "qwer123456",
        "987654321a",
        "11223344556",
    }
)

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 low-memory profile
# Verified against when the email is unknown, so both failures take the same time.
_DUMMY_HASH = _hasher.hash("never-a-real-password-0")


def check_policy(password: str) -> None:
    """Refuse passwords that are too short, too long, or among the most common."""
    if len(password) < MIN_LENGTH:
        raise BadInput(f"password must be at least {MIN_LENGTH} characters", param="password")
    if len(password) > MAX_LENGTH:
        raise BadInput(f"password must be at most {MAX_LENGTH} characters", param="password")
    if password.lower() in COMMON_PASSWORDS or len(set(password)) < 3:
        raise BadInput("this password is too common; choose another", param="password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-work check; an account without a password verifies against a dummy."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)
