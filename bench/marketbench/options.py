"""The command line: the market sizes, the health interval and how long each row runs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DESCRIPTION = "Market scale: the gateway, routing and health checks at 10 to 10,000 nodes."


@dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...]  # registered nodes at each step, increasing
    interval: float  # the platform's health interval (INFER_HEALTH_INTERVAL), seconds
    requests: dict[int, int]  # measured requests per concurrency (fixed counts)
    warmup: int  # requests before each measured row
    repeats: int  # turns the concurrencies take at each size; each keeps its median row
    history: bool  # new nodes come with a week of health history (raw checks, rollups)
    row_seconds: float  # a measured row ends after this long even if its requests are not done
    simulators: int  # endpoints the nodes share
    operators: int
    sweep_limit: float  # seconds a sweep may take before the step goes on without it
    min_probe_seconds: float  # /healthz is probed at least this long from a sweep's start
    plans: int  # routing plans timed per step
    database: str
    monitor: str | None  # INFER_HEALTH_MONITOR for the platform; None: its default
    json_path: Path | None


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(","))
    if not sizes or sizes[0] < 1 or list(sizes) != sorted(set(sizes)):
        raise argparse.ArgumentTypeError("sizes are increasing positive numbers: 10,100,1000")
    return sizes


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: sizes 10,100, a 4 s interval, short rows (about 40 s)",
    )
    parser.add_argument(
        "--sizes", type=_sizes, help="registered nodes per step (10,100,1000,10000)"
    )
    parser.add_argument(
        "--interval", type=float, help="the platform's health interval in seconds (default 60)"
    )
    parser.add_argument("--simulators", type=int, default=2, help="endpoints the nodes share")
    parser.add_argument("--operators", type=int, default=4, help="operators owning the nodes")
    parser.add_argument(
        "--database", default="infer_market_bench", help="PostgreSQL database (recreated)"
    )
    parser.add_argument(
        "--monitor",
        choices=("thread", "process"),
        help="where the platform runs its health monitor (INFER_HEALTH_MONITOR; default: "
        "the platform's default)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="gateway rows per concurrency at each size, taking turns; the median is kept "
        "(default 3; --quick: 1)",
    )
    parser.add_argument(
        "--no-history",
        action="store_true",
        help="add nodes without the week of health history each otherwise brings "
        "(--quick never adds it)",
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    interval = args.interval or (4.0 if quick else 60.0)
    repeats = args.repeats or (1 if quick else 3)
    if interval <= 0 or args.simulators < 1 or args.operators < 1 or repeats < 1:
        parser.error("--interval, --repeats, --simulators and --operators must be positive")
    if not args.database.isidentifier():
        parser.error("--database takes a plain name (letters, digits, _)")
    return Options(
        sizes=args.sizes or ((10, 100) if quick else (10, 100, 1000, 10_000)),
        interval=interval,
        requests={1: 100, 16: 320} if quick else {1: 300, 16: 1600},
        warmup=10 if quick else 20,
        repeats=repeats,
        history=not (quick or args.no_history),
        row_seconds=5.0 if quick else 20.0,
        simulators=args.simulators,
        operators=args.operators,
        sweep_limit=max(1.5 * interval, 20.0),
        min_probe_seconds=1.0 if quick else 3.0,
        plans=200 if quick else 1000,
        database=args.database,
        monitor=args.monitor,
        json_path=args.json_path,
    )
