"""The report: one table row per market size, the books, and the targets."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from gatewaybench.load import Row
from gatewaybench.report import revision

from .options import Options
from .watch import Sweep

THROUGHPUT_KEPT = 0.8  # of the smallest market's requests/s, at the largest
LATENESS = 1.2  # x the interval: the longest any node may go unchecked
HEALTHZ_P99_MS = 5.0  # during sweeps


@dataclass(frozen=True)
class Step:
    """What one market size measured."""

    nodes: int
    rows: dict[int, Row]  # the gateway, by concurrency
    plan_us: float
    sweep: Sweep
    lateness_s: float  # the longest any node went unchecked after the sweep
    connections_per_s: float  # PostgreSQL sessions opened to the bench database


def _row(step: Step, interval: float) -> str:
    sweep = step.sweep
    took = f"{sweep.seconds:.1f}"
    if sweep.unchecked:
        took = f"> {sweep.seconds:.0f} ({sweep.unchecked} left)"
    gateway = " | ".join(
        f"{row.rps:.0f} | {row.p50_ms:.2f}" for _, row in sorted(step.rows.items())
    )
    per_check = "—" if sweep.cpu_ms_per_check is None else f"{sweep.cpu_ms_per_check:.2f}"
    cpu = step.rows[max(step.rows)].cpu_ms["platform"]
    return (
        f"| {step.nodes:,} | {gateway} | {cpu:.2f} | {step.plan_us:.0f} | {took} "
        f"| {per_check} | {step.lateness_s:.1f} ({step.lateness_s / interval:.2f}x) "
        f"| {sweep.healthz_p99_ms:.2f} | {step.connections_per_s:.1f} |"
    )


def table(steps: list[Step], interval: float) -> str:
    concurrencies = sorted(steps[0].rows)
    gateway = " | ".join(f"c={c} req/s | c={c} p50 ms" for c in concurrencies)
    top = max(concurrencies)
    head = (
        f"| nodes | {gateway} | platform CPU ms/request (c={top}) | plan µs | sweep s "
        "| platform CPU ms/check | worst lateness s (x interval) | /healthz p99 ms (sweep) "
        "| new PG connections/s |"
    )
    rule = "| " + " | ".join(["---:"] * (head.count("|") - 1)) + " |"
    return "\n".join([head, rule, *(_row(step, interval) for step in steps)])


def again_row(nodes: int, rows: dict[int, Row]) -> str:
    gateway = " | ".join(f"{row.rps:.0f} | {row.p50_ms:.2f}" for _, row in sorted(rows.items()))
    cpu = rows[max(rows)].cpu_ms["platform"]
    return f"| {nodes:,} again | {gateway} | {cpu:.2f} | | | | | | |"


def baseline(first: Step, again: dict[int, Row], concurrency: int) -> float:
    """The smallest market's requests/s: the mean of its rows at the run's start and end."""
    measured = [first.rows[concurrency].rps]
    if concurrency in again:
        measured.append(again[concurrency].rps)
    return sum(measured) / len(measured)


def targets(steps: list[Step], again: dict[int, Row], interval: float) -> tuple[list[str], bool]:
    """PASS or FAIL for each target; the largest market against the smallest."""
    first, last = steps[0], steps[-1]
    lines, met = [], True
    both = " (mean of the run's start and end)" if again else ""

    def judge(ok: bool, text: str) -> None:
        nonlocal met
        met &= ok
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {text}")

    for c, row in sorted(last.rows.items()):
        kept = row.rps / baseline(first, again, c)
        judge(
            kept >= THROUGHPUT_KEPT,
            f"gateway at concurrency {c} keeps {kept:.0%} of its {first.nodes:,}-node "
            f"throughput{both} at {last.nodes:,} nodes (target ≥ {THROUGHPUT_KEPT:.0%})",
        )
    late = max(steps, key=lambda step: step.lateness_s)
    judge(
        late.lateness_s <= LATENESS * interval and not any(s.sweep.unchecked for s in steps),
        f"no node unchecked longer than {late.lateness_s:.1f} s (at {late.nodes:,} nodes; "
        f"target ≤ {LATENESS:g} x {interval:g} s = {LATENESS * interval:g} s, every sweep done)",
    )
    slow = max(steps, key=lambda step: step.sweep.healthz_p99_ms)
    judge(
        slow.sweep.healthz_p99_ms < HEALTHZ_P99_MS,
        f"/healthz p99 during sweeps at most {slow.sweep.healthz_p99_ms:.2f} ms "
        f"(at {slow.nodes:,} nodes; target < {HEALTHZ_P99_MS:g} ms)",
    )
    return lines, met


def report(options: Options, steps: list[Step], again: dict[int, Row], books: str) -> int:
    """Print the table, the books and the targets; 0 when every target is met."""
    counts = ", ".join(f"c={c}: {n}" for c, n in options.requests.items())
    print(
        f"\n### Market scale (PostgreSQL + Redis, one platform process, {options.simulators} "
        f"simulators shared by the nodes of {options.operators} operators, health interval "
        f"{options.interval:g} s, {os.cpu_count()} cores; requests per row {counts} after "
        f"{options.warmup} warm-up, median of {options.repeats}; {revision()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')})\n"
    )
    print(table(steps, options.interval))
    if again:
        print(again_row(steps[0].nodes, again))
    print(f"\n{books}")
    lines, met = targets(steps, again, options.interval)
    print("\nTargets (the largest market against the smallest):\n" + "\n".join(lines))
    if options.json_path is not None:
        figures = {
            "steps": [asdict(step) for step in steps],
            "again": {c: asdict(row) for c, row in again.items()},
        }
        options.json_path.write_text(json.dumps(figures, indent=2))
    return 0 if met else 1


def progress(step: Step) -> str:
    rows = "  ".join(
        f"c={c} {row.rps:.0f} req/s p50 {row.p50_ms:.2f} ms" for c, row in sorted(step.rows.items())
    )
    by = step.sweep.cpu_ms_per_check_by
    parties = (
        ""
        if by is None
        else " (CPU ms/check: " + ", ".join(f"{name} {ms:.2f}" for name, ms in by.items()) + ")"
    )
    return (
        f"  {step.nodes:>6,} nodes: sweep {step.sweep.seconds:.1f} s{parties}, lateness "
        f"{step.lateness_s:.1f} s, /healthz p99 {step.sweep.healthz_p99_ms:.2f} ms, "
        f"plan {step.plan_us:.0f} µs, {rows}"
    )


def progress_again(nodes: int, rows: dict[int, Row]) -> str:
    figures = "  ".join(
        f"c={c} {row.rps:.0f} req/s p50 {row.p50_ms:.2f} ms" for c, row in sorted(rows.items())
    )
    return f"  {nodes:>6,} nodes again: {figures}"
