"""The command line: what to measure, and how."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

DESCRIPTION = (
    "Gateway overhead: the runtime direct vs through INFER, on loopback, with exact billing."
)
CLIENTS = ("lean", "httpx")


@dataclass(frozen=True)
class Options:
    sqlite: bool
    redis: bool
    runtime: str
    warmup: int
    seconds: float
    concurrency: tuple[int, ...]
    max_requests: int
    profile: Path | None
    json_path: Path | None
    clients: tuple[str, ...]  # the load generator's HTTP clients; the first one sets targets
    shared_client: bool
    platform_command: str | None
    workers: int


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="1.5 s per row, 50 warm-up requests")
    parser.add_argument(
        "--sqlite", action="store_true", help="bill on SQLite instead of PostgreSQL"
    )
    parser.add_argument(
        "--no-redis", action="store_true", help="in-process limits and router state"
    )
    parser.add_argument(
        "--runtime",
        choices=("openai", "ollama"),
        default="openai",
        help="how INFER talks to the simulator (default: its /v1 API)",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per row (default 5)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per row (default 200)")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="bound per row")
    parser.add_argument("--profile", type=Path, help="also profile INFER with py-spy into FILE")
    parser.add_argument("--json", type=Path, dest="json_path", help="write the rows as JSON")
    parser.add_argument(
        "--client",
        help="the load generator's HTTP client: lean (default; asyncio + httptools), httpx, "
        "or both comma-separated (every row measured with each, back to back)",
    )
    parser.add_argument(
        "--shared-client",
        action="store_true",
        help="one httpx.AsyncClient for all workers (slow at high concurrency; see "
        "HttpxPool); implies --client httpx",
    )
    parser.add_argument(
        "--platform-command",
        metavar="CMD",
        help="start the platform with CMD instead of `python -m infer.cli` "
        "(CMD gets `serve --port P`), to measure a variant",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="platform processes (`infer serve --workers N`; above 1 needs Redis)",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.5 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (50 if args.quick else 200)
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    if seconds <= 0 or warmup < 0 or not concurrency or min(concurrency) < 1:
        parser.error("--seconds, --warmup and --concurrency must be positive")
    default_client = "httpx" if args.shared_client else "lean"
    clients = tuple(dict.fromkeys((args.client or default_client).split(",")))
    if not set(clients) <= set(CLIENTS):
        parser.error(f"--client takes {' or '.join(CLIENTS)}, or both comma-separated")
    if args.workers < 1 or (args.workers > 1 and (args.no_redis or args.sqlite)):
        parser.error("--workers takes 1, or more with Redis (not with --no-redis or --sqlite)")
    if args.shared_client and "httpx" not in clients:
        parser.error("--shared-client is a setting of --client httpx")
    return Options(
        sqlite=args.sqlite,
        redis=not args.no_redis and not args.sqlite,
        runtime=args.runtime,
        warmup=warmup,
        seconds=seconds,
        concurrency=concurrency,
        max_requests=args.max_requests,
        profile=args.profile,
        json_path=args.json_path,
        clients=clients,
        shared_client=args.shared_client,
        platform_command=args.platform_command,
        workers=args.workers,
    )
