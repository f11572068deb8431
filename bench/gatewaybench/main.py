"""One run: servers up, the market set up, every row measured, billing checked, the report."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import sys
import tempfile
from pathlib import Path

from .billing import verify_billing
from .calls import Pool, Target
from .cpu import CpuMeter
from .errors import BenchError
from .httpx_pool import HttpxPool
from .lean import LeanPool
from .load import Load, Row, Tally
from .market import set_up, wait_for_settlements
from .options import Options, parse_options
from .processes import forget_redis_keys, fresh_database, platform_env, services
from .profiling import py_spy, summarise_profile
from .report import progress, report


def make_pools(options: Options) -> dict[str, Pool]:
    """The load generator's clients, each holding one connection per worker and server."""
    size = max(options.concurrency)
    pools: dict[str, Pool] = {}
    for name in options.clients:
        if name == "httpx":
            pools[name] = HttpxPool(size=size, shared=options.shared_client)
        else:
            pools[name] = LeanPool(size=size)
    return pools


async def run(options: Options, env: dict[str, str], database_url: str, workdir: Path) -> int:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    database = None if options.sqlite else database_url.rsplit("/", 1)[1]
    command = shlex.split(options.platform_command) if options.platform_command else None
    platform_command = command or [sys.executable, "-m", "infer.cli"]
    serve = ["serve", "--workers", str(options.workers)] if options.workers > 1 else ["serve"]
    several = len(options.clients) > 1
    with services(env, workdir, platform_command, serve) as (
        simulator,
        platform,
        sim_url,
        platform_url,
    ):
        buyer_key = await set_up(platform_url, sim_url, env, options.runtime)
        direct = Target("direct", sim_url + "/v1/chat/completions", {})
        infer = Target(
            "INFER",
            platform_url + "/api/v1/chat/completions",
            {"Authorization": f"Bearer {buyer_key}"},
        )
        most = max(options.concurrency)
        tally, rows, profile = Tally(), list[Row](), None
        pools = make_pools(options)
        try:
            load = Load(
                pools,
                CpuMeter(platform.pid, simulator.pid, database, options.redis),
                tally,
                warmup=options.warmup,
                seconds=options.seconds,
                max_requests=options.max_requests,
            )
            for stream in (False, True):
                for concurrency in options.concurrency:
                    for client in options.clients:
                        for target in (direct, infer):  # back to back: the same machine
                            row = await load.measure(
                                target, stream=stream, concurrency=concurrency, client=client
                            )
                            rows.append(row)
                            print(progress(row, several), file=sys.stderr)
            if options.profile is not None:
                with py_spy(platform.pid, options.profile):
                    row = await load.measure(
                        infer, stream=False, concurrency=most, client=options.clients[0]
                    )
                profile = summarise_profile(options.profile, row.cpu_ms["platform"])
                profile += f"\n\n(under py-spy at 250 Hz: {progress(row).strip()})"
        finally:
            for pool in pools.values():
                await pool.aclose()
        await wait_for_settlements(platform_url)
        billing = await verify_billing(database_url, tally)
    return report(options, rows, billing, profile)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    # Even when started with SIGINT ignored (a background job), Ctrl+C must stop the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as tmp:
        workdir = Path(tmp)
        database_url = fresh_database(sqlite=options.sqlite, workdir=workdir)
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
