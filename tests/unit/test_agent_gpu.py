"""GPU detection from captured command output, with the command runner replaced."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import pytest

from infer.agent.gpu import (
    APPLE_CPU,
    APPLE_DISPLAYS,
    APPLE_MEMORY,
    MIB,
    NVIDIA_SMI,
    ROCM_SMI,
    CommandFailed,
    GpuDevice,
    GpuInfo,
    Runner,
    detect_gpu,
    parse_meminfo,
    parse_nvidia_smi,
    parse_rocm_smi,
    parse_system_profiler,
    run_command,
)

# nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits
NVIDIA_TWO_GPUS = (
    "NVIDIA GeForce RTX 4090, 24564, 550.54.14\nNVIDIA A100-SXM4-80GB, 81920, 550.54.14\n"
)
NVIDIA_NA = "NVIDIA GeForce GTX 1080, [N/A], [N/A]\n"

# rocm-smi --showproductname --showmeminfo vram --json (rocm_smi.py's formatJson shape)
ROCM = json.dumps(
    {
        "card1": {
            "Card series": "Radeon RX 7900 XTX",
            "Card model": "0x5304",
            "Card vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
            "Card SKU": "EXT1234",
            "VRAM Total Memory (B)": "25753026560",
            "VRAM Total Used Memory (B)": "1073741824",
        },
        "card0": {
            "Card Series": "AMD Instinct MI210",
            "VRAM Total Memory (B)": "68702699520",
            "VRAM Total Used Memory (B)": "10747904",
        },
        "system": {"Driver version": "6.7.0"},
    }
)

# system_profiler SPDisplaysDataType -json on an M2 Pro (display details trimmed)
APPLE_PROFILE = json.dumps(
    {
        "SPDisplaysDataType": [
            {
                "_name": "Apple M2 Pro",
                "spdisplays_mtlgpufamilysupport": "spdisplays_metal3",
                "spdisplays_ndrvs": [{"_name": "Color LCD", "spdisplays_main": "spdisplays_yes"}],
                "spdisplays_vendor": "sppci_vendor_Apple",
                "sppci_bus": "spdisplays_builtin",
                "sppci_cores": "19",
                "sppci_device_type": "spdisplays_gpu",
                "sppci_model": "Apple M2 Pro",
            }
        ]
    }
)

MEMINFO = "MemTotal:       32779436 kB\nMemFree:         1234567 kB\nMemAvailable:   20000000 kB\n"


def runner(outputs: dict[tuple[str, ...], str]) -> Runner:
    """A command runner answering from `outputs`; any other command is missing."""

    def run(argv: Sequence[str]) -> str:
        try:
            return outputs[tuple(argv)]
        except KeyError:
            raise CommandFailed(f"{argv[0]}: not found") from None

    return run


def test_nvidia_smi_lines_become_devices_with_bytes_and_driver() -> None:
    devices = parse_nvidia_smi(NVIDIA_TWO_GPUS)
    assert devices == (
        GpuDevice("NVIDIA GeForce RTX 4090", 24564 * MIB, "550.54.14"),
        GpuDevice("NVIDIA A100-SXM4-80GB", 81920 * MIB, "550.54.14"),
    )


def test_nvidia_smi_unknown_values_and_garbage_are_tolerated() -> None:
    assert parse_nvidia_smi(NVIDIA_NA) == (GpuDevice("NVIDIA GeForce GTX 1080", None, None),)
    assert parse_nvidia_smi("") == ()
    assert parse_nvidia_smi("No devices were found\n") == ()


def test_rocm_smi_cards_are_read_in_order_and_either_key_case_works() -> None:
    assert parse_rocm_smi(ROCM) == (
        GpuDevice("AMD Instinct MI210", 68702699520),
        GpuDevice("Radeon RX 7900 XTX", 25753026560),
    )


def test_rocm_smi_warnings_before_the_json_are_skipped() -> None:
    warning = "WARNING: AMD GPU device(s) is/are in a low-power state. Check power control\n"
    assert len(parse_rocm_smi(warning + ROCM)) == 2


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"system": {}}', '{"card0": "x"}'])
def test_rocm_smi_without_cards_gives_no_devices(text: str) -> None:
    assert parse_rocm_smi(text) == ()


def test_system_profiler_gives_the_apple_gpu_and_its_cores() -> None:
    assert parse_system_profiler(APPLE_PROFILE) == ("Apple M2 Pro", 19)
    assert parse_system_profiler("{}") is None
    assert parse_system_profiler("garbage") is None


def test_meminfo_total_is_in_bytes() -> None:
    assert parse_meminfo(MEMINFO) == 32779436 * 1024
    assert parse_meminfo("nothing here") is None


def test_nvidia_wins_when_nvidia_smi_answers() -> None:
    info = detect_gpu(runner({NVIDIA_SMI: NVIDIA_TWO_GPUS, ROCM_SMI: ROCM}), platform="linux")
    assert info.vendor == "nvidia"
    assert info.memory_bytes == (24564 + 81920) * MIB
    assert info.to_json()["devices"][0]["name"] == "NVIDIA GeForce RTX 4090"


def test_amd_is_used_when_there_is_no_nvidia_smi() -> None:
    info = detect_gpu(runner({ROCM_SMI: ROCM}), platform="linux")
    assert info.vendor == "amd"
    assert info.memory_bytes == 68702699520 + 25753026560


def test_apple_silicon_has_unified_memory_and_gpu_cores() -> None:
    outputs: dict[tuple[str, ...], str] = {
        APPLE_CPU: "Apple M2 Pro\n",
        APPLE_MEMORY: "34359738368\n",
        APPLE_DISPLAYS: APPLE_PROFILE,
    }
    info = detect_gpu(runner(outputs), platform="darwin")
    assert info == GpuInfo(
        vendor="apple",
        devices=(GpuDevice("Apple M2 Pro", 34359738368, None, 19),),
        memory_bytes=34359738368,
    )


def test_apple_silicon_without_system_profiler_still_names_the_chip() -> None:
    outputs: dict[tuple[str, ...], str] = {APPLE_CPU: "Apple M1\n", APPLE_MEMORY: "17179869184\n"}
    info = detect_gpu(runner(outputs), platform="darwin")
    assert info.devices == (GpuDevice("Apple M1", 17179869184),)


def test_an_intel_mac_falls_back_to_the_cpu() -> None:
    outputs: dict[tuple[str, ...], str] = {APPLE_CPU: "Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz\n"}
    info = detect_gpu(
        runner(outputs),
        platform="darwin",
        cpu_count=lambda: 16,
        memory=lambda: 32 * 1024**3,
    )
    assert info == GpuInfo(vendor="cpu", memory_bytes=32 * 1024**3, cpu_count=16)


def test_no_gpu_tools_at_all_means_cpu_with_cores_and_memory() -> None:
    info = detect_gpu(runner({}), platform="linux", cpu_count=lambda: 8, memory=lambda: 1 << 34)
    assert info.to_json() == {
        "vendor": "cpu",
        "devices": [],
        "memory_bytes": 1 << 34,
        "cpu_count": 8,
    }


def test_run_command_reports_missing_binaries_failures_and_timeouts() -> None:
    with pytest.raises(CommandFailed, match="definitely-not-a-gpu-tool"):
        run_command(["definitely-not-a-gpu-tool-xyz"])
    with pytest.raises(CommandFailed, match="status 3"):
        run_command([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(CommandFailed):
        run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)
    assert run_command([sys.executable, "-c", "print('ok')"]) == "ok\n"


def test_a_tool_that_times_out_means_falling_back_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def expire(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd="nvidia-smi", timeout=10)

    monkeypatch.setattr(subprocess, "run", expire)
    assert detect_gpu(platform="linux", cpu_count=lambda: 2, memory=lambda: 1).vendor == "cpu"
