"""CPU threads and data-loader workers that fit the machine.

PyTorch starts as many compute threads as the machine has cores in every process, and a data loader's
workers take cores of their own: on a small CPU the two oversubscribe it and a run goes several times
slower. These helpers give every command the same defaults: the cores this process may use
(``os.sched_getaffinity``, shared among the processes of a torchrun job on this node), workers never
more than those cores, and compute threads = the cores left once the workers have theirs (at least 1).

:func:`keep_freed_memory` stops glibc from returning large freed blocks to the operating system: a
training step or a full-resolution forward allocates gigabytes of activations, and getting each block
fresh from the kernel (zeroed pages, one fault per 4 KiB) cost 20-30 % of a Mask R-CNN training step
on the 2-core reference machine (``docs/performance.md``). The commands that compute call it;
``FOCALNET_MALLOC=system`` keeps the system's behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

import torch

__all__ = ["available_cores", "default_threads", "fit_workers", "keep_freed_memory", "set_threads"]

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


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_allocator_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no ``mmap`` per large block, no trimming), once per
    process; the peak memory stays reserved between steps. Returns whether it applied: not on other C
    libraries or systems, nor with ``FOCALNET_MALLOC=system``. Where a block does not fit the heap,
    glibc still falls back to ``mmap``, so allocations never fail for it."""
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("FOCALNET_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    log.debug("glibc malloc keeps freed memory: %s", _allocator_tuned)
    return _allocator_tuned
