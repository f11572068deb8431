"""Who a request acts for: a user, through a session or an API key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from infer.models import ALL_SCOPES, ApiKeyScope, Role


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: Role
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    # Per-key overrides of the default rate limits (None: the platform's defaults).
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    # An API key replaced by a rotation, in its grace period: it may still call the gateway
    # (so running clients keep working until redeployed) but not manage the account.
    retiring: bool = False
    # What an API key may do (infer/keys/scopes.py); a dashboard session may do it all.
    scopes: frozenset[ApiKeyScope] = ALL_SCOPES
    # An API key with a spend limit: its holds reserve against it (infer/keys/budgets.py).
    has_budget: bool = False
    # The models an API key may call; None: any.
    allowed_models: frozenset[str] | None = None

    def may(self, scope: ApiKeyScope) -> bool:
        return scope in self.scopes

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN
