"""What machine a measurement belongs to: the CPU (or GPU) model, its features, the threads, torch.

Two machines that share a CPU model name can differ in what their kernels use (an AVX2-only and an
AVX-512 BF16 EPYC both say "AMD EPYC"), so the key names the flags too. Every cached measurement
(runtime/calibrate.py) and every benchmark resume is keyed by `machine_key()`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8", "fma")


def specdecode_home() -> Path:
    """Where specdecode keeps what it makes once (zoo models, calibrations, stores):
    `$SPECDECODE_HOME`, else `~/.cache/specdecode`."""
    home = os.environ.get("SPECDECODE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "specdecode"


def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    for line in (_cpuinfo() or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU features that decide matmul speed and rounding here, of those in CPU_FLAGS; where there is
    no /proc/cpuinfo, torch's capability string (e.g. "AVX512")."""
    text = cpuinfo if cpuinfo is not None else _cpuinfo()
    if text is None:
        import torch

        return [torch.backends.cpu.get_cpu_capability().lower()]
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            present = set(value.split())
            return [flag for flag in CPU_FLAGS if flag in present]
    return []


def machine_key() -> str:
    """What makes measurements comparable: the device (the GPU when there is one, else the CPU model and
    its flags), the thread count and the torch version."""
    import torch  # here: `specdecode models list` runs without importing torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"{cpu_name()} [{' '.join(cpu_flags()) or 'no flags of interest'}]"
    return f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}"
