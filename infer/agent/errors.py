"""The operator agent's failures, part of the one InferError tree.

InferError
└── AgentError                      the agent could not do its job
    ├── NoRuntime                   no LLM runtime answers on this machine
    ├── PlatformError               the platform is unreachable, or refused the request
    ├── AlreadyJoined               this box keeps a node key already
    └── RegistrationAfterJoinFailed join stored its key, then registering failed
"""

from __future__ import annotations

from infer.errors import InferError


class AgentError(InferError):
    """Base of the agent's failures; the CLI shows `message` as one line."""

    code = "AGENT_ERROR"


class NoRuntime(AgentError):
    """No runtime (Ollama, Exo, llama.cpp, vLLM, LM Studio, …) answered where the agent looked."""

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


class AlreadyJoined(AgentError):
    """This box already keeps a node key; joining again would leave that one behind."""

    code = "ALREADY_JOINED"


class RegistrationAfterJoinFailed(AgentError):
    """The enrolment code was exchanged and the key stored, but registering the node failed."""

    code = "REGISTRATION_FAILED"
