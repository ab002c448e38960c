"""Typed configuration of a detection run (YAML files in ``focalnet/configs/detection/``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..bounds import FOCALNET_BOUNDS, SIDE, Bound
from ..engine.config import load_config, packaged_config, packaged_configs
from ..engine.schedule import Warmup, fit_decays, fit_warmup

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "DetectionConfig",
    "config_path",
    "detection_schedule",
    "list_configs",
    "load_detection_config",
]


def __getattr__(name: str) -> Any:
    if name == "DETECTORS":  # the registry (which imports every detector) on first use only
        from .registry import DETECTORS

        return DETECTORS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ModelConfig:
    """The detector: one of :data:`~focalnet.detection.registry.DETECTORS`.

    Fields left ``None`` are the detector's own (its released recipe's; filled in by ``validate()``, so a
    saved config says what was built); head fields a detector does not take stay ``None``.
    ``backbone_overrides`` are extra :class:`~focalnet.FocalNetConfig` fields; ``detector_overrides``
    (DINO: ``dino``) further options of the detector's builder (its spec's ``head_defaults``, e.g.
    ``num_proposals``, ``rpn_post_nms_top_n_test``, ``num_queries``)."""

    detector: str = "mask_rcnn"
    backbone: str | None = None
    backbone_checkpoint: str = ""
    focal_windows: list[int] | None = None
    drop_path_rate: float | None = None
    frozen_stages: int = -1
    grad_checkpointing: bool = False
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    fpn_channels: int | None = None
    representation_size: int | None = None
    mask_head_channels: int | None = None
    min_size: int | None = None  # test-time short side
    max_size: int | None = None  # test-time long side
    score_thresh: float | None = None
    nms_thresh: float | None = None
    detections_per_img: int | None = None
    mmdet_compat: bool | None = None  # aligned RoIAlign + adaptive sampling, unrounded anchors (R-CNNs)
    detector_overrides: dict[str, Any] = field(default_factory=dict)
    dino: dict[str, Any] = field(default_factory=dict)

    # the detector's own settings (detector_overrides, dino) are bounded by their names (focalnet.bounds)
    BOUNDS: ClassVar[dict[str, Any]] = {
        "backbone_overrides": FOCALNET_BOUNDS,
        "focal_windows": FOCALNET_BOUNDS["focal_windows"],
        "frozen_stages": Bound(-1, 8),
        "fpn_channels": Bound(1, 8192),
        "representation_size": Bound(1, 65_536),
        "mask_head_channels": Bound(1, 8192),
        "min_size": SIDE,
        "max_size": SIDE,
        "detections_per_img": Bound(1, 10_000),
        "detector_overrides": {},
        "dino": {"backbone_overrides": FOCALNET_BOUNDS},
    }

    def validate(self) -> None:
        from .registry import DETECTORS, check_model_config, resolve_model_config

        if self.detector not in DETECTORS:
            raise ValueError(f"model.detector: {self.detector!r} is not one of {list(DETECTORS)}")
        resolve_model_config(self)
        check_model_config(self)
        if self.focal_windows is not None and (len(self.focal_windows) < 1 or any(w < 1 for w in self.focal_windows)):
            raise ValueError(f"focal_windows must be positive, got {self.focal_windows}")
        if self.min_size is not None and (self.min_size < 32 or self.max_size is None or self.max_size < self.min_size):
            raise ValueError(f"need 32 <= min_size <= max_size, got {self.min_size}/{self.max_size}")
        if self.score_thresh is not None and not 0 <= self.score_thresh < 1:
            raise ValueError("score_thresh must be in [0, 1)")
        if self.nms_thresh is not None and not 0 < self.nms_thresh <= 1:
            raise ValueError("nms_thresh must be in (0, 1]")
        for name in ("fpn_channels", "representation_size", "mask_head_channels", "detections_per_img"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass
class DataConfig:
    """COCO-format data: ``root`` with the COCO 2017 layout, or explicit json/image paths."""

    root: str = ""
    train_ann: str = ""
    train_images: str = ""
    val_ann: str = ""
    val_images: str = ""
    scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333
    crop_branch: bool = True
    crop_resize_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_range: list[int] = field(default_factory=lambda: [384, 600])
    flip_prob: float = 0.5
    filter_empty: bool = True  # drop training images without annotations (as mmdetection does)
    num_workers: int = 2

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "scales": Bound(16, SIDE.hi, max_len=64),
        "max_size": SIDE,
        "crop_resize_scales": Bound(16, SIDE.hi, max_len=64),
        "crop_range": SIDE,
        "num_workers": Bound(0, 256),
    }

    def validate(self) -> None:
        if not self.scales or min(self.scales) < 16:
            raise ValueError(f"scales must be a non-empty list of short sides >= 16, got {self.scales}")
        if len(self.crop_range) != 2 or not 0 < self.crop_range[0] <= self.crop_range[1]:
            raise ValueError(f"crop_range must be [low, high] with 0 < low <= high, got {self.crop_range}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def paths(self, split: str) -> tuple[Path, Path]:
        """(annotation json, image folder) of ``split`` ("train" or "val")."""
        ann, img = (self.train_ann, self.train_images) if split == "train" else (self.val_ann, self.val_images)
        if (not ann or not img) and not self.root:
            raise ValueError(f"no {split} data: give --data ROOT (COCO 2017 layout) or --{split}-ann/--{split}-images")
        root = Path(self.root) if self.root else None
        ann_p = Path(ann) if ann else root / "annotations" / f"instances_{split}2017.json"  # type: ignore[operator]
        img_p = Path(img) if img else root / f"{split}2017"  # type: ignore[operator]
        return ann_p, img_p


@dataclass
class OptimConfig:
    """AdamW + linear warm-up + step decay at ``lr_steps`` (epochs; fractions of ``max_steps`` if set)."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 500
    warmup_ratio: float = 0.001
    lr_steps: list[float] = field(default_factory=lambda: [9, 11])
    decay_rate: float = 0.1
    decay_all: bool = False  # weight decay on every parameter (mmdet without paramwise_cfg: Sparse R-CNN)
    backbone_lr_mult: float = 1.0  # lr of the FocalNet backbone = lr x this (DINO: 0.1)
    # the run length (epochs) warmup_steps and lr_steps were set for: a run of another length moves the lr
    # steps to the same fractions of the run, and the warm-up takes at most 10 % of any run (the released
    # 500 iterations were set for COCO). 0: both as given. Filled from the recipe by load_detection_config
    recipe_epochs: float = 0.0

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "lr": Bound(0, 100),
        "warmup_steps": Bound(0, 10**9),
        "lr_steps": Bound(0, 10**9, max_len=64),
        "recipe_epochs": Bound(0, 100_000),
    }

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if self.backbone_lr_mult < 0:
            raise ValueError(f"backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if sorted(self.lr_steps) != list(self.lr_steps):
            raise ValueError(f"lr_steps must be increasing, got {self.lr_steps}")
        if self.warmup_steps < 0 or self.recipe_epochs < 0:
            raise ValueError("warmup_steps and recipe_epochs must be >= 0")


@dataclass
class DetectionConfig:
    """A whole detection run (model, data, optimiser, loop)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 12
    max_steps: int = 0
    batch_size: int = 2  # per process (the recipe: 16 in total, e.g. 8 GPUs x 2)
    accum_steps: int = 1
    grad_clip: float | None = None
    amp: str = "auto"
    eval_every_epochs: int = 1  # 0: only at the end
    eval_every_steps: int = 0  # iteration-based runs (max_steps > 0); 0: only at the end
    eval_enabled: bool = True  # false: no evaluation (--no-eval)
    eval_max_images: int = 0  # > 0: evaluate on the first N validation images (--max-images)
    ckpt_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every: int = 20
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "epochs": Bound(0, 100_000),
        "max_steps": Bound(0, 10**9),
        "batch_size": Bound(1, 4096),
        "accum_steps": Bound(1, 4096),
        "eval_every_epochs": Bound(0, 10**9),
        "eval_every_steps": Bound(0, 10**9),
        "eval_max_images": Bound(0, 10**9),
        "ckpt_every_steps": Bound(0, 10**9),
        "keep_checkpoints": Bound(1, 10_000),
        "log_every": Bound(1, 10**9),
        "seed": Bound(0, 2**32 - 1),
    }

    def validate(self) -> None:
        # a section the file and the flags left out is built from its defaults without validate(): resolve
        # the detector's own values here too ("the detector's own" is never None in a built config)
        self.model.validate()
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("epochs or max_steps must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if min(self.eval_every_epochs, self.eval_every_steps, self.eval_max_images) < 0:
            raise ValueError("eval_every_epochs, eval_every_steps and eval_max_images must be >= 0")


def config_path(name: str) -> Path:
    """Path of a packaged config by name (``"mask_rcnn_focalnet_tiny_lrf_1x"``) or a file path."""
    return packaged_config(name, "detection")


def list_configs() -> list[str]:
    """Names of the packaged detection configs."""
    return packaged_configs("detection")


def load_detection_config(
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> DetectionConfig:
    """Defaults, then ``config`` (a packaged name or a YAML file), then ``values`` (``{dotted key: value}``:
    the command-line flags), then ``key=value`` overrides, validated.

    Unless the flags and overrides set the schedule (``optim.warmup_steps``, ``optim.lr_steps``,
    ``optim.recipe_epochs``), ``optim.recipe_epochs`` records the recipe's length (see
    :func:`detection_schedule`)."""
    file = config_path(str(config)) if config else None
    cfg = load_config(DetectionConfig, file, overrides, values=values)
    keys = {o.split("=", 1)[0].strip() for o in overrides} | set(values or {})
    if not keys & {"optim.warmup_steps", "optim.lr_steps", "optim.recipe_epochs"} and not cfg.optim.recipe_epochs:
        # the file's own length; its model (the detector a flag may name) must still validate
        model = {k: v for k, v in (values or {}).items() if k.startswith("model.")}
        cfg.optim.recipe_epochs = float(load_config(DetectionConfig, file, values=model).epochs)
    return cfg


def detection_schedule(cfg: DetectionConfig, updates_per_epoch: int, total_steps: int) -> tuple[Warmup, list[int]]:
    """(warm-up, the updates after which the lr decays) of ``cfg``'s run of ``total_steps`` updates
    (:mod:`focalnet.engine.schedule`): the lr steps at the recipe's fractions of the run, the warm-up at most
    10 % of it; both as given when the user set them (``optim.recipe_epochs`` 0)."""
    o = cfg.optim
    ratio = total_steps / updates_per_epoch / o.recipe_epochs if o.recipe_epochs > 0 else None
    if ratio is None and cfg.max_steps > 0:  # an iteration-based run: the steps at fractions of ``epochs``
        decays = [round(s / cfg.epochs * total_steps) for s in o.lr_steps]
    else:
        decays = [round(e * updates_per_epoch) for e in fit_decays(o.lr_steps, ratio)]
    return fit_warmup(o.warmup_steps, total_steps, ratio, proportional=False), decays
