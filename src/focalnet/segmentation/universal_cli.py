"""The command-line side of the segmentor registry and of the universal segmentors (Mask2Former):
``--segmentor`` / ``--task`` and the COCO file options, and ``evaluate`` / ``predict`` for a checkpoint
whose segmentor is not UPerNet. Building the parser imports no torch and no model: the choices and help of
``--segmentor`` are read from the registry when they are checked or printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TASK_CHOICES",
    "add_segmentor_args",
    "add_coco_file_args",
    "is_universal",
    "print_metrics",
    "evaluate_command",
    "predict_command",
]

TASK_CHOICES = ("semantic", "panoptic", "instance")


class _Segmentors:
    """``--segmentor`` choices: the registry's names, read when a name is checked."""

    def _names(self) -> list[str]:
        from .registry import SEGMENTORS

        return list(SEGMENTORS)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


class _SegmentorHelp(str):
    """``--segmentor`` help from the segmentors' own summaries, composed when help is printed."""

    def __new__(cls) -> _SegmentorHelp:
        return super().__new__(cls, "which segmentor")

    def __mod__(self, params: object) -> str:
        from .registry import SEGMENTORS

        return "which segmentor (default: upernet; unset settings are its recipe's): " + "; ".join(
            f"{s.name}: {s.title}, {s.summary} (tasks: {', '.join(s.tasks)})" for s in SEGMENTORS.values()
        )


def add_segmentor_args(p: argparse.ArgumentParser) -> None:
    """``--segmentor`` and ``--task`` of ``segmentation train``."""
    p.add_argument("--segmentor", choices=_Segmentors(), metavar="NAME", help=_SegmentorHelp())
    p.add_argument(
        "--task",
        choices=TASK_CHOICES,
        help="what to train for (default: semantic; panoptic and instance need a universal segmentor, "
        "--segmentor mask2former): panoptic reads COCO panoptic data (annotations/panoptic_{train,val}2017.json, "
        "annotations/panoptic_{train,val}2017/, {train,val}2017/), instance COCO instances "
        "(annotations/instances_{train,val}2017.json), semantic the ADE20K or folder layout",
    )


def add_coco_file_args(p: argparse.ArgumentParser, train: bool) -> None:
    """The COCO files of the panoptic and instance tasks, where they are not in the COCO 2017 layout."""
    splits = ("train", "val") if train else ("",)
    for s in splits:
        flag = f"--{s}-annotations" if s else "--annotations"
        what = {"train": "training", "val": "validation", "": "evaluated"}[s]
        p.add_argument(flag, metavar="JSON", help=f"panoptic/instance tasks: the {what} COCO JSON (relative to ROOT)")
        flag = f"--{s}-png-dir" if s else "--png-dir"
        p.add_argument(flag, metavar="DIR", help=f"panoptic task: the {what} panoptic PNG folder (relative to ROOT)")


def is_universal(meta: Any) -> bool:
    """Whether a loaded model is a universal segmentor (its ``meta`` names one other than UPerNet)."""
    return isinstance(meta, dict) and meta.get("segmentor", "upernet") != "upernet"


def _task(args: argparse.Namespace, model: Any) -> str:
    from .registry import segmentor_of

    spec = segmentor_of(model.meta)
    task = getattr(args, "task", None) or model.meta.get("task") or spec.tasks[0]
    if task not in spec.tasks:
        raise ValueError(f"{spec.title} predicts {', '.join(spec.tasks)}, not {task!r}")
    if task == "panoptic" and not any(model.meta.get("thing_classes") or []):
        print("note: the checkpoint names no thing classes: every class is treated as stuff", file=sys.stderr)
    return task


def _data_config(args: argparse.Namespace, model: Any, extra: dict[str, Any], task: str) -> Any:
    """A :class:`~focalnet.segmentation.train.SegmentationConfig`-shaped namespace for ``task_dataset``:
    the stored run's data settings where the data root is the same, the command's options over them."""
    from types import SimpleNamespace

    from .data import DataConfig
    from .universal import UniversalConfig

    stored = dict(extra.get("config") or {})
    sdata, suni = dict(stored.get("data") or {}), dict(stored.get("universal") or {})
    same_root = Path(args.data).expanduser() == Path(str(sdata.get("root", ""))).expanduser()
    d = {k: sdata[k] for k in ("layout", "ignore_index", "reduce_zero_label") if k in sdata}
    if same_root:
        d.update({k: v for k, v in sdata.items() if k.endswith(("_img_dir", "_ann_dir"))})
    dcfg = DataConfig(root=args.data, **d)
    dcfg.num_workers = args.workers if args.workers is not None else 2
    for k in ("layout", "ignore_index"):
        if getattr(args, k, None) is not None:
            setattr(dcfg, k, getattr(args, k))
    if args.reduce_zero_label:
        dcfg.reduce_zero_label = args.reduce_zero_label == "true"
    if args.img_dir:
        setattr(dcfg, f"{args.split}_img_dir", args.img_dir)
    if args.ann_dir:
        setattr(dcfg, f"{args.split}_ann_dir", args.ann_dir)
    dcfg.validate()
    ucfg = UniversalConfig(**{k: v for k, v in suni.items() if k in UniversalConfig.__dataclass_fields__})
    if not same_root:
        ucfg.train_json = ucfg.val_json = ucfg.train_png_dir = ucfg.val_png_dir = None
    if args.annotations:
        setattr(ucfg, f"{args.split}_json", args.annotations)
    if args.png_dir:
        setattr(ucfg, f"{args.split}_png_dir", args.png_dir)
    return SimpleNamespace(task=task, data=dcfg, universal=ucfg, aug=None)


