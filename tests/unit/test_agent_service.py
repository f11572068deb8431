"""The service files `infer node service install` writes: their text, mode and overwrite rule."""

from __future__ import annotations

import configparser
import plistlib
import shlex
import stat
from pathlib import Path

import pytest

from infer.agent.errors import AgentError
from infer.agent.service import (
    ServiceFileExists,
    install,
    launchd_plist,
    service_file,
    systemd_unit,
)

COMMAND = ["/opt/infer venv/bin/infer", "node", "agent"]
CONFIG = Path("/home/op/.config/infer/node.json")


def test_the_systemd_unit_runs_the_agent_and_restarts_it_on_failure() -> None:
    unit = systemd_unit(home=Path("/home/op"), command=COMMAND, config=CONFIG)
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.optionxform = str  # type: ignore[assignment,method-assign]
    parsed.read_string(unit.text)
    service = parsed["Service"]
    assert shlex.split(service["ExecStart"]) == COMMAND
    assert service["Restart"] == "on-failure"
    assert int(service["RestartSec"]) > 0
    assert service["Environment"].startswith('"INFER_NODE_CONFIG=/home/op/.config/infer/node.json"')
    assert parsed["Install"]["WantedBy"] == "default.target"
    assert unit.path == Path("/home/op/.config/systemd/user/infer-node.service")
    assert unit.next_steps[0] == (
        "systemctl --user daemon-reload && systemctl --user enable --now infer-node"
    )
    assert any(step.startswith("loginctl enable-linger") for step in unit.next_steps)


def test_the_launchd_agent_keeps_the_agent_alive_and_logs() -> None:
    agent = launchd_plist(home=Path("/Users/op"), command=COMMAND, config=CONFIG)
    plist = plistlib.loads(agent.text.encode())
    assert plist["ProgramArguments"] == COMMAND
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["EnvironmentVariables"]["INFER_NODE_CONFIG"] == str(CONFIG)
    assert plist["StandardErrorPath"].startswith("/Users/op/Library/Logs/infer/")
    assert agent.path == Path(f"/Users/op/Library/LaunchAgents/{plist['Label']}.plist")


def test_other_systems_get_a_clear_error() -> None:
    with pytest.raises(Exception, match="supports Linux and macOS, not win32"):
        service_file(platform="win32", home=Path("/h"), command=COMMAND, config=CONFIG)


def test_install_writes_once_and_never_replaces_a_different_file_unasked(tmp_path: Path) -> None:
    unit = systemd_unit(home=tmp_path, command=COMMAND, config=CONFIG)
    assert install(unit) is True
    assert stat.S_IMODE(unit.path.stat().st_mode) == 0o644
    assert install(unit) is False  # the same file: nothing to do
    unit.path.write_text("[Service]\nExecStart=/bin/true\n")
    with pytest.raises(ServiceFileExists, match="exists and differs"):
        install(unit)
    assert unit.path.read_text() == "[Service]\nExecStart=/bin/true\n"
    assert install(unit, force=True) is True
    assert unit.path.read_text() == unit.text
    assert sorted(p.name for p in unit.path.parent.iterdir()) == ["infer-node.service"]


def test_a_config_path_with_quotes_stays_one_setting_and_a_line_break_is_refused() -> None:
    odd = Path('/home/op/my "infer" \\ 100%/node.json')
    unit = systemd_unit(home=Path("/home/op"), command=COMMAND, config=odd)
    [line] = [line for line in unit.text.splitlines() if line.startswith("Environment=")]
    # systemd unquotes like a shell (C escapes inside double quotes), then expands %%.
    words = shlex.split(line.removeprefix("Environment="))
    assert words == [f"INFER_NODE_CONFIG={odd}".replace("%", "%%"), "PYTHONUNBUFFERED=1"]
    injected = Path("/home/op/x\nExecStartPre=/bin/sh -c evil\n/node.json")
    with pytest.raises(AgentError, match="line break or control character"):
        systemd_unit(home=Path("/home/op"), command=COMMAND, config=injected)
