"""The report: the markdown tables, the billing verdict and the targets."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from .load import Row
from .options import Options

TARGET_ADDED_P50_MS = 2.0  # at concurrency 1
TARGET_RPS = 800.0  # non-streaming, through INFER, at concurrency 32


def label(row: Row, rows: list[Row]) -> str:
    """The row's path, naming its client when the run used more than one."""
    if len({r.client for r in rows}) > 1:
        return f"{row.path} ({row.client})"
    return row.path


def markdown_table(rows: list[Row]) -> str:
    direct = {(r.client, r.mode, r.concurrency): r for r in rows if r.path == "direct"}
    lines = [
        "| path | mode | concurrency | requests | requests/s | p50 ms | p99 ms | TTFB p50 ms "
        "| added p50 ms | throughput INFER/direct |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = direct.get((r.client, r.mode, r.concurrency))
        added = ratio = "—"
        if r.path == "INFER" and base is not None:
            added, ratio = f"{r.p50_ms - base.p50_ms:+.2f}", f"{r.rps / base.rps:.2f}"
        ttfb = "—" if r.ttfb_p50_ms is None else f"{r.ttfb_p50_ms:.2f}"
        lines.append(
            f"| {label(r, rows)} | {r.mode} | {r.concurrency} | {r.requests} | {r.rps:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {ttfb} | {added} | {ratio} |"
        )
    return "\n".join(lines)


def cpu_table(rows: list[Row]) -> str:
    names = list(dict.fromkeys(name for r in rows for name in r.cpu_ms))
    lines = [
        "| path | mode | concurrency | "
        + " | ".join(names)
        + " | total | busy | others | new PG connections |",
        "| --- | --- | ---: | "
        + " | ".join("---:" for _ in names)
        + " | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = " | ".join(f"{r.cpu_ms.get(n, 0.0):.2f}" for n in names)
        lines.append(
            f"| {label(r, rows)} | {r.mode} | {r.concurrency} | {cells} "
            f"| {sum(r.cpu_ms.values()):.2f} | {r.busy:.0%} | {r.others:.0%} | {r.connections} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row], billing_exact: bool) -> tuple[list[str], bool]:
    """The verdict on each target, from rows of one client."""
    by = {(r.path, r.mode, r.concurrency): r for r in rows}
    lines, met = [], True
    for mode in ("whole", "stream"):
        infer, direct = by.get(("INFER", mode, 1)), by.get(("direct", mode, 1))
        if infer and direct:
            added = infer.p50_ms - direct.p50_ms
            ok = added <= TARGET_ADDED_P50_MS
            met &= ok
            lines.append(
                f"- added p50 latency at concurrency 1 ({mode}): {added:.2f} ms "
                f"(target ≤ {TARGET_ADDED_P50_MS:g} ms): {'MET' if ok else 'NOT MET'}"
            )
    infer32 = by.get(("INFER", "whole", 32))
    if infer32:
        ok = infer32.rps >= TARGET_RPS and billing_exact
        met &= ok
        lines.append(
            f"- non-streaming requests/s through INFER at concurrency 32: {infer32.rps:.0f} "
            f"(target ≥ {TARGET_RPS:g}, with exact billing): {'MET' if ok else 'NOT MET'}"
        )
        per_request = infer32.cpu_ms["platform"]
        lines.append(
            f"- the platform process used {per_request:.2f} CPU ms per request there: one "
            f"process can serve at most {1000 / per_request:.0f} requests/s on a whole core"
        )
    return lines, met


def progress(row: Row, several_clients: bool = False) -> str:
    client = f"  [{row.client}]" if several_clients else ""
    return (
        f"  {row.path:6} {row.mode:6} c={row.concurrency:<3} {row.rps:7.0f} req/s  "
        f"p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms  (others busy {row.others:.0%})"
        f"{client}"
    )


def revision() -> str:
    """The commit measured, marked when the work tree differs from it."""
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "infer"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"{commit}{' + uncommitted changes in infer/' if dirty else ''}"


def report(options: Options, rows: list[Row], billing: str, profile: str | None) -> int:
    """Print the tables, the billing verdict and the targets; 0 when every target is met."""
    backend = "SQLite" if options.sqlite else "PostgreSQL"
    clients = " and ".join(
        f"{name} (one shared AsyncClient)" if name == "httpx" and options.shared_client else name
        for name in options.clients
    )
    print(
        f"\n### Gateway overhead ({backend}{' + Redis' if options.redis else ''}, "
        f"{options.workers} platform process{'es' if options.workers > 1 else ''}, "
        f"runtime {options.runtime}, {os.cpu_count()} cores, {options.seconds:g} s per row "
        f"after {options.warmup} warm-up requests, load generator {clients}; {revision()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')})\n"
    )
    print(markdown_table(rows))
    print("\nCPU milliseconds per request, by process (busy/others: share of all cores):\n")
    print(cpu_table(rows))
    print(f"\n{billing}")
    primary = [r for r in rows if r.client == options.clients[0]]
    lines, met = targets(primary, billing_exact=True)  # verify_billing raised otherwise
    which = f" (the {options.clients[0]} client's rows)" if len(options.clients) > 1 else ""
    print(f"\nTargets{which}:\n" + "\n".join(lines))
    if profile:
        most = max(options.concurrency)
        print(f"\n### Where the platform's CPU goes (non-streaming, concurrency {most})\n")
        print(profile)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if met else 1
