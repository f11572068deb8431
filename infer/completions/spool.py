"""Settlements the database could not take before shutdown: kept on disk, written at the next start.

One JSON line per settlement, in a file of its own per shutdown (mode 0600: request ids
and amounts are nobody else's business). At start each file is claimed by renaming it,
so of several workers sharing the folder exactly one replays it; a settlement written
twice is refused by its request id, so a replay can never charge again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import orjson

from infer.billing.settlement import Settlement, Usage
from infer.models import UsageStatus

log = logging.getLogger(__name__)

_PENDING = "unsettled-*.jsonl"


def save(directory: Path, items: Sequence[Settlement]) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"unsettled-{uuid.uuid4().hex}.jsonl"
    # default=str: ids read from PostgreSQL are asyncpg's own UUID type.
    lines = b"".join(orjson.dumps(dataclasses.asdict(item), default=str) + b"\n" for item in items)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def claim(directory: Path) -> list[tuple[Path, list[Settlement], bool]]:
    """Take every saved file for this process (renamed, so no other takes it) and read it;
    with each, whether every line was a settlement (else the file must be kept).
    """
    claimed = []
    for path in sorted(directory.glob(_PENDING)) if directory.is_dir() else []:
        mine = path.with_suffix(f".claimed-{uuid.uuid4().hex}")
        try:
            path.rename(mine)
        except FileNotFoundError:  # another worker took it first
            continue
        items, whole = [], True
        for number, line in enumerate(mine.read_bytes().splitlines(), 1):
            try:
                items.append(_settlement(orjson.loads(line)))
            except (ValueError, TypeError, KeyError):
                log.error("%s line %d is not a settlement; the file is kept", mine, number)
                whole = False
        claimed.append((mine, items, whole))
    return claimed


def _settlement(data: dict[str, object]) -> Settlement:
    usage = data.get("usage")
    return Settlement(
        hold_id=_uuid(data["hold_id"]),
        buyer_account_id=_uuid(data["buyer_account_id"]),
        operator_account_id=_uuid(data["operator_account_id"]),
        usage=None if usage is None else _usage(usage),  # type: ignore[arg-type]
        budget_key_id=_uuid(data.get("budget_key_id")),
    )


def _usage(data: dict[str, object]) -> Usage:
    ids = ("buyer_id", "api_key_id", "node_id", "operator_id")
    fields = {**data, **{name: _uuid(data[name]) for name in ids}}
    fields["status"] = UsageStatus(str(data["status"]))
    return Usage(**fields)  # type: ignore[arg-type]


def _uuid(value: object) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(str(value))
