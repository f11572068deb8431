"""One run: the servers, the market grown step by step, each step measured, the books."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gatewaybench.calls import Target
from gatewaybench.cpu import CpuMeter, proc_cpu_seconds
from gatewaybench.errors import BenchError
from gatewaybench.lean import LeanPool
from gatewaybench.load import Load, Row, Tally
from gatewaybench.market import MODEL, set_up, wait_for_settlements
from gatewaybench.processes import (
    PG_URL,
    Service,
    forget_redis_keys,
    free_port,
    fresh_database,
    platform_env,
    services,
)

from infer.db import Database

from .books import verify_books
from .nodes import grow, operator_ids, shrink, sign_up_operators
from .options import Options, parse_options
from .plans import plan_microseconds
from .report import Step, progress, progress_again, report
from .watch import Nodes, Sweep, sweep, worst_lateness

PYTHON = [sys.executable, "-m", "infer.cli"]
WINDOW = 1.25  # x the interval watched at most after a sweep: a node later than 1.2 x shows
# The simulators stand in for nodes on other machines: a lower priority keeps their work
# from taking the platform's CPU on this one (the load generator, which times, keeps its own).
SIMULATOR_NICENESS = 5
# After shrinking back to the smallest market: longer than the catalog's slowest reload
# period (5 s at the largest markets), so the router sees the smaller one.
CATALOG_SETTLE = 6.0


def lower_priority(pid: int) -> None:
    os.setpriority(os.PRIO_PROCESS, pid, SIMULATOR_NICENESS)


@contextlib.contextmanager
def more_simulators(count: int, env: dict[str, str], workdir: Path) -> Iterator[list[str]]:
    """Simulators beyond the one `services` starts; their URLs."""
    started: list[Service] = []
    urls = []
    try:
        for index in range(count):
            port = free_port()
            argv = [*PYTHON, "node", "simulate", "--port", str(port), "--model", MODEL]
            started.append(Service(f"simulator{index + 2}", argv, env, workdir))
            urls.append(f"http://127.0.0.1:{port}")
        for service, url in zip(started, urls, strict=True):
            service.wait_ready(url + "/api/version")
            lower_priority(service.pid)
        yield urls
    finally:
        for service in reversed(started):
            service.stop()


class ServingCpu(CpuMeter):
    """The serving process's CPU as `platform`, its children's (`infer monitor`) as `monitor`."""

    def read(self, *, opening: bool) -> dict[str, float]:
        usage = super().read(opening=opening)
        serving = proc_cpu_seconds(self.platform_pid)
        usage["monitor"] = usage["platform"] - serving
        usage["platform"] = serving
        return usage


class Market:
    """The running market and what measures it; `step` grows it and measures one size."""

    def __init__(
        self, options: Options, db: Database, nodes: Nodes, cpu: ServingCpu, infer: Target
    ) -> None:
        self.options, self.db, self.nodes, self.cpu, self.infer = options, db, nodes, cpu, infer
        self.pool = LeanPool(size=max(options.requests))
        self.tally = Tally()

    async def step(self, size: int, platform_url: str, platform_pid: int) -> Step:
        options = self.options
        sessions, started = await self.cpu.sessions(), time.perf_counter()
        swept: Sweep = await sweep(
            self.nodes,
            platform_url,
            platform_pid,
            meter=self.cpu,
            interval=options.interval,
            limit=options.sweep_limit,
            min_probe=options.min_probe_seconds,
        )
        # Lateness shows once every node has had the time to fall due again; after a
        # sweep that did not finish, the nodes it left are later than the limit already.
        window = WINDOW * options.interval if not swept.unchecked else 0.0
        load_done = asyncio.Event()
        lateness = asyncio.create_task(
            worst_lateness(
                self.nodes,
                load_done,
                swept_at=await self.nodes.clock(),
                deadline=time.perf_counter() + window,
            )
        )
        try:
            rows = await self.gateway_rows()
        except BaseException:
            lateness.cancel()
            raise
        finally:
            load_done.set()
        worst = await lateness
        opened = await self.cpu.sessions() - sessions
        elapsed = time.perf_counter() - started
        return Step(
            nodes=size,
            rows=rows,
            plan_us=await plan_microseconds(self.db, options.plans),
            sweep=swept,
            lateness_s=worst,
            connections_per_s=opened / elapsed,
        )

    async def gateway_rows(self) -> dict[int, Row]:
        """A fixed count of requests at each concurrency, each answer verified; the
        concurrencies take turns `repeats` times and each keeps its median row (by
        requests/s), so that one burst of other work on the machine does not make a figure."""
        options = self.options
        measured: dict[int, list[Row]] = {c: [] for c in options.requests}
        for _ in range(options.repeats):
            for concurrency, count in options.requests.items():
                load = Load(
                    {"lean": self.pool},
                    self.cpu,
                    self.tally,
                    warmup=options.warmup,
                    seconds=options.row_seconds,
                    max_requests=count,
                )
                measured[concurrency].append(
                    await load.measure(
                        self.infer, stream=False, concurrency=concurrency, client="lean"
                    )
                )
        return {c: median_row(rows) for c, rows in measured.items()}

    async def again(self, size: int) -> dict[int, Row]:
        """The smallest market once more, at the end: the gateway's rows only (what the
        largest one is compared with; measured at both ends of the run, so that a machine
        that got faster or slower meanwhile moves both sides)."""
        await shrink(self.db, to=size)
        await asyncio.sleep(CATALOG_SETTLE)
        return await self.gateway_rows()

    async def aclose(self) -> None:
        await self.pool.aclose()


def median_row(rows: list[Row]) -> Row:
    """The row whose requests/s is the median (the lower middle of an even count)."""
    ranked = sorted(rows, key=lambda row: row.rps)
    middle = statistics.median_low(row.rps for row in ranked)
    return next(row for row in ranked if row.rps == middle)


async def run(options: Options, env: dict[str, str], database_url: str, workdir: Path) -> int:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    with (
        services(env, workdir, PYTHON, ["serve"]) as (simulator, platform, sim_url, platform_url),
        more_simulators(options.simulators - 1, env, workdir) as others,
    ):
        lower_priority(simulator.pid)
        buyer_key = await set_up(platform_url, sim_url, env, "openai")
        await sign_up_operators(platform_url, options.operators)
        infer = Target(
            "INFER",
            platform_url + "/api/v1/chat/completions",
            {"Authorization": f"Bearer {buyer_key}"},
        )
        db = Database.from_url(database_url)
        nodes = await Nodes.open(PG_URL.format(name=options.database).replace("+asyncpg", ""))
        cpu = ServingCpu(platform.pid, simulator.pid, options.database, redis=True)
        market = Market(options, db, nodes, cpu, infer)
        steps = []
        again: dict[int, Row] = {}
        try:
            operators = await operator_ids(db, options.operators)
            for size in options.sizes:
                await grow(
                    db,
                    operators=operators,
                    endpoints=[sim_url, *others],
                    to=size,
                    history=options.history,
                )
                step = await market.step(size, platform_url, platform.pid)
                steps.append(step)
                print(progress(step), file=sys.stderr)
            if len(options.sizes) > 1:
                again = await market.again(options.sizes[0])
                print(progress_again(options.sizes[0], again), file=sys.stderr)
        finally:
            await market.aclose()
            await nodes.close()
            await db.dispose()
        await wait_for_settlements(platform_url)
        books = await verify_books(database_url, market.tally)
    return report(options, steps, again, books)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    # Even when started with SIGINT ignored (a background job), Ctrl+C must stop the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="infer-market-") as tmp:
        workdir = Path(tmp)
        try:
            database_url = fresh_database(sqlite=False, workdir=workdir, name=options.database)
        except OSError as exc:
            print(f"bench: PostgreSQL on 127.0.0.1:5432 is needed: {exc}", file=sys.stderr)
            return 2
        env = platform_env(database_url, True, workdir)
        env["INFER_HEALTH_INTERVAL"] = f"{options.interval:g}"
        if options.monitor:
            env["INFER_HEALTH_MONITOR"] = options.monitor
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
            forget_redis_keys(env["INFER_REDIS_PREFIX"])
