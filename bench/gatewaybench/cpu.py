"""CPU accounting from /proc (Linux): what each party of a measurement spent."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import PG_ADMIN_DSN


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its live descendants (`infer serve --workers N`)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return proc_cpu_seconds(pid) + sum(tree_cpu_seconds(int(child)) for child in children)


def processes_matching(comm: str, cmdline_part: str = "") -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != comm:
                continue
            if cmdline_part not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine, every process (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # everything but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process, the load generator (to the µs, not a tick)."""
    return time.process_time()


@dataclass
class CpuMeter:
    """CPU seconds used by each party of a measurement, from /proc (Linux)."""

    platform_pid: int
    simulator_pid: int
    database: str | None  # a PostgreSQL database name: its backends are counted
    redis: bool  # count the local redis-server

    def read(self, *, opening: bool) -> dict[str, float]:
        """CPU seconds so far, by party, when `opening` a measurement or closing it.

        Scanning /proc for PostgreSQL and Redis costs this process about 20 ms on a small
        VM, as much as 0.3 ms per request in a 1.5-s row through INFER. So our own time and
        the machine's are read after the scan when opening and before it when closing: the
        scans stay out of the load generator's figure and out of `others`.
        """
        if opening:
            stores = self.stores()
            own, machine = own_cpu_seconds(), machine_cpu_seconds()
        else:
            own, machine = own_cpu_seconds(), machine_cpu_seconds()
            stores = self.stores()
        usage = {
            "platform": tree_cpu_seconds(self.platform_pid),
            "simulator": proc_cpu_seconds(self.simulator_pid),
            "load generator": own,
            **stores,
        }
        # Other people's work on a shared machine distorts a measurement: show it.
        usage["others"] = machine - sum(usage.values())
        return usage

    def stores(self) -> dict[str, float]:
        """CPU seconds so far of PostgreSQL (the bench database's backends) and Redis."""
        usage = {}
        if self.database:
            backends = processes_matching("postgres", f" {self.database}")
            writers = processes_matching("postgres", "walwriter")
            usage["postgres"] = sum(proc_cpu_seconds(pid) for pid in backends + writers)
        if self.redis:
            servers = processes_matching("redis-server")
            usage["redis"] = sum(proc_cpu_seconds(pid) for pid in servers)
        return usage

    async def sessions(self) -> int:
        """Connections ever opened to the bench database (0 without one); ours go elsewhere."""
        if not self.database:
            return 0
        import asyncpg

        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await connection.execute("SELECT pg_stat_force_next_flush()")
            count = await connection.fetchval(
                "SELECT sessions FROM pg_stat_database WHERE datname = $1", self.database
            )
        finally:
            await connection.close()
        return int(count or 0)
