"""Learning-rate schedules that fit the run: one rule for the warm-up and the step decays of every task.

A recipe's warm-up and decays were set for the recipe's run (ImageNet for 300 epochs, COCO for 12 epochs of
~7,300 updates, ADE20K for 160k iterations). A run of another length keeps their share of the run:

- **at the recipe's length** the recipe's warm-up is kept as released (a warm-up given in epochs or
  iterations of a run of that length);
- **a shorter or longer run** scales a warm-up given as a share of the recipe's run (classification's
  epochs, segmentation's iterations) to the run's length; a warm-up given as a number of updates
  (detection's 500 iterations, set for COCO) is kept; in both cases it is at most
  :data:`MAX_WARMUP_SHARE` of the run's updates, so that a short fine-tune on a small dataset spends at
  most a tenth of its steps warming up;
- step decays (detection's x0.1 after epochs 9 and 11 of 12) move with the run's length, at the same
  fractions of the run;
- a warm-up or decays the user set for this run (``--set optim.warmup_steps=N``, ...) are taken as given
  (capped to the run's length).

This module imports neither torch nor a task package (the dry runs print the schedule without them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_WARMUP_SHARE", "Warmup", "batch_text", "fit_decays", "fit_warmup", "run_updates"]

MAX_WARMUP_SHARE = 0.1  # the largest share of a run's updates a recipe's warm-up may take outside its own length


@dataclass(frozen=True)
class Warmup:
    """The warm-up of one run: ``steps`` optimizer updates of ``total`` and a note saying how it was set."""

    steps: int
    total: int
    note: str

    def __str__(self) -> str:
        return f"warm-up {self.steps} of {self.total} updates ({self.note})"


def batch_text(batch_size: int, world_size: int = 1, accum_steps: int = 1) -> str:
    """The batch of an update in words, per process and in total (``--batch-size`` is per process in every
    task): ``"batch 2 per process x 8 processes = 16 images per update"``."""
    parts = [f"{batch_size} per process", f"{world_size} process{'' if world_size == 1 else 'es'}"]
    if accum_steps > 1:
        parts.append(f"{accum_steps} accumulation steps")
    return f"batch {' x '.join(parts)} = {batch_size * world_size * accum_steps} images per update"


def run_updates(
    num_samples: int,
    batch_size: int,
    epochs: int,
    max_steps: int = 0,
    *,
    world_size: int = 1,
    accum_steps: int = 1,
    drop_last: bool = True,
) -> tuple[int, int]:
    """(updates per epoch, total updates) of a run, as the engine's :class:`~focalnet.engine.Trainer`
    counts them (each of ``world_size`` processes takes ``num_samples / world_size`` samples, in batches
    of ``batch_size``, ``accum_steps`` batches an update); ``max_steps > 0`` makes the run
    iteration-based. ``ValueError`` when not one batch fits."""
    per_process = math.ceil(num_samples / max(world_size, 1))
    batches = per_process // batch_size if drop_last else math.ceil(per_process / batch_size)
    if batches == 0:
        raise ValueError(
            f"batch_size {batch_size} x {world_size} process(es) is larger than the training set "
            f"({num_samples} samples) with drop_last; lower the batch size"
        )
    per_epoch = math.ceil(batches / accum_steps)
    return per_epoch, (max_steps if max_steps > 0 else epochs * per_epoch)


def fit_warmup(warmup: float, total: int, length_ratio: float | None, *, proportional: bool) -> Warmup:
    """The warm-up of a run of ``total`` updates whose recipe warms up for ``warmup`` updates (counted in
    this run's updates: a recipe's epochs x this run's updates per epoch, or iterations).

    ``length_ratio`` is the run's length / the recipe's (``None``: the warm-up was set for this run, kept
    as given); ``proportional``: the recipe's warm-up is a share of its run (scaled by ``length_ratio``)
    rather than a number of updates (kept). See the module's rule."""
    last = max(total - 1, 0)
    if length_ratio is None:
        return Warmup(min(round(warmup), last), total, "as set for this run")
    if proportional and math.isclose(length_ratio, 1.0):
        return Warmup(min(round(warmup), last), total, "the recipe's, at the recipe's length")
    scaled = warmup * length_ratio if proportional else warmup
    cap = math.floor(MAX_WARMUP_SHARE * total)
    steps = min(round(scaled), cap, last)
    what = f"the recipe's {warmup:.4g} scaled to the run's length" if proportional else f"the recipe's {warmup:.4g}"
    if steps < round(scaled):
        what += f", capped at {MAX_WARMUP_SHARE:.0%} of the run"
    return Warmup(steps, total, what)


def fit_decays(decays: Sequence[float], length_ratio: float | None) -> list[float]:
    """Step decays (in the recipe's epochs or iterations) moved to the same fractions of a run
    ``length_ratio`` times the recipe's length (``None``: as given)."""
    if length_ratio is None:
        return [float(d) for d in decays]
    return [d * length_ratio for d in decays]
