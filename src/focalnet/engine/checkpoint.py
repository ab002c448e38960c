"""Training checkpoints: atomic writes, the latest *valid* one on resume, RNG state capture."""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weights.io import atomic_save

__all__ = ["CheckpointManager", "rng_state", "set_rng_state"]

log = logging.getLogger("focalnet")

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, in a form ``weights_only`` loading accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Writes ``checkpoint-<step>.pt`` files atomically in ``directory`` and keeps the last ``keep``.

    A checkpoint is a dict of plain containers and tensors (loadable with ``weights_only=True``) with a
    ``"complete": True`` marker written last. :meth:`latest` returns the newest one that loads, skipping
    truncated or corrupt files (with a warning), so a crash during a write loses nothing.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.enabled = enabled

    def paths(self) -> list[Path]:
        if not self.directory.exists():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any], step: int) -> Path | None:
        if not self.enabled:
            return None
        path = self.directory / f"checkpoint-{step:09d}.pt"
        atomic_save({**state, "complete": True}, path)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Load one training checkpoint safely; ``ValueError`` if it is corrupt or incomplete."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"checkpoint {path} is corrupt or truncated: {type(e).__name__}: {e}") from e
        if not isinstance(state, dict) or not state.get("complete"):
            raise ValueError(f"checkpoint {path} is incomplete (no 'complete' marker)")
        return state

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, or ``None``."""
        for path in reversed(self.paths()):
            try:
                return path, self.load(path)
            except ValueError as e:
                log.warning("skipping %s", e)
        return None
