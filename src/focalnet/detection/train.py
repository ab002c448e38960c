"""Training any registered detector with the shared engine (single process or torchrun).

The run writes into ``output_dir``: ``config.yaml`` (resolved), ``checkpoints/`` (atomic, auto-resume),
``metrics.json`` (history + final COCO metrics at the top level), ``results.json`` (COCO-format detections
of the last evaluation), ``model.pt`` (final weights + config + class names, for ``evaluate``/``predict``),
``data_problems.json`` (skipped annotations/images), ``train.log``, ``curves.png`` and ``tensorboard/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine import (
    DistInfo,
    Trainer,
    TrainerConfig,
    build_adamw,
    init_distributed,
    prepare_run_folder,
    run_folder_lock,
    save_config,
    setup_logging,
    write_json,
)
from .config import DetectionConfig, detection_schedule
from .data import CocoInstances, detection_collate
from .evaluate import evaluate_detector, map_percent
from .load import detector_file_meta, save_detector
from .registry import build_from_config, get_detector
from .transforms import eval_transforms, train_transforms

__all__ = [
    "DetectionTrainer",
    "dry_run",
    "train",
    "build_datasets",
    "build_model",
    "detection_step",
    "to_device",
    "build_scheduler",
    "build_optimizer",
]

log = logging.getLogger("focalnet")


class DetectionTrainer(Trainer):
    """The shared :class:`~focalnet.engine.Trainer`, plotting only the main curves in ``curves.png`` (the
    24 COCO stats stay in ``metrics.json`` and TensorBoard; a plot of every one is slow and unreadable)."""

    plot_keys = ("train_loss", "lr", "bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50")

    def _plot_curves(self) -> None:
        full = self.history
        self.history = [{k: v for k, v in h.items() if k in self.plot_keys or k in ("step", "epoch")} for h in full]
        try:
            super()._plot_curves()
        finally:
            self.history = full


def build_datasets(cfg: DetectionConfig, need_train: bool = True) -> tuple[CocoInstances | None, CocoInstances | None]:
    """Training set (augmented) and validation set (``None`` where no validation json exists)."""
    d = cfg.data
    train_set = None
    with_masks = get_detector(cfg.model.detector).masks
    if need_train:
        ann, img = d.paths("train")
        tf = train_transforms(d.scales, d.max_size, d.crop_branch, d.crop_resize_scales, d.crop_range, d.flip_prob)
        train_set = CocoInstances(ann, img, tf, with_masks=with_masks, train=True, filter_empty=d.filter_empty)
    val_set = None
    try:
        ann, img = d.paths("val")
    except ValueError:
        ann = img = None
    if ann is not None and ann.exists():
        val_set = CocoInstances(ann, img, eval_transforms(), with_masks=with_masks, train=False)
    elif d.val_ann:
        raise FileNotFoundError(f"validation annotation file not found: {ann}")
    elif need_train:
        log.warning("no validation annotations at %s: training without evaluation", ann)
    return train_set, val_set


def build_optimizer(cfg: DetectionConfig, model: nn.Module) -> torch.optim.AdamW:
    """AdamW over the engine's parameter groups (no decay on norms, biases, layer scales), or with the
    same decay on every parameter (``optim.decay_all``); with ``optim.backbone_lr_mult != 1`` the
    FocalNet backbone's parameters get ``lr x backbone_lr_mult`` (DINO's recipe: 1e-4 and 1e-5)."""
    o = cfg.optim
    if o.decay_all:  # mmdet's default constructor / DETR's: the same weight decay on every parameter
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": o.weight_decay}]
    elif o.backbone_lr_mult == 1.0:
        return build_adamw(model, o.lr, o.weight_decay, betas=tuple(o.betas))
    else:
        from ..engine.optim import param_groups

        groups = param_groups(model, o.weight_decay)
    if o.backbone_lr_mult != 1.0:
        from ..models.focalnet import FocalNetBackbone

        in_backbone = {id(p) for m in model.modules() if isinstance(m, FocalNetBackbone) for p in m.parameters()}
        split = []
        for g in groups:
            for backbone, mult in ((False, 1.0), (True, o.backbone_lr_mult)):
                params = [p for p in g["params"] if (id(p) in in_backbone) == backbone]
                if params:  # an absolute lr per group (no lr_scale: timm's schedulers would apply it again)
                    split.append({**g, "params": params, "lr": o.lr * mult})
        groups = split
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def build_model(cfg: DetectionConfig, num_classes: int) -> nn.Module:
    """The detector a config describes, for training (``num_classes`` includes the background): refused
    in one line before anything is allocated when training it would not fit the memory budget."""
    return build_from_config(cfg.model, num_classes, training=True)


def to_device(
    images: list[torch.Tensor], targets: list[dict[str, Any]] | None, device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None]:
    """Plain tensors on ``device`` (tv_tensors unwrapped) in the form torchvision detectors take."""
    ims = [im.as_subclass(torch.Tensor).to(device, non_blocking=True) for im in images]
    if targets is None:
        return ims, None
    out = []
    for t in targets:
        d = {"boxes": t["boxes"].as_subclass(torch.Tensor).to(device), "labels": t["labels"].to(device)}
        if "masks" in t:
            d["masks"] = t["masks"].as_subclass(torch.Tensor).to(device)
        out.append(d)
    return ims, out


def detection_step(model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
    """Engine ``step_fn``: the sum of the detector's losses, each loss logged."""
    images, targets = to_device(*batch, device)
    losses = model(images, targets)
    loss = sum(losses.values())
    return loss, {k: float(v.detach()) for k, v in losses.items()}, len(images)


