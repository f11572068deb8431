"""`infer node agent` (the registration loop and the local console) and `infer node tray`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from infer.cli.errors import CommandError
from infer.cli.node import (
    _connection,
    _detect,
    _quiet_http,
    _registration_options,
    _warn_about,
)
from infer.config import Settings

if TYPE_CHECKING:
    from infer.agent.console.access import Access
    from infer.agent.loop import Agent
    from infer.agent.platform import PlatformClient
    from infer.agent.tunnel import TunnelClient


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
    platform_url, key = _connection(args)
    with PlatformClient(platform_url, key) as platform:
        _warn_about(args, platform.url, options)
        agent = Agent(
            detect=lambda: _detect(args),
            platform=platform,
            options=options,
            open_tunnel=_tunnel_opener(platform_url, key) if options.tunnel else None,
        )
        line = StatusLine(sys.stdout)
        # A service manager stops the agent with SIGTERM: a clean exit, as Ctrl+C is
        # (the console's link file removed, exit status 0). And Ctrl+C stops it even when
        # it was started with SIGINT ignored, as a shell starts background jobs.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with _agent_console(args, agent, platform) as access:
                work = functools.partial(
                    agent.run, line, interval=args.interval, iterations=args.iterations
                )
                _run_agent(args, agent, access, work)
        except KeyboardInterrupt:
            pass  # Ctrl+C is how an operator stops the agent: a clean exit
        finally:
            agent.close()
            line.close()


def _tunnel_opener(platform_url: str, key: str) -> Callable[[str, str], TunnelClient]:
    """Makes the node's tunnel once the agent knows the node's id and its runtime's URL."""
    from infer.agent.tunnel import TunnelClient

    def open_tunnel(node_id: str, runtime_url: str) -> TunnelClient:
        return TunnelClient(
            platform=platform_url, node_id=node_id, node_key=key, runtime_url=runtime_url
        )

    return open_tunnel


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
