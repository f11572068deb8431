"""The platform's commands: serve, monitor, migrate, credits, keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from infer.audit import ClientInfo
from infer.billing.credits import grant_credits
from infer.billing.money import format_usd, parse_usd
from infer.cli.errors import CommandError
from infer.config import Settings
from infer.db import Database, upgrade_database

MONITOR_NICENESS = 10  # `infer serve`'s monitor process yields the CPU to the requests


def _migrate(settings: Settings) -> None:
    upgrade_database(settings.database_url)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from infer.app import create_app
    from infer.logs import configure_logging
    from infer.tunnel.protocol import MAX_MESSAGE

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    if args.workers > 1 and not settings.redis_url:
        raise CommandError(
            "--workers above 1 needs INFER_REDIS_URL: the processes share rate limits, "
            "routing figures and key revocations through Redis"
        )
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    _migrate(settings)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": settings.log_level,
        "proxy_headers": True,
        "server_header": False,
        "log_config": None,  # uvicorn's loggers go through ours (INFER_LOG_FORMAT)
        "ws_max_size": MAX_MESSAGE,  # the only WebSockets are node tunnels: small messages
        "ws_per_message_deflate": False,  # their token frames cost more to deflate than they save
    }
    with _monitor_process(settings):
        if args.workers > 1:
            _share_metrics_between_workers()
            # Each worker process builds the app from the same environment (and secrets file).
            uvicorn.run(
                "infer.app:app_from_environment", factory=True, workers=args.workers, **options
            )
        else:
            uvicorn.run(create_app(settings, freeze_heap=True), **options)


def _share_metrics_between_workers() -> None:
    """Workers keep their metrics in files of one fresh directory; any scrape sums them."""
    import tempfile

    from infer.metrics import MULTIPROCESS_ENV

    if not os.environ.get(MULTIPROCESS_ENV):
        # Inherited by the workers, which read it when they import prometheus-client.
        os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="infer-metrics-")


@contextlib.contextmanager
def _monitor_process(settings: Settings) -> Iterator[None]:
    """With INFER_HEALTH_MONITOR=process, one `infer monitor` beside the serving processes."""
    if settings.health_monitor != "process":
        yield
        return
    # Same environment, so the same settings (development secrets are in their file by now).
    # At a lower priority: when the machine is short of CPU, requests go first (the
    # checks keep their schedule as long as a sweep fits in the interval).
    argv = [sys.executable, "-m", "infer.cli", "monitor", "--nice", str(MONITOR_NICENESS)]
    child = subprocess.Popen(argv)  # noqa: S603 (our own interpreter and arguments)
    try:
        yield
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> None:
    from infer.nodes.monitor_thread import MonitorConfig, run_monitor

    if args.nice:
        os.nice(args.nice)

    asyncio.run(run_monitor(MonitorConfig.from_settings(settings, sweeping=True)))


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    _migrate(settings)
    print("database is up to date")


def cmd_credits_grant(args: argparse.Namespace, settings: Settings) -> None:
    amount = parse_usd(args.amount)

    async def grant() -> int:
        db = Database.from_url(settings.database_url)
        try:
            return await grant_credits(
                db,
                email=args.email,
                amount=amount,
                client=ClientInfo.cli(),
                idempotency_key=args.idempotency_key,
            )
        finally:
            await db.dispose()

    balance = asyncio.run(grant())
    print(
        f"granted {format_usd(amount)} USD to {args.email.strip().lower()}; "
        f"balance is now {format_usd(balance)} USD"
    )


def cmd_keys_rekey(args: argparse.Namespace, settings: Settings) -> None:
    from infer.keys.rekey import rekey_api_keys
    from infer.keys.service import KeyMaterial
    from infer.security.crypto import Keyring

    material = KeyMaterial(
        lookup_key=settings.secret("lookup_key"),
        keyring=Keyring.parse(settings.secret("encryption_keys")),
    )

    async def rekey() -> int:
        db = Database.from_url(settings.database_url)
        try:
            return await rekey_api_keys(db, material=material)
        finally:
            await db.dispose()

    print(f"re-keyed {asyncio.run(rekey())} API keys")


def add_platform_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="apply migrations, then serve the platform")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the same port (above 1 needs INFER_REDIS_URL)",
    )
    serve.set_defaults(handler=cmd_serve)

    monitor = commands.add_parser(
        "monitor", help="check the nodes' health in this process (see INFER_HEALTH_MONITOR)"
    )
    monitor.add_argument(
        "--nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="N",
        help="lower this process's CPU priority by N (0-19; `infer serve` starts it with "
        f"{MONITOR_NICENESS})",
    )
    monitor.set_defaults(handler=cmd_monitor)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=cmd_migrate)

    credits = commands.add_parser("credits", help="manage account credits")
    credit_commands = credits.add_subparsers(dest="credits_command", required=True)
    grant = credit_commands.add_parser("grant", help="grant AMOUNT USD to the account EMAIL")
    grant.add_argument("email")
    grant.add_argument("amount", help="USD, such as 5 or 12.50")
    grant.add_argument("--idempotency-key", help="grant at most once for this key")
    grant.set_defaults(handler=cmd_credits_grant)

    keys = commands.add_parser("keys", help="maintain stored API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    rekey = key_commands.add_parser(
        "rekey", help="recompute lookup digests and re-encrypt after changing platform keys"
    )
    rekey.set_defaults(handler=cmd_keys_rekey)
