"""Training the universal (mask-classification) segmentors, Mask2Former, with the shared engine.

The run is the segmentation run of :func:`focalnet.segmentation.train`: the same config file, run folder,
lock, ``Trainer`` loop (resume, checkpoints, ``metrics.json``, progress), ``model.pt`` at the end. What
differs is gathered here:

* the data of each task (:mod:`focalnet.segmentation.universal_data`): ``panoptic`` a COCO panoptic folder
  (:class:`~focalnet.segmentation.panoptic.CocoPanoptic`, things and stuff), ``semantic`` the ADE20K /
  folder layouts of UPerNet (one target mask per class present), ``instance`` COCO instances
  (``annotations/instances_{train,val}2017.json``, one mask per non-crowd object);
* the augmentation: large-scale jitter for the COCO tasks (``aug.crop_size`` x ``U(aug.ratio_range)``),
  the UPerNet pipeline for ``semantic``;
* the loss: :class:`~focalnet.segmentation.mask2former.Mask2FormerCriterion` on the model's outputs;
* the optimiser: AdamW with the backbone's learning rate ``x optim.backbone_lr_mult`` and no weight decay
  on norms, biases and the query / level embeddings (detectron2's recipe), poly schedule;
* the evaluation: :func:`focalnet.segmentation.universal_eval.evaluate_universal` (PQ, mIoU or mask AP).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine import ConfigError, DistInfo, Trainer, TrainerConfig, param_groups, save_config, set_group_lrs
from ..engine.schedule import Warmup, batch_text, fit_warmup, run_updates
from ..weights.checks import check_config_size
from .data import build_dataset
from .finish import finish_run
from .load import build_segmentor, read_segmentor
from .registry import get_segmentor
from .transforms import TrainTransform
from .universal_data import CocoInstanceMasks, LargeScaleJitter, SemanticMasks, universal_collate

__all__ = [
    "UniversalConfig",
    "InstanceEvalSet",
    "task_dataset",
    "build_universal_model",
    "universal_param_groups",
    "train_universal",
    "universal_warmup",
]

log = logging.getLogger("focalnet")

# parameters without weight decay besides norms and biases (detectron2's WEIGHT_DECAY_EMBED = 0)
NO_DECAY_EMBEDDINGS = ("query_feat", "query_embed", "level_embed")


@dataclass
class UniversalConfig:
    """Settings of the universal segmentors' tasks: the COCO files of ``panoptic`` / ``instance`` data
    (relative to ``data.root`` unless absolute; default: the COCO 2017 layout) and the inference
    thresholds of the reference post-processing."""

    train_json: str | None = None  # annotations/panoptic_train2017.json or annotations/instances_train2017.json
    val_json: str | None = None
    train_png_dir: str | None = None  # panoptic PNGs: annotations/panoptic_train2017/ (or at the root)
    val_png_dir: str | None = None
    object_mask_threshold: float = 0.8  # panoptic: queries below this class probability are dropped
    overlap_threshold: float = 0.8  # panoptic: a mask keeping less than this share of itself is dropped
    max_instances: int = 100  # instance: detections per image
    num_points: int = 12544  # the criterion's sampled points per mask (matching and mask losses)

    def validate(self) -> None:
        for k in ("object_mask_threshold", "overlap_threshold"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"universal.{k} must be in [0, 1], got {getattr(self, k)}")
        if self.max_instances < 1 or self.num_points < 1:
            raise ValueError("universal.max_instances and universal.num_points must be >= 1")


# ------------------------------------------------------------------------------------------------ data
class InstanceEvalSet:
    """COCO instances for evaluation: items ``{"image", "image_id"}`` of the images
    :class:`~focalnet.segmentation.universal_data.CocoInstanceMasks` keeps, and ``coco``, the checked
    annotations (crowd regions included) as a pycocotools ``COCO`` for ``COCOeval``."""

    def __init__(self, json_file: Path, img_dir: Path, split: str = "val") -> None:
        import contextlib
        import io

        from pycocotools.coco import COCO

        from ..engine.coco import read_coco
        from .universal_data import CocoInstanceMasks

        self.masks = CocoInstanceMasks(json_file, img_dir, split=split)
        for k in ("class_names", "category_ids", "problems"):
            setattr(self, k, getattr(self.masks, k))
        self.thing_classes = [True] * len(self.class_names)
        data, _ = read_coco(json_file, img_dir, with_masks=True)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.ids = [im["id"] for im in self.masks.images]

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> Any:
        path = self.masks.img_dir / str(self.masks.images[i]["file_name"])
        try:
            img = self.masks.load(i)[0]
        except (OSError, ValueError) as e:
            self.problems.append({"split": self.masks.split, "file": str(path), "problem": str(e)})
            log.warning("skipping %s: %s", path, e)
            return None
        return {"image": img, "image_id": self.ids[i], "path": str(path)}


def _under(root: Path, p: str | None) -> Path | None:
    if not p:
        return None
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def task_dataset(cfg: Any, split: str, train: bool, class_names: list[str] | None = None) -> Any:
    """The ``split`` ("train" or "val") data of ``cfg.task``: training items ``(tensor, targets)`` with
    ``train``, else the raw items evaluation reads. Each has ``class_names`` and ``problems``; the COCO
    ones ``thing_classes`` and ``category_ids``."""
    task, root, u, aug = cfg.task, Path(cfg.data.root).expanduser(), cfg.universal, cfg.aug
    if task == "semantic":
        tf = None
        if train:
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
        ds = build_dataset(cfg.data, split, tf, class_names=class_names)
        return SemanticMasks(ds) if train else ds
    lsj = None
    if train:
        lsj = LargeScaleJitter(
            int(aug.crop_size[0]), tuple(aug.ratio_range), aug.flip_prob, tuple(aug.mean), tuple(aug.std)
        )
    json_file = _under(root, u.train_json if split == "train" else u.val_json)
    img_dir = _under(root, cfg.data.train_img_dir if split == "train" else cfg.data.val_img_dir)
    if task == "panoptic":
        from .panoptic import CocoPanoptic, panoptic_paths

        png = u.train_png_dir if split == "train" else u.val_png_dir
        js, png_dir, imgs = panoptic_paths(root, split, json_file, png, img_dir)
        if not js.is_file():
            raise FileNotFoundError(f"panoptic annotations not found: {js}")
        ds = CocoPanoptic(
            js, png_dir, imgs, transform=lsj, split=split, verify=cfg.data.verify, on_error=cfg.data.on_error
        )
        return ds
    if task == "instance":
        js = json_file or root / "annotations" / f"instances_{split}2017.json"
        imgs = img_dir or root / f"{split}2017"
        if not train:
            return InstanceEvalSet(js, imgs, split)
        ds = CocoInstanceMasks(js, imgs, lsj, split=split)
        ds.thing_classes = [True] * len(ds.class_names)
        return ds
    raise ConfigError(f"task must be one of semantic, panoptic, instance; got {task!r}")


# ----------------------------------------------------------------------------------------------- model
def build_universal_model(cfg: Any, data: Any) -> nn.Module:
    """The segmentor of ``cfg.model`` for the classes of ``data`` (a new one, or ``model.checkpoint``
    fine-tuned); ``meta`` records the task's thing classes and category ids."""
    m, spec = cfg.model, get_segmentor(cfg.model.segmentor)
    names = list(data.class_names)
    head = dict(getattr(m, spec.config_field))
    spec.head_options(head)  # unknown keys: one line naming them (the builder fills in the defaults)
    if m.checkpoint:
        if m.backbone_checkpoint or m.pretrained:
            raise ConfigError("model.checkpoint (a whole segmentor) excludes model.backbone_checkpoint/pretrained")
        meta, sd, _ = read_segmentor(m.checkpoint)
        if meta.get("segmentor", "upernet") != spec.name:
            raise ConfigError(f"model.checkpoint {m.checkpoint} is not a {spec.title} (model.segmentor)")
        drop_path = m.backbone_overrides.get("drop_path_rate")
        model = build_segmentor(meta, sd, m.checkpoint, **({} if drop_path is None else {"drop_path_rate": drop_path}))
        model.meta["init_checkpoint"] = str(m.checkpoint)
        model.meta.pop("source", None)
        if model.num_classes != len(names):
            log.warning(
                "%s: %d classes -> %d of the data: a new classifier", m.checkpoint, model.num_classes, len(names)
            )
        model.reset_classes(len(names), names)
    else:
        check_config_size(  # before anything is allocated: --set model.mask2former.hidden_dim=100000 is one line
            lambda: spec.build(m.backbone, len(names), head=head, **m.backbone_overrides),
            f"model {spec.name} on {m.backbone} ({len(names)} classes, head {head})",
            training=True,
        )
        model = spec.build(
            m.backbone,
            len(names),
            m.backbone_checkpoint,
            pretrained=m.pretrained,
            class_names=names,
            head=head,
            **m.backbone_overrides,
        )
    model.meta["task"] = cfg.task
    model.meta["thing_classes"] = list(getattr(data, "thing_classes", None) or [False] * len(names))
    if getattr(data, "category_ids", None) is not None:
        model.meta["category_ids"] = [int(c) for c in data.category_ids]
    return model.train()


