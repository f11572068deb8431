"""Node tunnels: a node reached through its agent's tunnel vs one the platform calls directly.

    python bench/tunnel.py [--quick] [--reps N] [--seconds S] [--no-hop] [--json FILE]

One platform (`infer serve`, billing on SQLite) and two nodes serving the same simulator
settings, each under a model name of its own so that routing is deterministic: `direct`
(registered with the simulator's URL) and `tunnel` (registered with `tunnel: true`; its
simulator is reached only through a `TunnelClient`, run in a process of its own as an
operator's agent would be). With the hop, a second platform process on the same database
takes the buyer's requests for the tunnel node (`tunnel via hop`) and sends them over the
signed replica hop to the process that holds the tunnel.

Measured, the paths interleaved in every repetition: latency at concurrency 1 and
requests/s at 32, whole and streamed; then how many slow streams (a third simulator at
a low tokens-per-second, behind its own tunnel) one tunnel carries at rising concurrency.
Every answer is verified (status, 16 completion tokens, `[DONE]`), and the books are
checked at the end: one completed usage record per answer, the costs the responses
reported, the buyer's debit split between operator and fees, no open hold, check_books
balanced. Exit status 0 on success, 2 when the run failed or billing is not exact.

It reuses bench/gatewaybench's servers, market set-up and lean HTTP client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from gatewaybench.calls import Call, Sender, Target
from gatewaybench.errors import BenchError, CallFailed
from gatewaybench.lean import LeanPool
from gatewaybench.load import percentile, reported_cost
from gatewaybench.market import (
    BUYER,
    GRANT_USD,
    MAX_TOKENS,
    OPERATOR,
    PRICE_IN,
    PRICE_OUT,
    grant_credits,
    graphql,
    sign_up_with_key,
    wait_for_settlements,
)
from gatewaybench.processes import Service, free_port, fresh_database, platform_env
from gatewaybench.report import revision

from infer.tunnel.protocol import MAX_STREAMS

DIRECT_MODEL, TUNNEL_MODEL, SLOW_MODEL = "direct:latest", "tunnel:latest", "slow:latest"
PROMPT = [{"role": "user", "content": "Say something short about the sea."}]
REGISTER = "mutation($i: RegisterNodeInput!) { registerNode(input: $i) { id status } }"
NODES = "{ me { nodes { id status } } }"
MAX_CAPACITY = 1024  # registerNode's upper bound
SCRIPT = Path(__file__).resolve()  # also the agent's process: `tunnel.py --agent ...`


@dataclass
class Tally:
    """Answers the buyer got through INFER and what they said they cost."""

    requests: int = 0
    cost: int = 0


@dataclass
class Sample:
    """One measurement of one path: its latencies and what failed."""

    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    examples: list[str] = field(default_factory=list)
    elapsed: float = 0.0


@dataclass(frozen=True)
class Row:
    path: str
    mode: str
    concurrency: int
    rep: int
    requests: int
    failed: int
    rps: float
    p50_ms: float
    p90_ms: float


def chat_call(target: Target, model: str, *, stream: bool) -> Call:
    """The row's request for `model`, prepared once (gatewaybench's Call, another model)."""
    body = {"model": model, "messages": PROMPT, "max_tokens": MAX_TOKENS}
    raw_body = json.dumps({**body, "stream": True} if stream else body).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    url = urlsplit(target.url)
    lines = [
        f"POST {url.path} HTTP/1.1",
        f"Host: {url.netloc}",
        f"Content-Length: {len(raw_body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + raw_body
    return Call(target, stream, raw_body, headers, raw)


class Bench:
    """Workers on the lean client; every answer verified and its reported cost tallied."""

    def __init__(self, pool: LeanPool, tally: Tally) -> None:
        self.pool = pool
        self.tally = tally

    async def _one(self, sender: Sender, call: Call, sample: Sample) -> None:
        started = time.perf_counter()
        try:
            reply = await sender.send(call)
            if reply.status != 200:
                raise CallFailed(f"HTTP {reply.status}: {reply.content[:200]!r}")
            tokens, paid = reported_cost(reply.content, stream=call.stream)
        except (CallFailed, ValueError, KeyError, IndexError, TypeError) as exc:
            sample.failed += 1
            if len(sample.examples) < 3:
                sample.examples.append(str(exc)[:300])
            return
        self.tally.requests += 1  # charged, whatever the token count: the books must agree
        self.tally.cost += paid
        if tokens != MAX_TOKENS:
            sample.failed += 1
            sample.examples.append(f"{tokens} completion tokens instead of {MAX_TOKENS}")
            return
        sample.latencies.append(time.perf_counter() - started)

    async def run(
        self, target: Target, call: Call, *, concurrency: int, seconds: float, each: int
    ) -> Sample:
        """`concurrency` workers until `seconds` pass, or `each` requests per worker."""
        senders = self.pool.senders(target, concurrency)
        sample = Sample()
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(sender: Sender) -> None:
            for _ in range(each):
                if time.perf_counter() >= deadline:
                    return
                await self._one(sender, call, sample)

        await asyncio.gather(*(worker(sender) for sender in senders))
        sample.elapsed = time.perf_counter() - started
        return sample


def row_of(sample: Sample, path: str, mode: str, concurrency: int, rep: int) -> Row:
    done = sample.latencies or [float("nan")]
    return Row(
        path=path,
        mode=mode,
        concurrency=concurrency,
        rep=rep,
        requests=len(sample.latencies),
        failed=sample.failed,
        rps=len(sample.latencies) / sample.elapsed if sample.elapsed else 0.0,
        p50_ms=percentile(done, 0.50) * 1000,
        p90_ms=percentile(done, 0.90) * 1000,
    )


# The agent: a TunnelClient in its thread, in a process of its own (the operator's box).


def run_agent(platform: str, node_id: str, key: str, runtime: str) -> int:
    from infer.agent.tunnel import TunnelClient

    client = TunnelClient(platform=platform, node_id=node_id, node_key=key, runtime_url=runtime)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.start()
    stop.wait()
    client.stop()
    return 0


# The market.


async def register(platform: str, key: str, name: str, model: str, endpoint: str | None) -> str:
    node: dict[str, Any] = {
        "name": name,
        "runtime": "OPENAI",
        "capacity": MAX_CAPACITY,  # the node's own limit must not be what is measured
        "prices": [{"model": model, "inputPerMillion": PRICE_IN, "outputPerMillion": PRICE_OUT}],
    }
    node |= {"endpoint": endpoint} if endpoint else {"tunnel": True}
    async with httpx.AsyncClient(base_url=platform, timeout=30) as client:
        data = await graphql(client, REGISTER, {"i": node}, key=key)
    return str(data["registerNode"]["id"])


async def wait_online(platform: str, key: str, node_ids: list[str], within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=platform, timeout=10) as client:
        while time.monotonic() < deadline:
            nodes = (await graphql(client, NODES, {}, key=key))["me"]["nodes"]
            online = {n["id"] for n in nodes if n["status"] == "ONLINE"}
            if set(node_ids) <= online:
                return
            await asyncio.sleep(0.2)
    raise BenchError(f"tunnel nodes not online within {within:.0f} s: {nodes}")


async def warm_until_served(bench: Bench, target: Target, call: Call, within: float = 30) -> None:
    """A platform process that does not hold the tunnel learns of it from the database."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sample = await bench.run(target, call, concurrency=1, seconds=5, each=1)
        if not sample.failed:
            return
        await asyncio.sleep(0.5)
    raise BenchError(f"{target.path} never answered: {sample.examples}")


