"""GPU detection: nvidia-smi, rocm-smi, Apple Silicon, else the CPU's cores and memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

MIB = 1024 * 1024
NVIDIA_SMI = (
    "nvidia-smi",
    "--query-gpu=name,memory.total,driver_version",
    "--format=csv,noheader,nounits",
)
ROCM_SMI = ("rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json")
APPLE_CPU = ("sysctl", "-n", "machdep.cpu.brand_string")
APPLE_MEMORY = ("sysctl", "-n", "hw.memsize")
APPLE_DISPLAYS = ("system_profiler", "SPDisplaysDataType", "-json")

Vendor = Literal["nvidia", "amd", "apple", "cpu"]
Runner = Callable[[Sequence[str]], str]


class CommandFailed(Exception):
    """A probe command is missing, timed out, or exited non-zero."""


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One accelerator: its name, memory in bytes, driver version and (Apple) core count."""

    name: str
    memory_bytes: int | None = None
    driver: str | None = None
    cores: int | None = None


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What the machine computes with; vendor "cpu" when no GPU was found."""

    vendor: Vendor
    devices: tuple[GpuDevice, ...] = ()
    memory_bytes: int | None = None
    cpu_count: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "devices": [
                {
                    "name": d.name,
                    "memory_bytes": d.memory_bytes,
                    "driver": d.driver,
                    "cores": d.cores,
                }
                for d in self.devices
            ],
            "memory_bytes": self.memory_bytes,
            "cpu_count": self.cpu_count,
        }


def run_command(argv: Sequence[str], *, timeout: float = 10.0) -> str:
    """Runs a probe command and returns its stdout; every failure is CommandFailed."""
    try:
        done = subprocess.run(  # noqa: S603 (fixed argument lists, no shell)
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:  # FileNotFoundError is an OSError
        raise CommandFailed(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise CommandFailed(f"{argv[0]} exited with status {done.returncode}")
    return done.stdout


def _int(text: object) -> int | None:
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def parse_nvidia_smi(text: str) -> tuple[GpuDevice, ...]:
    """Parses `name, memory.total (MiB), driver_version` lines; skips malformed ones."""
    devices = []
    for line in text.splitlines():
        parts = line.rsplit(",", 2)  # a name may hold a comma; the numbers never do
        if len(parts) != 3 or not parts[0].strip():
            continue
        name, memory, driver = (part.strip() for part in parts)
        mib = _int(memory)  # "[N/A]" on some boards
        devices.append(
            GpuDevice(
                name=name,
                memory_bytes=mib * MIB if mib is not None else None,
                driver=None if driver.startswith("[") else driver or None,
            )
        )
    return tuple(devices)


def _field(card: dict[str, Any], name: str) -> str | None:
    """A card's field by name, ignoring case ("Card series" became "Card Series")."""
    for key, value in card.items():
        if key.strip().lower() == name.lower() and isinstance(value, str) and value.strip():
            return value.strip()
    return None


def parse_rocm_smi(text: str) -> tuple[GpuDevice, ...]:
    """Parses `rocm-smi --json`: {"card0": {"Card series": …, "VRAM Total Memory (B)": …}}."""
    # Some versions print warnings (a GPU in a low-power state) before the JSON.
    try:
        data = json.loads(text[text.find("{") : text.rfind("}") + 1])
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    cards = sorted(
        ((int(key[4:]), card) for key, card in data.items() if re.fullmatch(r"card\d+", key)),
        key=lambda item: item[0],
    )
    devices = []
    for _, card in cards:
        if not isinstance(card, dict):
            continue
        name = _field(card, "Card series") or _field(card, "Card model") or "AMD GPU"
        memory = _field(card, "VRAM Total Memory (B)")
        devices.append(GpuDevice(name=name, memory_bytes=_int(memory) if memory else None))
    return tuple(devices)


def parse_system_profiler(text: str) -> tuple[str, int | None] | None:
    """The first Apple GPU's name and core count from `system_profiler … -json`."""
    try:
        displays = json.loads(text).get("SPDisplaysDataType")
    except (ValueError, AttributeError):
        return None
    for gpu in displays if isinstance(displays, list) else []:
        if not isinstance(gpu, dict):
            continue
        name = gpu.get("sppci_model") or gpu.get("_name")
        if isinstance(name, str) and name.startswith("Apple"):
            return name, _int(gpu.get("sppci_cores", ""))
    return None


def parse_meminfo(text: str) -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match[1]) * 1024 if match else None


def total_memory() -> int | None:
    """The machine's memory in bytes: /proc/meminfo, else sysconf; None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            found = parse_meminfo(handle.read())
        if found:
            return found
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _total(devices: Sequence[GpuDevice]) -> int | None:
    sizes = [d.memory_bytes for d in devices if d.memory_bytes is not None]
    return sum(sizes) if sizes else None


def _try(runner: Runner, argv: Sequence[str]) -> str | None:
    try:
        return runner(argv)
    except CommandFailed:
        return None


def _apple(runner: Runner) -> GpuInfo | None:
    brand = (_try(runner, APPLE_CPU) or "").strip()
    if not brand.startswith("Apple"):
        return None  # an Intel Mac: its GPU is of no use to Ollama or Exo
    memory = _int(_try(runner, APPLE_MEMORY) or "")
    name, cores = parse_system_profiler(_try(runner, APPLE_DISPLAYS) or "") or (brand, None)
    # Unified memory: the GPU can use (most of) the machine's memory.
    device = GpuDevice(name=name, memory_bytes=memory, cores=cores)
    return GpuInfo(vendor="apple", devices=(device,), memory_bytes=memory)


def detect_gpu(
    runner: Runner = run_command,
    *,
    platform: str = sys.platform,
    cpu_count: Callable[[], int | None] = os.cpu_count,
    memory: Callable[[], int | None] = total_memory,
) -> GpuInfo:
    """Tries NVIDIA, then AMD, then Apple Silicon; falls back to the CPU."""
    nvidia = parse_nvidia_smi(_try(runner, NVIDIA_SMI) or "")
    if nvidia:
        return GpuInfo(vendor="nvidia", devices=nvidia, memory_bytes=_total(nvidia))
    amd = parse_rocm_smi(_try(runner, ROCM_SMI) or "")
    if amd:
        return GpuInfo(vendor="amd", devices=amd, memory_bytes=_total(amd))
    if platform == "darwin":
        apple = _apple(runner)
        if apple is not None:
            return apple
    return GpuInfo(vendor="cpu", memory_bytes=memory(), cpu_count=cpu_count())
