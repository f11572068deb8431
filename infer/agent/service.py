"""`infer node service install`: the agent as a systemd user unit or a launchd agent (macOS).

The file runs `<this infer> node agent` with the node configuration's path in its
environment, restarts the agent when it fails, and is written (0644: it holds no secret,
the key stays in the configuration file) only if no different file is already there.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from infer.agent.credentials import CONFIG_ENV
from infer.agent.errors import AgentError

UNIT_NAME = "infer-node.service"
LABEL = "com.infer.node"
RESTART_SEC = 10


class ServiceFileExists(AgentError):
    """A different service file is already installed; --force replaces it."""

    code = "SERVICE_EXISTS"


@dataclass(frozen=True, slots=True)
class ServiceFile:
    """The file to install: where, its text, and what to run afterwards to start it."""

    path: Path
    text: str
    next_steps: tuple[str, ...]


def agent_command(executable: str | None = None) -> list[str]:
    """The absolute `infer` this process runs as, with `node agent`."""
    if executable is None:
        argv0 = Path(sys.argv[0])
        executable = str(argv0.resolve()) if argv0.name == "infer" else ""
    if executable:
        return [executable, "node", "agent"]
    # Run as `python -m infer.cli`: the same interpreter, so the same installation.
    return [str(Path(sys.executable).absolute()), "-m", "infer.cli", "node", "agent"]


def _systemd_quote(word: str) -> str:
    # systemd splits ExecStart like a shell, honours double quotes and expands % and $.
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in word for c in " \t'\"\\%$") else escaped


def _one_line(word: str, what: str) -> str:
    # A line break would end the setting and start another one of the path's choosing.
    if any(not ch.isprintable() for ch in word):
        raise AgentError(f"{what} holds a line break or control character: {word!r}")
    return word


def systemd_unit(*, home: Path, command: list[str], config: Path) -> ServiceFile:
    """A systemd user unit: started at log-in (or boot, with lingering), restarted on failure."""
    command = [_one_line(word, "the agent's command") for word in command]
    config_value = (
        _one_line(str(config), "the node configuration's path")
        .replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("%", "%%")
    )
    text = "\n".join(
        [
            "[Unit]",
            "Description=INFER node agent",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={' '.join(_systemd_quote(word) for word in command)}",
            f'Environment="{CONFIG_ENV}={config_value}" PYTHONUNBUFFERED=1',
            "Restart=on-failure",
            f"RestartSec={RESTART_SEC}",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )
    user = os.environ.get("USER") or "$USER"
    return ServiceFile(
        path=home / ".config" / "systemd" / "user" / UNIT_NAME,
        text=text,
        next_steps=(
            "systemctl --user daemon-reload && systemctl --user enable --now infer-node",
            f"loginctl enable-linger {user}   # keep it running when you are logged out",
            "journalctl --user -u infer-node -f   # its log",
        ),
    )


def launchd_plist(*, home: Path, command: list[str], config: Path) -> ServiceFile:
    """A launchd agent: started at log-in, restarted when it exits with a failure."""
    logs = home / "Library" / "Logs" / "infer"
    plist = {
        "Label": LABEL,
        "ProgramArguments": command,
        "EnvironmentVariables": {CONFIG_ENV: str(config), "PYTHONUNBUFFERED": "1"},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_SEC,
        "StandardOutPath": str(logs / "node.log"),
        "StandardErrorPath": str(logs / "node.log"),
    }
    path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    return ServiceFile(
        path=path,
        text=plistlib.dumps(plist).decode(),
        next_steps=(
            f"mkdir -p {shlex.quote(str(logs))}",
            f"launchctl bootstrap gui/$(id -u) {shlex.quote(str(path))}",
            f"tail -f {shlex.quote(str(logs / 'node.log'))}   # its log",
        ),
    )


def service_file(
    *, platform: str = sys.platform, home: Path, command: list[str], config: Path
) -> ServiceFile:
    """The service file for this operating system."""
    if platform == "darwin":
        return launchd_plist(home=home, command=command, config=config)
    if platform.startswith("linux"):
        return systemd_unit(home=home, command=command, config=config)
    raise AgentError(f"`infer node service install` supports Linux and macOS, not {platform}")


def install(service: ServiceFile, *, force: bool = False) -> bool:
    """Writes the file; False if the same one is already there; refuses a different one."""
    try:
        current = service.path.read_text()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise AgentError(f"cannot read {service.path}: {exc.strerror}") from exc
    if current == service.text:
        return False
    if current is not None and not force:
        raise ServiceFileExists(
            f"{service.path} exists and differs; compare with --dry-run, then pass --force"
        )
    temporary = service.path.with_name(f".{service.path.name}.tmp")
    try:
        service.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(service.text)
        os.replace(temporary, service.path)
    except OSError as exc:
        raise AgentError(f"cannot write {service.path}: {exc.strerror}") from exc
    return True
