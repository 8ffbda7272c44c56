"""Versions and machine facts recorded beside every result, so that numbers can be compared honestly."""

from __future__ import annotations

import platform

import numpy
import torch

from pfadseg.version import __version__


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def environment() -> dict[str, object]:
    """Versions of pfadseg, torch, NumPy and Python; CPU, threads and GPU."""
    return {
        "versions": {"pfadseg": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version()},
        "machine": {"cpu": cpu_name(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
