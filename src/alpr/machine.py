"""What this process may use of the machine: within a container, its CPU quota and memory limit
(cgroup v2), not the node's cores and memory, which it sees all the same."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cpus() -> int:
    """The cores this process may use: its affinity, within a container's CPU quota, whole cores."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = (CGROUP / "cpu.max").read_text().split()
        return max(1, min(cores, int(quota) // int(period))) if quota != "max" else cores
    except (OSError, ValueError):
        return cores


def memory_limit() -> int | float:
    """A container's memory limit, in bytes; infinite where there is none."""
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        return math.inf if limit == "max" else int(limit)
    except (OSError, ValueError):
        return math.inf


def fit_torch_threads() -> int:
    """Caps torch's threads at :func:`available_cpus`; returns their number. Torch starts one a core of
    the node: in a pod limited to 2 cores of 96, 48 threads would take turns in the quota, and each
    operation waits for the slowest."""
    import torch

    cpus = available_cpus()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()
