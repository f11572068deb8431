"""Running the simulator, or any ASGI app, with uvicorn: in the foreground or a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from infer.simulator.app import create_simulator_app
from infer.simulator.models import SimulatorConfig


def run_simulator(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 11434,
    *,
    access_log: bool = False,
) -> None:
    """Serves the simulator in the foreground until interrupted."""
    server_config = uvicorn.Config(
        create_simulator_app(config),
        host=host,
        port=port,
        access_log=access_log,
        timeout_graceful_shutdown=5,  # hung requests must not block Ctrl+C forever
    )
    uvicorn.Server(server_config).run()


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: Literal["on", "off"] = "off",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serves any ASGI app in a background thread; yields its base URL, stops it on exit.

    The socket is bound before the thread starts (port 0 picks a free one), and the URL
    is yielded only once the server accepts connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            log_level=None,
            access_log=False,
            lifespan=lifespan,
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"server-{bound}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server failed to start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {startup_timeout}s")
            time.sleep(0.005)
        yield f"http://[{host}]:{bound}" if family == socket.AF_INET6 else f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()


@contextlib.contextmanager
def serve_simulator_in_thread(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Runs the simulator in a background thread; yields its base URL, stops it on exit."""
    with serve_in_thread(
        create_simulator_app(config), host=host, port=port, startup_timeout=startup_timeout
    ) as url:
        yield url
