"""What machine timings were measured on: the CPU (or GPU) model, its features, the thread count."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide matmul speed here, of those in CPU_FLAGS."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return [torch.backends.cpu.get_cpu_capability()]
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
            break
    return [flag for flag in CPU_FLAGS if flag in flags]


def machine_key() -> str:
    """What makes timings comparable: the CPU model, or the GPU when there is one, and the thread count."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
    return f"{device}, {torch.get_num_threads()} threads"