async def check_books(database_url: str, tally: Tally) -> str:
    """Every answer billed once at the price list, the books balanced; the verdict."""
    from sqlalchemy import text

    from infer.billing.ledger import check_books as books_balance
    from infer.billing.money import parse_usd
    from infer.db import Database

    db = Database.from_url(database_url)
    try:
        async with db.session() as session:
            connection = await session.connection()

            async def one(sql: str, **params: Any) -> Any:
                return (await connection.execute(text(sql), params)).one()

            balance_sql = (
                "SELECT a.balance, a.reserved FROM ledger_accounts a "
                "JOIN users u ON u.id = a.user_id WHERE u.email = :e"
            )
            buyer, buyer_reserved = await one(balance_sql, e=BUYER)
            operator, _ = await one(balance_sql, e=OPERATOR)
            completed, total, earned, fees, tokens_in, tokens_out = await one(
                "SELECT count(*) FILTER (WHERE status = 'completed'), coalesce(sum(cost), 0), "
                "coalesce(sum(operator_earning), 0), coalesce(sum(platform_fee), 0), "
                "coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
                "FROM usage_records"
            )
            (open_holds,) = await one("SELECT count(*) FROM holds WHERE released_at IS NULL")
            books = await books_balance(session)
    finally:
        await db.dispose()
    paid = parse_usd(GRANT_USD) - buyer
    # Prices are whole µ$ per token (µ$1 in, µ$2 out), so per-record rounding cannot differ.
    priced = tokens_in * parse_usd(PRICE_IN) // 10**6 + tokens_out * parse_usd(PRICE_OUT) // 10**6
    checks = [
        (completed == tally.requests, f"{completed} completed usage records for {tally.requests}"),
        (total == tally.cost, f"usage costs {total} µ$, responses reported {tally.cost} µ$"),
        (total == priced, f"usage costs {total} µ$, the price list makes {priced} µ$"),
        (paid == total, f"buyer paid {paid} µ$ of {total}"),
        (total == earned + fees and operator == earned, f"{total} ≠ {earned} + {fees} fees"),
        (open_holds == 0 and buyer_reserved == 0, f"{open_holds} holds still open"),
        (books.balanced, f"check_books: {books}"),
    ]
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise BenchError("billing is NOT exact: " + "; ".join(failed))
    return (
        f"billing: exact — {completed} answers, buyer paid {total} µ$ "
        f"(= {earned} operator + {fees} fees, as the responses and the price list say); "
        "check_books balanced, no open holds"
    )


