"""The tunnel bench runs end to end: direct, tunnel and hop rows, slow streams, exact books.

Runs bench/tunnel.py --quick (real `infer serve` processes on one SQLite file, three
simulators, two agents' TunnelClients in processes of their own). It takes about a
minute of both cores, so it runs only with INFER_BENCH_SMOKE=1, as the market bench does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    os.environ.get("INFER_BENCH_SMOKE") != "1",
    reason="the bench smoke run needs INFER_BENCH_SMOKE=1",
)


def test_the_tunnel_bench_measures_every_path_and_bills_exactly(tmp_path: Path) -> None:
    out = tmp_path / "tunnel.json"
    done = subprocess.run(
        [sys.executable, "bench/tunnel.py", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "billing: exact" in done.stdout
    rows = json.loads(out.read_text())
    paths = {(row["path"], row["mode"], row["concurrency"]) for row in rows}
    for path in ("direct", "tunnel", "tunnel via hop"):
        for mode in ("whole", "stream"):
            assert {(path, mode, 1), (path, mode, 32)} <= paths
    assert {row["concurrency"] for row in rows if row["path"] == "slow streams"} == {16, 32}
    for row in rows:
        assert row["requests"] > 0
        assert row["failed"] == 0
        assert row["p50_ms"] > 0
