"""Training an image classifier with the paper's recipe on the shared engine (single process or torchrun).

>>> from focalnet.classification import load_classification_config, train
>>> cfg = load_classification_config("imagenette_cpu", ["data.path=../shared/data/imagenette"])  # doctest: +SKIP
>>> metrics = train(cfg, output_dir="runs/imagenette")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine import (
    Trainer,
    TrainerConfig,
    build_adamw,
    config_to_dict,
    init_distributed,
    lock_run_folder,
    prepare_run_folder,
    save_config,
    setup_logging,
    unlock_run_folder,
    write_json,
)
from ..engine.distributed import DistInfo
from .config import ClassificationConfig, classification_warmup
from .data import ImageFolder, build_mixup, build_transform, resolve_split
from .evaluate import evaluate_model

__all__ = ["TrainingRun", "build_model", "dry_run", "train"]

log = logging.getLogger("focalnet")


def build_model(cfg: ClassificationConfig, num_classes: int) -> nn.Module:
    """The FocalNet of ``cfg.model``: fresh, from released weights, or fine-tuned from a checkpoint
    (a new ``num_classes`` head when the checkpoint's differs)."""
    import warnings

    from ..factory import create_model

    m = cfg.model
    kw: dict[str, Any] = {**m.overrides, "drop_path_rate": m.drop_path_rate, "drop_rate": m.drop_rate}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if m.checkpoint is not None:
            model = create_model(m.name, checkpoint_path=m.checkpoint, num_classes=num_classes, **kw)
        elif m.pretrained is not None:
            tag: bool | str = True if m.pretrained == "default" else m.pretrained
            model = create_model(m.name, pretrained=tag, num_classes=num_classes, **kw)
        else:
            model = create_model(m.name, num_classes=num_classes, **kw)
    for w in caught:
        log.info("%s", w.message)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    d = cfg.data
    pc = model.pretrained_cfg
    pc.input_size = (3, d.img_size, d.img_size)
    pc.crop_pct = d.crop_pct
    pc.interpolation = "bicubic" if d.interpolation == "random" else d.interpolation
    pc.mean, pc.std = tuple(d.mean), tuple(d.std)
    pc.num_classes = num_classes
    return model


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dry_run(cfg: ClassificationConfig) -> int:
    """``train --dry-run``: the data folders listed as the run lists them, the model built on the meta device
    (released weights are not fetched; a ``model.checkpoint`` is read), the config and one summary line
    printed; nothing written."""
    import dataclasses

    from ..engine.dryrun import DryRun, check_inputs, dry_run_report

    d, m, t = cfg.data, cfg.model, cfg.train
    check_inputs(files=[("checkpoint", m.checkpoint)])
    train_set = ImageFolder(resolve_split(d.path, d.train_split), None, max_per_class=d.max_per_class)
    n = len(train_set.class_names)
    val_root = Path(d.path) / d.val_split
    notes = [f"validation: {val_root}" if val_root.is_dir() and cfg.eval.enabled else "validation: none"]
    if m.pretrained is not None:
        notes.append(f"released weights ({m.pretrained}): fetched when the run starts")
    probe = dataclasses.replace(cfg, model=dataclasses.replace(m, pretrained=None))
    return dry_run_report(
        DryRun(
            cfg,
            f"{m.name}, {n} classes",
            lambda: build_model(probe, n),
            len(train_set),
            t.batch_size,
            t.epochs,
            t.max_steps,
            t.accum_steps,
            lambda per_epoch, total: (classification_warmup(cfg, per_epoch, total), []),
            notes,
        )
    )


class TrainingRun:
    """A prepared training run: datasets, model, optimizer, schedule and the engine's :class:`Trainer`.

    ``TrainingRun(cfg).fit()`` trains; ``.trainer`` exposes the loop (e.g. ``trainer._stop = True`` is
    what SIGTERM does). All processes of a torchrun job build one; rank 0 writes the files.
    """

    def __init__(self, cfg: ClassificationConfig, dist_info: DistInfo | None = None) -> None:
        if cfg.output_dir is None:
            raise ValueError("output_dir: where to write the run is not set (--output DIR)")
        if cfg.data.path is None:
            raise ValueError("data.path: the dataset folder is not set (--data DIR)")
        self.cfg = cfg
        t = cfg.train
        self.dist = dist_info or init_distributed(t.device)
        self.out = Path(cfg.output_dir)
        # a running run's folder is refused before anything is touched; fit() releases the lock at its end
        if self.dist.is_main:
            lock_run_folder(self.out)
        setup_logging(self.out, self.dist.is_main)
        train_root = resolve_split(cfg.data.path, cfg.data.train_split)
        val_root = Path(cfg.data.path) / cfg.data.val_split
        d = cfg.data
        self.train_set = ImageFolder(
            train_root, build_transform(cfg, True), max_per_class=d.max_per_class, img_size=d.img_size
        )
        self.class_names = self.train_set.class_names
        self.val_set = None
        if not cfg.eval.enabled:
            log.info("evaluation off (eval.enabled: false)")
        elif val_root.is_dir():
            self.val_set = ImageFolder(
                val_root,
                build_transform(cfg, False),
                class_names=self.class_names,
                max_per_class=d.max_per_class,
                img_size=d.img_size,
            )
            self.val_set.keep_spread(cfg.eval.max_images)
        else:
            log.warning("no validation folder %s: training without evaluation", val_root)
        num_classes = len(self.class_names)

        _seed_everything(t.seed)  # the same initial weights on every rank
        self.model = build_model(cfg, num_classes)
        _seed_everything(t.seed + self.dist.rank)  # different augmentation per rank

        self.total_batch = t.batch_size * self.dist.world_size * t.accum_steps
        scale = self.total_batch / 512.0 if t.scale_lr else 1.0
        self.lr, self.warmup_lr, self.min_lr = t.base_lr * scale, t.warmup_lr * scale, t.min_lr * scale
        optimizer = build_adamw(self.model, self.lr, t.weight_decay, t.layer_decay, tuple(t.betas), t.eps)

        self.mixup = build_mixup(cfg, num_classes)
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif cfg.aug.label_smoothing > 0:
            from timm.loss import LabelSmoothingCrossEntropy

            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.aug.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

        tcfg = TrainerConfig(
            output_dir=str(self.out),
            epochs=t.epochs,
            max_steps=t.max_steps,
            batch_size=t.batch_size,
            num_workers=d.num_workers,
            accum_steps=t.accum_steps,
            grad_clip=t.clip_grad,
            amp=t.amp,
            ema_decay=t.ema_decay,
            log_every=t.log_every,
            eval_every_epochs=t.eval_every_epochs,
            eval_every_steps=t.eval_every_steps,
            ckpt_every_steps=t.ckpt_every_steps,
            keep_checkpoints=t.keep_checkpoints,
            seed=t.seed,
            resume=None,
            drop_last=True,
            progress=t.progress,
            device=t.device,
        )
        self.run_state = {
            "task": "classification",
            "config": config_to_dict(cfg),
            "class_names": list(self.class_names),
            "focalnet_config": self.model.cfg.to_dict(),
        }
        self.trainer = Trainer(
            tcfg,
            self.model,
            optimizer,
            self.train_set,
            self.step_fn,
            eval_fn=self.eval_fn if self.val_set is not None else None,
            dist_info=self.dist,
            run_state=self.run_state,
        )
        from timm.scheduler import CosineLRScheduler

        tr = self.trainer
        self.schedule = classification_warmup(cfg, tr.updates_per_epoch, tr.total_steps)
        warmup = self.schedule.steps
        self.warmup_note = f" ({self.schedule.note}; --set train.warmup_epochs=N to fix it)"
        self.warmup_steps = warmup
        tr.scheduler = CosineLRScheduler(
            optimizer,
            t_initial=tr.total_steps,
            lr_min=self.min_lr,
            warmup_lr_init=self.warmup_lr,
            warmup_t=warmup,
            cycle_limit=1,
            t_in_epochs=False,
        )
        self._bad_train: set[str] = set()
        self._details: dict[bool, dict[str, Any]] = {}
        self._t_first: float | None = None
        self._t_last = 0.0
        self._seen_after_first = 0

    def _train_rate(self) -> float:
        """Training images/s of this process x processes, from the step_fn calls (includes any evaluation)."""
        if self._t_first is None or self._t_last <= self._t_first:
            return 0.0
        return self._seen_after_first * self.dist.world_size / (self._t_last - self._t_first)

    # ------------------------------------------------------------------ engine hooks
    def step_fn(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        """Loss of one batch (mixup/cutmix and soft-target cross-entropy as in the recipe)."""
        x, y, idx, ok = batch
        if not bool(ok.all()):
            for i in idx[~ok].tolist():
                self._bad_train.add(self.train_set.samples[i][0])
            keep = ok.nonzero().flatten()
            if self.mixup is not None and len(keep) % 2:
                keep = keep[:-1]  # mixup needs an even batch
            if len(keep) == 0:  # nothing readable: a zero loss that still runs the (DDP) model
                out = model(x.to(device))
                return out.sum() * 0.0, {}, 0
            x, y = x[keep], y[keep]
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first = now
        else:
            self._seen_after_first += len(x)
        self._t_last = now
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        else:
            target = y
        out = model(x)
        return self.criterion(out.float(), target), {}, len(x)

    def eval_fn(self, model: nn.Module, trainer: Trainer) -> dict[str, Any]:
        """Validation metrics, reduced over ranks; the scalars go to the history."""
        assert self.val_set is not None
        eb = self.cfg.eval.batch_size or 2 * self.cfg.train.batch_size
        r = evaluate_model(
            model,
            self.val_set,
            list(range(len(self.class_names))),
            batch_size=eb,
            num_workers=self.cfg.data.num_workers,
            device=trainer.device,
            amp_dtype=trainer.amp_dtype,
            progress=self.cfg.train.progress,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self._details[model is trainer.model] = r
        return {
            "top1": r["top1"],
            "top5": r["top5"],
            "loss": r["loss"],
            "val_images_per_second": r["images_per_second"],
            "val_skipped_images": r["skipped_images"],
        }

    # ------------------------------------------------------------------ run
    def _gather_bad_train(self) -> list[str]:
        from ..engine.distributed import gather_names

        return gather_names(sorted(self._bad_train))

    def fit(self, resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
        """Train (resuming from ``resume``: "auto" or a checkpoint path) and return the final metrics.

        A folder holding another run's checkpoints is refused unless ``resume`` or ``overwrite``."""
        if self.dist.is_main:
            lock_run_folder(self.out)  # held since __init__, or again after an earlier fit() released it
        try:
            return self._fit(resume, overwrite)
        finally:
            unlock_run_folder(self.out)

    def _fit(self, resume: str | None, overwrite: bool) -> dict[str, Any]:
        cfg, tr = self.cfg, self.trainer
        tr.cfg.resume = resume
        tr.cfg.run_id = prepare_run_folder(
            self.out, resume=resume, overwrite=overwrite, task="classification", is_main=self.dist.is_main
        )
        if self.dist.is_main:
            save_config(cfg, self.out / "config.yaml", run_id=tr.cfg.run_id, notes=[f"schedule: {self.schedule}"])
        log.info(
            "%s: %d classes, %d training images%s; total batch %d (%d x %d processes x %d accumulation), "
            "lr %.3g (base %.3g%s), %d warm-up steps of %d%s",
            cfg.model.name,
            len(self.class_names),
            len(self.train_set),
            f", {len(self.val_set)} validation images" if self.val_set is not None else "",
            self.total_batch,
            cfg.train.batch_size,
            self.dist.world_size,
            cfg.train.accum_steps,
            self.lr,
            cfg.train.base_lr,
            " x total batch / 512" if cfg.train.scale_lr else "",
            self.warmup_steps,
            tr.total_steps,
            self.warmup_note,
        )
        final = tr.fit()
        bad_train = self._gather_bad_train()
        if bad_train and self.dist.is_main:
            log.warning("skipped %d unreadable training image(s): %s", len(bad_train), ", ".join(bad_train))
        if final.get("interrupted"):
            return final
        details = self._details.get(True, {})
        bad_val = details.get("skipped_files", [])
        if bad_val and self.dist.is_main:
            log.warning("skipped %d unreadable validation image(s): %s", len(bad_val), ", ".join(bad_val))
        if self.dist.is_main:
            import json

            path = self.out / "metrics.json"
            data = json.loads(path.read_text()) if path.exists() else {}
            extra = {
                "model": cfg.model.name,
                "class_names": list(self.class_names),
                "total_batch_size": self.total_batch,
                "peak_lr": self.lr,
                "steps": tr.step,
                "skipped_images": {
                    "train": len(bad_train),
                    "train_files": bad_train,
                    "val": len(bad_val),
                    "val_files": bad_val,
                },
            }
            if details:
                extra["per_class_accuracy"] = details["per_class_accuracy"]
                write_json(
                    self.out / "confusion_matrix.json",
                    {"labels": details["confusion_labels"], "matrix": details["confusion_matrix"]},
                )
            if "images_per_second" not in data:  # the final record of an iteration-based run has no train stats
                extra["images_per_second"] = self._train_rate()
            data.update(extra)
            data.setdefault("final", {}).update({k: v for k, v in extra.items() if k != "class_names"})
            write_json(path, data)
            from ..factory import save_model

            save_model(self.model, self.out / "model.safetensors", class_names=self.class_names)
            if tr.ema is not None:
                ema = tr.ema.module
                ema.pretrained_cfg = self.model.pretrained_cfg
                save_model(ema, self.out / "model_ema.safetensors", class_names=self.class_names)
            log.info("wrote %s", self.out / "model.safetensors")
            final = data
        return final


def train(
    cfg: ClassificationConfig,
    *,
    output_dir: str | os.PathLike | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    dist_info: DistInfo | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` (``output_dir`` overrides ``cfg.output_dir``); returns the final metrics.

    Under torchrun every process calls it. ``resume="auto"`` continues from the newest valid checkpoint;
    ``overwrite=True`` lets a new run replace another run's checkpoints in the folder.
    The result has ``"interrupted": True`` if SIGTERM/SIGINT stopped the run (after a checkpoint).
    """
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    run = TrainingRun(cfg, dist_info)
    return run.fit(resume, overwrite=overwrite)