def print_metrics(metrics: dict[str, Any], task: str, as_json: bool = False) -> None:
    """The metrics of ``task`` as ``evaluate`` prints them: panopticapi's table (panoptic), mask AP
    (instance) or mIoU (semantic), then the image counts and files; only what ``metrics`` holds."""
    import json

    if as_json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "per_class_pq"}, indent=2))
        return
    if task == "panoptic" and "panoptic" in metrics:
        from .pq import format_pq_table

        print(format_pq_table(metrics["panoptic"]))
    keys = {"instance": ("AP", "AP50", "AP75", "APs", "APm", "APl"), "semantic": ("mIoU", "mAcc", "aAcc")}.get(task, ())
    if any(metrics.get(k) is not None for k in keys):
        print("  ".join(f"{k} {metrics[k]:.2f}" for k in keys if metrics.get(k) is not None))
    for k in ("num_images", "skipped_images", "num_skipped_samples", "model_file", "metrics_file"):
        if k in metrics:
            print(f"{k}: {metrics[k]}")


def evaluate_command(args: argparse.Namespace, model: Any, extra: dict[str, Any], test_cfg: Any) -> int:
    """``segmentation evaluate`` of a universal segmentor: PQ/SQ/RQ (panoptic), mIoU (semantic) or mask AP
    (instance) on ``--data``; ``metrics.json`` next to the checkpoint (or in ``--output``)."""
    from ..engine import init_distributed, write_json
    from ..engine.outputs import OutputRule
    from .universal import task_dataset
    from .universal_eval import evaluate_universal

    task = _task(args, model)
    cfg = _data_config(args, model, extra, task)
    dist = init_distributed(args.device or "auto")  # under torchrun the ranks split the images
    device = dist.device
    model.to(device)
    names = model.class_names if task == "semantic" else None
    dataset = task_dataset(cfg, args.split, False, class_names=names)
    if task != "semantic" and list(dataset.class_names) != list(model.class_names):
        raise ValueError(
            f"the {args.split} data's {len(dataset.class_names)} classes are not the checkpoint's "
            f"{len(model.class_names)} ({', '.join(model.class_names[:5])}, ...)"
        )
    out = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent / f"eval-{args.split}-{task}"
    rule = OutputRule(
        "segmentation evaluate", [args.checkpoint, args.data], overwrite=getattr(args, "overwrite", False)
    )
    if dist.is_main:
        rule.claim([out / "metrics.json"], out, "--output")
    mean, std = extra.get("mean", (123.675, 116.28, 103.53)), extra.get("std", (58.395, 57.12, 57.375))
    metrics = evaluate_universal(
        model,
        dataset,
        task,
        test_cfg,
        cfg.universal,
        device=device,
        max_images=args.max_images or 0,
        num_workers=cfg.data.num_workers,
        rank=dist.rank,
        world_size=dist.world_size,
        progress=not args.no_progress,
        mean=mean,
        std=std,
    )
    metrics.update(
        checkpoint=str(args.checkpoint),
        task=task,
        data={"root": str(args.data), "split": args.split},
        data_problems=list(dataset.problems),
    )
    metrics["num_skipped_samples"] = len(dataset.problems) + metrics["skipped_images"]
    if dist.is_main:
        write_json(out / "metrics.json", metrics)
        rule.finish()
        metrics["metrics_file"] = str(out / "metrics.json")
        print_metrics(metrics, task, args.json)
    return 0


def predict_command(
    args: argparse.Namespace, model: Any, extra: dict[str, Any], test_cfg: Any, rule: Any = None
) -> int:
    """``segmentation predict`` of a universal segmentor: COCO panoptic PNGs + ``panoptic.json`` (what
    ``segmentation pq`` scores), label PNGs and overlays."""
    from ..engine import resolve_device, write_json
    from ..engine.outputs import OutputRule
    from .universal import UniversalConfig
    from .universal_eval import predict_universal

    device = resolve_device(args.device)
    model.to(device)
    out = Path(args.output or "predictions")
    stored = dict((extra.get("config") or {}).get("universal") or {})
    ucfg = UniversalConfig(**{k: v for k, v in stored.items() if k in UniversalConfig.__dataclass_fields__})
    if rule is None:
        rule = OutputRule(
            "segmentation predict", [args.checkpoint, *args.images], overwrite=getattr(args, "overwrite", False)
        )
        rule.claim([out / "predictions.json"], out)
    records, json_path = predict_universal(
        model,
        args.images,
        out,
        test_cfg,
        device,
        extra.get("mean", (123.675, 116.28, 103.53)),
        extra.get("std", (58.395, 57.12, 57.375)),
        ucfg,
        progress=not args.no_progress,
        rule=rule,
    )
    write_json(out / "predictions.json", {"checkpoint": str(args.checkpoint), "predictions": records})
    rule.finish()  # every file written: the manifest records them all (a later run may replace them)
    for r in records:
        if "error" in r:
            print(f"{r['image']}: {r['error']}", file=sys.stderr)
            continue
        segs = r["segments"]
        things = sum(1 for s in segs if s["isthing"])
        print(f"{r['image']}: {r['overlay']}  ({things} instances, {len(segs) - things} stuff segments)")
    done = sum("error" not in r for r in records)
    print(
        f"wrote {done} prediction(s) to {out} (panoptic PNGs in {out / 'panoptic'}, {json_path.name}, "
        "label PNGs, overlays, predictions.json)"
    )
    return 0 if done == len(records) else 1
