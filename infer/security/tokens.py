"""Session tokens: JWTs signed with HS256 (pinned), each naming a server-side session."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from infer.errors import Unauthenticated

_ALGORITHM = "HS256"
_ISSUER = "infer"


@dataclass(frozen=True)
class SessionClaims:
    session_id: uuid.UUID
    user_id: uuid.UUID


class SessionSigner:
    """Issues and checks session JWTs; only HS256 is ever accepted."""

    def __init__(self, secret: str) -> None:
        self._key = OctKey.import_key(secret.encode())

    def issue(self, *, session_id: uuid.UUID, user_id: uuid.UUID, expires_at: datetime) -> str:
        claims = {
            "iss": _ISSUER,
            "sub": str(user_id),
            "jti": str(session_id),
            "exp": int(expires_at.timestamp()),
        }
        return jwt.encode({"alg": _ALGORITHM}, claims, self._key, algorithms=[_ALGORITHM])

    def verify(self, token: str) -> SessionClaims:
        try:
            decoded = jwt.decode(token, self._key, algorithms=[_ALGORITHM])
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": _ISSUER},
                exp={"essential": True},
                sub={"essential": True},
                jti={"essential": True},
            ).validate(decoded.claims)
            return SessionClaims(
                session_id=uuid.UUID(decoded.claims["jti"]),
                user_id=uuid.UUID(decoded.claims["sub"]),
            )
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise Unauthenticated("your session has expired; log in again") from exc
