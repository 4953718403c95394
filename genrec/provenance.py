"""Where and when a figure was measured: commit, device, date and machine load, for run records and benchmarks.

Every recorded speed or quality figure carries these (RESULTS.md), so they are computed in one place.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any


def git_commit() -> str:
    """Short hash of the genrec checkout, ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    where = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if status else commit or "unknown"


def device_name(device: Any = None, *, world_size: int = 1) -> str:
    """The accelerator, e.g. ``NVIDIA H100 80GB HBM3`` or ``cpu (2 threads)``; ``xN`` for N processes.

    Args:
        device: the ``torch.device`` (or its name) that ran the work; None for CUDA when available, else the CPU.
        world_size: processes that ran it together (DDP).
    """
    import torch  # here: reading records and tables must not need torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        threads = torch.get_num_threads()
        name = f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    else:
        name = str(device)
    return f"{name} x{world_size}" if world_size > 1 else name


def load_average() -> float | None:
    """The machine's 1-minute load average at the time of the call (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def provenance(device: Any = None, *, world_size: int = 1) -> dict:
    """``commit``, ``device``, ``date`` (ISO), ``load`` (1-minute load average), ``cpus`` and ``command``."""
    return {
        "commit": git_commit(),
        "device": device_name(device, world_size=world_size),
        "date": date.today().isoformat(),
        "load": load_average(),
        "cpus": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
