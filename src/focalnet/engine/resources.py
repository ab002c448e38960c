"""CPU threads and data-loader workers that fit the machine.

PyTorch starts as many compute threads as the machine has cores in every process, and a data loader's
workers take cores of their own: on a small CPU the two oversubscribe it and a run goes several times
slower. These helpers give every command the same defaults: the cores this process may use
(``os.sched_getaffinity``, shared among the processes of a torchrun job on this node), workers never
more than those cores, and compute threads = the cores left once the workers have theirs (at least 1).
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["available_cores", "default_threads", "fit_workers", "set_threads"]

log = logging.getLogger("focalnet")


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, divided among torchrun's processes on this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    return max(1, cores // max(local_world, 1))


def fit_workers(requested: int | None, default: int = 2) -> int:
    """Data-loader workers: ``requested`` (or ``default``) capped at :func:`available_cores`."""
    n = default if requested is None else requested
    if n < 0:
        raise ValueError(f"the number of data loader workers must be >= 0, got {n}")
    return min(n, available_cores())


def default_threads(workers: int = 0) -> int:
    """Compute threads for a process whose data loader runs ``workers`` worker processes."""
    return max(1, available_cores() - workers)


def set_threads(threads: int | None, workers: int = 0) -> int:
    """Set torch's intra-op threads (``None`` or 0: :func:`default_threads`); returns the number set."""
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    n = threads or default_threads(workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
