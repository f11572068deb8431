"""Where the platform's CPU goes: py-spy attached during one row, its stacks summarised."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .errors import BenchError


def _short_path(path: str) -> str:
    """`/…/site-packages/httpx/_models.py` → `httpx/_models.py`; likewise stdlib and INFER."""
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/infer/" in path:
        return "infer/" + path.rsplit("/infer/", 1)[1]
    return path


def _frame(frame: str) -> tuple[str, str]:
    """(function, short path without the line) of a py-spy frame `function (path:line)`."""
    function, _, where = frame.rpartition(" (")
    return function, _short_path(where.rstrip(")").rpartition(":")[0])


def _area(path: str) -> str:
    """The library, stdlib module or INFER package a short path belongs to."""
    parts = path.split("/")
    if parts[0] == "infer" and len(parts) > 1:
        return "infer." + parts[1].removesuffix(".py")
    if parts[0] == "sqlalchemy" and len(parts) > 2:
        return f"sqlalchemy.{parts[1]}"
    return parts[0].removesuffix(".py")


# What a request does, by the frames that do it; a stack counts for each step it is in.
# Holds and settlements run in the request's task, or batched in a group-commit task.
STEPS = (
    ("database: holds", ("place_hold (", "place_holds (")),
    ("database: settlements", ("settle (infer/billing/settlement.py)", "settle_many (")),
    ("group-commit tasks (holds, settlements, rate-limit pipelines)", ("GroupCommit._drain (",)),
    ("… commits", ("SessionTransaction.commit (",)),
    ("… pool checkout + pre-ping", ("_ConnectionFairy._checkout", "_async_ping")),
    (
        "upstream call: node client + stream parsing",
        ("Completion.connect (", "Completion.chunks (", "Completion.batches ("),
    ),
    (
        "rate limits: admit (incl. its Redis pipeline)",
        ("admit (infer/keys/limits.py)", "RedisCounters._run ("),
    ),
    ("router state: snapshot/acquire/release", ("RouterState.",)),
    ("routing plan (catalog, scoring)", ("Router.plan (",)),
    ("API key authentication", ("KeyAuthenticator.authenticate (",)),
    ("request body: parse_body (pydantic)", ("parse_body (",)),
    ("response: JSON + middleware sends", ("JSONResponse.", "tracking_send", "send_with_headers")),
    ("any SQLAlchemy / sqlmodel", ("(sqlalchemy/", "(sqlmodel/")),
    ("any asyncpg", ("(asyncpg/",)),
    ("any Redis client", ("(redis/",)),
    ("any httpx / httpcore / h11 / anyio", ("(httpx/", "(httpcore/", "(h11/", "(anyio/")),
)


def summarise_profile(raw: Path, cpu_ms_per_request: float, top: int = 15) -> str:
    """Markdown tables from py-spy's raw (collapsed) output: self and inclusive time."""
    self_area: Counter[str] = Counter()
    self_function: Counter[str] = Counter()
    inclusive_area: Counter[str] = Counter()
    inclusive_infer: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        function, path = frames[-1]
        self_function[f"{function} ({path})"] += count
        self_area[_area(path)] += count
        for area in {_area(path) for _, path in frames}:
            inclusive_area[area] += count
        for name in {f"{f} ({p})" for f, p in frames if p.startswith("infer/")}:
            inclusive_infer[name] += count
        names = [f"{f} ({p})" for f, p in frames]
        for label, patterns in STEPS:
            if any(pattern in name for name in names for pattern in patterns):
                steps[label] += count
    if not total:
        return "(no samples)"

    def table(title: str, counter: Counter[str], limit: int, ordered: bool = False) -> list[str]:
        lines = [f"| {title} | share | CPU ms/request |", "| --- | ---: | ---: |"]
        # What every sample passes through (the server's skeleton) says nothing.
        rows = [(k, counter[k]) for k, _ in STEPS] if ordered else counter.most_common()
        rows = [(name, n) for name, n in rows if n < 0.97 * total][:limit]
        for name, count in rows:
            share = count / total
            lines.append(f"| `{name}` | {share:.1%} | {share * cpu_ms_per_request:.2f} |")
        return lines

    return "\n".join(
        [
            f"{total} samples while the platform held the GIL; "
            f"the platform used {cpu_ms_per_request:.2f} CPU ms per request",
            "",
            *table("step of the request (inclusive)", steps, len(STEPS), ordered=True),
            "",
            *table("self time, by library / INFER package", self_area, top),
            "",
            *table("inclusive time, by library / INFER package", inclusive_area, top),
            "",
            *table("inclusive time, INFER functions", inclusive_infer, top + 10),
            "",
            *table("self time, by function", self_function, top + 10),
        ]
    )


@contextlib.contextmanager
def py_spy(pid: int, output: Path) -> Iterator[None]:
    """Record `pid` with py-spy (raw collapsed stacks into `output`) while the block runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy: pip install py-spy")
    argv = [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    # --gil: only samples of Python actually running (py-spy takes a thread waiting in
    # uvloop's or a thread pool's C code for busy otherwise).
    argv += ["--gil", "--full-filenames", "--subprocesses"]  # the workers of --workers N
    recorder = subprocess.Popen(
        [*argv, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl+C
        _, err = recorder.communicate(timeout=30)
    if not output.exists():
        raise BenchError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
