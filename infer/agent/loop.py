"""`infer node agent`: keep a registration current and show its status on one live line."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Protocol, TextIO

from infer.agent.detect import Detection
from infer.agent.errors import NoRuntime, PlatformError
from infer.agent.platform import RegisteredNode
from infer.agent.register import Registration, RegistrationOptions, build_registration
from infer.errors import InferError

MODELS_SHOWN = 8
LOG = logging.getLogger("infer.agent")
_MARKS = {"online": ("●", "32"), "offline": ("○", "33"), "error": ("✕", "31")}  # ANSI colours


class Registrar(Protocol):
    """Anything that can register a node (the PlatformClient, or a test double)."""

    def register_node(self, registration: Registration) -> RegisteredNode: ...

    def confirm_node(self, node_id: str) -> None: ...


class Tunnel(Protocol):
    """The node's tunnel (infer/agent/tunnel.py's TunnelClient), run beside the rounds."""

    def start(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Status:
    """The agent's state after one round; `synced_at` is the last successful round."""

    state: Literal["online", "offline", "error"]
    detail: str
    synced_at: datetime | None = None

    def render(self, *, color: bool = False) -> str:
        mark, ansi = _MARKS[self.state]
        mark = f"\x1b[{ansi}m{mark}\x1b[0m" if color else mark
        synced = f"  · last sync {self.synced_at:%H:%M:%S}" if self.synced_at else ""
        return f"{mark} {self.state}  {self.detail}{synced}"


class StatusLine:
    """One line rewritten in place on a terminal; elsewhere, one printed line per change."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        width: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.width = width
        self._last: tuple[str, str] | None = None

    def show(self, status: Status) -> None:
        if self.live:
            # Cut to the width: a wrapped line could not be rewritten by the carriage return.
            plain, limit = status.render(), max(self.width() - 1, 20)
            text = plain[:limit] if len(plain) > limit else status.render(color=True)
            self.stream.write(f"\r\x1b[2K{text}")
        elif (status.state, status.detail) != self._last:
            self.stream.write(status.render() + "\n")
        self._last = (status.state, status.detail)
        self.stream.flush()

    def close(self) -> None:
        """Ends the live line so that the shell prompt starts on a fresh one."""
        if self.live and self._last is not None:
            self.stream.write("\n")
            self.stream.flush()


def _now() -> datetime:
    return datetime.now().astimezone()


def describe(registration: Registration, node: RegisteredNode | None) -> str:
    """The models on offer (the first few), and the platform's word if it has doubts."""
    models = list(registration.models[:MODELS_SHOWN])
    if len(registration.models) > MODELS_SHOWN:
        models.append(f"+{len(registration.models) - MODELS_SHOWN} more")
    text = ", ".join(models) or "no models yet"
    # The platform's word at registration; about the tunnel it is stale at once (the
    # tunnel's own state is shown beside it, live).
    if node is not None and node.status_reason and "tunnel" not in node.status_reason:
        text += f"  ({node.status}: {node.status_reason})"
    return text


class Agent:
    """Detects, and registers again whenever what would be registered has changed."""

    def __init__(
        self,
        *,
        detect: Callable[[], Detection],
        platform: Registrar,
        options: RegistrationOptions,
        clock: Callable[[], datetime] = _now,
        open_tunnel: Callable[[str, str], Tunnel] | None = None,
    ) -> None:
        self.detect = detect
        self.platform = platform
        self.options = options
        self.clock = clock
        self.registered: Registration | None = None
        self.node: RegisteredNode | None = None
        self.synced_at: datetime | None = None
        self.registrations = 0
        self.detection: Detection | None = None
        self.status: Status | None = None
        self.stopped = threading.Event()
        # With --tunnel: (node id, runtime URL) → a started tunnel, once the node has an id.
        self.open_tunnel = open_tunnel
        self.tunnel: Tunnel | None = None
        self._tunnel_for: tuple[str, str] | None = None
        # The console registers from its own thread: one round at a time.
        self._lock = threading.RLock()

    def step(self) -> Status:
        """One round. Raises on what waiting cannot fix (a refused key, a bad option)."""
        with self._lock:
            status = self._round()
            if self.status is None or (status.state, status.detail) != (
                self.status.state,
                self.status.detail,
            ):
                LOG.log(
                    logging.INFO if status.state == "online" else logging.WARNING,
                    "%s: %s",
                    status.state,
                    status.detail,
                )
            self.status = status
            return status

    def register_with(self, options: RegistrationOptions) -> Status:
        """A round with new options (the console's prices), kept only if not refused."""
        with self._lock:
            before, registered = self.options, self.registered
            self.options, self.registered = options, None
            try:
                return self.step()
            except InferError:
                self.options, self.registered = before, registered
                raise

    def detected(self) -> Detection:
        """The last round's detection, or a fresh one before the first round."""
        if self.detection is None:
            self.detection = self.detect()
        return self.detection

    def stop(self) -> None:
        """Ends `run` at its next pause (the tray's Quit, the console's shutdown)."""
        self.stopped.set()

    def close(self) -> None:
        """Closes the tunnel, if one is open (the agent is exiting)."""
        if self.tunnel is not None:
            self.tunnel.stop()
            self.tunnel, self._tunnel_for = None, None

    def _keep_tunnel(self, registration: Registration) -> str:
        """Opens the tunnel for the registered node (again, if the node or runtime changed)."""
        if self.open_tunnel is None or self.node is None:
            return ""
        wanted = (self.node.id, registration.endpoint)
        if self._tunnel_for != wanted:
            self.close()
            self.tunnel, self._tunnel_for = self.open_tunnel(*wanted), wanted
            self.tunnel.start()
        assert self.tunnel is not None
        return f"  · {self.tunnel.describe()}"

    def _round(self) -> Status:
        try:
            self.detection = self.detect()
            registration = build_registration(self.detection, self.options)
        except NoRuntime as exc:
            return Status("offline", exc.message, self.synced_at)
        if self.options.runtime is None:
            # Stick with the runtime found first, even if another one starts later.
            self.options = replace(
                self.options, runtime=registration.server or registration.runtime
            )
        if registration != self.registered:
            try:
                self.node = self.platform.register_node(registration)
            except PlatformError as exc:
                if not exc.retryable:
                    raise
                return Status("error", exc.message, self.synced_at)
            self.registered = registration
            self.registrations += 1
        elif self.node is not None:
            # Nothing to register: ask after the node all the same, so that a key revoked
            # (or a node deregistered) on the dashboard stops the agent within a round.
            try:
                self.platform.confirm_node(self.node.id)
            except PlatformError as exc:
                if not exc.retryable:
                    raise
                return Status("error", exc.message, self.synced_at)
        self.synced_at = self.clock()
        tunnel = self._keep_tunnel(registration)
        return Status("online", describe(registration, self.node) + tunnel, self.synced_at)

    def run(
        self,
        line: StatusLine,
        *,
        interval: float,
        iterations: int | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        """Rounds every `interval` seconds, forever, `iterations` times, or until stopped."""
        pause = self.stopped.wait if sleep is None else sleep
        done = 0
        while not self.stopped.is_set():
            line.show(self.step())
            done += 1
            if iterations is not None and done >= iterations:
                return
            pause(interval)
