"""INFER_LOG_FORMAT=json: one JSON object per line, with the request id, never a secret."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from infer.logs import REQUEST_ID, JsonLines, Redacting

# Well-formed in shape (prefix, length), but no key: the gateway refuses it with 401.
FAKE_KEY = "inf_" + "A1b2C3d4E5" * 4 + "abcdefghi"


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    handler.addFilter(Redacting())
    logger = logging.getLogger("infer.test-json-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def test_a_record_is_one_json_line_with_the_request_id(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    token = REQUEST_ID.set("0123abcd")
    try:
        logger.info("settled %s for %d µ$", "req-1", 42)
    finally:
        REQUEST_ID.reset(token)
    entry = orjson.loads(stream.getvalue().splitlines()[0])
    assert entry["message"] == "settled req-1 for 42 µ$"
    assert entry["request_id"] == "0123abcd"
    assert (entry["level"], entry["logger"]) == ("info", "infer.test-json-logs")


def test_keys_and_bearer_tokens_are_masked(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.warning("refused %s", FAKE_KEY)
    logger.warning("header was Authorization: Bearer s3cr3t-metrics-token")
    try:
        raise ValueError(f"bad key {FAKE_KEY}")
    except ValueError:
        logger.exception("failed")
    text = stream.getvalue()
    assert FAKE_KEY not in text
    assert "s3cr3t-metrics-token" not in text
    assert [orjson.loads(line)["message"] for line in text.splitlines()] == [
        "refused [redacted]",
        "header was Authorization: [redacted]",
        "failed",
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_infer_serve_logs_json_lines_naming_each_request(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        "PATH": os.environ["PATH"],
        "INFER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'infer.db'}",
        "INFER_SECRETS_FILE": str(tmp_path / "secrets.json"),
        "INFER_LOG_FORMAT": "json",
        "INFER_HEALTH_MONITOR": "off",
    }
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "infer.cli", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "not serving after 60 s"
                time.sleep(0.2)
            refused = httpx.get(
                f"{url}/api/v1/models", headers={"Authorization": f"Bearer {FAKE_KEY}"}, timeout=10
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert refused.status_code == 401
    request_id = refused.headers["x-request-id"]
    text = log.read_text()
    entries = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    assert FAKE_KEY not in text
    mine = [entry for entry in entries if entry["request_id"] == request_id]
    assert mine, entries
    assert any("/api/v1/models" in entry["message"] and "401" in entry["message"] for entry in mine)
    started = [entry for entry in entries if "Application startup complete" in entry["message"]]
    assert [entry["request_id"] for entry in started] == [None]
    migrated = [entry for entry in entries if entry["logger"] == "alembic.runtime.migration"]
    assert migrated  # `infer serve` migrates first; those lines are JSON too