def build_scheduler(
    cfg: DetectionConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int, total_steps: int
) -> Any:
    """Linear warm-up from ``lr * warmup_ratio``, then x ``decay_rate`` after each lr step, per optimizer
    update, as :func:`~focalnet.detection.config.detection_schedule` fits them to the run."""
    from timm.scheduler import MultiStepLRScheduler

    o = cfg.optim
    warmup, decay = detection_schedule(cfg, updates_per_epoch, total_steps)
    # timm applies decay i once ``t + 1 >= decay_t[i]``: shift by one so update ``decay`` is the first decayed
    return MultiStepLRScheduler(
        optimizer,
        decay_t=[d + 1 for d in decay],
        decay_rate=o.decay_rate,
        warmup_t=warmup.steps,
        warmup_lr_init=o.lr * o.warmup_ratio,
        warmup_prefix=False,
        t_in_epochs=False,
    )


def dry_run(cfg: DetectionConfig) -> int:
    """``train --dry-run``: the inputs checked and counted as the run reads them (:func:`build_datasets`),
    the detector built on the meta device, the config and one summary line printed; nothing written."""
    from ..engine.dryrun import DryRun, check_inputs, dry_run_report

    check_inputs(files=[("backbone checkpoint", cfg.model.backbone_checkpoint)])
    train_set, val_set = build_datasets(cfg)
    assert train_set is not None
    probe = dataclasses.replace(cfg.model, backbone_checkpoint="")  # its file is read when the run starts

    def schedule(per_epoch: int, total: int) -> tuple[Any, list[str]]:
        warmup, decays = detection_schedule(cfg, per_epoch, total)
        return warmup, [f"lr x{cfg.optim.decay_rate:g} after updates {decays}"]

    return dry_run_report(
        DryRun(
            cfg,
            f"{cfg.model.detector} with {cfg.model.backbone}, {train_set.num_classes - 1} classes",
            lambda: build_from_config(probe, train_set.num_classes),
            len(train_set),
            cfg.batch_size,
            cfg.epochs,
            cfg.max_steps,
            cfg.accum_steps,
            schedule,
            [f"validation: {len(val_set)} images" if val_set is not None else "validation: none"],
        )
    )


