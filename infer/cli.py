"""The `infer` command: serve, migrate, grant credits, and the operator's node tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
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

MONITOR_NICENESS = 10  # `infer serve`'s monitor process yields the CPU to the requests

if TYPE_CHECKING:
    from pathlib import Path

    from infer.agent.console.access import Access
    from infer.agent.credentials import NodeCredentials
    from infer.agent.detect import Detection
    from infer.agent.loop import Agent
    from infer.agent.platform import PlatformClient
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


def _given_key(args: argparse.Namespace) -> tuple[str, str] | None:
    """The key named on the command line or in INFER_API_KEY, and where it came from."""
    if getattr(args, "api_key", None):
        return str(args.api_key), "--api-key"
    if getattr(args, "api_key_file", None) is not None:
        try:
            if args.api_key_file == "-":
                return sys.stdin.readline().strip(), "stdin"
            with open(args.api_key_file) as handle:
                return handle.readline().strip(), args.api_key_file
        except OSError as exc:
            raise CommandError(f"cannot read {args.api_key_file}: {exc.strerror}") from exc
    if os.environ.get("INFER_API_KEY"):
        return os.environ["INFER_API_KEY"], "INFER_API_KEY"
    return None


def _stored(args: argparse.Namespace) -> tuple[Path, NodeCredentials | None]:
    """Where the node configuration is (--config, INFER_NODE_CONFIG, per OS) and what it holds."""
    from infer.agent import credentials

    path = credentials.ConfigLocation.resolve(getattr(args, "config", None)).path
    return path, credentials.load(path)


def _same_platform(one: str, other: str) -> bool:
    from infer.agent.platform import graphql_url

    return graphql_url(one) == graphql_url(other)


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    """The platform and key: --platform and --api-key(-file) or INFER_API_KEY, else the stored
    ones (`infer node join`). Fills in `args.platform` when it was not given."""
    platform, key, _ = _resolve(args)
    args.platform = platform
    return platform, key


def _resolve(args: argparse.Namespace) -> tuple[str, str, str]:
    """The platform, the key and where the key came from. A stored key only ever goes to
    the platform it came from."""
    given = _given_key(args)
    path, stored = (None, None) if given and args.platform else _stored(args)
    platform = args.platform or (stored.platform if stored else None)
    if platform is None:
        raise CommandError(
            f"no --platform and no node configuration at {path}: run the "
            "`infer node join --platform URL --code CODE` line the dashboard shows"
        )
    if given is not None:
        return platform, *given
    if stored is not None and _same_platform(stored.platform, platform):
        return platform, stored.api_key, str(path)
    if stored is not None:
        raise CommandError(
            f"the key in {path} is for {stored.platform}, not {platform}; "
            "pass --api-key-file for that platform"
        )
    raise CommandError(
        "no API key: pass --api-key-file, set INFER_API_KEY, or run `infer node join`"
    )


def _detect(args: argparse.Namespace) -> Detection:
    from infer.agent.detect import detect

    return detect(
        ollama_url=args.ollama_url,
        exo_url=args.exo_url,
        llamacpp_url=args.llamacpp_url,
        vllm_url=args.vllm_url,
        lmstudio_url=args.lmstudio_url,
    )


def _quiet_http() -> None:
    # httpx logs every request at INFO: noise for an operator, and it would break the live line.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _warn_about(
    args: argparse.Namespace, graphql_url: str, options: RegistrationOptions | None = None
) -> None:
    from infer.agent.platform import is_plaintext

    if is_plaintext(graphql_url):
        print(
            f"infer: warning: {graphql_url} is plain http; the API key travels unencrypted",
            file=sys.stderr,
        )
    if (options.endpoint if options is not None else args.endpoint) is None:
        print(
            "infer: note: without --endpoint, the runtime's local address is registered; "
            "the platform must be able to reach it",
            file=sys.stderr,
        )


def cmd_node_detect(args: argparse.Namespace, settings: Settings) -> None:
    import json

    _quiet_http()
    print(json.dumps(_detect(args).to_json(), indent=2))


def _registration_options(args: argparse.Namespace) -> RegistrationOptions:
    from infer.agent.register import RegistrationOptions

    # What `join` stored fills in what is not given, so that `infer node agent` needs nothing.
    _, stored = _stored(args)
    if stored is not None and args.platform and not _same_platform(stored.platform, args.platform):
        stored = None
    return RegistrationOptions.parse(
        name=args.name or (stored.name if stored else None),
        runtime=args.runtime or (stored.runtime if stored else None),
        endpoint=args.endpoint or (stored.endpoint if stored else None),
        prices=args.price or (),
        default_price=args.default_price,
    )


def cmd_node_register(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent import credentials
    from infer.agent.platform import PlatformClient
    from infer.agent.register import build_registration

    options = _registration_options(args)
    _quiet_http()
    with PlatformClient(*_connection(args)) as platform:
        _warn_about(args, platform.url, options)
        registration = build_registration(_detect(args), options)
        node = platform.register_node(registration)
    path, stored = _stored(args)
    if stored is not None and _same_platform(stored.platform, args.platform):
        credentials.save(path, stored.with_node(node.id))  # for `infer node status`
    reason = f" ({node.status_reason})" if node.status_reason else ""
    print(
        f"registered {registration.runtime} node '{registration.name}' at "
        f"{registration.endpoint} (id {node.id}): {node.status}{reason}"
    )
    print(f"models: {', '.join(registration.models) or 'none yet'}")


def cmd_node_agent(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent.loop import Agent, StatusLine
    from infer.agent.platform import PlatformClient

    if args.interval <= 0 or (args.iterations is not None and args.iterations < 1):
        raise CommandError("--interval and --iterations must be positive")
    if not 0 <= args.console_port <= 65535:
        raise CommandError("--console-port is 0 (any free port) to 65535")
    if args.tray and args.no_console:
        raise CommandError("--tray shows the console's status: it cannot go with --no-console")
    options = _registration_options(args)
    _quiet_http()
    with PlatformClient(*_connection(args)) as platform:
        _warn_about(args, platform.url, options)
        agent = Agent(
            detect=lambda: _detect(args),
            platform=platform,
            options=options,
        )
        line = StatusLine(sys.stdout)
        try:
            with _agent_console(args, agent, platform) as access:
                work = functools.partial(
                    agent.run, line, interval=args.interval, iterations=args.iterations
                )
                _run_agent(args, agent, access, work)
        except KeyboardInterrupt:
            pass  # Ctrl+C is how an operator stops the agent: a clean exit
        finally:
            line.close()


@contextlib.contextmanager
def _agent_console(
    args: argparse.Namespace, agent: Agent, platform: PlatformClient
) -> Iterator[Access | None]:
    """The local console while the agent runs (None with --no-console); its link printed."""
    from infer.agent.console.run import keep_log, run_console
    from infer.agent.console.server import DEFAULT_PORT, console_file
    from infer.agent.credentials import ConfigLocation

    logbook = keep_log()
    if args.no_console:
        yield None
        return
    address_file = console_file(ConfigLocation.resolve(getattr(args, "config", None)).path)
    with run_console(
        agent,
        platform,
        platform_url=args.platform,
        port=args.console_port,
        logbook=logbook,
        address_file=address_file,
    ) as access:
        if args.console_port == DEFAULT_PORT and access.port != DEFAULT_PORT:
            print(
                f"infer: note: port {DEFAULT_PORT} is taken; the console uses {access.port}",
                file=sys.stderr,
            )
        if sys.stdout.isatty():
            print(f"infer: console at {access.url_with_token}", file=sys.stderr)
            if not args.no_browser:
                _open_browser(access.url_with_token)
        else:  # a service's log: the link without its token, which stays in the 0600 file
            print(
                f"infer: console at {access.url} (its link is in {address_file})", file=sys.stderr
            )
        yield access


def _open_browser(url: str) -> None:
    import webbrowser

    # Without a desktop, webbrowser would start a text browser in the agent's terminal.
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return
    with contextlib.suppress(webbrowser.Error):
        webbrowser.open(url)


def _run_agent(args: argparse.Namespace, agent: Any, access: Any, work: Callable[[], None]) -> None:
    """The agent's loop, under the tray icon with --tray when a desktop has one."""
    if not args.tray or access is None:
        work()
        return
    from infer.agent.tray import ConsoleClient, Tray, load_pystray, run_beside

    pystray, why = load_pystray()
    if pystray is None:
        print(f"infer: note: no tray icon: {why}; the agent runs without it", file=sys.stderr)
        work()
        return
    client = ConsoleClient(access.url, access.token)
    try:
        tray = Tray(pystray, client, on_quit=agent.stop)
        run_beside(tray, work)
    finally:
        client.close()


