"""Gateway overhead: the runtime direct vs through INFER, on loopback, with exact billing.

    python bench/gateway.py [--quick] [--sqlite] [--runtime openai|ollama] [--profile FILE]

The simulator (`infer node simulate`, no artificial delay) and the platform (`infer serve`,
PostgreSQL + Redis by default) run as their own processes; this script is only the load
generator (one asyncio loop; httpx keep-alive clients, one per worker). Each (path, mode,
concurrency) gets a warm-up, then a fixed duration; direct and INFER run back to back so
that both see the same machine. Afterwards the database must show that every request was
billed exactly. See bench/README.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from infer.billing.ledger import FEES_ACCOUNT_ID, GRANTS_ACCOUNT_ID, check_books
from infer.billing.money import MICROS_PER_USD, parse_usd
from infer.billing.pricing import cost
from infer.db import Database, upgrade_database
from infer.models import LedgerAccount

MODEL = "bench-model:latest"  # the simulator names an untagged model so, as Ollama does
MAX_TOKENS = 16
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say something short about the sea."}],
    "max_tokens": MAX_TOKENS,
}
BUYER, OPERATOR = "buyer@bench.example", "operator@bench.example"
PASSWORD = "bench gateway pass phrase"
GRANT_USD = "1000"
PRICE_IN, PRICE_OUT = "1", "2"  # USD per million tokens: µ$1 and µ$2 a token
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/0"
TARGET_ADDED_P50_MS = 2.0  # at concurrency 1
TARGET_RPS = 800.0  # non-streaming, through INFER, at concurrency 32

SIGN_UP = "mutation($e: String!, $p: String!) { signUp(email: $e, password: $p) { id } }"
CREATE_KEY = "mutation($n: String!) { createApiKey(name: $n) { secret } }"
REGISTER = "mutation($i: RegisterNodeInput!) { registerNode(input: $i) { id status } }"


class BenchError(Exception):
    """The benchmark could not run, or what it measured is wrong (errors, inexact billing)."""


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A server subprocess in its own session (Ctrl+C reaches only us; we stop it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.name} was not ready within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes_matching(comm: str, cmdline_part: str = "") -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != comm:
                continue
            if cmdline_part not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine, every process (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # everything but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds used by each party of a measurement, from /proc (Linux)."""

    platform_pid: int
    simulator_pid: int
    database: str | None  # a PostgreSQL database name: its backends are counted
    redis: bool  # count the local redis-server

    def read(self) -> dict[str, float]:
        times = os.times()
        usage = {
            "platform": proc_cpu_seconds(self.platform_pid),
            "simulator": proc_cpu_seconds(self.simulator_pid),
            "load generator": times.user + times.system,
        }
        if self.database:
            backends = processes_matching("postgres", f" {self.database}")
            writers = processes_matching("postgres", "walwriter")
            usage["postgres"] = sum(proc_cpu_seconds(pid) for pid in backends + writers)
        if self.redis:
            servers = processes_matching("redis-server")
            usage["redis"] = sum(proc_cpu_seconds(pid) for pid in servers)
        # Other people's work on a shared machine distorts a measurement: show it.
        usage["others"] = machine_cpu_seconds() - sum(usage.values())
        return usage

    async def sessions(self) -> int:
        """Connections ever opened to the bench database (0 without one); ours go elsewhere."""
        if not self.database:
            return 0
        import asyncpg

        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await connection.execute("SELECT pg_stat_force_next_flush()")
            count = await connection.fetchval(
                "SELECT sessions FROM pg_stat_database WHERE datname = $1", self.database
            )
        finally:
            await connection.close()
        return int(count or 0)


# -- load ------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Target:
    path: str  # "direct" or "INFER"
    url: str
    headers: dict[str, str]


