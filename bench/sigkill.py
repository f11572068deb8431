"""A platform killed with SIGKILL under load: how many delivered answers went uncharged.

    python bench/sigkill.py [--concurrency 16] [--kill-after 3] [--sweep] [--redis]
                            [--json FILE]

It makes a PostgreSQL database of its own, starts `infer node simulate` and `infer serve`
(processes of their own, as bench/gateway.py does), sets the market up through INFER's
API, and sends completions from `--concurrency` workers (half of them streaming). An
answer counts as delivered when it arrived whole (a 200 with its body; for a stream, up
to `data: [DONE]`), under the request id of its `x-request-id` header. After
`--kill-after` seconds the platform gets SIGKILL; it is started again (its hold sweeper
runs at start) and the database is examined:

- delivered, charged (a usage record), uncharged (delivered without one), charged but
  not delivered (cut off after its settlement committed), how long before the kill the
  uncharged answers were delivered;
- the books: `check_books`, the buyer paid exactly what the usage records say, operator
  and fees hold their shares, the buyer's reservation equals its open holds, every
  uncharged answer still has its hold (released when it expires), every charge matches
  the cost the answer reported.

Settlements are written after the answer, in batches that linger 20 ms; an answer waits
for its own settlement only when 256 are queued. So a kill loses at most the batch being
written (128 at most) and the queue behind it: the bound checked here. With `--sweep`
the holds are made to expire after 70 s; the script waits for that, restarts the
platform again, and checks that its sweeper gave every reservation back.

Exit status: 0 when the uncharged count is within the bound and the books are right, 1
when not, 2 when the run failed. See docs/billing.md ("When it is written").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from gatewaybench.errors import BenchError
from gatewaybench.market import BODY, BUYER, GRANT_USD, MODEL, OPERATOR, set_up
from gatewaybench.processes import (
    PG_ADMIN_DSN,
    PG_URL,
    Service,
    forget_redis_keys,
    free_port,
    platform_env,
)
from sqlalchemy import text

from infer.billing.ledger import FEES_ACCOUNT_ID, check_books
from infer.billing.money import parse_usd
from infer.completions.completion import MAX_SETTLEMENT_BACKLOG
from infer.db import Database, upgrade_database

SETTLEMENT_BATCH = 128  # GroupCommit's max_batch, which the settlements use
BOUND = MAX_SETTLEMENT_BACKLOG + SETTLEMENT_BATCH
SWEEP_TTL_SECONDS, SWEEP_TOTAL_TIMEOUT = 70, 10  # the shortest hold the settings allow


@dataclass
class Delivered:
    """One answer that arrived whole: when (monotonic seconds) and the cost it reported."""

    at: float
    cost: int


@dataclass
class Load:
    """What the load generator saw: the answers that arrived whole, by request id."""

    delivered: dict[str, Delivered] = field(default_factory=dict)
    whole: int = 0
    streamed: int = 0
    cut_off: int = 0  # requests the kill interrupted


@dataclass
class Result:
    """The measurement, and what is wrong with the books (nothing, when `problems` is empty)."""

    delivered: int
    whole: int
    streamed: int
    cut_off: int
    charged: int
    uncharged: int
    bound: int
    charged_not_delivered: int
    uncharged_oldest_ms: float | None
    open_holds: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.uncharged <= self.bound and not self.problems


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-after", type=float, default=3.0, help="seconds of load")
    parser.add_argument("--sweep", action="store_true", help="wait for the holds to expire")
    parser.add_argument("--redis", action="store_true", help="the platform uses Redis")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    return parser.parse_args(argv)


async def _admin(*statements: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def one_answer(client: httpx.AsyncClient, *, stream: bool, load: Load) -> None:
    """Send one completion; record it if it arrived whole."""
    body = BODY | {"stream": True} if stream else BODY
    async with client.stream("POST", "/api/v1/chat/completions", json=body) as response:
        content = await response.aread()
    if response.status_code != 200:
        raise BenchError(f"a completion failed: {response.status_code} {content[:200]!r}")
    if stream:
        events = [e.removeprefix(b"data: ") for e in content.split(b"\n\n") if e]
        if events[-1:] != [b"[DONE]"]:
            raise httpx.RemoteProtocolError("the stream ended before [DONE]")
        usage = json.loads(events[-2])["usage"]
        load.streamed += 1
    else:
        usage = json.loads(content)["usage"]
        load.whole += 1
    load.delivered[response.headers["x-request-id"]] = Delivered(
        time.monotonic(), parse_usd(usage["cost"])
    )


async def send_load(url: str, key: str, concurrency: int, killed: asyncio.Event) -> Load:
    """Workers send completions one after another until the platform is gone."""
    load = Load()
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as c:

        async def worker(stream: bool) -> None:
            while not killed.is_set():
                try:
                    await one_answer(c, stream=stream, load=load)
                except httpx.HTTPError as exc:
                    if not killed.is_set():
                        raise BenchError(f"a completion failed before the kill: {exc!r}") from exc
                    load.cut_off += 1
                    return

        await asyncio.gather(*(worker(stream=i % 2 == 1) for i in range(concurrency)))
    return load


def start_platform(env: dict[str, str], workdir: Path, run: int) -> tuple[Service, str]:
    port = free_port()
    argv = [sys.executable, "-m", "infer.cli", "serve", "--port", str(port)]
    platform = Service(f"platform-{run}", argv, env, workdir)
    url = f"http://127.0.0.1:{port}"
    platform.wait_ready(url + "/healthz")
    return platform, url


async def examine(database_url: str, load: Load, killed_at: float) -> Result:
    """What the database says about the answers the load generator received."""
    db = Database.from_url(database_url)
    try:
        async with db.session() as session:
            connection = await session.connection()

            async def rows(sql: str, **params: Any) -> list[Any]:
                return list((await connection.execute(text(sql), params)).all())

            charged = "SELECT request_id, cost, operator_earning, platform_fee FROM usage_records"
            charges = {r[0]: r[1:] for r in await rows(charged)}
            held = "SELECT request_id, amount, released_at IS NULL FROM holds"
            holds = {r[0]: (r[1], r[2]) for r in await rows(held)}
            balances = (
                "SELECT u.email, a.balance, a.reserved FROM ledger_accounts a "
                "JOIN users u ON u.id = a.user_id"
            )
            accounts = {r[0]: (r[1], r[2]) for r in await rows(balances)}
            fees = await rows(
                "SELECT balance FROM ledger_accounts WHERE id = :i", i=FEES_ACCOUNT_ID
            )
            books = await check_books(session)
    finally:
        await db.dispose()
    delivered = load.delivered
    uncharged = [rid for rid in delivered if rid not in charges]
    open_holds = {rid: amount for rid, (amount, is_open) in holds.items() if is_open}
    total = sum(c[0] for c in charges.values())
    buyer_balance, buyer_reserved = accounts[BUYER]
    problems = [
        message
        for failed, message in [
            (not books.balanced, f"check_books: {books}"),
            (parse_usd(GRANT_USD) - buyer_balance != total, "the buyer paid other than charged"),
            (accounts[OPERATOR][0] != sum(c[1] for c in charges.values()), "operator's share"),
            (fees[0][0] != sum(c[2] for c in charges.values()), "the platform's fees"),
            (buyer_reserved != sum(open_holds.values()), "reserved differs from open holds"),
            # Open until it expires; then released by the sweeper, never charged.
            (any(rid not in holds for rid in uncharged), "an uncharged answer has no hold"),
            (
                any(charges[r][0] != d.cost for r, d in delivered.items() if r in charges),
                "a charge differs from the cost its answer reported",
            ),
        ]
        if failed
    ]
    # An answer read just after the kill had reached this machine's socket before it.
    oldest = max((max(0.0, killed_at - delivered[rid].at) for rid in uncharged), default=None)
    return Result(
        delivered=len(delivered),
        whole=load.whole,
        streamed=load.streamed,
        cut_off=load.cut_off,
        charged=len(delivered) - len(uncharged),
        uncharged=len(uncharged),
        bound=BOUND,
        charged_not_delivered=sum(1 for rid in charges if rid not in delivered),
        uncharged_oldest_ms=None if oldest is None else round(oldest * 1000, 1),
        open_holds=len(open_holds),
        problems=problems,
    )


async def wait_for_sweep(database_url: str, within: float) -> None:
    """Until the restarted platform's sweeper has released every hold (or BenchError)."""
    db = Database.from_url(database_url)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            async with db.session() as session:
                query = text("SELECT count(*) FROM holds WHERE released_at IS NULL")
                connection = await session.connection()
                if (await connection.execute(query)).scalar_one() == 0:
                    return
            await asyncio.sleep(0.5)
    finally:
        await db.dispose()
    raise BenchError("the restarted platform's sweeper left holds open")