def cmd_node_join(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent import credentials
    from infer.agent.join import join
    from infer.agent.platform import PlatformClient, graphql_url

    options = _registration_options_given(args)
    path = credentials.ConfigLocation.resolve(args.config).path
    _quiet_http()
    _warn_about(args, graphql_url(args.platform), options)
    joined = join(
        platform=args.platform,
        code=args.code,
        options=options,
        path=path,
        detect=lambda: _detect(args),
        client=lambda key: PlatformClient(args.platform, key),
        force=args.force,
    )
    registration, node = joined.registration, joined.node
    reason = f" ({node.status_reason})" if node.status_reason else ""
    print(f"joined {joined.stored.platform}; the node key is in {path}")
    print(
        f"registered {registration.server or registration.runtime} node '{registration.name}' "
        f"at {registration.endpoint} (id {node.id}): {node.status}{reason}"
    )
    print(f"models: {', '.join(registration.models) or 'none yet'}")
    print("next: `infer node agent` keeps it current (`infer node service install` runs it)")


def _registration_options_given(args: argparse.Namespace) -> RegistrationOptions:
    from infer.agent.register import RegistrationOptions

    return RegistrationOptions.parse(
        name=args.name,
        runtime=args.runtime,
        endpoint=args.endpoint,
        prices=args.price or (),
        default_price=args.default_price,
    )


def cmd_node_status(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from infer.agent.platform import PlatformClient
    from infer.agent.status import read_nodes

    _quiet_http()
    platform_url, key = _connection(args)
    _, stored = _stored(args)
    node_ids = stored.node_ids if stored and _same_platform(stored.platform, platform_url) else ()
    with PlatformClient(platform_url, key) as platform:
        report = read_nodes(platform, node_ids)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return report.exit_status


def cmd_node_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from infer.agent.doctor import Setup, examine, passed
    from infer.agent.platform import PlatformClient
    from infer.agent.register import parse_runtime
    from infer.errors import BadInput

    _quiet_http()
    path, problem, stored = _config_path(args), None, None
    platform: str | None
    key: str | None
    source: str | None
    try:
        platform, key, source = _resolve(args)
        stored = _stored(args)[1]
    except (CommandError, BadInput) as exc:
        platform = key = source = None
        problem = exc.message if isinstance(exc, BadInput) else None
    mine = stored is not None and platform is not None and _same_platform(stored.platform, platform)
    setup = Setup(
        config_path=path,
        key_source=source,
        config_problem=problem,
        platform=platform,
        node_ids=stored.node_ids if stored is not None and mine else (),
    )
    runtime = args.runtime or (stored.runtime if stored is not None and mine else None)
    checks = examine(
        setup,
        detect=lambda: _detect(args),
        runtime=parse_runtime(runtime) if runtime else None,
        client=(lambda: PlatformClient(platform, key)) if platform and key else None,
    )
    print("\n".join(check.render() for check in checks))
    return 0 if passed(checks) else 1


def _config_path(args: argparse.Namespace) -> Path:
    from infer.agent.credentials import ConfigLocation

    return ConfigLocation.resolve(getattr(args, "config", None)).path


def cmd_node_service_install(args: argparse.Namespace, settings: Settings) -> None:
    from pathlib import Path

    from infer.agent.service import agent_command, install, service_file

    service = service_file(
        home=Path.home(), command=agent_command(), config=_config_path(args).absolute()
    )
    if args.dry_run:
        print(f"# {service.path}")
        print(service.text, end="")
        return
    written = install(service, force=args.force)
    print(f"{'wrote' if written else 'already installed:'} {service.path}")
    print("then:")
    print("\n".join(f"  {step}" for step in service.next_steps))


def cmd_node_tray(args: argparse.Namespace, settings: Settings) -> None:
    from infer.agent.console.server import console_file
    from infer.agent.credentials import ConfigLocation
    from infer.agent.tray import ConsoleClient, Tray, load_pystray

    pystray, why = load_pystray()
    if pystray is None:
        raise CommandError(f"no tray icon: {why}")
    path = console_file(ConfigLocation.resolve(getattr(args, "config", None)).path)
    client = ConsoleClient.from_file(path)
    if client is None:
        raise CommandError(f"no agent console found ({path} is missing): start `infer node agent`")
    try:
        Tray(pystray, client, on_quit=lambda: None).run()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


def _add_node_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from infer.agent.detect import EXO_URL, LLAMACPP_URL, LMSTUDIO_URL, OLLAMA_URL, VLLM_URL

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
    probes.add_argument("--llamacpp-url", default=LLAMACPP_URL, help=f"default {LLAMACPP_URL}")
    probes.add_argument("--vllm-url", default=VLLM_URL, help=f"default {VLLM_URL}")
    probes.add_argument("--lmstudio-url", default=LMSTUDIO_URL, help=f"default {LMSTUDIO_URL}")
    detect = node_commands.add_parser(
        "detect", parents=[probes], help="find local runtimes, models and GPU; print JSON"
    )
    detect.set_defaults(handler=cmd_node_detect)

    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument(
        "--config",
        metavar="PATH",
        help="the node configuration `join` writes (default: $INFER_NODE_CONFIG, else "
        "~/.config/infer/node.json; macOS: ~/Library/Application Support/infer/node.json)",
    )
    connecting = argparse.ArgumentParser(add_help=False, parents=[configured])
    connecting.add_argument("--platform", help="the platform's URL (default: the stored one)")
    key = connecting.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        help="an API key (visible to other local users; default: "
        "$INFER_API_KEY, else the stored node key)",
    )
    key.add_argument("--api-key-file", help="read the API key from this file ('-': stdin)")

    choosing = argparse.ArgumentParser(add_help=False, parents=[probes])
    choosing.add_argument("--endpoint", help="the URL the platform reaches the runtime at")
    choosing.add_argument("--name", help="the node's name (default: HOSTNAME-RUNTIME)")
    choosing.add_argument(
        "--runtime", help="ollama, exo, llama.cpp, vllm, lmstudio or openai, when several run"
    )
    choosing.add_argument(
        "--price",
        action="append",
        metavar="MODEL=IN/OUT",
        help="USD per 1M input/output tokens (repeatable)",
    )
    choosing.add_argument(
        "--default-price", metavar="IN/OUT", help="price for every detected model without a --price"
    )
    registering = argparse.ArgumentParser(add_help=False, parents=[choosing, connecting])
    register = node_commands.add_parser(
        "register", parents=[registering], help="register this machine's runtime with a platform"
    )
    register.set_defaults(handler=cmd_node_register)
    joining = node_commands.add_parser(
        "join",
        parents=[choosing, configured],
        help="exchange an enrolment code for a node key kept on this box, then register",
    )
    joining.add_argument("--platform", required=True, help="the platform's URL")
    joining.add_argument("--code", required=True, help="the enrolment code from the dashboard")
    joining.add_argument(
        "--force", action="store_true", help="replace a node key this box already keeps"
    )
    joining.set_defaults(handler=cmd_node_join)
    status = node_commands.add_parser(
        "status",
        parents=[connecting],
        help="this box's nodes as the platform sees them (exit 0: all online)",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_node_status)
    doctor = node_commands.add_parser(
        "doctor", parents=[probes, connecting], help="check what a node needs (exit 0: all good)"
    )
    doctor.add_argument("--runtime", help="the runtime to check, when several run")
    doctor.add_argument("--endpoint", help=argparse.SUPPRESS)
    doctor.add_argument("--name", help=argparse.SUPPRESS)
    doctor.set_defaults(handler=cmd_node_doctor, price=None, default_price=None)
    service = node_commands.add_parser("service", help="run the agent as a service")
    service_commands = service.add_subparsers(dest="service_command", required=True)
    install = service_commands.add_parser(
        "install",
        parents=[configured],
        help="write a systemd user unit (Linux) or launchd agent (macOS) running the agent",
    )
    install.add_argument("--dry-run", action="store_true", help="print it; write nothing")
    install.add_argument("--force", action="store_true", help="replace a different one")
    install.set_defaults(handler=cmd_node_service_install)
    agent = node_commands.add_parser(
        "agent", parents=[registering], help="keep the registration current, with a status line"
    )
    agent.add_argument("--interval", type=float, default=60.0, help="seconds between checks")
    agent.add_argument("--iterations", type=int, default=None, help="stop after N checks")
    agent.add_argument(
        "--console-port",
        type=int,
        default=52480,
        metavar="PORT",
        help="the local console's port on 127.0.0.1 (default 52480, or a free one if taken; "
        "0: any free port)",
    )
    agent.add_argument("--no-console", action="store_true", help="serve no local console")
    agent.add_argument(
        "--no-browser", action="store_true", help="do not open the console in a browser"
    )
    agent.add_argument(
        "--tray", action="store_true", help="show a tray icon (needs: pip install 'infer[tray]')"
    )
    agent.set_defaults(handler=cmd_node_agent)
    tray = node_commands.add_parser(
        "tray",
        parents=[configured],
        help="a tray icon for the agent running on this machine (infer[tray])",
    )
    tray.set_defaults(handler=cmd_node_tray)


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
    handler: Callable[[argparse.Namespace, Settings], int | None] = args.handler
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    settings: Settings | None = None
    status: int | None = None
    try:
        # Operator-side commands run on the operator's machine: no platform settings there,
        # and no development secrets file written into their working directory.
        settings = Settings.model_construct() if args.command == "node" else load_settings()
        status = handler(args, settings)
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
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
