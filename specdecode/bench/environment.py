"""Where a benchmark ran: machine, CPU features, threads, library versions, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..runtime.machine import cpu_flags, cpu_name, machine_key


def environment() -> dict:
    import transformers

    return {
        "machine": machine_key(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
    }


def source_commit() -> str | None:
    """The git commit of specdecode's source ("+changes" when the work tree differs from it), or None
    outside a git checkout."""
    folder = Path(__file__).resolve().parents[1]  # the package: specdecode/

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=10", "HEAD")
    if commit is None:
        return None
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
