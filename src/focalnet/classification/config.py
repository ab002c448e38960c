"""The typed config of a classification run (model, data, augmentation, training, evaluation).

Values come from the defaults below, then a YAML recipe (``configs/classification/<model>.yaml``), then
command-line flags and ``--set key=value`` overrides. Everything is validated before any work starts:
unknown keys, wrong types and impossible values raise :class:`focalnet.engine.ConfigError` naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..bounds import FOCALNET_BOUNDS, SIDE, Bound
from ..engine.config import load_config, packaged_config, packaged_configs
from ..engine.options import check_device
from ..engine.schedule import Warmup, fit_warmup

__all__ = [
    "ClassificationConfig",
    "ModelSection",
    "DataSection",
    "AugSection",
    "TrainSection",
    "EvalSection",
    "classification_warmup",
    "config_path",
    "list_configs",
    "load_classification_config",
]

_INTERP = Literal["bicubic", "bilinear", "nearest", "random"]


@dataclass
class ModelSection:
    """Which FocalNet and which weights to start from."""

    name: str = "focalnet_tiny_srf"
    pretrained: str | None = None  # released weights tag (ms_in1k, ms_in22k) or "default"; fine-tuning
    checkpoint: str | None = None  # any file/folder focalnet.model_from_checkpoint reads; fine-tuning
    drop_path_rate: float = 0.2
    drop_rate: float = 0.0
    grad_checkpointing: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # FocalNetConfig fields (e.g. embed_dim, depths)

    BOUNDS: ClassVar[dict[str, Any]] = {"overrides": FOCALNET_BOUNDS}

    def validate(self) -> None:
        from ..models.registry import get_variant

        try:
            variant = get_variant(self.name)
        except ValueError as e:
            raise ValueError(f"name: {e}") from None
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.pretrained is not None and self.checkpoint is not None:
            raise ValueError("pretrained and checkpoint are exclusive: give one source of initial weights")
        if self.pretrained is not None and self.pretrained != "default" and self.pretrained not in variant.tags:
            raise ValueError(
                f"pretrained: {self.name} has no tag {self.pretrained!r}; available: {list(variant.tags) + ['default']}"
            )
        bad = {"num_classes", "drop_path_rate", "drop_rate"} & set(self.overrides)
        if bad:
            raise ValueError(f"overrides: set {sorted(bad)} through their own keys (model.drop_path_rate, ...)")
        try:
            variant.cfg.replace(**self.overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"overrides: {e}") from None


@dataclass
class DataSection:
    """An ImageFolder dataset (``<path>/<train_split>/<class>/*``) and its preprocessing."""

    path: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    img_size: int = 224
    crop_pct: float = 0.875  # evaluation: resize the short side to img_size / crop_pct, then centre crop
    interpolation: _INTERP = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_workers: int = 8
    max_per_class: int = 0  # > 0: only the first N images of each class (sorted names) of each split

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "img_size": SIDE,
        "num_workers": Bound(0, 256),
        "max_per_class": Bound(0, 10**9),
        "mean": Bound(-1e3, 1e3),
        "std": Bound(1e-6, 1e3),
    }

    def validate(self) -> None:
        if self.img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {self.img_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.max_per_class < 0:
            raise ValueError(f"max_per_class must be >= 0, got {self.max_per_class}")


@dataclass
class AugSection:
    """The training augmentation (timm): RandAugment, colour jitter, random erasing, mixup/cutmix."""

    enabled: bool = True  # false: train on the evaluation transform, without mixup/cutmix (deterministic)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4  # timm uses it only when auto_augment is off, like the original code
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    reprob: float = 0.25
    remode: Literal["pixel", "const", "rand"] = "pixel"
    recount: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    cutmix_minmax: tuple[float, float] | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    label_smoothing: float = 0.1

    BOUNDS: ClassVar[dict[str, Bound]] = {"recount": Bound(1, 16), "color_jitter": Bound(0, 10)}

    def validate(self) -> None:
        for name in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0 or self.color_jitter < 0:
            raise ValueError("mixup, cutmix and color_jitter must be >= 0")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if self.recount < 1:
            raise ValueError(f"recount must be >= 1, got {self.recount}")
        if self.auto_augment is not None and not self.auto_augment.startswith(
            ("rand", "augmix", "original", "v0", "3a")
        ):
            raise ValueError(f"auto_augment {self.auto_augment!r} is not a timm policy (e.g. rand-m9-mstd0.5-inc1)")
        if self.auto_augment is not None:
            check_policy_bounds(self.auto_augment)


@dataclass
class TrainSection:
    """Optimisation: AdamW, cosine schedule with warm-up, lr scaled by the total batch."""

    epochs: int = 300
    max_steps: int = 0  # > 0: iteration-based (optimizer updates), overrides epochs
    batch_size: int = 128  # per process; total batch = batch_size x processes x accum_steps
    accum_steps: int = 1
    base_lr: float = 1e-4  # for a total batch of 512
    scale_lr: bool = True  # lr = base_lr * total_batch / 512 (also warmup_lr and min_lr)
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    warmup_epochs: float = 5.0
    # the run length (epochs) the warm-up was set for; a run of another length (epochs or max_steps) gets
    # the same warm-up share of its steps. 0: no scaling. Filled from the recipe by load_classification_config
    recipe_epochs: float = 0.0
    weight_decay: float = 0.05
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning), e.g. 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float | None = 5.0
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on GPU, off on CPU
    ema_decay: float = 0.0  # > 0: keep a model EMA (evaluated and saved too)
    seed: int = 0
    eval_every_epochs: int = 1  # 0: only at the end
    eval_every_steps: int = 0  # iteration-based runs; 0: only at the end
    ckpt_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    device: str = "auto"
    progress: bool = True

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "epochs": Bound(0, 100_000),
        "max_steps": Bound(0, 10**9),
        "batch_size": Bound(1, 65_536),
        "accum_steps": Bound(1, 4096),
        "warmup_epochs": Bound(0, 100_000),
        "recipe_epochs": Bound(0, 100_000),
        "base_lr": Bound(0, 100),
        "warmup_lr": Bound(0, 100),
        "min_lr": Bound(0, 100),
        "seed": Bound(0, 2**32 - 1),
        "eval_every_epochs": Bound(0, 10**9),
        "eval_every_steps": Bound(0, 10**9),
        "ckpt_every_steps": Bound(0, 10**9),
        "keep_checkpoints": Bound(1, 10_000),
        "log_every": Bound(1, 10**9),
    }

    def validate(self) -> None:
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("epochs must be >= 1 (or max_steps > 0)")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
        for name in ("base_lr", "warmup_lr", "min_lr", "weight_decay", "warmup_epochs", "recipe_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.base_lr == 0:
            raise ValueError("base_lr must be > 0")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 or null, got {self.clip_grad}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        check_device(self.device)
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.eval_every_epochs < 0 or self.eval_every_steps < 0:
            raise ValueError("eval_every_epochs and eval_every_steps must be >= 0 (0: only at the end)")


@dataclass
class EvalSection:
    """Evaluation during training (``train.eval_every_epochs`` / ``eval_every_steps`` say when)."""

    enabled: bool = True  # false: no evaluation (--no-eval)
    max_images: int = 0  # > 0: evaluate on that many validation images, spread evenly over the classes
    batch_size: int = 0  # 0: 2 x train.batch_size
    head_subset: Literal["none", "in1k"] = "none"  # in1k: score a 22K head through its first 1,000 outputs

    BOUNDS: ClassVar[dict[str, Bound]] = {"max_images": Bound(0, 10**9), "batch_size": Bound(0, 65_536)}

    def validate(self) -> None:
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")


@dataclass
class ClassificationConfig:
    """A whole classification run. See ``configs/classification/*.yaml`` for the paper's recipes."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    aug: AugSection = field(default_factory=AugSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str | None = None

    def validate(self) -> None:
        if self.aug.enabled and (self.aug.mixup > 0 or self.aug.cutmix > 0) and self.train.batch_size % 2:
            raise ValueError(f"train.batch_size must be even with mixup/cutmix, got {self.train.batch_size}")


# timm auto-augment policy strings: rand-m9-n2-mstd0.5-inc1, augmix-m5-w3-d2, ...; the cost per image grows
# with n (ops), w (chains) and d (depth); magnitudes above 30 only saturate
_POLICY_BOUNDS = {"m": Bound(0, 30), "n": Bound(0, 16), "w": Bound(1, 16), "d": Bound(-1, 16), "mstd": Bound(0, 100)}
_POLICY_BOUNDS |= {"mmax": Bound(0, 30), "p": Bound(0, 1), "a": Bound(0, 100)}


def check_policy_bounds(policy: str) -> None:
    """``ValueError`` naming ``aug.auto_augment``'s part outside its bound (``rand-m99999-n1000000``: a
    million ops per image); parts the table leaves out are timm's to check."""
    import re

    for part in policy.split("-")[1:]:
        m = re.fullmatch(r"([a-z]+)(-?[0-9.]+(?:e[0-9+-]+)?)", part)
        if not m or m.group(1) not in _POLICY_BOUNDS:
            continue
        bound, value = _POLICY_BOUNDS[m.group(1)], float(m.group(2))
        if not bound.lo <= value <= bound.hi:
            raise ValueError(
                f"auto_augment {policy!r}: {m.group(1)}={m.group(2)} is outside the allowed range "
                f"[{bound.lo:g}, {bound.hi:g}]"
            )


def list_configs() -> list[str]:
    """Names of the bundled recipes (one per released model, plus small CPU ones)."""
    return packaged_configs("classification")


def config_path(name: str) -> Path:
    """Path of a bundled recipe by name (``focalnet_tiny_srf``) or of a YAML file."""
    return packaged_config(name, "classification")


def load_classification_config(
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    model: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> ClassificationConfig:
    """Resolve a run config: the bundled recipe of ``model`` (when no ``config`` is given) or ``config``
    (a bundled name or a YAML path), then ``values`` (``{dotted key: value}``: the command-line flags),
    then ``overrides`` (``["train.epochs=5", ...]``), validated.

    When the flags and overrides change the run's length but not its warm-up, ``train.recipe_epochs``
    records the recipe's length so that the warm-up keeps its share of the (shorter or longer) run."""
    path = None
    if config is not None:
        path = config_path(str(config))
    elif model is not None:
        path = config_path(model) if model in list_configs() else None
    ov = list(overrides)
    if model is not None:
        ov.insert(0, f"model.name={model}")
    cfg = load_config(ClassificationConfig, path, ov, values=values)
    keys = {o.split("=", 1)[0].strip() for o in ov} | set(values or {})
    if not keys & {"train.recipe_epochs", "train.warmup_epochs"} and not cfg.train.recipe_epochs:
        recipe = load_config(ClassificationConfig, path, ov[:1] if model is not None else [])
        cfg.train.recipe_epochs = float(recipe.train.epochs)
    return cfg


def classification_warmup(cfg: ClassificationConfig, updates_per_epoch: int, total_steps: int) -> Warmup:
    """The warm-up of ``cfg``'s run of ``total_steps`` updates (:func:`focalnet.engine.schedule.fit_warmup`:
    the recipe's share of ``train.recipe_epochs`` at another length, at most 10 % of the run; as given when
    the warm-up was set for this run, ``train.recipe_epochs`` 0)."""
    t = cfg.train
    ratio = (total_steps / updates_per_epoch) / t.recipe_epochs if t.recipe_epochs > 0 else None
    return fit_warmup(t.warmup_epochs * updates_per_epoch, total_steps, ratio, proportional=True)
