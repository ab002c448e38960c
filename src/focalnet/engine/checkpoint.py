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
        self._valid: dict[Path, tuple[tuple[int, int], Any]] = {}

    def paths(self) -> list[Path]:
        if not self.directory.exists():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any], step: int) -> Path | None:
        """Write ``checkpoint-<step>.pt`` atomically, then rotate: keep the newest ``keep`` *valid*
        checkpoints of this run (the one just written always), delete invalid (truncated) ones."""
        if not self.enabled:
            return None
        path = self.directory / f"checkpoint-{step:09d}.pt"
        atomic_save({**state, "complete": True}, path)
        self._valid[path] = (_stamp(path), state.get("run_id"))
        self.rotate(keep_path=path, run_id=state.get("run_id"))
        return path

    def _peek(self, path: Path) -> tuple[bool, Any]:
        """(valid, run_id) of a checkpoint file, read memory-mapped (cached by size and mtime)."""
        stamp = _stamp(path)
        cached = self._valid.get(path)
        if cached is not None and cached[0] == stamp:
            return True, cached[1]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return False, None
        if not isinstance(state, dict) or not state.get("complete"):
            return False, None
        self._valid[path] = (stamp, state.get("run_id"))
        return True, state.get("run_id")

    def rotate(self, keep_path: Path | None = None, run_id: str | None = None) -> None:
        """Delete invalid checkpoints and all but the newest ``keep`` valid ones of run ``run_id``
        (checkpoints of another run are left alone)."""
        mine = []
        for p in self.paths():
            ok, rid = self._peek(p)
            if not ok:
                log.warning("removing invalid (truncated or incomplete) checkpoint %s", p)
                p.unlink(missing_ok=True)
                self._valid.pop(p, None)
            elif rid is None or run_id is None or rid == run_id:
                mine.append(p)
        keep = set(mine[-self.keep :])
        if keep_path is not None and keep_path not in keep:
            keep = set(mine[-(self.keep - 1) :]) if self.keep > 1 else set()
            keep.add(keep_path)
        for p in mine:
            if p not in keep:
                p.unlink(missing_ok=True)
                self._valid.pop(p, None)

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Load one training checkpoint safely; ``ValueError`` if it is corrupt or incomplete."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            from ..weights.io import load_error_reason

            raise ValueError(f"checkpoint {path} cannot be read: {load_error_reason(e)}") from e
        if not isinstance(state, dict) or not state.get("complete"):
            raise ValueError(f"checkpoint {path} is incomplete (no 'complete' marker)")
        return state

    def latest(self, run_id: str | None = None) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads (of run ``run_id`` where given), or ``None``.

        Checkpoints of another run are skipped with a warning; if only such checkpoints exist a
        ``ValueError`` says so (``--resume auto`` never silently continues a different run).
        """
        foreign = []
        for path in reversed(self.paths()):
            try:
                state = self.load(path)
            except ValueError as e:
                log.warning("skipping %s", e)
                continue
            rid = state.get("run_id")
            if run_id is not None and rid is not None and rid != run_id:
                foreign.append((path, rid))
                continue
            if rid is None and run_id is not None:
                log.warning("%s records no run id (an older version wrote it): continuing it", path.name)
            if foreign:
                log.warning("skipped %d newer checkpoint(s) of another run (%s)", len(foreign), foreign[0][1])
            return path, state
        if foreign:
            raise ValueError(
                f"{self.directory} holds only checkpoints of another run ({foreign[0][1]}, not {run_id}): "
                "pass that checkpoint's path to --resume to continue it, or --overwrite to start over"
            )
        return None


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)
