"""Simulated models, made-up text with real token counts, and shared wire helpers."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

OLLAMA_VERSION = "0.12.0"
TOKENS_PER_MESSAGE = 4
KEEP_ALIVE = timedelta(minutes=5)
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
JSON = "application/json; charset=utf-8"

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([bm])")
_WORDS = (
    "the", "a", "model", "token", "stream", "node", "answer", "light", "river", "signal",
    "market", "simple", "quiet", "fast", "layer", "weight", "gradient", "network", "reason",
    "because", "and", "but", "so", "it", "is", "was", "can", "will", "every", "some", "many",
    "blue", "green", "bright", "small", "large", "old", "new", "idea", "question", "context",
    "window", "memory", "sky", "scatter", "wave", "field", "of", "in", "on", "with", "from",
    "through", "between", "always", "often", "rarely", "clearly", "perhaps", "together",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """What the simulator serves, how fast, and how it misbehaves.

    `tokens_per_second` None or 0 streams without delay; `error_rate` is the fraction of
    chat requests answered 500; `hang` never answers chat requests; `drop_after_tokens`
    cuts the connection after that many tokens; `length_range` bounds the natural
    completion length when the request sets no limit.
    """

    models: tuple[str, ...] = ("llama3.2:1b",)
    tokens_per_second: float | None = None
    ttft_ms: float = 0
    error_rate: float = 0
    hang: bool = False
    drop_after_tokens: int | None = None
    seed: int | None = None
    length_range: tuple[int, int] = (16, 64)

    def __post_init__(self) -> None:
        low, high = self.length_range
        problems = [
            (not self.models, "at least one model is required"),
            ((self.tokens_per_second or 0) < 0, "tokens_per_second must not be negative"),
            (self.ttft_ms < 0, "ttft_ms must not be negative"),
            (not 0 <= self.error_rate <= 1, "error_rate must be between 0 and 1"),
            ((self.drop_after_tokens or 0) < 0, "drop_after_tokens must not be negative"),
            (not 1 <= low <= high, "length_range must be (low, high) with 1 <= low <= high"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(message)


def count_prompt_tokens(contents: Sequence[str]) -> int:
    """Prompt tokens of a request: per message, 4 plus one per word or punctuation mark."""
    return sum(TOKENS_PER_MESSAGE + len(_TOKEN_RE.findall(text)) for text in contents)


@dataclass(frozen=True, slots=True)
class Completion:
    """The pieces of one answer (one token each) and why it ended."""

    pieces: tuple[str, ...]
    done_reason: str


def compose(rng: random.Random, limit: int | None, length_range: tuple[int, int]) -> Completion:
    """Made-up text; a limited completion is a prefix of the unlimited one."""
    natural = rng.randint(*length_range)
    count = natural if limit is None else min(natural, limit)
    pieces: list[str] = []
    capital, until_mark = True, rng.randint(4, 12)
    for _ in range(count):
        if until_mark == 0:
            pieces.append("." if rng.random() < 0.75 else ",")
            capital, until_mark = pieces[-1] == ".", rng.randint(4, 12)
            continue
        word = rng.choice(_WORDS)
        word = word.capitalize() if capital else word
        pieces.append(" " + word if pieces else word)
        capital, until_mark = False, until_mark - 1
    if count == natural:
        pieces[-1] = "."
    return Completion(tuple(pieces), "stop" if count == natural else "length")


@dataclass(frozen=True, slots=True)
class Model:
    """A served model, with Ollama-shaped details derived from its name."""

    name: str
    family: str
    parameter_size: str
    size: int
    digest: str

    @classmethod
    def from_name(cls, name: str) -> Model:
        base, _, tag = name.rpartition(":")
        family = re.match(r"[a-z]*", base.rsplit("/", 1)[-1].lower())
        size = _SIZE_RE.match(tag.lower())
        billions = float(size[1]) / (1 if size[2] == "b" else 1000) if size else 7.0
        return cls(
            name=name,
            family=(family[0] if family else "") or "llama",
            parameter_size=f"{size[1]}{size[2].upper()}" if size else "7B",
            size=int(billions * 0.6e9),  # about 4.8 bits per weight, as in Q4_K_M
            digest=hashlib.sha256(name.encode()).hexdigest(),
        )

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": "Q4_K_M",
        }

    def owner(self) -> str:
        parts = self.name.rpartition(":")[0].split("/")
        return parts[-2] if len(parts) > 1 else "library"


def full_name(name: str) -> str:
    """Ollama's default tag: `llama3.2` means `llama3.2:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def timestamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(payload: object, status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type=JSON)
