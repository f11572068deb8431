"""Serving the console on 127.0.0.1 from a thread of the agent, and the file that finds it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import uvicorn
from starlette.types import ASGIApp

from infer.agent.console.access import Access
from infer.errors import BadInput

HOST = "127.0.0.1"  # never another interface: the console steers the node
DEFAULT_PORT = 52480
FILE_NAME = "console.json"
STARTUP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ConsoleAddress:
    """What the console file holds: where the console is, its token, the agent's pid."""

    url: str
    token: str
    pid: int

    @property
    def url_with_token(self) -> str:
        return f"{self.url}?{urlencode({'token': self.token})}"


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port; the default port gives way to a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        if port != DEFAULT_PORT:
            sock.close()
            raise BadInput(
                f"cannot serve the console on {HOST}:{port} ({exc.strerror}); "
                "pick another --console-port, or 0 for any free one",
                param="console-port",
            ) from exc
        sock.bind((HOST, 0))  # another agent (or program) has the default port
    return sock


@contextlib.contextmanager
def serve(app: ASGIApp, sock: socket.socket) -> Iterator[None]:
    """Serves the ASGI app on the bound socket in a daemon thread until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",  # no start and stop lines across the agent's status line
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            server_header=False,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="console", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise BadInput("the console did not start")
            time.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def console_file(config: Path) -> Path:
    """Beside the node configuration (node.json)."""
    return config.parent / FILE_NAME


def write_address(path: Path, access: Access) -> None:
    """Writes the console's URL and token, readable by this user only, atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".console-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"url": access.url, "token": access.token, "pid": os.getpid()}, handle)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_address(path: Path) -> ConsoleAddress | None:
    """The console an agent on this machine serves, or None if there is no readable file."""
    try:
        data = json.loads(path.read_text())
        return ConsoleAddress(url=str(data["url"]), token=str(data["token"]), pid=int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_address(path: Path) -> None:
    """Removes the file if it is still this process's (another agent may have replaced it)."""
    found = read_address(path)
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()
