"""The `infer` command: serve, migrate, grant credits, and the operator's node tools."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from infer.audit import ClientInfo
from infer.billing.credits import grant_credits
from infer.billing.money import format_usd, parse_usd
from infer.config import Settings, load_settings
from infer.db import Database, upgrade_database
from infer.errors import InferError


class CommandError(Exception):
    """A failure to report as one line on stderr with a non-zero exit status."""


def _migrate(settings: Settings) -> None:
    upgrade_database(settings.database_url)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from infer.app import create_app

    _migrate(settings)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        proxy_headers=True,
        server_header=False,
    )


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


def cmd_node_simulate(args: argparse.Namespace, settings: Settings) -> None:
    from infer.simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(
        models=tuple(args.model or ["llama3.2:1b"]),
        tokens_per_second=args.tokens_per_second,
        ttft_ms=args.ttft_ms,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    run_simulator(config, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply migrations, then serve the platform")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=cmd_migrate)

    credits = commands.add_parser("credits", help="manage account credits")
    credit_commands = credits.add_subparsers(dest="credits_command", required=True)
    grant = credit_commands.add_parser("grant", help="grant AMOUNT USD to the account EMAIL")
    grant.add_argument("email")
    grant.add_argument("amount", help="USD, such as 5 or 12.50")
    grant.add_argument("--idempotency-key", help="grant at most once for this key")
    grant.set_defaults(handler=cmd_credits_grant)

    node = commands.add_parser("node", help="tools for node operators")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    simulate = node_commands.add_parser("simulate", help="run an Ollama-compatible simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=11434)
    simulate.add_argument("--model", action="append", help="a model to serve (repeatable)")
    simulate.add_argument("--tokens-per-second", type=float, default=None)
    simulate.add_argument("--ttft-ms", type=float, default=0.0)
    simulate.add_argument("--error-rate", type=float, default=0.0)
    simulate.add_argument("--seed", type=int, default=None)
    simulate.set_defaults(handler=cmd_node_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], None] = args.handler
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        handler(args, load_settings())
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        print(f"infer: configuration error: {problems}", file=sys.stderr)
        return 2
    except (InferError, CommandError) as exc:
        print(f"infer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