class Clients:
    """The load generator's HTTP/1.1 keep-alive clients.

    By default each concurrent worker has its own httpx.AsyncClient holding one
    connection: httpcore 1.0's pool does bookkeeping over every connection it holds on
    each request, so one client with 32 connections costs the load generator about 2 ms
    of CPU per request (5x the cost at one connection) and caps it near 500 requests/s,
    below the figures it must measure. `shared` is the single client, for comparison.
    """

    def __init__(self, *, size: int, shared: bool) -> None:
        self.size = size
        self.shared = shared
        self._clients: dict[str, list[httpx.AsyncClient]] = {}

    def _new(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(limits=limits, timeout=30.0)

    def for_workers(self, target: Target, count: int) -> list[httpx.AsyncClient]:
        """A client for each of `count` workers (the same one `count` times when shared)."""
        key = "" if self.shared else target.path
        if key not in self._clients:
            self._clients[key] = (
                [self._new(self.size)] if self.shared else [self._new(1) for _ in range(self.size)]
            )
        clients = self._clients[key]
        return [clients[i % len(clients)] for i in range(count)]

    async def aclose(self) -> None:
        for clients in self._clients.values():
            for client in clients:
                await client.aclose()


class Load:
    """Workers sending the same small chat request, at a fixed concurrency."""

    def __init__(
        self,
        clients: Clients,
        cpu: CpuMeter,
        tally: Tally,
        *,
        warmup: int,
        seconds: float,
        max_requests: int,
    ) -> None:
        self.clients = clients
        self.cpu = cpu
        self.tally = tally
        self.warmup = warmup
        self.seconds = seconds
        self.max_requests = max_requests
        self.body = json.dumps(BODY).encode()
        self.stream_body = json.dumps({**BODY, "stream": True}).encode()

    async def _one(
        self, client: httpx.AsyncClient, target: Target, *, stream: bool, phase: Phase
    ) -> None:
        started = time.perf_counter()
        first = None
        try:
            if stream:
                parts = []
                async with client.stream(
                    "POST", target.url, content=self.stream_body, headers=target.headers
                ) as response:
                    async for chunk in response.aiter_raw():
                        if first is None:
                            first = time.perf_counter()
                        parts.append(chunk)
                content = b"".join(parts)
            else:
                response = await client.post(target.url, content=self.body, headers=target.headers)
                content = response.content
        except httpx.HTTPError as exc:
            self._failed(phase, f"{type(exc).__name__}: {exc}")
            return
        ended = time.perf_counter()
        if response.status_code != 200:
            self._failed(phase, f"HTTP {response.status_code}: {content[:200]!r}")
            return
        try:
            if target.path == "INFER":
                tokens, paid = reported_cost(content, stream=stream)
                self.tally.requests += 1
                self.tally.cost += paid
            elif stream:
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
        if first is not None:
            phase.ttfbs.append(first - started)

    @staticmethod
    def _failed(phase: Phase, message: str) -> None:
        phase.errors += 1
        if len(phase.examples) < 3:
            phase.examples.append(message)

    async def _run(
        self, target: Target, *, stream: bool, concurrency: int, requests: int, seconds: float
    ) -> tuple[Phase, float]:
        phase = Phase()
        budget = iter(range(requests))  # shared: bounds the phase even if time never runs out
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            for _ in budget:
                if time.perf_counter() >= deadline:
                    return
                await self._one(client, target, stream=stream, phase=phase)

        clients = self.clients.for_workers(target, concurrency)
        await asyncio.gather(*(worker(client) for client in clients))
        return phase, time.perf_counter() - started

    async def measure(self, target: Target, *, stream: bool, concurrency: int) -> Row:
        """Warm up, then measure for a fixed time; BenchError if any request failed."""
        kwargs: dict[str, Any] = {"stream": stream, "concurrency": concurrency}
        warm, _ = await self._run(target, requests=self.warmup, seconds=math.inf, **kwargs)
        sessions = await self.cpu.sessions()
        before = self.cpu.read()
        phase, elapsed = await self._run(
            target, requests=self.max_requests, seconds=self.seconds, **kwargs
        )
        after = self.cpu.read()
        connections = await self.cpu.sessions() - sessions
        errors = warm.errors + phase.errors
        if errors:
            raise BenchError(
                f"{target.path} {'stream' if stream else 'whole'} c={concurrency}: {errors} "
                f"failed requests, e.g. {(warm.examples + phase.examples)[:3]}"
            )
        done = len(phase.latencies)
        spent = {name: after[name] - before.get(name, 0.0) for name in after}
        capacity = elapsed * (os.cpu_count() or 1)
        others = max(0.0, spent.pop("others"))
        return Row(
            path=target.path,
            mode="stream" if stream else "whole",
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
        )


# -- setup through the platform's own API --------------------------------------------------


async def graphql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise BenchError(f"GraphQL failed ({response.status_code}): {body}")
    return dict(body["data"])


async def sign_up_with_key(platform: str, email: str) -> str:
    async with httpx.AsyncClient(base_url=platform, timeout=30) as session:  # its own cookies
        await graphql(session, SIGN_UP, {"e": email, "p": PASSWORD})
        data = await graphql(session, CREATE_KEY, {"n": "bench"})
    return str(data["createApiKey"]["secret"])


def grant_credits(env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "infer.cli", "credits", "grant", BUYER, GRANT_USD]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"credits grant failed: {done.stderr.strip()}")


