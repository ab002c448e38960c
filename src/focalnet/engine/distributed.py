"""torch.distributed helpers: torchrun initialisation (NCCL on GPU, gloo on CPU), a resumable sampler."""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from .options import check_device

__all__ = [
    "DistInfo",
    "init_distributed",
    "resolve_device",
    "cleanup_distributed",
    "all_reduce",
    "gather_names",
    "mean_over_processes",
    "ResumableSampler",
    "SeededSamples",
    "barrier",
    "collective_timeout",
    "sample_seed",
]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


TIMEOUT_ENV = "FOCALNET_DDP_TIMEOUT"


def collective_timeout(timeout_s: float | None = None) -> float:
    """Seconds a collective may wait for a hanging rank: ``timeout_s``, else ``$FOCALNET_DDP_TIMEOUT``,
    else 1800 (30 minutes)."""
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV, "")
        try:
            timeout_s = float(raw) if raw else 1800.0
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"the collective timeout must be a positive number of seconds, got {timeout_s}")
    return float(timeout_s)


def resolve_device(name: str | None) -> str:
    """``auto`` (or ``None``) as ``cuda`` when CUDA is available, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N``
    checked (one-line ``ValueError`` for another name, or for CUDA on a machine without it)."""
    name = check_device(name or "auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group.

    ``device``: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N" (one process; under torchrun
    each process takes the GPU of its LOCAL_RANK). Single process: no group.
    ``timeout_s`` (default ``$FOCALNET_DDP_TIMEOUT`` or 30 minutes) bounds how long a collective waits
    for a rank that hangs: the others then fail with an error instead of blocking forever.
    """
    resolved = resolve_device(device)
    use_cuda = resolved.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        index = local
        if ":" in resolved:
            if world > 1:
                raise ValueError(
                    f"device {resolved!r} names one GPU: under torchrun each process uses the GPU of its "
                    "LOCAL_RANK (give --device cuda)"
                )
            index = int(resolved.partition(":")[2])
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        import datetime

        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=collective_timeout(timeout_s)),
        )
    return DistInfo(rank, world, local, dev)


def cleanup_distributed() -> None:
    """Leave the process group. After a run that ended normally the ranks first meet at a barrier: a gloo
    process whose peer tears the group down first can abort at exit ("terminate called without an active
    exception", SIGABRT). While an exception is propagating (a failed rank) there is no barrier, since the
    other ranks may be inside another collective."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) a tensor over ranks in place; a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def gather_names(names: list[str]) -> list[str]:
    """The sorted union of ``names`` over ranks (e.g. the files each rank skipped); sorted in one process."""
    if dist.is_available() and dist.is_initialized():
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, names)
        names = [n for p in parts for n in p]
    return sorted(set(names))


def mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (a new tensor; ``t`` itself in a single process), e.g. the
    number of positives that normalises a loss, as mmdetection's ``reduce_mean``."""
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    return t


class ResumableSampler(Sampler[int]):
    """Deterministic per-epoch shuffling split across ranks (like ``DistributedSampler``) that can
    start part-way through an epoch, so that a resumed run sees exactly the remaining samples."""

    def __init__(
        self,
        length: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if length <= 0:
            raise ValueError("the dataset is empty")
        self.length, self.rank, self.world_size = length, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.per_rank = length // world_size
        else:
            self.per_rank = math.ceil(length / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip this rank's first ``start`` samples of it."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.length, generator=g).tolist()
        else:
            idx = list(range(self.length))
        total = self.per_rank * self.world_size
        if total > len(idx):
            idx += idx[: total - len(idx)]
        idx = idx[:total]
        return idx[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of ``epoch`` in a run of ``seed`` (stable across processes)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededSamples(Dataset):
    """``dataset[i]`` drawn with Python ``random``, NumPy and torch seeded from ``(seed, epoch, i)``.

    Every random augmentation of a sample is then a function of the run's seed, the epoch and the
    sample alone: the same in a resumed run as in an uninterrupted one, with or without worker
    processes, whatever the batch or rank it lands in. The global generators of the calling process
    are restored afterwards (the model's own randomness is not disturbed by data loading).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = sample_seed(self.seed, self.epoch, int(index))
        py, np_state, t_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        try:
            return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
            torch.set_rng_state(t_state)