async def run(options: argparse.Namespace, env: dict[str, str], url: str, workdir: Path) -> Result:
    simulator_port = free_port()
    simulate = [sys.executable, "-m", "infer.cli", "node", "simulate", "--model", MODEL]
    simulator = Service("simulator", [*simulate, "--port", str(simulator_port)], env, workdir)
    started = [simulator]
    try:
        simulator_url = f"http://127.0.0.1:{simulator_port}"
        simulator.wait_ready(simulator_url + "/api/version")
        platform, platform_url = start_platform(env, workdir, 1)
        started.append(platform)
        key = await set_up(platform_url, simulator_url, env, "openai")
        killed = asyncio.Event()
        sending = asyncio.create_task(send_load(platform_url, key, options.concurrency, killed))
        await asyncio.wait({sending}, timeout=options.kill_after)
        if sending.done():
            await sending  # it failed before the kill: say why
        killed.set()
        killed_at = time.monotonic()
        os.killpg(platform.pid, signal.SIGKILL)
        load = await sending
        platform.process.wait()
        if options.sweep:
            await asyncio.sleep(SWEEP_TTL_SECONDS + 1)  # every hold of the run has expired
        restarted, _ = start_platform(env, workdir, 2)
        started.append(restarted)
        if options.sweep:
            await wait_for_sweep(url, within=30)
        return await examine(url, load, killed_at)
    finally:
        for service in reversed(started):
            service.stop()