async def register_node(platform: str, operator_key: str, endpoint: str, runtime: str) -> None:
    node = {
        "name": "bench-simulator",
        "runtime": runtime.upper(),
        "endpoint": endpoint,
        "capacity": 1000,  # the router must not turn requests away at concurrency 32
        "prices": [{"model": MODEL, "inputPerMillion": PRICE_IN, "outputPerMillion": PRICE_OUT}],
    }
    async with httpx.AsyncClient(base_url=platform, timeout=30) as client:
        data = await graphql(client, REGISTER, {"i": node}, key=operator_key)
    if data["registerNode"]["status"] != "ONLINE":
        raise BenchError(f"the simulator node is not online: {data}")


# -- billing ---------------------------------------------------------------------------


async def verify_billing(database_url: str, tally: Tally) -> str:
    """Check every money movement; the verdict to print, or BenchError."""
    granted = parse_usd(GRANT_USD)
    db = Database.from_url(database_url)
    try:
        async with db.session() as session:
            connection = await session.connection()

            async def one(sql: str, **params: Any) -> Any:
                return (await connection.execute(text(sql), params)).one()

            buyer_balance, buyer_reserved = await one(
                "SELECT a.balance, a.reserved FROM ledger_accounts a "
                "JOIN users u ON u.id = a.user_id WHERE u.email = :e",
                e=BUYER,
            )
            (operator_balance,) = await one(
                "SELECT a.balance FROM ledger_accounts a "
                "JOIN users u ON u.id = a.user_id WHERE u.email = :e",
                e=OPERATOR,
            )
            fees = await session.get_one(LedgerAccount, FEES_ACCOUNT_ID)
            grants = await session.get_one(LedgerAccount, GRANTS_ACCOUNT_ID)
            records, total, earnings, platform_fees, incomplete = await one(
                "SELECT count(*), coalesce(sum(cost), 0), coalesce(sum(operator_earning), 0), "
                "coalesce(sum(platform_fee), 0), "
                "count(*) FILTER (WHERE status <> 'completed' OR completion_tokens <> :n) "
                "FROM usage_records",
                n=MAX_TOKENS,
            )
            (open_holds,) = await one("SELECT count(*) FROM holds WHERE released_at IS NULL")
            by_tokens = (
                await connection.execute(
                    text(
                        "SELECT prompt_tokens, completion_tokens, count(*), sum(cost) "
                        "FROM usage_records GROUP BY prompt_tokens, completion_tokens"
                    )
                )
            ).all()
            books = await check_books(session)
    finally:
        await db.dispose()
    micro_in, micro_out = parse_usd(PRICE_IN), parse_usd(PRICE_OUT)
    priced = sum(
        count
        * cost(
            prompt_tokens=prompt,
            completion_tokens=completion,
            input_per_million=micro_in,
            output_per_million=micro_out,
        )
        for prompt, completion, count, _ in by_tokens
    )
    checks = [
        (records == tally.requests, f"{records} usage records for {tally.requests} requests"),
        (incomplete == 0, f"{incomplete} usage records not completed with {MAX_TOKENS} tokens"),
        (total == priced, f"usage costs {total} µ$ but the price list makes {priced} µ$"),
        (total == tally.cost, f"usage costs {total} µ$ but responses reported {tally.cost} µ$"),
        (granted - buyer_balance == total, f"buyer paid {granted - buyer_balance} µ$ of {total}"),
        (total == earnings + platform_fees, f"{total} ≠ {earnings} earned + {platform_fees} fees"),
        (operator_balance == earnings, f"operator has {operator_balance} µ$ of {earnings}"),
        (fees.balance == platform_fees, f"fees account has {fees.balance} µ$, not {platform_fees}"),
        (grants.balance == -granted, f"grants account has {grants.balance} µ$, not {-granted}"),
        (buyer_reserved == 0 and open_holds == 0, f"{open_holds} holds still open"),
        (books.balanced, f"check_books: {books}"),
    ]
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise BenchError("billing is NOT exact: " + "; ".join(failed))
    return (
        f"billing: exact — {records} requests, buyer paid {total} µ$ "
        f"(= {earnings} operator + {platform_fees} platform fees; "
        f"the price list and the responses agree); check_books balanced, no open holds"
    )


