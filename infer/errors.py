"""The one error tree of INFER; each edge maps it to its own format.

InferError
├── Unauthenticated      no or bad credentials
│   └── KeyExpired       an API key past its expiry time
├── Forbidden            authenticated, but not allowed
│   ├── InsufficientScope  an API key without the scope this needs
│   └── ModelNotAllowed  a model outside the key's allow-list
├── NotFound             absent, or someone else's
├── BadInput             the request itself is wrong
│   └── PayloadTooLarge  the body is over the limit
├── Conflict             clashes with what exists
├── RateLimited          too many requests for now
├── InsufficientFunds    the balance cannot cover it
│   └── BudgetExceeded   the key's budget for this period cannot cover it
├── NoNodeAvailable      nothing can serve the request now
│   └── NodesBusy        every node that could is at capacity (retry shortly)
├── Unavailable          the database cannot be reached just now
└── UpstreamError        a node failed or answered badly
    └── UpstreamTimeout  a node took too long
"""

from __future__ import annotations


class InferError(Exception):
    """Base of expected failures; `message` is fit to show a person."""

    code = "INTERNAL"
    status = 500

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class Unauthenticated(InferError):
    """No credentials, or credentials that are malformed, unknown, expired or revoked."""

    code = "UNAUTHENTICATED"
    status = 401


class KeyExpired(Unauthenticated):
    """An API key whose expiry time has passed; the message says when it expired."""


class Forbidden(InferError):
    """The caller is known but may not do this."""

    code = "FORBIDDEN"
    status = 403


class InsufficientScope(Forbidden):
    """An API key whose scopes do not cover the call (a node key on the gateway)."""


class ModelNotAllowed(Forbidden):
    """The key's allow-list of models does not include the requested one."""


class NotFound(InferError):
    """The thing does not exist, or belongs to someone else (we do not say which)."""

    code = "NOT_FOUND"
    status = 404


class BadInput(InferError):
    """The request is malformed or a value is out of bounds; `param` names the field."""

    code = "BAD_USER_INPUT"
    status = 400


class PayloadTooLarge(BadInput):
    """The request body is larger than the platform accepts."""

    status = 413


class Conflict(InferError):
    """The request clashes with existing state, such as a duplicate email."""

    code = "CONFLICT"
    status = 409


class RateLimited(InferError):
    """Too many requests; `retry_after` says how many seconds to wait."""

    code = "RATE_LIMITED"
    status = 429

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class InsufficientFunds(InferError):
    """The account's available balance cannot cover the amount."""

    code = "INSUFFICIENT_FUNDS"
    status = 402


class BudgetExceeded(InsufficientFunds):
    """The key's spend limit for this period cannot cover the request's hold."""


class NoNodeAvailable(InferError):
    """No online node can serve the request right now."""

    code = "NO_NODE_AVAILABLE"
    status = 503


class NodesBusy(NoNodeAvailable):
    """Every node serving the model is at capacity, even after waiting for a free slot."""

    retry_after = 1


class Unavailable(InferError):
    """The database could not be reached or used just now; `retry_after` says when to retry.

    Raised at the database boundary (`infer/outages.py`) in place of the driver's error;
    nothing was done, so the same request may be sent again.
    """

    code = "UNAVAILABLE"
    status = 503

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class UpstreamError(InferError):
    """A node failed or answered something we cannot use; details stay in our logs."""

    code = "UPSTREAM_ERROR"
    status = 502


class UpstreamTimeout(UpstreamError):
    """A node did not answer within its deadline."""

    code = "UPSTREAM_TIMEOUT"
    status = 504
