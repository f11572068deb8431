"""The load: workers sending one row's request at a fixed concurrency, each answer verified."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal

from infer.billing.money import MICROS_PER_USD

from .calls import Call, Pool, Sender, Target
from .cpu import CpuMeter
from .errors import BenchError, CallFailed
from .market import MAX_TOKENS


@dataclass
class Tally:
    """What the buyer was told it paid, summed over every request through INFER."""

    requests: int = 0
    cost: int = 0


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    path: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    ttfb_p50_ms: float | None
    cpu_ms: dict[str, float]  # CPU milliseconds per request, by process
    connections: int  # PostgreSQL connections the platform opened during the measurement
    busy: float  # share of the machine's cores these processes kept busy
    others: float  # share of the machine's cores busy with anything else
    client: str = "lean"  # the load generator's HTTP client


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def reported_cost(content: bytes, *, stream: bool) -> tuple[int, int]:
    """(completion tokens, cost in micro-USD) from the usage INFER returned."""
    if stream:
        events = content.rstrip().split(b"\n\n")
        if events[-1] != b"data: [DONE]":
            raise ValueError("the stream did not end with [DONE]")
        usage = json.loads(events[-2].removeprefix(b"data: "))["usage"]
    else:
        usage = json.loads(content)["usage"]
    return int(usage["completion_tokens"]), int(Decimal(usage["cost"]) * MICROS_PER_USD)


class Load:
    """Workers sending the same small chat request, at a fixed concurrency."""

    def __init__(
        self,
        pools: dict[str, Pool],
        cpu: CpuMeter,
        tally: Tally,
        *,
        warmup: int,
        seconds: float,
        max_requests: int,
    ) -> None:
        self.pools = pools
        self.cpu = cpu
        self.tally = tally
        self.warmup = warmup
        self.seconds = seconds
        self.max_requests = max_requests

    async def _one(self, sender: Sender, call: Call, phase: Phase) -> None:
        started = time.perf_counter()
        try:
            reply = await sender.send(call)
        except CallFailed as exc:
            self._failed(phase, str(exc))
            return
        ended = time.perf_counter()
        content = reply.content
        if reply.status != 200:
            self._failed(phase, f"HTTP {reply.status}: {content[:200]!r}")
            return
        try:
            if call.target.path == "INFER":
                tokens, paid = reported_cost(content, stream=call.stream)
                self.tally.requests += 1
                self.tally.cost += paid
            elif call.stream:
                tokens = MAX_TOKENS if content.endswith(b"data: [DONE]\n\n") else -1
            else:
                tokens = json.loads(content)["usage"]["completion_tokens"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self._failed(phase, f"unexpected body ({exc}): {content[-200:]!r}")
            return
        if tokens != MAX_TOKENS:
            self._failed(phase, f"{tokens} completion tokens instead of {MAX_TOKENS}")
            return
        phase.latencies.append(ended - started)
        if call.stream and reply.first is not None:
            phase.ttfbs.append(reply.first - started)

    @staticmethod
    def _failed(phase: Phase, message: str) -> None:
        phase.errors += 1
        if len(phase.examples) < 3:
            phase.examples.append(message)

    async def _run(
        self, senders: list[Sender], call: Call, *, requests: int, seconds: float
    ) -> tuple[Phase, float]:
        phase = Phase()
        budget = iter(range(requests))  # shared: bounds the phase even if time never runs out
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(sender: Sender) -> None:
            for _ in budget:
                if time.perf_counter() >= deadline:
                    return
                await self._one(sender, call, phase)

        await asyncio.gather(*(worker(sender) for sender in senders))
        return phase, time.perf_counter() - started

    async def measure(self, target: Target, *, stream: bool, concurrency: int, client: str) -> Row:
        """Warm up, then measure for a fixed time; BenchError if any request failed."""
        call = Call.build(target, stream=stream)  # the request's bytes, once per row
        senders = self.pools[client].senders(target, concurrency)
        warm, _ = await self._run(senders, call, requests=self.warmup, seconds=math.inf)
        sessions = await self.cpu.sessions()
        before = self.cpu.read(opening=True)
        phase, elapsed = await self._run(
            senders, call, requests=self.max_requests, seconds=self.seconds
        )
        after = self.cpu.read(opening=False)
        connections = await self.cpu.sessions() - sessions
        errors = warm.errors + phase.errors
        mode = "stream" if stream else "whole"
        if errors:
            raise BenchError(
                f"{target.path} {mode} c={concurrency} ({client} client): {errors} "
                f"failed requests, e.g. {(warm.examples + phase.examples)[:3]}"
            )
        done = len(phase.latencies)
        spent = {name: after[name] - before.get(name, 0.0) for name in after}
        capacity = elapsed * (os.cpu_count() or 1)
        others = max(0.0, spent.pop("others"))
        return Row(
            path=target.path,
            mode=mode,
            concurrency=concurrency,
            requests=done,
            errors=errors,
            rps=done / elapsed,
            p50_ms=percentile(phase.latencies, 0.50) * 1000,
            p99_ms=percentile(phase.latencies, 0.99) * 1000,
            ttfb_p50_ms=percentile(phase.ttfbs, 0.50) * 1000 if stream else None,
            cpu_ms={name: seconds * 1000 / done for name, seconds in spent.items()},
            connections=connections,
            busy=sum(spent.values()) / capacity,
            others=others / capacity,
            client=client,
        )