# -- profile ---------------------------------------------------------------------------


def _short_path(path: str) -> str:
    """`/…/site-packages/httpx/_models.py` → `httpx/_models.py`; likewise stdlib and INFER."""
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/infer/" in path:
        return "infer/" + path.rsplit("/infer/", 1)[1]
    return path


def _frame(frame: str) -> tuple[str, str]:
    """(function, short path without the line) of a py-spy frame `function (path:line)`."""
    function, _, where = frame.rpartition(" (")
    return function, _short_path(where.rstrip(")").rpartition(":")[0])


def _area(path: str) -> str:
    """The library, stdlib module or INFER package a short path belongs to."""
    parts = path.split("/")
    if parts[0] == "infer" and len(parts) > 1:
        return "infer." + parts[1].removesuffix(".py")
    if parts[0] == "sqlalchemy" and len(parts) > 2:
        return f"sqlalchemy.{parts[1]}"
    return parts[0].removesuffix(".py")


# What a request does, by the frames that do it; a stack counts for each step it is in.
# Holds and settlements run in the request's task, or batched in a group-commit task.
STEPS = (
    ("database: holds", ("place_hold (", "place_holds (")),
    ("database: settlements", ("settle (infer/billing/settlement.py)", "settle_many (")),
    ("database: group-commit task (holds and settlements)", ("GroupCommit._drain (",)),
    ("… commits", ("SessionTransaction.commit (",)),
    ("… pool checkout + pre-ping", ("_ConnectionFairy._checkout", "_async_ping")),
    ("upstream call: httpx + stream parsing", ("Completion.connect (", "Completion.chunks (")),
    ("rate limits: admit", ("admit (infer/keys/limits.py)",)),
    ("router state: snapshot/acquire/release", ("RouterState.",)),
    ("routing plan (catalog, scoring)", ("Router.plan (",)),
    ("API key authentication", ("KeyAuthenticator.authenticate (",)),
    ("request body: parse_body (pydantic)", ("parse_body (",)),
    ("response: JSON + middleware sends", ("JSONResponse.", "tracking_send", "send_with_headers")),
    ("any SQLAlchemy / sqlmodel", ("(sqlalchemy/", "(sqlmodel/")),
    ("any asyncpg", ("(asyncpg/",)),
    ("any Redis client", ("(redis/",)),
    ("any httpx / httpcore / h11 / anyio", ("(httpx/", "(httpcore/", "(h11/", "(anyio/")),
)


def summarise_profile(raw: Path, cpu_ms_per_request: float, top: int = 15) -> str:
    """Markdown tables from py-spy's raw (collapsed) output: self and inclusive time."""
    self_area: Counter[str] = Counter()
    self_function: Counter[str] = Counter()
    inclusive_area: Counter[str] = Counter()
    inclusive_infer: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        function, path = frames[-1]
        self_function[f"{function} ({path})"] += count
        self_area[_area(path)] += count
        for area in {_area(path) for _, path in frames}:
            inclusive_area[area] += count
        for name in {f"{f} ({p})" for f, p in frames if p.startswith("infer/")}:
            inclusive_infer[name] += count
        names = [f"{f} ({p})" for f, p in frames]
        for label, patterns in STEPS:
            if any(pattern in name for name in names for pattern in patterns):
                steps[label] += count
    if not total:
        return "(no samples)"

    def table(title: str, counter: Counter[str], limit: int, ordered: bool = False) -> list[str]:
        lines = [f"| {title} | share | CPU ms/request |", "| --- | ---: | ---: |"]
        # What every sample passes through (the server's skeleton) says nothing.
        rows = [(k, counter[k]) for k, _ in STEPS] if ordered else counter.most_common()
        rows = [(name, n) for name, n in rows if n < 0.97 * total][:limit]
        for name, count in rows:
            share = count / total
            lines.append(f"| `{name}` | {share:.1%} | {share * cpu_ms_per_request:.2f} |")
        return lines

    return "\n".join(
        [
            f"{total} samples while the platform held the GIL; "
            f"the platform used {cpu_ms_per_request:.2f} CPU ms per request",
            "",
            *table("step of the request (inclusive)", steps, len(STEPS), ordered=True),
            "",
            *table("self time, by library / INFER package", self_area, top),
            "",
            *table("inclusive time, by library / INFER package", inclusive_area, top),
            "",
            *table("inclusive time, INFER functions", inclusive_infer, top + 10),
            "",
            *table("self time, by function", self_function, top + 10),
        ]
    )


