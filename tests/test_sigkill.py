"""A platform killed with SIGKILL under load leaves few delivered answers uncharged, none lost.

Runs bench/sigkill.py (real `infer serve` and `infer node simulate` processes on a
PostgreSQL database of its own) in a short configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REQUIRE_SERVICES, _services_reachable

from infer.completions.completion import MAX_SETTLEMENT_BACKLOG

ROOT = Path(__file__).resolve().parents[1]
SETTLEMENT_BATCH = 128  # the most settlements one write carries


def test_a_killed_platform_leaves_uncharged_only_the_settlements_in_flight(
    tmp_path: Path,
) -> None:
    problem = _services_reachable()
    if problem:
        if REQUIRE_SERVICES:
            pytest.fail(problem)
        pytest.skip(problem)
    out = tmp_path / "sigkill.json"
    done = subprocess.run(
        [sys.executable, "bench/sigkill.py", "--kill-after", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(out.read_text())
    assert result["whole"] > 0
    assert result["streamed"] > 0
    # Answers that got out before their settlement was written: at most the queue an
    # answer does not wait behind, and the batch being written.
    assert result["uncharged"] <= MAX_SETTLEMENT_BACKLOG + SETTLEMENT_BATCH, done.stdout
    assert result["problems"] == [], done.stdout
    assert done.returncode == 0
