"""The operator agent's failures, part of the one InferError tree.

InferError
└── AgentError         the agent could not do its job
    ├── NoRuntime      no LLM runtime answers on this machine
    └── PlatformError  the platform is unreachable, or refused the request
"""

from __future__ import annotations

from infer.errors import InferError


class AgentError(InferError):
    """Base of the agent's failures; the CLI shows `message` as one line."""

    code = "AGENT_ERROR"


class NoRuntime(AgentError):
    """Neither Ollama nor Exo answered where the agent looked."""

    code = "NO_RUNTIME"


class PlatformError(AgentError):
    """The platform could not be reached, answered badly, or refused the request.

    `platform_code` is the GraphQL `extensions.code` when there was one; `retryable` says
    whether trying again later may help (network trouble, 5xx, rate limits).
    """

    code = "PLATFORM_ERROR"

    def __init__(
        self, message: str, *, platform_code: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.platform_code = platform_code
        self.retryable = retryable