@contextlib.contextmanager
def py_spy(pid: int, output: Path) -> Iterator[None]:
    """Record `pid` with py-spy (raw collapsed stacks into `output`) while the block runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy: pip install py-spy")
    argv = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    # --gil: only samples of Python actually running (py-spy takes a thread waiting in
    # uvloop's or a thread pool's C code for busy otherwise).
    argv += ["--gil", "--full-filenames"]
    recorder = subprocess.Popen(
        [*argv, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl+C
        _, err = recorder.communicate(timeout=30)
    if not output.exists():
        raise BenchError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


# -- report ----------------------------------------------------------------------------


def markdown_table(rows: list[Row]) -> str:
    direct = {(r.mode, r.concurrency): r for r in rows if r.path == "direct"}
    lines = [
        "| path | mode | concurrency | requests | requests/s | p50 ms | p99 ms | TTFB p50 ms "
        "| added p50 ms | throughput INFER/direct |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = direct.get((r.mode, r.concurrency))
        added = ratio = "—"
        if r.path == "INFER" and base is not None:
            added, ratio = f"{r.p50_ms - base.p50_ms:+.2f}", f"{r.rps / base.rps:.2f}"
        ttfb = "—" if r.ttfb_p50_ms is None else f"{r.ttfb_p50_ms:.2f}"
        lines.append(
            f"| {r.path} | {r.mode} | {r.concurrency} | {r.requests} | {r.rps:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {ttfb} | {added} | {ratio} |"
        )
    return "\n".join(lines)


def cpu_table(rows: list[Row]) -> str:
    names = list(dict.fromkeys(name for r in rows for name in r.cpu_ms))
    lines = [
        "| path | mode | concurrency | "
        + " | ".join(names)
        + " | total | busy | others | new PG connections |",
        "| --- | --- | ---: | "
        + " | ".join("---:" for _ in names)
        + " | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = " | ".join(f"{r.cpu_ms.get(n, 0.0):.2f}" for n in names)
        lines.append(
            f"| {r.path} | {r.mode} | {r.concurrency} | {cells} "
            f"| {sum(r.cpu_ms.values()):.2f} | {r.busy:.0%} | {r.others:.0%} | {r.connections} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row], billing_exact: bool) -> tuple[list[str], bool]:
    by = {(r.path, r.mode, r.concurrency): r for r in rows}
    lines, met = [], True
    for mode in ("whole", "stream"):
        infer, direct = by.get(("INFER", mode, 1)), by.get(("direct", mode, 1))
        if infer and direct:
            added = infer.p50_ms - direct.p50_ms
            ok = added <= TARGET_ADDED_P50_MS
            met &= ok
            lines.append(
                f"- added p50 latency at concurrency 1 ({mode}): {added:.2f} ms "
                f"(target ≤ {TARGET_ADDED_P50_MS:g} ms): {'MET' if ok else 'NOT MET'}"
            )
    infer32 = by.get(("INFER", "whole", 32))
    if infer32:
        ok = infer32.rps >= TARGET_RPS and billing_exact
        met &= ok
        lines.append(
            f"- non-streaming requests/s through INFER at concurrency 32: {infer32.rps:.0f} "
            f"(target ≥ {TARGET_RPS:g}, with exact billing): {'MET' if ok else 'NOT MET'}"
        )
        per_request = infer32.cpu_ms["platform"]
        lines.append(
            f"- the platform process used {per_request:.2f} CPU ms per request there: one "
            f"process can serve at most {1000 / per_request:.0f} requests/s on a whole core"
        )
    return lines, met


# -- the run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    sqlite: bool
    redis: bool
    runtime: str
    warmup: int
    seconds: float
    concurrency: tuple[int, ...]
    max_requests: int
    profile: Path | None
    json_path: Path | None
    shared_client: bool
    platform_command: str | None


def platform_env(database_url: str, redis: bool, workdir: Path) -> dict[str, str]:
    """The platform's environment: fresh secrets, this database, limits out of the way."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    env = {name: value for name, value in os.environ.items() if not name.startswith("INFER_")}
    return env | {
        "INFER_DATABASE_URL": database_url,
        "INFER_REDIS_URL": REDIS_URL if redis else "",
        "INFER_REDIS_PREFIX": f"infer-bench-{uuid.uuid4().hex[:12]}",
        "INFER_SECRET_KEY": secrets.token_urlsafe(32),
        "INFER_LOOKUP_KEY": secrets.token_urlsafe(32),
        "INFER_ENCRYPTION_KEYS": f"1:{key}",
        "INFER_SECRETS_FILE": str(workdir / "secrets.json"),
        "INFER_ALLOW_PRIVATE_ENDPOINTS": "true",
        "INFER_KEY_REQUESTS_PER_MINUTE": str(10**9),
        "INFER_KEY_TOKENS_PER_MINUTE": str(10**12),
        "INFER_LOG_LEVEL": "warning",  # no access log line per request
    }


