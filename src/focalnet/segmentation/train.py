"""Training a FocalNet UPerNet with the shared engine (single process or torchrun DDP).

The recipe of the released ADE20K models is the default: 512x512 crops, AdamW (lr 6e-5, betas
0.9/0.999, weight decay 0.01, none on norms/biases/gammas), poly decay (power 1, min lr 0) after
1,500 linear warm-up iterations, 160k iterations of 16 images, auxiliary FCN loss weight 0.4, AMP on
GPU, SyncBatchNorm under DDP on GPU. At the end ``OUTPUT/model.pt`` holds everything needed to
rebuild the model (:func:`~focalnet.segmentation.load_segmentor`).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..bounds import FOCALNET_BOUNDS, SIDE, Bound
from ..engine import (
    ConfigError,
    DistInfo,
    Trainer,
    TrainerConfig,
    config_to_dict,
    init_distributed,
    load_config,
    packaged_config,
    param_groups,
    prepare_run_folder,
    run_folder_lock,
    save_config,
    set_group_lrs,
    setup_logging,
)
from ..engine.schedule import Warmup, batch_text, fit_warmup
from ..weights.checks import check_config_size
from .data import DataConfig, build_dataset
from .evaluate import MS_RATIOS, TestConfig, evaluate
from .finish import finish_run
from .load import build_segmentor, read_segmentor
from .model import IMAGENET_MEAN, IMAGENET_STD, HeadConfig, UPerNet, upernet, upernet_from_meta
from .registry import DEFAULT_SEGMENTOR, get_segmentor
from .transforms import TrainTransform
from .universal import UniversalConfig, train_universal

__all__ = [
    "ModelConfig",
    "AugConfig",
    "OptimConfig",
    "EvalConfig",
    "RunConfig",
    "SegmentationConfig",
    "load_segmentation_config",
    "config_path",
    "dry_run",
    "segmentation_warmup",
    "train",
]

log = logging.getLogger("focalnet")


@dataclass
class ModelConfig:
    backbone: str = "focalnet_tiny_srf"
    backbone_checkpoint: str | None = None  # any ImageNet checkpoint (kernels resized) or a segmentation one
    pretrained: bool = False  # download the released ImageNet weights of `backbone`
    # fine-tune a whole segmentor (ours or an original mmseg UPerNet file): its architecture replaces
    # backbone/backbone_overrides/head (apart from drop_path_rate and head.aux_weight)
    checkpoint: str | None = None
    backbone_overrides: dict[str, Any] = field(
        default_factory=lambda: {"focal_windows": [9, 9, 9, 9], "drop_path_rate": 0.3}
    )
    head: HeadConfig = field(default_factory=HeadConfig)
    # which segmentor (focalnet.segmentation.registry.SEGMENTORS); `head` is UPerNet's settings,
    # `mask2former` Mask2Former's (Mask2FormerConfig fields over the released recipe's)
    segmentor: str = "upernet"
    mask2former: dict[str, Any] = field(default_factory=dict)

    BOUNDS: ClassVar[dict[str, Any]] = {"backbone_overrides": FOCALNET_BOUNDS, "mask2former": {}}


@dataclass
class AugConfig:
    scale: tuple[int, int] = (2048, 512)  # base (long, short) size of the random resize
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)  # (h, w)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "scale": SIDE,
        "crop_size": SIDE,
        "ratio_range": Bound(0.01, 16),
        "mean": Bound(-1e4, 1e4),
        "std": Bound(1e-6, 1e4),
    }

    def validate(self) -> None:
        if min(self.crop_size) < 1 or min(self.scale) < 1:
            raise ValueError("crop_size and scale must be positive")
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"ratio_range must be increasing and positive, got {self.ratio_range}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")


@dataclass
class OptimConfig:
    lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6  # warm-up starts at lr * warmup_ratio
    power: float = 1.0
    min_lr: float = 0.0
    layer_decay: float | None = None  # optional layer-wise lr decay (not in the original recipe)
    backbone_lr_mult: float = 1.0  # the backbone's lr multiplier (Mask2Former: 0.1)

    BOUNDS: ClassVar[dict[str, Bound]] = {"lr": Bound(0, 100), "warmup_iters": Bound(0, 10**9), "power": Bound(0, 100)}

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_iters < 0:
            raise ValueError("lr must be > 0, weight_decay and warmup_iters >= 0")


@dataclass
class EvalConfig:
    every: int = 16000  # iterations between evaluations (0: only at the end)
    max_images: int = 0  # 0: the whole validation set
    mode: str = "whole"
    scale: tuple[int, int] | None = (2048, 512)
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    multi_scale: bool = False
    ratios: tuple[float, ...] = MS_RATIOS
    flip: bool = False
    enabled: bool = True

    BOUNDS: ClassVar[dict[str, Bound]] = {"every": Bound(0, 10**9), "max_images": Bound(0, 10**9)}

    def test_config(self) -> TestConfig:
        t = TestConfig(self.mode, self.scale, self.crop_size, self.stride, self.multi_scale, self.ratios, self.flip)
        t.validate()
        return t

    def validate(self) -> None:
        self.test_config()


@dataclass
class RunConfig:
    iters: int = 160000
    epochs: int = 0  # > 0: an epoch-based run of that many passes over the data (replaces iters; Mask2Former COCO)
    # the run length the warm-up was set for: a run of another length gets the same warm-up share, and a
    # run much shorter than it is a trial whose evaluations use a share of the validation images (0: no
    # scaling). Filled from the recipe by load_segmentation_config
    recipe_iters: int = 0
    # images per process and micro-batch, as in every task: an update takes batch_size x processes x
    # accum_steps images (the released recipes: 2 x 8 processes = 16)
    batch_size: int = 2
    accum_steps: int = 1
    amp: str = "auto"
    grad_clip: float | None = None
    ckpt_every: int = 16000
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    resume: str | None = None
    progress: bool = True

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "iters": Bound(0, 10**9),
        "epochs": Bound(0, 100_000),
        "recipe_iters": Bound(0, 10**9),
        "batch_size": Bound(1, 4096),
        "accum_steps": Bound(1, 4096),
        "ckpt_every": Bound(0, 10**9),
        "keep_checkpoints": Bound(1, 10_000),
        "log_every": Bound(1, 10**9),
        "seed": Bound(0, 2**32 - 1),
    }

    def validate(self) -> None:
        if self.iters < 1 or self.batch_size < 1 or self.accum_steps < 1:
            raise ValueError("iters, batch_size and accum_steps must be >= 1")
        if self.recipe_iters < 0:
            raise ValueError(f"recipe_iters must be >= 0, got {self.recipe_iters}")


@dataclass
class SegmentationConfig:
    """Everything a segmentation run needs; YAML files in ``configs/segmentation`` fill it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: RunConfig = field(default_factory=RunConfig)
    task: str = "semantic"  # semantic | panoptic | instance (the segmentor's tasks)
    universal: UniversalConfig = field(default_factory=UniversalConfig)