# The run.


@dataclass(frozen=True)
class Options:
    reps: int
    seconds: float
    warmup: int
    hop: bool
    slow_tps: float
    streams: tuple[int, ...]
    rounds: int
    json_path: Path | None
    quick: bool


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 30 s)")
    parser.add_argument("--reps", type=int, help="repetitions of every row (default 3)")
    parser.add_argument("--seconds", type=float, help="measured seconds per row (default 3)")
    parser.add_argument("--no-hop", action="store_true", help="no second platform process")
    parser.add_argument(
        "--slow-tps", type=float, default=32.0, help="the slow simulator's tokens per second"
    )
    parser.add_argument("--streams", help="concurrencies of slow streams (default 32,64,128,160)")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    default_streams = "16,32" if args.quick else f"32,64,{MAX_STREAMS},160"
    return Options(
        reps=args.reps or (1 if args.quick else 3),
        seconds=args.seconds or (0.5 if args.quick else 3.0),
        warmup=20 if args.quick else 100,
        hop=not args.no_hop,
        slow_tps=args.slow_tps,
        streams=tuple(int(c) for c in (args.streams or default_streams).split(",")),
        rounds=1 if args.quick else 3,
        json_path=args.json_path,
        quick=args.quick,
    )


@contextlib.contextmanager
def started(services: list[Service]) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()