def fresh_database(options: Options, workdir: Path) -> str:
    """A new, migrated database; its SQLAlchemy URL."""
    if options.sqlite:
        url = f"sqlite+aiosqlite:///{workdir / 'infer_bench.db'}"
        upgrade_database(url)
        return url
    import asyncpg

    name = "infer_bench"

    async def recreate() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()

    asyncio.run(recreate())
    url = PG_URL.format(name=name)
    upgrade_database(url)
    return url


def forget_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    with contextlib.suppress(redis.RedisError):
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@contextlib.contextmanager
def services(
    env: dict[str, str], workdir: Path, platform_command: list[str]
) -> Iterator[tuple[Service, Service, str, str]]:
    python = [sys.executable, "-m", "infer.cli"]
    sim_port, platform_port = free_port(), free_port()
    started: list[Service] = []
    try:
        simulator = Service(
            "simulator",
            [*python, "node", "simulate", "--port", str(sim_port), "--model", MODEL],
            env,
            workdir,
        )
        started.append(simulator)
        platform = Service(
            "platform", [*platform_command, "serve", "--port", str(platform_port)], env, workdir
        )
        started.append(platform)
        sim_url, platform_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{platform_port}"
        simulator.wait_ready(sim_url + "/api/version")
        platform.wait_ready(platform_url + "/healthz")
        yield simulator, platform, sim_url, platform_url
    finally:
        for service in reversed(started):
            service.stop()


async def set_up(platform_url: str, sim_url: str, env: dict[str, str], runtime: str) -> str:
    """Buyer and operator sign up, credits, the node: all through INFER's own API and CLI."""
    buyer_key = await sign_up_with_key(platform_url, BUYER)
    operator_key = await sign_up_with_key(platform_url, OPERATOR)
    await asyncio.to_thread(grant_credits, env)
    await register_node(platform_url, operator_key, sim_url, runtime)
    return buyer_key


async def run(options: Options, env: dict[str, str], database_url: str, workdir: Path) -> int:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    database = None if options.sqlite else database_url.rsplit("/", 1)[1]
    command = shlex.split(options.platform_command) if options.platform_command else None
    platform_command = command or [sys.executable, "-m", "infer.cli"]
    with services(env, workdir, platform_command) as (simulator, platform, sim_url, platform_url):
        buyer_key = await set_up(platform_url, sim_url, env, options.runtime)
        direct = Target("direct", sim_url + "/v1/chat/completions", {})
        infer = Target(
            "INFER",
            platform_url + "/api/v1/chat/completions",
            {"Authorization": f"Bearer {buyer_key}"},
        )
        most = max(options.concurrency)
        tally, rows, profile = Tally(), list[Row](), None
        clients = Clients(size=most, shared=options.shared_client)
        try:
            load = Load(
                clients,
                CpuMeter(platform.pid, simulator.pid, database, options.redis),
                tally,
                warmup=options.warmup,
                seconds=options.seconds,
                max_requests=options.max_requests,
            )
            for stream in (False, True):
                for concurrency in options.concurrency:
                    for target in (direct, infer):  # back to back: both see the same machine
                        row = await load.measure(target, stream=stream, concurrency=concurrency)
                        rows.append(row)
                        print(progress(row), file=sys.stderr)
            if options.profile is not None:
                with py_spy(platform.pid, options.profile):
                    row = await load.measure(infer, stream=False, concurrency=most)
                profile = summarise_profile(options.profile, row.cpu_ms["platform"])
                profile += f"\n\n(under py-spy at 250 Hz: {progress(row).strip()})"
        finally:
            await clients.aclose()
        billing = await verify_billing(database_url, tally)
    return report(options, rows, billing, profile)