def config_path(name: str) -> Path:
    """Resolve ``name`` to a YAML file: an existing path, or a config shipped in ``configs/segmentation``."""
    return packaged_config(name, "segmentation")


def load_segmentation_config(
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> SegmentationConfig:
    """Defaults, then the YAML file (a path or a shipped config name), then ``values`` (``{dotted key:
    value}``: the command-line flags), then ``key=value`` overrides.

    When the flags and overrides change ``train.iters`` but not the warm-up, ``train.recipe_iters`` records
    the recipe's length (see :class:`RunConfig`)."""
    file = config_path(str(path)) if path else None
    cfg = load_config(SegmentationConfig, file, list(overrides), values=values)
    keys = {o.split("=", 1)[0].strip() for o in overrides} | set(values or {})
    if not keys & {"train.recipe_iters", "optim.warmup_iters"} and not cfg.train.recipe_iters:
        cfg.train.recipe_iters = load_config(SegmentationConfig, file).train.iters
    return cfg


def segmentation_warmup(cfg: SegmentationConfig) -> Warmup:
    """The warm-up of ``cfg``'s run (:func:`focalnet.engine.schedule.fit_warmup`): the recipe's share of
    ``train.recipe_iters`` at another length, at most 10 % of the run; as given when set for this run."""
    r = cfg.train
    ratio = r.iters / r.recipe_iters if r.recipe_iters > 0 else None
    return fit_warmup(cfg.optim.warmup_iters, r.iters, ratio, proportional=True)


def scaled_schedule(cfg: SegmentationConfig, num_val: int) -> tuple[int, int, str]:
    """(warm-up iterations, validation images per evaluation (0: all), a note for the log) of ``cfg``'s
    run: the recipe's warm-up share at another length, at most 10 % of the run
    (:func:`focalnet.engine.schedule.fit_warmup`); as given when set for this run (``train.recipe_iters`` 0)."""
    r, o = cfg.train, cfg.optim
    max_images, note = cfg.eval.max_images, ""
    ratio = r.iters / r.recipe_iters if r.recipe_iters > 0 else None
    fitted = segmentation_warmup(cfg)
    warmup = fitted.steps
    if ratio is not None and r.iters != r.recipe_iters:
        note = f"{fitted}; the recipe: {o.warmup_iters} of {r.recipe_iters}"
        if ratio < 0.5 and not max_images and num_val:
            max_images = min(num_val, max(10, math.ceil(num_val * ratio)))
            note += (
                f"; a trial run {ratio:.1%} of the recipe's length evaluates on {max_images} of the "
                f"{num_val} validation images (--max-images N to choose)"
            )
    return warmup, max_images, note


def _build_model(cfg: SegmentationConfig, num_classes: int, class_names: list[str]) -> UPerNet:
    m = cfg.model
    if m.checkpoint:
        if m.backbone_checkpoint or m.pretrained:
            raise ConfigError("model.checkpoint (a whole segmentor) excludes model.backbone_checkpoint/pretrained")
        meta, sd, _ = read_segmentor(m.checkpoint)
        check_config_size(
            lambda: upernet_from_meta({**meta, "num_classes": num_classes, "class_names": None}),
            f"model.checkpoint {m.checkpoint} with {num_classes} classes",
            training=True,
        )
        drop_path = m.backbone_overrides.get("drop_path_rate")
        model = build_segmentor(meta, sd, m.checkpoint, **({} if drop_path is None else {"drop_path_rate": drop_path}))
        model.head_cfg.aux_weight = m.head.aux_weight
        model.meta["head"]["aux_weight"] = m.head.aux_weight
        model.meta["backbone_config"] = model.backbone.cfg.to_dict()
        model.meta.pop("source", None)
        model.meta["init_checkpoint"] = str(m.checkpoint)
        if model.num_classes != num_classes:
            log.warning(
                "%s: %d classes -> %d of the data: new classifiers (conv_seg) for fine-tuning",
                m.checkpoint,
                model.num_classes,
                num_classes,
            )
            model.reset_classes(num_classes, class_names)
        else:
            if model.class_names != list(class_names):
                log.warning("%s: same number of classes, the data's names replace the checkpoint's", m.checkpoint)
            model.meta["class_names"] = list(class_names)
        return model.train()
    check_config_size(  # before anything is allocated: --set model.head.channels=10000000 is one line
        lambda: upernet(m.backbone, num_classes, head=m.head, **m.backbone_overrides),
        f"model {m.backbone} (head channels {m.head.channels}, aux channels {m.head.aux_channels}, "
        f"{num_classes} classes, backbone {m.backbone_overrides or 'defaults'})",
        training=True,
    )
    model = upernet(
        m.backbone,
        num_classes,
        m.backbone_checkpoint,
        pretrained=m.pretrained,
        class_names=class_names,
        head=m.head,
        **m.backbone_overrides,
    )
    return model


def _extra(cfg: SegmentationConfig) -> dict[str, Any]:
    """What evaluate/predict need besides the weights: preprocessing, test setting, data encoding."""
    return {
        "mean": list(cfg.aug.mean),
        "std": list(cfg.aug.std),
        "test": config_to_dict(cfg.eval),
        "data": {
            k: v
            for k, v in config_to_dict(cfg.data).items()
            if k
            in (
                "layout",
                "ignore_index",
                "reduce_zero_label",
                "train_img_dir",
                "train_ann_dir",
                "val_img_dir",
                "val_ann_dir",
            )
        },
        "config": config_to_dict(cfg),
    }


def dry_run(cfg: SegmentationConfig) -> int:
    """``train --dry-run``: the data listed as the run lists it, the segmentor built on the meta device
    (``model.segmentor``: UPerNet or a universal one; released weights are not fetched, checkpoints are
    read), the config and one summary line printed; nothing written."""
    import dataclasses

    from ..engine.dryrun import DryRun, check_inputs, dry_run_report, world_size

    m, r = cfg.model, cfg.train
    check_inputs(files=[("backbone checkpoint", m.backbone_checkpoint), ("checkpoint", m.checkpoint)])
    probe = dataclasses.replace(cfg, model=dataclasses.replace(m, pretrained=False, backbone_checkpoint=None))
    segmentor = getattr(m, "segmentor", "upernet")
    epochs = getattr(r, "epochs", 0)
    if segmentor == "upernet":
        train_set = build_dataset(cfg.data, "train", None)
        names = list(train_set.class_names)
        try:
            num_val = len(build_dataset(cfg.data, "val", None, class_names=names)) if cfg.eval.enabled else 0
        except FileNotFoundError:
            num_val = 0

        def build() -> nn.Module:
            if m.checkpoint:  # the architecture the file holds (the run's own size probe; weights not copied)
                meta = read_segmentor(m.checkpoint)[0]
                return upernet_from_meta({**meta, "num_classes": len(names), "class_names": None})
            return _build_model(probe, len(names), names)

        def schedule(per_epoch: int, total: int) -> tuple[Warmup, list[str]]:
            max_images = scaled_schedule(cfg, num_val)[1]
            return segmentation_warmup(cfg), [f"validation: {max_images or num_val} of {num_val} images"]
    else:  # the universal segmentors (Mask2Former): their datasets and builder
        from .universal import build_universal_model, task_dataset, universal_warmup

        train_set = task_dataset(cfg, "train", True)

        def build() -> nn.Module:
            return build_universal_model(probe, train_set)

        def schedule(per_epoch: int, total: int) -> tuple[Warmup, list[str]]:
            return universal_warmup(cfg, total), []

    return dry_run_report(
        DryRun(
            cfg,
            f"{segmentor} on {m.backbone}, {len(train_set.class_names)} classes",
            build,
            len(train_set),
            r.batch_size,
            epochs,
            0 if epochs > 0 else r.iters,
            r.accum_steps,
            schedule,
            notes=[batch_text(r.batch_size, world_size(), r.accum_steps)],
        )
    )


def train(cfg: SegmentationConfig, output_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume, with ``cfg.train.resume``) and evaluate; returns the final metrics.

    Writes ``OUTPUT/config.yaml``, ``checkpoints/``, ``metrics.json`` (with the data problems found,
    if any), ``train.log``, ``tensorboard/``, ``curves.png`` and, at the end, ``model.pt``.
    """
    spec = get_segmentor(cfg.model.segmentor)  # before anything is written: a wrong pair is one line
    if cfg.task not in spec.tasks:
        raise ConfigError(f"{spec.title} is trained for {', '.join(spec.tasks)}, not {cfg.task!r} (--task)")
    out = Path(output_dir)
    dist = init_distributed(cfg.train.device)
    with run_folder_lock(out, dist.is_main):  # a running run's folder is refused before anything is touched
        return _train(cfg, out, overwrite, dist)


def _train(cfg: SegmentationConfig, out: Path, overwrite: bool, dist: DistInfo) -> dict[str, Any]:
    r = cfg.train
    run_id = prepare_run_folder(out, resume=r.resume, overwrite=overwrite, task="segmentation", is_main=dist.is_main)
    setup_logging(out, dist.is_main)
    if (
        cfg.model.segmentor != DEFAULT_SEGMENTOR
    ):  # the universal segmentors: their data, loss and metrics, the same loop
        return train_universal(cfg, out, dist, run_id, _extra(cfg))
    per_proc = r.batch_size  # per process and micro-batch, as in every task
    random.seed(r.seed + dist.rank)
    np.random.seed((r.seed + dist.rank) % 2**32)
    if per_proc < 2:
        raise ConfigError(
            f"train.batch_size {r.batch_size}: {per_proc} image per process; UPerNet's BatchNorm layers (the "
            "1x1 pyramid-pooling branch) need at least 2 per process: raise the batch size"
        )
    torch.manual_seed(r.seed)

    aug = cfg.aug
    tf = TrainTransform(
        tuple(aug.scale),
        tuple(aug.ratio_range),
        tuple(aug.crop_size),
        aug.cat_max_ratio,
        aug.flip_prob,
        aug.photometric,
        tuple(aug.mean),
        tuple(aug.std),
    )
    train_set = build_dataset(cfg.data, "train", tf)
    names = train_set.class_names
    val_set = None
    if cfg.eval.enabled:
        try:
            val_set = build_dataset(cfg.data, "val", None, class_names=names)
        except FileNotFoundError as e:
            log.warning("no validation set (%s): training without evaluation", e)
    model = _build_model(cfg, len(names), names)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "UPerNet on %s: %.1fM parameters, %d classes, %d training / %s validation images",
        cfg.model.backbone,
        n_params / 1e6,
        len(names),
        len(train_set),
        len(val_set) if val_set else 0,
    )
    log.info("%s", batch_text(r.batch_size, dist.world_size, r.accum_steps))
    if dist.distributed and dist.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif dist.distributed:
        log.warning("DDP on CPU: BatchNorm statistics stay per process (SyncBatchNorm needs GPUs)")

    o = cfg.optim
    groups = param_groups(
        model, o.weight_decay, o.layer_decay, depths=tuple(model.backbone.cfg.depths) if o.layer_decay else None
    )
    set_group_lrs(groups, o.lr)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    from timm.scheduler import PolyLRScheduler

    warmup, max_images, note = scaled_schedule(cfg, len(val_set) if val_set is not None else 0)
    if note:
        log.info("%s", note)
    scheduler = PolyLRScheduler(
        optimizer,
        t_initial=r.iters,
        power=o.power,
        lr_min=o.min_lr,
        warmup_t=warmup,
        warmup_lr_init=o.lr * o.warmup_ratio,
        t_in_epochs=False,
    )

    test_cfg = cfg.eval.test_config()
    eval_fn = None
    if val_set is not None:

        def eval_fn(m: nn.Module, trainer: Trainer) -> dict[str, Any]:
            res = evaluate(
                m,
                val_set,
                test_cfg,
                device=trainer.device,
                max_images=max_images,
                num_workers=min(cfg.data.num_workers, 2),
                rank=trainer.dist.rank,
                world_size=trainer.dist.world_size,
                progress=r.progress,
                mean=aug.mean,
                std=aug.std,
                amp_dtype=trainer.amp_dtype,
            )
            return {"mIoU": res["mIoU"], "mAcc": res["mAcc"], "aAcc": res["aAcc"], "per_class": res["per_class"]}

    def step_fn(
        m: nn.Module, batch: dict[str, torch.Tensor], device: torch.device
    ) -> tuple[torch.Tensor, dict[str, float], int]:
        img = batch["img"].to(device, non_blocking=True)
        gt = batch["gt"].to(device, non_blocking=True)
        losses = m(img, gt)
        logs = {k: float(v.detach()) for k, v in losses.items() if k != "loss"}
        return losses["loss"], logs, img.shape[0]

    tcfg = TrainerConfig(
        output_dir=str(out),
        max_steps=r.iters,
        batch_size=per_proc,
        num_workers=cfg.data.num_workers,
        accum_steps=r.accum_steps,
        grad_clip=r.grad_clip,
        amp=r.amp,
        log_every=r.log_every,
        eval_every_steps=cfg.eval.every if val_set is not None else 0,
        ckpt_every_steps=r.ckpt_every,
        keep_checkpoints=r.keep_checkpoints,
        seed=r.seed,
        resume=r.resume,
        run_id=run_id,
        device=r.device,
        progress=r.progress,
    )
    base = getattr(model, "module", model)
    meta = dict(base.meta)
    extra = _extra(cfg)
    if dist.is_main:
        batch = batch_text(r.batch_size, dist.world_size, r.accum_steps)
        notes = [f"schedule: warm-up {warmup} of {r.iters} updates", batch]
        save_config(cfg, out / "config.yaml", run_id=run_id, notes=notes)
    trainer = Trainer(
        tcfg,
        model,
        optimizer,
        train_set,
        step_fn,
        scheduler=scheduler,
        eval_fn=eval_fn,
        dist_info=dist,
        run_state={"segmentation_meta": meta, "segmentation_extra": extra},
    )
    final = trainer.fit()
    if final.get("interrupted"):
        return final
    return finish_run(trainer, model, final, train_set, val_set, out, extra, dist)
