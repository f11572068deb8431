"""What to register: the chosen runtime, its endpoint, name, prices and GPU, from a detection."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from infer.agent.detect import (
    SERVER_NAMES,
    DetectedRuntime,
    Detection,
    RuntimeName,
    ServerKind,
    base_url,
)
from infer.agent.errors import NoRuntime
from infer.agent.gpu import GpuInfo
from infer.billing.money import MICROS_PER_USD, format_usd, parse_usd
from infer.errors import BadInput

MAX_PRICE_USD = Decimal(1000)  # per million tokens, as the platform allows
_RUNTIMES: dict[str, ServerKind] = {
    "ollama": "ollama",
    "exo": "exo",
    "openai": "openai",
    "llama.cpp": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "vllm": "vllm",
    "lmstudio": "lmstudio",
    "lm-studio": "lmstudio",
}


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million input and output tokens of one model, as decimal strings."""

    model: str
    input_per_million: str
    output_per_million: str

    def to_json(self) -> dict[str, str]:
        return {
            "model": self.model,
            "inputPerMillion": self.input_per_million,
            "outputPerMillion": self.output_per_million,
        }


@dataclass(frozen=True, slots=True)
class RegistrationOptions:
    """The operator's choices; anything None is filled in from the detection."""

    name: str | None = None
    runtime: ServerKind | None = None
    endpoint: str | None = None
    prices: tuple[ModelPrice, ...] = ()
    default_price: tuple[str, str] | None = None
    tunnel: bool = False  # reached through the agent's tunnel: no endpoint is registered

    @classmethod
    def parse(
        cls,
        *,
        name: str | None = None,
        runtime: str | None = None,
        endpoint: str | None = None,
        prices: Iterable[str] = (),
        default_price: str | None = None,
        tunnel: bool = False,
    ) -> RegistrationOptions:
        """The options as given on the command line; bad values raise BadInput."""
        return cls(
            name=name,
            runtime=parse_runtime(runtime) if runtime else None,
            endpoint=_endpoint(endpoint) if endpoint else None,
            prices=tuple(parse_price(price) for price in prices),
            default_price=parse_amounts(default_price) if default_price else None,
            tunnel=tunnel,
        )


@dataclass(frozen=True, slots=True)
class Registration:
    """One registerNode call; equal registrations need not be sent twice."""

    name: str
    runtime: RuntimeName
    endpoint: str
    models: tuple[str, ...]
    prices: tuple[ModelPrice, ...]
    gpu: GpuInfo
    server: ServerKind | None = None  # which server it is (vllm, …); not sent
    tunnel: bool = False  # `endpoint` is then the runtime's local URL, for the tunnel only

    def variables(self) -> dict[str, Any]:
        """The mutation's variables; without prices the platform keeps the ones it has."""
        node: dict[str, Any] = {"name": self.name, "runtime": self.runtime.upper()}
        if self.tunnel:
            # The platform reaches the node through its tunnel: the local URL stays here.
            node["tunnel"] = True
        else:
            node["endpoint"] = self.endpoint
        node["gpu"] = self.gpu.to_json()
        if self.prices:
            node["prices"] = [price.to_json() for price in self.prices]
        return {"input": node}


def _usd(text: str, *, option: str) -> str:
    # The platform's own parser, so the agent refuses exactly what registerNode would.
    try:
        micros = parse_usd(text.strip(), param=option, allow_zero=True)
    except BadInput as exc:
        raise BadInput(f"{option}: {exc.message}", param=option) from exc
    if micros > MAX_PRICE_USD * MICROS_PER_USD:
        raise BadInput(f"{option}: a price is 0 to {MAX_PRICE_USD} USD", param=option)
    return format_usd(micros)


def _endpoint(url: str) -> str:
    return base_url(url, option="--endpoint", example="https://node.example.com")


def parse_amounts(text: str, *, option: str = "--default-price") -> tuple[str, str]:
    """Parses "IN/OUT" (USD per million input / output tokens) into decimal strings."""
    parts = text.split("/")
    if len(parts) != 2:
        raise BadInput(f"{option} takes IN/OUT, such as 0.10/0.40", param=option)
    return _usd(parts[0], option=option), _usd(parts[1], option=option)


def parse_price(text: str) -> ModelPrice:
    """Parses `--price MODEL=IN/OUT`, such as llama3.2:1b=0.10/0.40."""
    model, equals, amounts = text.rpartition("=")
    if not equals or not model.strip():
        raise BadInput("--price takes MODEL=IN/OUT, such as llama3.2:1b=0.10/0.40", param="price")
    low, high = parse_amounts(amounts, option="--price")
    return ModelPrice(model.strip(), low, high)


def parse_runtime(text: str) -> ServerKind:
    """Checks a --runtime value: a runtime (ollama, exo, openai) or a server (vllm, …)."""
    runtime = _RUNTIMES.get(text.strip().lower())
    if runtime is None:
        raise BadInput(
            "--runtime is ollama, exo, llama.cpp, vllm, lmstudio or openai", param="runtime"
        )
    return runtime


def choose_runtime(detection: Detection, wanted: ServerKind | None) -> DetectedRuntime:
    """The runtime to register: the one asked for, or the only one found."""
    where = ", ".join(detection.probed) or "this machine"
    found = [
        runtime
        for runtime in detection.runtimes
        if wanted is None or wanted in (runtime.kind, runtime.runtime)
    ]
    if not found:
        if wanted is not None:
            raise NoRuntime(f"{SERVER_NAMES[wanted]} did not answer (looked at {where})")
        raise NoRuntime(f"no runtime answered (looked at {where}); start one first")
    if len(found) > 1:
        names = " and ".join(f"{r.kind} at {r.endpoint}" for r in found)
        raise BadInput(
            f"found {names}; pick one with --runtime"
            + (" and the matching --*-url option" if wanted is not None else ""),
            param="runtime",
        )
    return found[0]


def build_registration(detection: Detection, options: RegistrationOptions) -> Registration:
    """Fills the operator's options in from what `detect` found."""
    runtime = choose_runtime(detection, options.runtime)
    prices = {price.model: price for price in options.prices}
    if options.default_price is not None:
        low, high = options.default_price
        for model in runtime.models:
            prices.setdefault(model, ModelPrice(model, low, high))
    endpoint = options.endpoint if options.endpoint is not None else runtime.endpoint
    name = options.name if options.name is not None else default_name(detection, runtime)
    if not name.strip():
        raise BadInput("--name must not be empty", param="name")
    return Registration(
        name=name.strip(),
        runtime=runtime.runtime,
        endpoint=endpoint,
        models=runtime.models,
        prices=tuple(sorted(prices.values(), key=lambda price: price.model)),
        gpu=detection.gpu,
        server=runtime.kind,
        tunnel=options.tunnel,
    )


def default_name(detection: Detection, runtime: DetectedRuntime) -> str:
    """hostname-runtime: stable across runs, so registering again updates the same node."""
    return f"{detection.host.hostname}-{runtime.kind.replace('.', '')}"