def report(result: Result) -> str:
    oldest = result.uncharged_oldest_ms
    lines = [
        f"delivered {result.delivered} ({result.whole} whole, {result.streamed} streamed); "
        f"{result.cut_off} cut off by the kill",
        f"charged {result.charged}, uncharged {result.uncharged} (bound {result.bound}: "
        f"{MAX_SETTLEMENT_BACKLOG} queued + a batch of {SETTLEMENT_BATCH})",
        "uncharged answers delivered at most "
        + ("-" if oldest is None else f"{oldest:.0f} ms")
        + " before the kill",
        f"charged but not delivered: {result.charged_not_delivered}",
        f"open holds after the restart: {result.open_holds} (the sweeper releases them "
        "when they expire: --sweep waits for it)",
        "books: " + ("; ".join(result.problems) if result.problems else "right"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    name = f"infer_sigkill_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="infer-sigkill-") as tmp:
        workdir = Path(tmp)
        url = PG_URL.format(name=name)
        env = platform_env(url, options.redis, workdir)
        if options.sweep:
            env["INFER_UPSTREAM_TOTAL_TIMEOUT"] = str(SWEEP_TOTAL_TIMEOUT)
            env["INFER_HOLD_TTL_SECONDS"] = str(SWEEP_TTL_SECONDS)
        try:
            asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
            upgrade_database(url)
            result = asyncio.run(run(options, env, url, workdir))
        except BenchError as exc:
            print(f"sigkill: {exc}", file=sys.stderr)
            return 2
        finally:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            if options.redis:
                forget_redis_keys(env["INFER_REDIS_PREFIX"])
    print(report(result))
    if options.json is not None:
        options.json.write_text(json.dumps(asdict(result) | {"ok": result.ok}, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