async def run(options: Options, env: dict[str, str], database_url: str, workdir: Path) -> int:
    python = [sys.executable, "-m", "infer.cli"]
    ports = {name: free_port() for name in ("direct", "tunnel", "slow", "a", "b")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    simulate = [*python, "node", "simulate", "--port"]
    services: list[Service] = []
    with started(services):
        for name, model, extra in (
            ("direct", DIRECT_MODEL, []),
            ("tunnel", TUNNEL_MODEL, []),
            ("slow", SLOW_MODEL, ["--tokens-per-second", str(options.slow_tps)]),
        ):
            argv = [*simulate, str(ports[name]), "--model", model, *extra]
            services.append(Service(f"sim-{name}", argv, env, workdir))
        services.append(
            Service("platform-a", [*python, "serve", "--port", str(ports["a"])], env, workdir)
        )
        for service, name in zip(services, ("direct", "tunnel", "slow"), strict=False):
            service.wait_ready(url[name] + "/api/version")
        services[-1].wait_ready(url["a"] + "/healthz")
        buyer_key = await sign_up_with_key(url["a"], BUYER)
        operator_key = await sign_up_with_key(url["a"], OPERATOR)
        await asyncio.to_thread(grant_credits, env)
        await register(url["a"], operator_key, "direct", DIRECT_MODEL, url["direct"])
        tunnel_id = await register(url["a"], operator_key, "tunnel", TUNNEL_MODEL, None)
        slow_id = await register(url["a"], operator_key, "slow", SLOW_MODEL, None)
        for node_id, runtime in ((tunnel_id, url["tunnel"]), (slow_id, url["slow"])):
            argv = [sys.executable, str(SCRIPT), "--agent", url["a"], node_id]
            services.append(
                Service(f"agent-{runtime[-5:]}", [*argv, operator_key, runtime], env, workdir)
            )
        await wait_online(url["a"], operator_key, [tunnel_id, slow_id])
        if options.hop:
            argv = [*python, "serve", "--port", str(ports["b"])]
            services.append(Service("platform-b", argv, env, workdir))
            services[-1].wait_ready(url["b"] + "/healthz")

        auth = {"Authorization": f"Bearer {buyer_key}"}
        chat = "/api/v1/chat/completions"
        paths = [
            ("direct", Target("direct", url["a"] + chat, auth), DIRECT_MODEL),
            ("tunnel", Target("tunnel", url["a"] + chat, auth), TUNNEL_MODEL),
        ]
        if options.hop:
            paths.append(("tunnel via hop", Target("hop", url["b"] + chat, auth), TUNNEL_MODEL))
        most = max(32, *options.streams)
        pool, tally = LeanPool(size=most), Tally()
        bench = Bench(pool, tally)
        rows: list[Row] = []
        try:
            for _, target, model in paths:
                call = chat_call(target, model, stream=False)
                await warm_until_served(bench, target, call)
                for stream in (False, True):
                    call = chat_call(target, model, stream=stream)
                    await bench.run(
                        target, call, concurrency=32, seconds=60, each=options.warmup // 32 + 1
                    )
            for rep in range(1, options.reps + 1):
                for stream in (False, True):
                    for concurrency in (1, 32):
                        for name, target, model in paths:  # interleaved: the same machine
                            call = chat_call(target, model, stream=stream)
                            sample = await bench.run(
                                target,
                                call,
                                concurrency=concurrency,
                                seconds=options.seconds,
                                each=10**9,
                            )
                            mode = "stream" if stream else "whole"
                            row = row_of(sample, name, mode, concurrency, rep)
                            rows.append(row)
                            progress(row, sample)
            slow_target = Target("slow", url["a"] + chat, auth)
            slow_call = chat_call(slow_target, SLOW_MODEL, stream=True)
            await bench.run(slow_target, slow_call, concurrency=8, seconds=30, each=1)
            for rep in range(1, options.reps + 1):
                for concurrency in options.streams:
                    sample = await bench.run(
                        slow_target,
                        slow_call,
                        concurrency=concurrency,
                        seconds=600,
                        each=options.rounds,
                    )
                    row = row_of(sample, "slow streams", "stream", concurrency, rep)
                    rows.append(row)
                    progress(row, sample)
        finally:
            await pool.aclose()
        await wait_for_settlements(url["a"])
        books = await check_books(database_url, tally)
    report(options, rows, books)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


def progress(row: Row, sample: Sample) -> None:
    why = f"  e.g. {sample.examples[0]}" if sample.examples else ""
    print(
        f"  {row.path:15} {row.mode:6} c={row.concurrency:<3} #{row.rep} {row.rps:7.0f} req/s "
        f"p50 {row.p50_ms:7.2f} ms  p90 {row.p90_ms:7.2f} ms  failed {row.failed}{why}",
        file=sys.stderr,
    )


def spread(values: list[float], digits: int) -> str:
    """The median, then the range over repetitions."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{middle:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})"


def report(options: Options, rows: list[Row], books: str) -> None:
    load = os.getloadavg()[0]
    print(
        f"\n### Node tunnels (SQLite, one platform process{' + a replica' if options.hop else ''}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end; {options.reps} "
        f"repetitions of {options.seconds:g} s per row, median (min to max); {revision()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')})\n"
    )
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.path, row.mode, row.concurrency), []).append(row)
    print("| path | mode | concurrency | requests | failed | requests/s | p50 ms | p90 ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (path, mode, concurrency), group in groups.items():
        if path == "slow streams":
            continue
        print(
            f"| {path} | {mode} | {concurrency} | {sum(r.requests for r in group)} "
            f"| {sum(r.failed for r in group)} | {spread([r.rps for r in group], 0)} "
            f"| {spread([r.p50_ms for r in group], 2)} | {spread([r.p90_ms for r in group], 2)} |"
        )
    print(
        "\nAdded by the tunnel (its p50 minus the direct node's, per repetition; "
        "median (min to max)):\n"
    )
    for mode in ("whole", "stream"):
        direct = groups.get(("direct", mode, 1), [])
        for path in ("tunnel", "tunnel via hop"):
            other = groups.get((path, mode, 1), [])
            if direct and other:
                added = [o.p50_ms - d.p50_ms for d, o in zip(direct, other, strict=True)]
                ratio = [
                    o.rps / d.rps
                    for d, o in zip(
                        groups[("direct", mode, 32)], groups[(path, mode, 32)], strict=True
                    )
                ]
                print(
                    f"- {path}, {mode}: {spread(added, 2)} ms at concurrency 1; "
                    f"requests/s at 32 = {spread(ratio, 2)} x direct"
                )
    print(
        f"\nSlow streams through one tunnel ({options.slow_tps:g} tokens/s, {MAX_TOKENS} tokens "
        f"each; {options.rounds} per worker; the protocol's MAX_STREAMS = {MAX_STREAMS}):\n"
    )
    print("| concurrency | completed | failed | requests/s | p50 ms | p90 ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for (path, _, concurrency), group in groups.items():
        if path != "slow streams":
            continue
        print(
            f"| {concurrency} | {sum(r.requests for r in group)} | {sum(r.failed for r in group)} "
            f"| {spread([r.rps for r in group], 1)} | {spread([r.p50_ms for r in group], 0)} "
            f"| {spread([r.p90_ms for r in group], 0)} |"
        )
    print(f"\n{books}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--agent"]:
        return run_agent(*argv[1:5])
    options = parse(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="infer-tunnel-bench-") as tmp:
        workdir = Path(tmp)
        database_url = fresh_database(sqlite=True, workdir=workdir)
        env = platform_env(database_url, False, workdir)
        try:
            with contextlib.suppress(ImportError):
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return asyncio.run(run(options, env, database_url, workdir))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("bench: interrupted; servers stopped", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
