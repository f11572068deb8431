"""What the health monitor does, seen from outside: sweeps, check lateness, /healthz."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg
from gatewaybench.calls import Call, Target
from gatewaybench.cpu import CpuMeter, tree_cpu_seconds
from gatewaybench.errors import BenchError, CallFailed
from gatewaybench.lean import LeanSender
from gatewaybench.load import percentile

POLL = 0.2  # seconds between looks at the nodes' check times during a sweep
SAMPLE = 0.5  # seconds between lateness samples
HEALTHZ_GAP = 0.02  # seconds between /healthz probes (one at a time)
HEALTHZ_TIMEOUT = 10.0
MIN_CHECKS_FOR_CPU = 100

# Nodes the monitor checks; a node never checked counts from its creation.
_LIVE = "status <> 'disabled'"
_UNCHECKED = f"SELECT count(*) FROM nodes WHERE {_LIVE} AND coalesce(last_checked_at, 'epoch') < $1"
_SPREAD = (
    "SELECT extract(epoch FROM max(last_checked_at) - min(last_checked_at)) "
    f"FROM nodes WHERE {_LIVE} AND last_checked_at >= $1"
)
_OLDEST = (
    "SELECT extract(epoch FROM clock_timestamp() - min(coalesce(last_checked_at, created_at))) "
    f"FROM nodes WHERE {_LIVE}"
)


@dataclass(frozen=True, slots=True)
class Probe:
    sent: float  # time.perf_counter()
    seconds: float


@dataclass(frozen=True)
class Sweep:
    nodes: int
    seconds: float  # from its first check to its last, or to the limit
    unchecked: int  # nodes still not checked when the limit came (0: the sweep finished)
    cpu_ms_per_check: float | None  # the platform's CPU over the sweep / nodes checked
    healthz_p99_ms: float
    healthz_probes: int
    # CPU ms per check by party (platform, monitor, postgres, simulators, ...), from the
    # moment every node was made due to the sweep's end: where a sweep's work goes.
    cpu_ms_per_check_by: dict[str, float] | None = None


class Nodes:
    """Questions about the nodes' checks, on one connection kept for the whole run."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, dsn: str) -> Nodes:
        return cls(await asyncpg.connect(dsn, timeout=10))

    async def all_due(self) -> tuple[int, datetime]:
        """Make every node due now, as after a restart or a mass registration.

        Returns the node count and the database's clock at that moment. A registered node
        always has a time for its next check (its first check sets one), so due means
        a time now, not none.
        """
        moment = await self.clock()
        count = await self.connection.fetchval(
            "WITH due AS (UPDATE nodes SET next_check_at = $1 "
            f"WHERE {_LIVE} RETURNING 1) SELECT count(*) FROM due",
            moment,
        )
        return int(count), moment

    async def unchecked_since(self, moment: datetime) -> int:
        return int(await self.connection.fetchval(_UNCHECKED, moment))

    async def clock(self) -> datetime:
        now: datetime = await self.connection.fetchval("SELECT clock_timestamp()")
        return now

    async def spread_since(self, moment: datetime) -> float:
        """Seconds from the first check after `moment` to the last."""
        return float(await self.connection.fetchval(_SPREAD, moment) or 0.0)

    async def oldest_check_age(self) -> float:
        """Seconds since the least recent check of any node (its lateness, when due)."""
        return float(await self.connection.fetchval(_OLDEST) or 0.0)

    async def close(self) -> None:
        await self.connection.close()


async def probe_healthz(platform_url: str, stop: asyncio.Event, into: list[Probe]) -> None:
    """/healthz probed one request at a time until `stop` is set, each added `into`."""
    url = urlsplit(platform_url + "/healthz")
    assert url.hostname is not None
    assert url.port is not None
    raw = f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode()
    call = Call(Target("healthz", platform_url + "/healthz", {}), False, b"", {}, raw)
    sender = LeanSender(url.hostname, url.port)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                reply = await asyncio.wait_for(sender.send(call), HEALTHZ_TIMEOUT)
            except (CallFailed, TimeoutError) as exc:
                raise BenchError(f"/healthz got no answer during a sweep: {exc}") from exc
            if reply.status != 200:
                raise BenchError(f"/healthz answered {reply.status} during a sweep")
            into.append(Probe(started, time.perf_counter() - started))
            await asyncio.sleep(HEALTHZ_GAP)
    finally:
        sender.close()


async def sweep(
    nodes: Nodes,
    platform_url: str,
    platform_pid: int,
    *,
    meter: CpuMeter | None = None,
    interval: float,
    limit: float,
    min_probe: float,
) -> Sweep:
    """Every node due at once; the time until each was checked, /healthz probed meanwhile.

    Nothing wakes the monitor: it may sleep up to an interval before it looks. So the
    sweep's time, its limit, its CPU and the /healthz figures count from its first check
    (the wait shows in the lateness).
    """
    stop = asyncio.Event()
    probes: list[Probe] = []
    count, since = await nodes.all_due()
    parties = meter.read(opening=True) if meter is not None else None
    started = time.perf_counter()
    first: float | None = None
    cpu_before = cpu_then = tree_cpu_seconds(platform_pid)
    prober = asyncio.create_task(probe_healthz(platform_url, stop, probes))
    try:
        unchecked = count
        while unchecked and time.perf_counter() < (first or started + interval) + limit:
            cpu_then = tree_cpu_seconds(platform_pid)
            await asyncio.sleep(POLL)
            unchecked = await nodes.unchecked_since(since)
            if first is None and unchecked < count:
                first, cpu_before = time.perf_counter() - POLL, cpu_then  # since the last look
        cpu = tree_cpu_seconds(platform_pid) - cpu_before
        ended = time.perf_counter()
        if parties is not None and meter is not None:
            closing = meter.read(opening=False)
            parties = {name: closing[name] - parties[name] for name in closing}
        # Small sweeps end at once: /healthz is still probed long enough for a p99.
        await asyncio.sleep(max(0.0, (first or started) + min_probe - time.perf_counter()))
    finally:
        stop.set()
        await prober
    latencies = [p.seconds for p in probes if first is None or p.sent >= first]
    checked = count - unchecked
    return Sweep(
        nodes=count,
        seconds=await nodes.spread_since(since) if not unchecked else ended - (first or started),
        unchecked=unchecked,
        # Below that, /healthz probes and idle time would be most of the figure.
        cpu_ms_per_check=cpu * 1000 / checked if checked >= MIN_CHECKS_FOR_CPU else None,
        healthz_p99_ms=percentile(latencies, 0.99) * 1000,
        healthz_probes=len(latencies),
        cpu_ms_per_check_by=(
            {name: seconds * 1000 / checked for name, seconds in parties.items()}
            if parties is not None and checked >= MIN_CHECKS_FOR_CPU
            else None
        ),
    )


async def worst_lateness(
    nodes: Nodes, load_done: asyncio.Event, *, swept_at: datetime, deadline: float
) -> float:
    """The longest time any node went unchecked, sampled from the sweep's end.

    Sampling ends once the load is done and either every node has been checked again
    since the sweep ended (every gap after it is then complete) or `deadline` has come.
    """
    worst = 0.0
    while True:
        worst = max(worst, await nodes.oldest_check_age())
        if load_done.is_set() and (
            time.perf_counter() >= deadline or not await nodes.unchecked_since(swept_at)
        ):
            return worst
        await asyncio.sleep(SAMPLE)
