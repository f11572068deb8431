"""The health monitor's own thread: its event loop, database pool and node client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from infer.config import Settings
from infer.db import Database, create_engine
from infer.nodes.clients.base import Deadlines
from infer.nodes.history import DEFAULT_RAW_CHECKS, DEFAULT_RETENTION
from infer.nodes.http import create_http_client, tunnel_calls
from infer.nodes.monitor import HealthMonitor
from infer.security.crypto import Keyring
from infer.tunnel.hop import hop_key
from infer.tunnel.hub import TunnelHub

log = logging.getLogger(__name__)

T = TypeVar("T")
START_TIMEOUT = 10.0  # seconds the thread may take to build its loop, pool and client


@dataclass(frozen=True)
class MonitorConfig:
    """What the monitor's thread builds its own resources from."""

    database_url: str
    database_timeout: float
    pool_size: int
    allow_private: bool
    interval: float
    concurrency: int
    keyring: Keyring
    deadlines: Deadlines
    raw_checks: int = DEFAULT_RAW_CHECKS
    retention: timedelta = DEFAULT_RETENTION
    sweeping: bool = True  # False: only registrations' checks (`infer monitor` sweeps)
    # Tunnelled nodes: the serving loop's hub (None in a process of its own), and the key
    # that signs replica hops to the process holding a tunnel.
    hop_key: bytes | None = None
    hub: TunnelHub | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, sweeping: bool) -> MonitorConfig:
        return cls(
            database_url=settings.database_url,
            database_timeout=settings.database_timeout,
            pool_size=settings.health_database_pool,
            allow_private=settings.allow_private_endpoints,
            interval=settings.health_interval,
            concurrency=settings.health_concurrency,
            keyring=Keyring.parse(settings.secret("encryption_keys")),
            deadlines=Deadlines(
                connect=settings.upstream_connect_timeout,
                first_byte=settings.upstream_first_byte_timeout,
                idle=settings.upstream_idle_timeout,
                total=settings.upstream_total_timeout,
                health=settings.health_timeout,
            ),
            raw_checks=settings.health_raw_checks,
            retention=timedelta(days=settings.health_retention_days),
            sweeping=sweeping,
            hop_key=hop_key(settings.secret("secret_key")),
        )


class MonitorThread:
    """Runs a `HealthMonitor` off the gateway's event loop; the gateway talks to it from its own.

    The monitor's probes, claims and writes never wait behind requests, and requests
    never wait behind them: it has its own loop, its own bounded pool (never the
    gateway's) and its own pooled node client (connections belong to one loop).
    `on_change` is called on the loop that started the thread.
    """

    def __init__(self, config: MonitorConfig, *, on_change: Callable[[], None]) -> None:
        self.config = config
        self._on_change = on_change
        self._caller: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: HealthMonitor | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None

    @property
    def monitor(self) -> HealthMonitor:
        if self._monitor is None:
            raise RuntimeError("the health monitor is not running")
        return self._monitor

    def start(self) -> None:
        """Start the thread (from the gateway's loop) and wait until it is ready."""
        self._caller = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="infer-health-monitor", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._failed is not None:
            raise RuntimeError("the health monitor could not start") from self._failed

    def wake(self) -> None:
        """Ask for a sweep now (registrations); safe from any thread."""
        self._call_soon(lambda: self.monitor.wake())

    async def check_now(self, node_id: uuid.UUID, *, force: bool = False) -> bool:
        """Check the node on the monitor's loop; awaited from the caller's."""
        return await self._submit(self.monitor.check_now(node_id, force=force))

    async def sweep(self) -> int:
        return await self._submit(self.monitor.sweep())

    async def stop(self, grace: float) -> None:
        """End the monitor after its batch in hand; cancel it after `grace` seconds."""
        thread = self._thread
        if thread is None:
            return
        self._call_soon(lambda: self.monitor.stop())
        await asyncio.to_thread(thread.join, grace)
        if thread.is_alive() and self._task is not None:
            self._call_soon(self._task.cancel)
            await asyncio.to_thread(thread.join, grace)
        if thread.is_alive():
            log.warning("the health monitor did not stop within %g s", 2 * grace)

    def _call_soon(self, callback: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None:  # not started, or already ended: nothing to ask of it
            return
        with contextlib.suppress(RuntimeError):  # its loop has just closed
            loop.call_soon_threadsafe(callback)

    async def _submit(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            work.close()
            raise RuntimeError("the health monitor is not running")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        return await asyncio.wrap_future(future)

    def _changed(self) -> None:
        """The monitor moved statuses or models: the gateway's catalog reloads (its loop)."""
        if self._caller is not None and not self._caller.is_closed():
            with contextlib.suppress(RuntimeError):
                self._caller.call_soon_threadsafe(self._on_change)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); a thread's error is otherwise lost
            self._failed = exc
            self._ready.set()
            log.exception("the health monitor's thread ended")

    async def _main(self) -> None:
        monitor = self._monitor = open_monitor(self.config, on_change=self._changed)
        try:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._ready.set()
            if self.config.sweeping:
                await monitor.run_forever()
            else:
                await monitor.wait_until_stopped()
        finally:
            self._loop = None
            await close_monitor(monitor)


def open_monitor(config: MonitorConfig, *, on_change: Callable[[], None] | None) -> HealthMonitor:
    """A monitor on a database pool and node client of its own (close with `close_monitor`)."""
    # The claim takes one connection and a batch write one more at a time; max_overflow=0
    # makes pool_size the bound, whatever else the process does.
    db = Database(
        create_engine(
            config.database_url,
            pool_size=config.pool_size,
            max_overflow=0,
            timeout=config.database_timeout,
        )
    )
    http = create_http_client(allow_private=config.allow_private, deadlines=config.deadlines)
    if config.hop_key is not None:
        http.tunnels = tunnel_calls(
            db, hub=config.hub, key=config.hop_key, deadlines=config.deadlines
        )
    return HealthMonitor(
        db,
        http,
        interval=config.interval,
        keyring=config.keyring,
        deadlines=config.deadlines,
        concurrency=config.concurrency,
        on_change=on_change,
        raw_checks=config.raw_checks,
        retention=config.retention,
    )


async def close_monitor(monitor: HealthMonitor) -> None:
    await monitor.http.aclose()
    await monitor.db.dispose()


async def run_monitor(config: MonitorConfig) -> None:
    """The monitor as a process of its own (`infer monitor`), until SIGTERM or SIGINT.

    The gateways' catalogs see its changes when they next reload (every few seconds).
    """
    monitor = open_monitor(config, on_change=None)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, monitor.stop)
    try:
        await monitor.run_forever()
    finally:
        await close_monitor(monitor)
