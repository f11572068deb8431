"""Process resources, built once in the lifespan from the settings and closed at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta

from infer.accounts.service import LoginPolicy
from infer.accounts.throttle import LoginLimits
from infer.billing.pricing import fee_ppm
from infer.billing.settlement import expire_holds
from infer.completions.service import BillingPolicy, Completions
from infer.config import Settings
from infer.db import Database
from infer.keys.auth import KeyAuthenticator
from infer.keys.limits import KeyLimits
from infer.keys.revocations import KeyChanges
from infer.keys.service import KeyMaterial
from infer.marketplace.figures import FiguresRollup
from infer.metrics import Metrics
from infer.nodes.clients.base import Deadlines
from infer.nodes.http import create_http_client, tunnel_calls
from infer.nodes.monitor_thread import MonitorConfig, MonitorThread
from infer.nodes.transport import NodeHTTP
from infer.ratelimit import RateLimiter
from infer.routing import NodeCatalog, RedisRouterState, Router, router_state_from_settings
from infer.routing.waiting import CapacityQueues, WakingState
from infer.security.crypto import Keyring
from infer.security.outbound import AddressPolicy
from infer.security.tokens import SessionSigner
from infer.tunnel.hop import HopServer, evict, hop_app, hop_key
from infer.tunnel.hub import Replica, TunnelHub

log = logging.getLogger(__name__)

LAST_USED_FLUSH_SECONDS = 30.0
HOLD_SWEEP_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0  # background work in progress may finish; then it is cancelled


@dataclass
class Resources:
    """Everything a request may use that lives as long as the process."""

    settings: Settings
    db: Database
    limiter: RateLimiter
    signer: SessionSigner
    key_material: KeyMaterial
    authenticator: KeyAuthenticator
    login_policy: LoginPolicy
    address_policy: AddressPolicy
    http: NodeHTTP
    monitor: MonitorThread
    router: Router
    completions: Completions
    key_changes: KeyChanges
    figures: FiguresRollup
    metrics: Metrics
    tunnels: TunnelHub
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _listener: asyncio.Task[None] | None = None
    _hop: HopServer | None = None

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        db = Database.from_url(settings.database_url, timeout=settings.database_timeout)
        lookup_key = settings.secret("lookup_key")
        keyring = Keyring.parse(settings.secret("encryption_keys"))
        deadlines = Deadlines(
            connect=settings.upstream_connect_timeout,
            first_byte=settings.upstream_first_byte_timeout,
            idle=settings.upstream_idle_timeout,
            total=settings.upstream_total_timeout,
            health=settings.health_timeout,
        )
        policy = AddressPolicy(allow_private=settings.allow_private_endpoints)
        metrics = Metrics()
        capacity = CapacityQueues(
            wait_seconds=settings.capacity_wait_seconds,
            limit=settings.capacity_queue_limit,
            metrics=metrics,
        )
        # Every released slot wakes the requests waiting at capacity.
        state = WakingState(router_state_from_settings(settings), capacity.released)
        router = Router(NodeCatalog(db), state)
        limiter = RateLimiter.from_settings(settings)
        authenticator = KeyAuthenticator(db, lookup_key=lookup_key)
        http = create_http_client(
            allow_private=settings.allow_private_endpoints, deadlines=deadlines
        )
        # Tunnelled nodes: those whose agent connected here, and the way to the others.
        key = hop_key(settings.secret("secret_key"))
        tunnels = TunnelHub(
            db, replica=Replica(uuid.uuid4().hex), on_change=router.catalog.invalidate
        )
        calls = http.tunnels = tunnel_calls(db, hub=tunnels, key=key, deadlines=deadlines)
        if calls.hop is not None:
            tunnels.evict = functools.partial(evict, calls.hop)
        monitor = MonitorThread(
            replace(
                MonitorConfig.from_settings(settings, sweeping=settings.health_monitor == "thread"),
                hub=tunnels,
            ),
            on_change=router.catalog.invalidate,
        )
        tunnels.check_now = lambda node_id: monitor.check_now(node_id, force=True)
        return cls(
            settings=settings,
            db=db,
            limiter=limiter,
            signer=SessionSigner(settings.secret("secret_key")),
            key_material=KeyMaterial(lookup_key=lookup_key, keyring=keyring),
            authenticator=authenticator,
            login_policy=LoginPolicy(
                limits=LoginLimits(
                    pair=settings.login_limit_pair,
                    address=settings.login_limit_address,
                    account=settings.login_limit_account,
                ),
                session_ttl=timedelta(seconds=settings.session_ttl_seconds),
            ),
            address_policy=policy,
            http=http,
            monitor=monitor,
            tunnels=tunnels,
            router=router,
            figures=FiguresRollup(db, interval=settings.figures_interval),
            key_changes=KeyChanges.from_url(
                settings.redis_url, prefix=settings.redis_prefix, forget=authenticator.forget
            ),
            completions=Completions(
                db=db,
                router=router,
                http=http,
                keyring=keyring,
                deadlines=deadlines,
                policy=BillingPolicy(
                    fee_parts_per_million=fee_ppm(settings.platform_fee),
                    default_max_tokens=settings.default_max_tokens,
                    hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
                    key_limits=KeyLimits(
                        settings.key_requests_per_minute, settings.key_tokens_per_minute
                    ),
                ),
                limiter=limiter,
                spool_dir=settings.spool_dir,
                metrics=metrics,
                capacity=capacity,
            ),
            metrics=metrics,
        )

    def redis_status(self) -> str | None:
        """None without Redis; "degraded" while a part runs on its own state, else "ok"."""
        if not self.settings.redis_url:
            return None
        state = self.router.state
        if isinstance(state, WakingState):
            state = state.inner
        views = [
            self.limiter.redis,
            self.key_changes.redis,
            state.redis if isinstance(state, RedisRouterState) else None,
        ]
        return "degraded" if any(view is not None and view.down for view in views) else "ok"

    def start_background(self) -> None:
        self._tasks.append(asyncio.create_task(self._flush_last_used_forever()))
        self.monitor.start()  # its own thread, loop and pool: see docs/architecture.md
        self._tasks.append(asyncio.create_task(self._expire_holds_forever()))
        self._tasks.append(asyncio.create_task(self._refresh_figures_forever()))
        self._tasks.append(asyncio.create_task(self.completions.replay()))
        self._listener = asyncio.create_task(self.key_changes.listen_forever())

    async def start_tunnels(self) -> None:
        """Listen for replica hops: calls other processes send to the tunnels held here."""
        host, _, port = self.settings.replica_listen.rpartition(":")
        self._hop = HopServer(
            hop_app(
                self.tunnels,
                key=hop_key(self.settings.secret("secret_key")),
                total_timeout=self.settings.upstream_total_timeout,
            ),
            host=host.strip("[]"),
            port=int(port),
            advertise=self.settings.replica_address,
        )
        url = await self._hop.start()
        self.tunnels.replica = Replica(self.tunnels.replica.id, url)

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait this long, or less if the process is stopping; True if it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()

    async def _flush_last_used_forever(self) -> None:
        while not await self._stopped_within(LAST_USED_FLUSH_SECONDS):
            try:
                await self.authenticator.flush_last_used()
            except Exception:  # a failed flush must not end the loop; retried next round
                log.exception("could not record API key last-used times")

    async def _expire_holds_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await expire_holds(self.db)
            except Exception:  # retried next round
                log.exception("could not expire stale holds")
            await self._stopped_within(HOLD_SWEEP_SECONDS)

    async def _refresh_figures_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.figures.sweep()
            except Exception:  # retried next round; the stored figures stay as they were
                log.exception("could not refresh the market figures")
            await self._stopped_within(self.figures.interval)

    async def _stop_background(self) -> None:
        """Ask the loops to end after the step in hand; cancel what is still busy after 5 s.

        A step cancelled in the middle of a query leaves its connection to be torn down
        behind the event loop's back, so shutdown lets the step finish first.
        """
        self._stopping.set()
        self.key_changes.stop()
        await self.monitor.stop(STOP_GRACE_SECONDS)
        busy: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, busy = await asyncio.wait(self._tasks, timeout=STOP_GRACE_SECONDS)
        if self._listener is not None:
            busy.add(self._listener)  # it only waits on Redis: no need to let it finish
        for task in busy:
            task.cancel()
        for task in busy:
            # A background task that ignores its cancellation must not hold up shutdown.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=STOP_GRACE_SECONDS)

    async def close(self) -> None:
        await self.tunnels.close_all()
        if self._hop is not None:
            await self._hop.stop()
        await self._stop_background()
        try:
            await self.completions.close()
            try:
                await self.authenticator.flush_last_used()
            except Exception:  # last-used times are a convenience; shutdown goes on
                log.warning("could not record API key last-used times at shutdown")
        finally:
            await self.http.aclose()
            await self.router.state.close()
            await self.key_changes.close()
            await self.limiter.close()
            await self.db.dispose()
