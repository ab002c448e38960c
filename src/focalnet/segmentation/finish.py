"""The end of a segmentation training run, shared by UPerNet's loop (:mod:`.train`) and the universal
segmentors' (:mod:`.universal`): the last checkpoint, ``model.pt`` and the data figures in ``metrics.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..engine import DistInfo, Trainer, write_json
from .load import save_segmentor

__all__ = ["finish_run"]

log = logging.getLogger("focalnet")


def finish_run(
    trainer: Trainer,
    model: nn.Module,
    final: dict[str, Any],
    train_set: Any,
    val_set: Any | None,
    out: Path,
    extra: dict[str, Any],
    dist: DistInfo,
    keep_per_class: bool = True,
) -> dict[str, Any]:
    """After ``trainer.fit()`` returned ``final`` (not interrupted): a checkpoint of the last step, the model
    file, the data problems and sizes added to ``metrics.json``; returns the command's result."""
    if trainer.ckpt.paths() == [] or not trainer.ckpt.paths()[-1].name.endswith(f"{trainer.step:09d}.pt"):
        trainer.save_checkpoint()
    problems = list(train_set.problems) + (list(val_set.problems) if val_set is not None else [])
    if dist.is_main:
        save_segmentor(model, out / "model.pt", extra)
        metrics_path = out / "metrics.json"
        data = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        data.update(
            {
                "data_problems": problems,
                "num_skipped_samples": len(problems),
                "num_train_images": len(train_set),
                "num_val_images": len(val_set) if val_set is not None else 0,
                "model_file": str(out / "model.pt"),
                "iters": trainer.step,
            }
        )
        write_json(metrics_path, data)
        if final.get("mIoU") is not None:
            log.info("final: mIoU %.2f  mAcc %.2f  aAcc %.2f", final["mIoU"], final["mAcc"], final["aAcc"])
        log.info("saved %s", out / "model.pt")
    result = {k: v for k, v in final.items() if k != "per_class"}
    result.update({"num_skipped_samples": len(problems), "model_file": str(out / "model.pt")})
    if keep_per_class and "per_class" in final:
        result["per_class"] = final["per_class"]
    return result
