"""The `infer` command: serve, migrate, grant credits, and the operator's node tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from infer.audit import ClientInfo
from infer.billing.credits import grant_credits
from infer.billing.money import format_usd, parse_usd
from infer.config import Settings, load_settings
from infer.db import Database, upgrade_database
from infer.errors import InferError, Unavailable

if TYPE_CHECKING:
    from infer.agent.register import RegistrationOptions


class CommandError(Exception):
    """A failure to report as one line on stderr with a non-zero exit status."""


def _migrate(settings: Settings) -> None:
    upgrade_database(settings.database_url)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from infer.app import create_app

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    if args.workers > 1 and not settings.redis_url:
        raise CommandError(
            "--workers above 1 needs INFER_REDIS_URL: the processes share rate limits, "
            "routing figures and key revocations through Redis"
        )
    _migrate(settings)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": settings.log_level,
        "proxy_headers": True,
        "server_header": False,
    }
    with _monitor_process(settings):
        if args.workers > 1:
            # Each worker process builds the app from the same environment (and secrets file).
            uvicorn.run(
                "infer.app:app_from_environment", factory=True, workers=args.workers, **options
            )
        else:
            uvicorn.run(create_app(settings, freeze_heap=True), **options)


@contextlib.contextmanager
def _monitor_process(settings: Settings) -> Iterator[None]:
    """With INFER_HEALTH_MONITOR=process, one `infer monitor` beside the serving processes."""
    if settings.health_monitor != "process":
        yield
        return
    # Same environment, so the same settings (development secrets are in their file by now).
    child = subprocess.Popen([sys.executable, "-m", "infer.cli", "monitor"])
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


def cmd_node_simulate(args: argparse.Namespace, settings: Settings) -> None:
    from infer.simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(
        models=tuple(args.model or ["llama3.2:1b"]),
        tokens_per_second=args.tokens_per_second,
        ttft_ms=args.ttft_ms,
        error_rate=args.error_rate,
        hang=args.hang,
        drop_after_tokens=args.drop_after_tokens,
        seed=args.seed,
    )
    run_simulator(config, host=args.host, port=args.port)


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file is None:
        return str(args.api_key)
    try:
        if args.api_key_file == "-":
            return sys.stdin.readline().strip()
        with open(args.api_key_file) as handle:
            return handle.readline().strip()
    except OSError as exc:
        raise CommandError(f"cannot read {args.api_key_file}: {exc.strerror}") from exc


def _quiet_http() -> None:
    # httpx logs every request at INFO: noise for an operator, and it would break the live line.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _warn_about(args: argparse.Namespace, graphql_url: str) -> None:
    from infer.agent.platform import is_plaintext

    if is_plaintext(graphql_url):
        print(
            f"infer: warning: {graphql_url} is plain http; the API key travels unencrypted",
            file=sys.stderr,
        )
    if args.endpoint is None:
        print(
            "infer: note: without --endpoint, the runtime's local address is registered; "
            "the platform must be able to reach it",
            file=sys.stderr,
        )


def cmd_node_detect(args: argparse.Namespace, settings: Settings) -> None:
    import json

    from infer.agent.detect import detect

    _quiet_http()
    detection = detect(ollama_url=args.ollama_url, exo_url=args.exo_url)
    print(json.dumps(detection.to_json(), indent=2))


def _registration_options(args: argparse.Namespace) -> RegistrationOptions:
    from infer.agent.register import RegistrationOptions

    return RegistrationOptions.parse(
        name=args.name,
        runtime=args.runtime,
        endpoint=args.endpoint,
        prices=args.price or (),
        default_price=args.default_price,
    )


def cmd_node_register(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent.detect import detect
    from infer.agent.platform import PlatformClient
    from infer.agent.register import build_registration

    options = _registration_options(args)
    _quiet_http()
    with PlatformClient(args.platform, _api_key(args)) as platform:
        _warn_about(args, platform.url)
        registration = build_registration(
            detect(ollama_url=args.ollama_url, exo_url=args.exo_url), options
        )
        node = platform.register_node(registration)
    reason = f" ({node.status_reason})" if node.status_reason else ""
    print(
        f"registered {registration.runtime} node '{registration.name}' at "
        f"{registration.endpoint} (id {node.id}): {node.status}{reason}"
    )
    print(f"models: {', '.join(registration.models) or 'none yet'}")


def cmd_node_agent(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent.detect import detect
    from infer.agent.loop import Agent, StatusLine
    from infer.agent.platform import PlatformClient

    if args.interval <= 0 or (args.iterations is not None and args.iterations < 1):
        raise CommandError("--interval and --iterations must be positive")
    options = _registration_options(args)
    _quiet_http()
    with PlatformClient(args.platform, _api_key(args)) as platform:
        _warn_about(args, platform.url)
        agent = Agent(
            detect=lambda: detect(ollama_url=args.ollama_url, exo_url=args.exo_url),
            platform=platform,
            options=options,
        )
        line = StatusLine(sys.stdout)
        try:
            agent.run(line, interval=args.interval, iterations=args.iterations)
        except KeyboardInterrupt:
            pass  # Ctrl+C is how an operator stops the agent: a clean exit
        finally:
            line.close()


def _add_node_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from infer.agent.detect import EXO_URL, OLLAMA_URL

    node = commands.add_parser("node", help="tools for node operators")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    simulate = node_commands.add_parser("simulate", help="run an Ollama-compatible simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=11434)
    simulate.add_argument("--model", action="append", help="a model to serve (repeatable)")
    simulate.add_argument("--tokens-per-second", type=float, default=None)
    simulate.add_argument("--ttft-ms", type=float, default=0.0)
    simulate.add_argument("--error-rate", type=float, default=0.0)
    simulate.add_argument("--hang", action="store_true", help="never answer chat requests")
    simulate.add_argument(
        "--drop-after-tokens", type=int, default=None, help="cut the connection after N tokens"
    )
    simulate.add_argument("--seed", type=int, default=None)
    simulate.set_defaults(handler=cmd_node_simulate)

    probes = argparse.ArgumentParser(add_help=False)
    probes.add_argument("--ollama-url", default=OLLAMA_URL, help=f"default {OLLAMA_URL}")
    probes.add_argument("--exo-url", default=EXO_URL, help=f"default {EXO_URL}")
    detect = node_commands.add_parser(
        "detect", parents=[probes], help="find local runtimes, models and GPU; print JSON"
    )
    detect.set_defaults(handler=cmd_node_detect)

    registering = argparse.ArgumentParser(add_help=False, parents=[probes])
    registering.add_argument("--platform", required=True, help="the platform's URL")
    key = registering.add_mutually_exclusive_group(required=True)
    key.add_argument("--api-key", help="an API key of yours (visible to other local users)")
    key.add_argument("--api-key-file", help="read the API key from this file ('-': stdin)")
    registering.add_argument("--endpoint", help="the URL the platform reaches the runtime at")
    registering.add_argument("--name", help="the node's name (default: HOSTNAME-RUNTIME)")
    registering.add_argument("--runtime", help="ollama or exo, when both are running")
    registering.add_argument(
        "--price",
        action="append",
        metavar="MODEL=IN/OUT",
        help="USD per 1M input/output tokens (repeatable)",
    )
    registering.add_argument(
        "--default-price", metavar="IN/OUT", help="price for every detected model without a --price"
    )
    register = node_commands.add_parser(
        "register", parents=[registering], help="register this machine's runtime with a platform"
    )
    register.set_defaults(handler=cmd_node_register)
    agent = node_commands.add_parser(
        "agent", parents=[registering], help="keep the registration current, with a status line"
    )
    agent.add_argument("--interval", type=float, default=60.0, help="seconds between checks")
    agent.add_argument("--iterations", type=int, default=None, help="stop after N checks")
    agent.set_defaults(handler=cmd_node_agent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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

    _add_node_commands(commands)
    return parser


def _configuration_problems(error: ValidationError) -> str:
    """Each problem named by its variable: `INFER_LOG_LEVEL: Input should be …`."""
    problems = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["loc"]:
            message = f"INFER_{str(problem['loc'][0]).upper()}: {message}"
        problems.append(message)
    return "; ".join(problems)


def _database_problem(settings: Settings, error: OSError | DBAPIError | Unavailable) -> str:
    """One line naming the database (without its password) and what went wrong."""
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    cause = error.__cause__ if isinstance(error, Unavailable) else error
    reason = cause.orig if isinstance(cause, DBAPIError) else cause or error
    return f"cannot use the database {where}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace, Settings], None] = args.handler
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    settings: Settings | None = None
    try:
        # Operator-side commands run on the operator's machine: no platform settings there,
        # and no development secrets file written into their working directory.
        settings = Settings.model_construct() if args.command == "node" else load_settings()
        handler(args, settings)
    except ValidationError as exc:
        print(f"infer: configuration error: {_configuration_problems(exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"infer: configuration error: {exc}", file=sys.stderr)
        return 2
    except (InferError, CommandError) as exc:
        if isinstance(exc, Unavailable) and settings is not None:
            print(f"infer: {_database_problem(settings, exc)}", file=sys.stderr)
            return 1
        print(f"infer: {exc}", file=sys.stderr)
        return 1
    except (OSError, DBAPIError) as exc:
        if args.command == "node":
            raise
        problem = exc if settings is None else _database_problem(settings, exc)
        print(f"infer: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
