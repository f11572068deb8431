"""Starting the console beside the agent: bind, serve, leave the address for the tray."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from infer.agent.console.access import Access
from infer.agent.console.app import Console, create_console_app
from infer.agent.console.control import NodeControl, NodeSource
from infer.agent.console.logbook import Logbook
from infer.agent.console.server import bind, remove_address, serve, write_address
from infer.agent.loop import LOG, Agent
from infer.web.templates import Templates


def keep_log() -> Logbook:
    """The agent's log goes to the console only: on the terminal it would break the live line."""
    for earlier in [h for h in LOG.handlers if isinstance(h, Logbook)]:
        LOG.removeHandler(earlier)  # an earlier agent in this process (tests run several)
    logbook = Logbook()
    LOG.addHandler(logbook)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    return logbook


@contextlib.contextmanager
def run_console(
    agent: Agent,
    platform: NodeSource,
    *,
    platform_url: str,
    port: int,
    logbook: Logbook,
    address_file: Path | None,
) -> Iterator[Access]:
    """Serves the console while the block runs; the address file is removed after."""
    sock = bind(port)
    access = Access(port=int(sock.getsockname()[1]))
    console = Console(
        agent=agent,
        control=NodeControl(platform),
        logbook=logbook,
        access=access,
        platform_url=platform_url,
        templates=Templates(),
    )
    with serve(create_console_app(console), sock):
        if address_file is not None:
            try:
                write_address(address_file, access)
            except OSError as exc:
                LOG.warning("cannot write %s: %s", address_file, exc.strerror)
                address_file = None
        try:
            yield access
        finally:
            if address_file is not None:
                remove_address(address_file)
