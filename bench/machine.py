"""The machine a benchmark ran on, in the words every results file uses."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_torch_machine(cores_note: str = "") -> str:
    """CPU, cores, torch threads and versions, and the GPU where there is one: each results file's machine line."""
    import os

    import torch

    text = (f"{cpu_name()}, {os.cpu_count()} cores{cores_note}, {torch.get_num_threads()} torch threads; "
            f"torch {torch.__version__}, Python {platform.python_version()}")
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    return text
