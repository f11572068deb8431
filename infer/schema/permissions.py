"""Access rules for fields: who must be signed in, and who must be an admin."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission
from strawberry.types import Info

from infer.accounts.principal import Principal
from infer.errors import Forbidden, Unauthenticated
from infer.schema.context import Context


def require_principal(info: Info[Context, Any]) -> Principal:
    principal = info.context.principal
    if principal is None:
        raise Unauthenticated("sign in, or send an API key as a Bearer token")
    return principal


class IsAuthenticated(BasePermission):
    message = "sign in, or send an API key as a Bearer token"

    def has_permission(self, source: Any, info: Info[Context, Any], **kwargs: Any) -> bool:
        require_principal(info)
        return True


class IsAdmin(BasePermission):
    message = "only administrators may do this"

    def has_permission(self, source: Any, info: Info[Context, Any], **kwargs: Any) -> bool:
        if not require_principal(info).is_admin:
            raise Forbidden(self.message)
        return True
