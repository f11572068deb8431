"""The tray icon (`pip install 'infer[tray]'`): the node's status as a colour, and a menu.

The icon talks to the agent's local console only, with the console's token (never to the
platform): it polls `GET /api/status` and posts `/api/pause` and `/api/resume`.
"""

from __future__ import annotations

import os
import sys
import threading
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from infer.agent.console.server import ConsoleAddress, read_address

POLL_SECONDS = 3.0
TIMEOUT = httpx.Timeout(5.0)
GREEN, AMBER, RED, GREY = "#2e7d32", "#f9a825", "#c62828", "#9e9e9e"
COLOURS = {
    "online": GREEN,
    "degraded": AMBER,
    "paused": AMBER,
    "pending": AMBER,
    "offline": RED,
    "disabled": RED,
}


@dataclass(frozen=True, slots=True)
class TrayStatus:
    """What the console says; `state` "unknown" when the console cannot tell or answer."""

    state: str
    reason: str | None = None
    paused: bool = False

    @property
    def colour(self) -> str:
        return COLOURS.get(self.state, GREY)

    @property
    def title(self) -> str:
        text = f"INFER node: {self.state}"
        return f"{text} ({self.reason})" if self.reason else text


class ConsoleClient:
    """The console's three JSON calls, with its token as a Bearer credential.

    Given the console's link file, a client whose console stopped answering reads the
    file again: an agent restarted (a service, say) serves a new port and token.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        address_file: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.address_file = address_file
        self.transport = transport
        self._connect(ConsoleAddress(url=url, token=token, pid=0))

    @classmethod
    def from_file(cls, path: Path) -> ConsoleClient | None:
        """A client of the console an agent on this machine serves, or None if none does."""
        found = read_address(path)
        return None if found is None else cls(found.url, found.token, address_file=path)

    @property
    def link(self) -> str:
        """The console's address with its token, for a browser."""
        return self.address.url_with_token

    def _connect(self, address: ConsoleAddress) -> None:
        self.address = address
        self._http = httpx.Client(
            base_url=address.url,
            headers={"Authorization": f"Bearer {address.token}"},
            timeout=TIMEOUT,
            transport=self.transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def status(self) -> TrayStatus:
        return self._call("GET", "/api/status")

    def pause(self) -> TrayStatus:
        return self._call("POST", "/api/pause")

    def resume(self) -> TrayStatus:
        return self._call("POST", "/api/resume")

    def _call(self, method: str, path: str) -> TrayStatus:
        status = self._once(method, path)
        if status.state == "unknown" and self._moved():
            status = self._once(method, path)
        return status

    def _moved(self) -> bool:
        """Reconnects if the link file names another console than this one."""
        found = read_address(self.address_file) if self.address_file else None
        if found is None or (found.url, found.token) == (self.address.url, self.address.token):
            return False
        self._http.close()
        self._connect(found)
        return True

    def _once(self, method: str, path: str) -> TrayStatus:
        try:
            response = self._http.request(method, path)
            body: Any = response.json()
        except (httpx.HTTPError, ValueError):
            return TrayStatus("unknown", "the agent's console does not answer")
        if not isinstance(body, dict):
            return TrayStatus("unknown", "the console's answer is not understood")
        if not response.is_success:
            return TrayStatus("unknown", str(body.get("error") or response.status_code))
        reason = body.get("reason")
        return TrayStatus(
            state=str(body.get("state") or "unknown"),
            reason=str(reason) if reason else None,
            paused=body.get("paused") is True,
        )


def load_pystray() -> tuple[ModuleType | None, str | None]:
    """pystray, or None and why not (not installed, or no desktop to show an icon on)."""
    linux = sys.platform.startswith("linux")
    dummy = os.environ.get("PYSTRAY_BACKEND") == "dummy"
    if linux and not dummy and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None, "no desktop (DISPLAY is unset)"
    try:
        import pystray
    except ImportError:
        return None, "pystray is not installed (pip install 'infer[tray]')"
    except Exception as exc:  # pystray picks a backend on import; it raises its own errors
        return None, f"no tray is available ({type(exc).__name__}: {exc})"
    return pystray, None


def image_of(colour: str) -> Any:
    """A round icon of the colour, on a transparent square."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((6, 6, 58, 58), fill=colour, outline="#ffffff", width=3)
    return image


class Tray:
    """The icon and its menu: Open console, Pause, Resume, Quit."""

    def __init__(
        self,
        pystray: ModuleType,
        client: ConsoleClient,
        *,
        on_quit: Callable[[], None],
        open_url: Callable[[str], object] = webbrowser.open,
    ) -> None:
        self.client = client
        self.on_quit = on_quit
        self.open_url = open_url
        self.status = TrayStatus("unknown")
        self._stopped = threading.Event()
        item, menu = pystray.MenuItem, pystray.Menu
        self.icon = pystray.Icon(
            "infer-node",
            image_of(GREY),
            self.status.title,
            menu=menu(
                item("Open console", self._open, default=True),
                item("Pause", self._pause, enabled=lambda _: self.status.state != "paused"),
                item("Resume", self._resume, enabled=lambda _: self.status.paused),
                item("Quit", self._quit),
            ),
        )

    def show(self, status: TrayStatus) -> None:
        """The icon's colour and tooltip follow the status."""
        changed = status.colour != self.status.colour
        self.status = status
        if changed:
            self.icon.icon = image_of(status.colour)
        self.icon.title = status.title
        if self.icon.visible:
            self.icon.update_menu()

    def refresh(self) -> None:
        self.show(self.client.status())

    def run(self) -> None:
        """Shows the icon until Quit (blocking; on the main thread, as macOS requires)."""
        poller = threading.Thread(target=self._poll, name="tray-poll", daemon=True)
        poller.start()
        try:
            self.icon.run()
        finally:
            self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()
        self.icon.stop()

    def _poll(self) -> None:
        while not self._stopped.is_set():
            self.refresh()
            self._stopped.wait(POLL_SECONDS)

    def _open(self, icon: Any = None, item: Any = None) -> None:
        self.open_url(self.client.link)

    def _pause(self, icon: Any = None, item: Any = None) -> None:
        self.show(self.client.pause())

    def _resume(self, icon: Any = None, item: Any = None) -> None:
        self.show(self.client.resume())

    def _quit(self, icon: Any = None, item: Any = None) -> None:
        self.on_quit()
        self.stop()


def run_beside(tray: Tray, work: Callable[[], None]) -> None:
    """Runs `work` (the agent's loop) on a thread while the icon runs on this one.

    Quit stops the icon (and, through `on_quit`, the work); the work ending stops the
    icon; an error of the work is raised here once both are done.
    """
    failures: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the main thread, which reports it
            failures.append(exc)
        finally:
            tray.stop()

    worker = threading.Thread(target=target, name="agent", daemon=True)
    worker.start()
    try:
        tray.run()
    finally:
        tray.on_quit()
        worker.join(timeout=30)
    if failures:
        raise failures[0]
