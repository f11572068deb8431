"""The node configuration file: where it lives, private from creation, refused when exposed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from infer.agent.credentials import ConfigLocation, NodeCredentials, default_path, load, save
from infer.errors import BadInput

STORED = NodeCredentials(platform="https://p.example", api_key="inf_secret", node_ids=("3",))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_default_path_follows_xdg_and_macos() -> None:
    assert default_path(environ={"HOME": "/h"}, platform="linux") == Path(
        "/h/.config/infer/node.json"
    )
    assert default_path(environ={"HOME": "/h", "XDG_CONFIG_HOME": "/x"}, platform="linux") == Path(
        "/x/infer/node.json"
    )
    assert default_path(environ={"HOME": "/h"}, platform="darwin") == Path(
        "/h/Library/Application Support/infer/node.json"
    )


def test_the_option_wins_over_the_environment() -> None:
    environ = {"INFER_NODE_CONFIG": "/env/node.json", "HOME": "/h"}
    assert ConfigLocation.resolve("/opt/n.json", environ=environ).path == Path("/opt/n.json")
    assert ConfigLocation.resolve(None, environ=environ).path == Path("/env/node.json")


def test_saved_credentials_are_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "new" / "infer" / "node.json"
    old = os.umask(0)  # even with a permissive umask
    try:
        save(path, STORED)
    finally:
        os.umask(old)
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)
    assert load(path) == STORED
    assert [p.name for p in path.parent.iterdir()] == ["node.json"]  # no temporary left


def test_saving_again_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    save(path, STORED)
    save(path, STORED.with_node("4"))
    assert load(path) == STORED.with_node("4")
    assert STORED.with_node("3") is STORED


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    save(path, STORED)
    path.chmod(0o644)
    with pytest.raises(BadInput, match=r"other users can read it \(mode 0644\); run: chmod 600"):
        load(path)


def test_no_file_is_none_and_a_broken_one_is_a_clear_error(tmp_path: Path) -> None:
    assert load(tmp_path / "missing.json") is None
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    broken.chmod(0o600)
    with pytest.raises(BadInput, match="not valid JSON"):
        load(broken)
    broken.write_text('{"platform": "https://p.example"}')
    with pytest.raises(BadInput, match="run `infer node join` again"):
        load(broken)