def train(
    cfg: DetectionConfig, output_dir: str | os.PathLike, resume: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Train (and evaluate every ``eval_every_epochs``) as ``cfg`` says; returns the final metrics.

    A folder holding another run's checkpoints is refused unless ``resume`` or ``overwrite``; a folder a
    running run holds (its lock) is refused before anything in it is touched."""
    out = Path(output_dir)
    dist_info = init_distributed(cfg.device)
    with run_folder_lock(out, dist_info.is_main):
        return _train(cfg, out, resume, overwrite, dist_info)


def _train(cfg: DetectionConfig, out: Path, resume: str | None, overwrite: bool, dist_info: DistInfo) -> dict[str, Any]:
    run_id = prepare_run_folder(out, resume=resume, overwrite=overwrite, task="detection", is_main=dist_info.is_main)
    setup_logging(out, dist_info.is_main)
    torch.manual_seed(cfg.seed + dist_info.rank)
    random.seed(cfg.seed + dist_info.rank)
    np.random.seed((cfg.seed + dist_info.rank) % 2**32)
    train_set, val_set = build_datasets(cfg)
    assert train_set is not None
    model = build_model(cfg, train_set.num_classes)
    if dist_info.distributed and dist_info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN heads (Cascade Mask R-CNN): SyncBN as the original
    if dist_info.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "%s with %s: %.1fM parameters, %d classes, %d training images%s",
            cfg.model.detector,
            cfg.model.backbone,
            n_params / 1e6,
            train_set.num_classes - 1,
            len(train_set),
            f", {len(val_set)} validation images" if val_set is not None else "",
        )
    optimizer = build_optimizer(cfg, model)
    tcfg = TrainerConfig(
        output_dir=str(out),
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        num_workers=cfg.data.num_workers,
        accum_steps=cfg.accum_steps,
        grad_clip=cfg.grad_clip,
        amp=cfg.amp,
        log_every=cfg.log_every,
        eval_every_epochs=cfg.eval_every_epochs,
        eval_every_steps=cfg.eval_every_steps,
        ckpt_every_steps=cfg.ckpt_every_steps,
        keep_checkpoints=cfg.keep_checkpoints,
        seed=cfg.seed,
        resume=resume,
        run_id=run_id,
        drop_last=True,
        progress=cfg.progress,
        device=cfg.device,
    )
    # what every checkpoint and model.pt carry besides the weights (the format load_detector reads)
    meta = detector_file_meta(cfg, train_set.class_names, train_set.category_ids, train_set.num_classes)
    masks = get_detector(cfg.model.detector).masks

    def eval_fn(m: nn.Module, trainer: Trainer) -> dict[str, Any]:
        if val_set is None:
            return {}
        return evaluate_detector(
            m,
            val_set,
            trainer.device,
            output_dir=out,
            num_workers=cfg.data.num_workers,
            max_images=cfg.eval_max_images,
            progress=cfg.progress,
            masks=masks,
        )

    trainer = DetectionTrainer(
        tcfg,
        model,
        optimizer,
        train_set,
        detection_step,
        eval_fn=eval_fn if val_set is not None and cfg.eval_enabled else None,
        collate_fn=detection_collate,
        dist_info=dist_info,
        run_state=meta,
    )
    trainer.scheduler = build_scheduler(cfg, optimizer, trainer.updates_per_epoch, trainer.total_steps)
    if dist_info.is_main:
        warmup, decays = detection_schedule(cfg, trainer.updates_per_epoch, trainer.total_steps)
        schedule = f"{warmup}; lr x{cfg.optim.decay_rate:g} after updates {decays}"
        log.info("schedule: %s", schedule)
        save_config(cfg, out / "config.yaml", run_id=run_id, notes=[f"schedule: {schedule}"])
    final = trainer.fit()
    if dist_info.is_main:
        if not final.get("interrupted"):
            save_detector(
                out / "model.pt",
                getattr(trainer.model, "module", trainer.model),
                cfg,
                meta["class_names"],
                meta["category_ids"],
            )
            log.info("wrote %s", out / "model.pt")
        problems = train_set.problems_report() + (val_set.problems_report() if val_set is not None else [])
        write_json(out / "data_problems.json", problems)
        if (out / "metrics.json").is_file():  # the count beside the metrics; the entries in data_problems.json
            metrics = json.loads((out / "metrics.json").read_text())
            write_json(out / "metrics.json", {**metrics, "num_data_problems": len(problems)})
        if map_percent(final):
            log.info("%s", map_percent(final))  # percent, as the other tasks log theirs
    return final
