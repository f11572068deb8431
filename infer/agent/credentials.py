"""What `infer node join` keeps on the box: the platform, the node key, the node's settings.

The file is JSON, readable by its owner only: created with mode 0600 in a directory
created with mode 0700, replaced atomically, and refused when others can read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from infer.errors import BadInput

CONFIG_ENV = "INFER_NODE_CONFIG"
FILE_NAME = "node.json"
MAX_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """The platform URL, the node-scoped key and what the node was registered as."""

    platform: str
    api_key: str
    key_id: str | None = None
    node_ids: tuple[str, ...] = ()
    name: str | None = None
    runtime: str | None = None
    endpoint: str | None = None
    tunnel: bool = False  # joined with --tunnel: the agent connects out

    def with_node(self, node_id: str) -> NodeCredentials:
        """The same, knowing one more registered node."""
        if node_id in self.node_ids:
            return self
        return replace(self, node_ids=(*self.node_ids, node_id))

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"node_ids": list(self.node_ids)}

    @classmethod
    def from_json(cls, data: object, *, path: Path) -> NodeCredentials:
        if not isinstance(data, dict):
            raise BadInput(f"{path} is not a node configuration (expected a JSON object)")
        platform, key = data.get("platform"), data.get("api_key")
        if not isinstance(platform, str) or not isinstance(key, str) or not key:
            raise BadInput(f"{path} has no platform and api_key; run `infer node join` again")
        node_ids = data.get("node_ids")
        return cls(
            platform=platform,
            api_key=key,
            key_id=_text(data.get("key_id")),
            node_ids=tuple(str(i) for i in node_ids) if isinstance(node_ids, list) else (),
            name=_text(data.get("name")),
            runtime=_text(data.get("runtime")),
            endpoint=_text(data.get("endpoint")),
            tunnel=data.get("tunnel") is True,
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class ConfigLocation:
    """Where the node configuration lives: --config, else INFER_NODE_CONFIG, else per OS."""

    path: Path
    explicit: bool = field(default=False)

    @classmethod
    def resolve(
        cls,
        option: str | None,
        *,
        environ: Mapping[str, str] = os.environ,
        platform: str = sys.platform,
    ) -> ConfigLocation:
        if option:
            return cls(Path(option).expanduser(), explicit=True)
        if environ.get(CONFIG_ENV):
            return cls(Path(environ[CONFIG_ENV]).expanduser(), explicit=True)
        return cls(default_path(environ=environ, platform=platform))


def default_path(*, environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    """~/.config/infer/node.json ($XDG_CONFIG_HOME), or Application Support on macOS."""
    home = Path(environ.get("HOME") or Path.home())
    if platform == "darwin":
        return home / "Library" / "Application Support" / "infer" / FILE_NAME
    xdg = environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
    return base / "infer" / FILE_NAME


def load(path: Path) -> NodeCredentials | None:
    """The stored configuration; None if there is none; BadInput if it is unsafe or broken."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(f"{path} is not a regular file")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BadInput(
                f"{path} holds a key but other users can read it "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        raw = handle.read(MAX_SIZE + 1)
    if len(raw) > MAX_SIZE:
        raise BadInput(f"{path} is too large to be a node configuration")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not valid JSON; fix it or run `infer node join` again") from exc
    return NodeCredentials.from_json(data, path=path)


def check_writable(path: Path) -> None:
    """BadInput unless `save` can write at `path`: checked before an enrolment code is spent,
    whose key would otherwise be shown to nobody and kept nowhere."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".node-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(temporary)


def save(path: Path, credentials: NodeCredentials) -> None:
    """Writes the configuration atomically; the key is never readable by other users."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".node-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}") from exc
    # mkstemp creates the file with mode 0600 already: the key is never exposed, not even briefly.
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(credentials.to_json(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise BadInput(f"cannot write {path}: {exc.strerror}") from exc
