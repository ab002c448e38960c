"""``--dry-run``: what a training command would do, without doing it.

Every ``train`` command (and ``focalnet demo``) resolves its settings with its own code (defaults < recipe <
``--config`` < flags < ``--set``), then, instead of training, hands :func:`dry_run_report` what it found:
the resolved config, the model builder (built here on the meta device, through the size check of
:func:`focalnet.weights.checks.check_config_size`: no memory, no weights read), the number of training
images and the schedule. The report is the config as YAML (with the effective schedule as trailing
comments, as in the run's ``config.yaml``) and one summary line. Nothing is written: no run folder, no
lock, no log. The inputs are checked to exist and be readable (:func:`check_inputs`), not validated in full.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .schedule import Warmup, batch_text, run_updates

__all__ = ["DryRun", "check_inputs", "dry_run_report", "world_size"]


def world_size() -> int:
    """The processes of the job a command runs in (``WORLD_SIZE`` under torchrun, else 1)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def check_inputs(files: Iterable[tuple[str, Any]] = (), folders: Iterable[tuple[str, Any]] = ()) -> None:
    """``FileNotFoundError`` (or ``PermissionError``) of one line for the first of ``files`` / ``folders``
    (``(what, path)`` pairs; empty paths are skipped) that is missing, of the wrong kind or unreadable."""
    for what, path in files:
        if not path:
            continue
        p = Path(path)
        if p.is_dir() and what.endswith("checkpoint"):  # a model folder (transformers/timm layout) is a checkpoint
            continue
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}" + (" (a folder, not a file)" if p.is_dir() else ""))
        try:
            with p.open("rb") as f:
                f.read(1)
        except OSError as e:
            raise PermissionError(f"{what} {p} is not readable: {e.strerror or e}") from None
    for what, path in folders:
        if not path:
            continue
        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"{what} not found: {p}" + (" (a file, not a folder)" if p.exists() else ""))
        if not os.access(p, os.R_OK | os.X_OK):
            raise PermissionError(f"{what} {p} is not readable")


@dataclass
class DryRun:
    """What a training command found before training: see :func:`dry_run_report`.

    ``model``: a short description (``"mask_rcnn with focalnet_tiny_lrf"``); ``build``: the training model's
    constructor (called on the meta device); ``images``: training images per epoch (all processes);
    ``batch_size``: per process (every task's ``--batch-size``); ``schedule``:
    ``(updates per epoch, total updates) -> (warm-up, notes)``, the task's own schedule rule; ``notes``: more
    lines for the config's trailing comments; ``drop_last``: whether an epoch drops its last partial batch."""

    config: Any
    model: str
    build: Callable[[], Any]
    images: int
    batch_size: int
    epochs: int
    max_steps: int = 0
    accum_steps: int = 1
    schedule: Callable[[int, int], tuple[Warmup, Sequence[str]]] | None = None
    notes: Sequence[str] = ()
    drop_last: bool = True


def dry_run_report(plan: DryRun, out: TextIO | None = None) -> int:
    """Build ``plan.build`` on the meta device (size check included), count the updates, print the
    resolved config as YAML and one summary line on ``out`` (stdout); returns the exit code 0."""
    from ..weights.checks import check_config_size
    from .config import config_text

    out = out or sys.stdout
    probe = check_config_size(plan.build, f"model configuration ({plan.model})", training=True)
    params = sum(p.numel() for p in probe.parameters())
    world = world_size()
    per_epoch, total = run_updates(
        plan.images,
        plan.batch_size,
        plan.epochs,
        plan.max_steps,
        world_size=world,
        accum_steps=plan.accum_steps,
        drop_last=plan.drop_last,
    )
    notes = list(plan.notes)
    warmup_text = ""
    if plan.schedule is not None:
        warmup, more = plan.schedule(per_epoch, total)
        notes = [f"schedule: {warmup}", *more, *notes]
        warmup_text = f", warm-up {warmup.steps}"
    out.write(config_text(plan.config, notes))
    length = "iteration-based" if plan.max_steps > 0 else f"{plan.epochs} epochs x {per_epoch}"
    out.write(
        f"dry run: {plan.model}, {params / 1e6:.2f}M parameters; {total} updates ({length}){warmup_text}; "
        f"{batch_text(plan.batch_size, world, plan.accum_steps)}; {plan.images} images per epoch; nothing written\n"
    )
    out.flush()
    return 0