def universal_param_groups(model: nn.Module, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
    """AdamW groups: the backbone's with ``lr_scale = backbone_lr_mult``, the head's at the base rate; no
    weight decay on norms, biases and the query / level embeddings."""
    groups = []
    for part, scale in ((model.backbone, backbone_lr_mult), (model.sem_seg_head, 1.0)):
        for g in param_groups(part, weight_decay, no_decay_names=NO_DECAY_EMBEDDINGS):
            g["lr_scale"] = scale
            groups.append(g)
    return groups


# -------------------------------------------------------------------------------------------- training
def universal_warmup(cfg: Any, steps: int) -> Warmup:
    """The warm-up of a universal segmentor's run of ``steps`` updates (:mod:`focalnet.engine.schedule`): the
    recipe's warm-up iterations, at most 10 % of the run; as given when set for this run (``recipe_iters`` 0)."""
    return fit_warmup(cfg.optim.warmup_iters, steps, 1.0 if cfg.train.recipe_iters else None, proportional=False)


def train_universal(cfg: Any, out: Path, dist: DistInfo, run_id: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The training run of a universal segmentor (``cfg.model.segmentor``) for ``cfg.task``, in the run
    folder ``out`` that :func:`~focalnet.segmentation.train` prepared; returns the final metrics."""
    from timm.scheduler import PolyLRScheduler

    from .mask2former.criterion import Mask2FormerCriterion
    from .universal_eval import evaluate_universal

    spec, r, o = get_segmentor(cfg.model.segmentor), cfg.train, cfg.optim
    if cfg.task not in spec.tasks:
        raise ConfigError(f"{spec.title} is trained for {', '.join(spec.tasks)}, not {cfg.task!r} (--task)")
    cfg.universal.validate()
    world, per_proc = dist.world_size, r.batch_size  # per process and micro-batch, as in every task
    random.seed(r.seed + dist.rank)
    np.random.seed((r.seed + dist.rank) % 2**32)
    torch.manual_seed(r.seed)
    train_set = task_dataset(cfg, "train", True)
    names = list(train_set.class_names)
    val_set = None
    if cfg.eval.enabled:
        try:
            val_set = task_dataset(cfg, "val", False, class_names=names if cfg.task == "semantic" else None)
        except FileNotFoundError as e:
            log.warning("no validation set (%s): training without evaluation", e)
    model = build_universal_model(cfg, train_set)
    log.info(
        "%s (%s) on %s: %.1fM parameters, %d classes, %d training / %s validation images",
        spec.title,
        cfg.task,
        cfg.model.backbone,
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(names),
        len(train_set),
        len(val_set) if val_set is not None else 0,
    )
    criterion = Mask2FormerCriterion(len(names), num_points=cfg.universal.num_points)
    groups = universal_param_groups(model, o.weight_decay, o.backbone_lr_mult)
    set_group_lrs(groups, o.lr)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    steps = r.iters
    if r.epochs > 0:  # an epoch-based recipe (COCO: 50 epochs): its length in updates, as the dry run counts
        steps = run_updates(len(train_set), per_proc, r.epochs, world_size=world, accum_steps=r.accum_steps)[1]
    warmup = universal_warmup(cfg, steps).steps
    batch = batch_text(per_proc, world, r.accum_steps)
    log.info("%s", batch)
    scheduler = PolyLRScheduler(
        optimizer,
        t_initial=steps,
        power=o.power,
        lr_min=o.min_lr,
        warmup_t=warmup,
        warmup_lr_init=o.lr * o.warmup_ratio,
        t_in_epochs=False,
    )

    eval_fn = None
    if val_set is not None:

        def eval_fn(m: nn.Module, trainer: Trainer) -> dict[str, Any]:
            res = evaluate_universal(
                m,
                val_set,
                cfg.task,
                cfg.eval.test_config(),
                cfg.universal,
                device=trainer.device,
                max_images=cfg.eval.max_images,
                num_workers=min(cfg.data.num_workers, 2),
                rank=trainer.dist.rank,
                world_size=trainer.dist.world_size,
                progress=r.progress,
                mean=cfg.aug.mean,
                std=cfg.aug.std,
            )
            return {k: v for k, v in res.items() if k not in ("test", "per_class_pq")}

    def step_fn(m: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        img, targets = batch
        img = img.to(device, non_blocking=True)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = criterion(m(img), targets)
        logs = {k: float(losses[k].detach()) for k in ("loss_ce", "loss_mask", "loss_dice")}
        return losses["loss"], logs, img.shape[0]

    tcfg = TrainerConfig(
        output_dir=str(out),
        max_steps=steps,
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
    if dist.is_main:
        notes = [f"schedule: warm-up {warmup} of {steps} updates", batch]
        save_config(cfg, out / "config.yaml", run_id=run_id, notes=notes)
    trainer = Trainer(
        tcfg,
        model,
        optimizer,
        train_set,
        step_fn,
        scheduler=scheduler,
        eval_fn=eval_fn,
        collate_fn=universal_collate,
        dist_info=dist,
        run_state={"segmentation_meta": dict(model.meta), "segmentation_extra": dict(extra)},
    )
    final = trainer.fit()
    if final.get("interrupted"):
        return final
    return finish_run(trainer, model, final, train_set, val_set, out, extra, dist, keep_per_class=False)