def progress(row: Row) -> str:
    return (
        f"  {row.path:6} {row.mode:6} c={row.concurrency:<3} {row.rps:7.0f} req/s  "
        f"p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms  (others busy {row.others:.0%})"
    )


def revision() -> str:
    """The commit measured, marked when the work tree differs from it."""
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "infer"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"{commit}{' + uncommitted changes in infer/' if dirty else ''}"


def report(options: Options, rows: list[Row], billing: str, profile: str | None) -> int:
    """Print the tables, the billing verdict and the targets; 0 when every target is met."""
    backend = "SQLite" if options.sqlite else "PostgreSQL"
    print(
        f"\n### Gateway overhead ({backend}{' + Redis' if options.redis else ''}, "
        f"runtime {options.runtime}, {os.cpu_count()} cores, {options.seconds:g} s per row "
        f"after {options.warmup} warm-up requests; {revision()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')})\n"
    )
    print(markdown_table(rows))
    print("\nCPU milliseconds per request, by process (busy/others: share of all cores):\n")
    print(cpu_table(rows))
    print(f"\n{billing}")
    lines, met = targets(rows, billing_exact=True)  # verify_billing raised otherwise
    print("\nTargets:\n" + "\n".join(lines))
    if profile:
        most = max(options.concurrency)
        print(f"\n### Where the platform's CPU goes (non-streaming, concurrency {most})\n")
        print(profile)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if met else 1


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1.5 s per row, 50 warm-up requests")
    parser.add_argument(
        "--sqlite", action="store_true", help="bill on SQLite instead of PostgreSQL"
    )
    parser.add_argument(
        "--no-redis", action="store_true", help="in-process limits and router state"
    )
    parser.add_argument(
        "--runtime",
        choices=("openai", "ollama"),
        default="openai",
        help="how INFER talks to the simulator (default: its /v1 API)",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per row (default 5)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per row (default 200)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="bound per row")
    parser.add_argument("--profile", type=Path, help="also profile INFER with py-spy into FILE")
    parser.add_argument("--json", type=Path, dest="json_path", help="write the rows as JSON")
    parser.add_argument(
        "--shared-client",
        action="store_true",
        help="one httpx.AsyncClient for all workers (slow at high concurrency; see Clients)",
    )
    parser.add_argument(
        "--platform-command",
        metavar="CMD",
        help="start the platform with CMD instead of `python -m infer.cli` "
        "(CMD gets `serve --port P`), to measure a variant",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.5 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (50 if args.quick else 200)
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    if seconds <= 0 or warmup < 0 or not concurrency or min(concurrency) < 1:
        parser.error("--seconds, --warmup and --concurrency must be positive")
    return Options(
        sqlite=args.sqlite,
        redis=not args.no_redis and not args.sqlite,
        runtime=args.runtime,
        warmup=warmup,
        seconds=seconds,
        concurrency=concurrency,
        max_requests=args.max_requests,
        profile=args.profile,
        json_path=args.json_path,
        shared_client=args.shared_client,
        platform_command=args.platform_command,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    # Even when started with SIGINT ignored (a background job), Ctrl+C must stop the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        workdir = Path(tmp)
        database_url = fresh_database(options, workdir)
        env = platform_env(database_url, options.redis, workdir)
        try:
            with contextlib.suppress(ImportError):
                import uvloop  # the load generator's own overhead is smaller on uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return asyncio.run(run(options, env, database_url, workdir))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("bench: interrupted; servers stopped", file=sys.stderr)
            return 130
        finally:
            if options.redis:
                forget_redis_keys(env["INFER_REDIS_PREFIX"])


if __name__ == "__main__":
    sys.exit(main())
