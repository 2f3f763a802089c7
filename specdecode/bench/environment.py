"""Where a benchmark ran: machine, CPU features, threads, library versions, date."""

from __future__ import annotations

import datetime
import os
import platform

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
    }
