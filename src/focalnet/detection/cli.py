"""``focalnet detection {train,evaluate,predict,convert,configs}``: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "resolve_config"]

_REF_MIN_SIZE = 800


def _add_data_args(p: argparse.ArgumentParser, train: bool) -> None:
    p.add_argument(
        "--data",
        help="dataset root in the COCO 2017 layout (annotations/instances_{train,val}2017.json, train2017/, val2017/)",
    )
    if train:
        p.add_argument("--train-ann", help="training annotation json (instead of ROOT/annotations/...)")
        p.add_argument("--train-images", help="training image folder (instead of ROOT/train2017)")
    p.add_argument("--val-ann", help="validation annotation json (instead of ROOT/annotations/...)")
    p.add_argument("--val-images", help="validation image folder (instead of ROOT/val2017)")


def register(subparsers: Any) -> None:
    """Add the ``detection`` subcommand and its sub-subcommands to the ``focalnet`` parser."""
    det = subparsers.add_parser("detection", help="object detection / instance segmentation (see train --detector)")
    sub = det.add_subparsers(dest="detection_command", required=True)

    p = sub.add_parser(
        "train",
        help="train a FocalNet detector (--detector) on COCO-format data",
        description="Train on COCO-format data. Single process, or torchrun --nproc_per_node N -m "
        "focalnet detection train ... for DDP.",
    )
    p.add_argument("--config", help="packaged config name (see `focalnet detection configs`) or YAML file")
    p.add_argument("--backbone", help="FocalNet variant, e.g. focalnet_tiny_lrf")
    from .registry import DETECTORS  # the detectors' own summaries

    p.add_argument(
        "--detector",
        choices=list(DETECTORS),
        help="which detector (default: mask_rcnn; unset settings are its released recipe's): "
        + "; ".join(f"{s.name}: {s.title}, {s.summary}" for s in DETECTORS.values()),
    )
    _add_data_args(p, train=True)
    p.add_argument("--output", required=True, help="run folder (checkpoints, metrics.json, model.pt, ...)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="iteration-based schedule (lr steps scale with it)")
    p.add_argument("--batch-size", type=int, help="images per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--min-size", type=int, help="test short side (training scales are rescaled by min-size/800)")
    p.add_argument("--max-size", type=int, help="long-side limit for training and test")
    p.add_argument("--backbone-checkpoint", help="ImageNet (or detection) FocalNet checkpoint for the backbone")
    p.add_argument("--workers", type=int, help="data loader workers")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"])
    p.add_argument("--resume", help="'auto' (latest valid checkpoint in OUTPUT) or a checkpoint path")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a folder holding another run's checkpoints, deleting them",
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. optim.lr=2e-4 model.frozen_stages=1 data.filter_empty=false (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="COCO bbox/segm mAP of a checkpoint on a COCO-format validation set")
    p.add_argument("--checkpoint", required=True, help="model.pt, checkpoints/checkpoint-*.pt or an mmdetection file")
    _add_data_args(p, train=False)
    p.add_argument("--output", help="folder for metrics.json and results.json")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="data loader workers (at most the cores)")
    p.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images")
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument(
        "--mmdet-compat",
        action="store_true",
        default=None,
        help="aligned RoIAlign / unrounded anchors as mmdetection (default for mmdet files)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="detect objects in images: drawn PNGs and detections.json")
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--output", "--out", dest="out", default="predictions", help="output folder (default: ./predictions)"
    )
    p.add_argument("--score-thr", type=float, default=0.5)
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "convert",
        help="convert an original checkpoint (mmdetection, FocalNet-DINO, ...) to a focalnet detection file, "
        "or a detector back to its original layout (--to original)",
    )
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument(
        "--to",
        choices=["focalnet", "original"],
        default="focalnet",
        help="focalnet: this package's format (default); original: the detector's original layout",
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("configs", help="list the packaged detection configs")
    p.set_defaults(func=cmd_configs)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _deep_merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def resolve_config(args: argparse.Namespace) -> Any:
    """The run config: packaged/YAML ``--config``, then the flags, then ``--set`` overrides."""
    import yaml

    from ..engine.config import ConfigError, apply_overrides, build_config
    from .config import DetectionConfig, config_path

    data: dict[str, Any] = {}
    if args.config:
        path = config_path(args.config)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        data = loaded
    if args.detector:  # the detector decides which options the file's model section may hold
        data["model"] = {**(data.get("model") or {}), "detector": args.detector}
    base = build_config(DetectionConfig, data)  # defaults + file, to rescale sizes below
    flags: dict[str, Any] = {"model": {}, "data": {}, "optim": {}}
    m, d = flags["model"], flags["data"]
    if args.backbone:
        m["backbone"] = args.backbone
    if args.detector:
        m["detector"] = args.detector
    if args.backbone_checkpoint:
        m["backbone_checkpoint"] = args.backbone_checkpoint
    if args.min_size:
        r = args.min_size / base.model.min_size
        m["min_size"] = args.min_size
        d["scales"] = sorted({max(16, round(s * r)) for s in base.data.scales})
        d["crop_resize_scales"] = [max(16, round(s * r)) for s in base.data.crop_resize_scales]
        d["crop_range"] = [max(8, round(s * r)) for s in base.data.crop_range]
    if args.max_size:
        m["max_size"] = args.max_size
        d["max_size"] = args.max_size
    for flag, key in (
        ("data", "root"),
        ("train_ann", "train_ann"),
        ("train_images", "train_images"),
        ("val_ann", "val_ann"),
        ("val_images", "val_images"),
        ("workers", "num_workers"),
    ):
        v = getattr(args, flag, None)
        if v is not None:
            d[key] = v
    if args.lr is not None:
        flags["optim"]["lr"] = args.lr
    for flag in ("epochs", "max_steps", "batch_size", "device", "amp"):
        v = getattr(args, flag)
        if v is not None:
            flags[flag] = v
    if args.no_progress:
        flags["progress"] = False
    _deep_merge(data, flags)
    apply_overrides(data, args.set or [])
    return build_config(DetectionConfig, data)


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine import cleanup_distributed, fit_workers, set_threads
    from .train import train

    cfg = resolve_config(args)
    set_threads(args.threads, workers=fit_workers(cfg.data.num_workers))
    if not (cfg.data.root or cfg.data.train_ann):
        raise ValueError("no training data: give --data ROOT or --train-ann/--train-images")
    try:
        final = train(cfg, args.output, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    keys = [k for k in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50") if k in final]
    if keys:
        print(" ".join(f"{k}={final[k]:.4f}" for k in keys))
    print(f"run folder: {args.output} (metrics.json, model.pt)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine import write_json
    from .config import DataConfig
    from .data import CocoInstances
    from .evaluate import evaluate_detector
    from .load import load_detector
    from .transforms import eval_transforms

    if not args.data and not (args.val_ann and args.val_images):
        raise ValueError("give --data ROOT (COCO 2017 layout) or both --val-ann and --val-images")
    overrides = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    device = _device(args.device)
    model, meta = load_detector(args.checkpoint, device, mmdet_compat=args.mmdet_compat, **overrides)
    ann, img = DataConfig(root=args.data or "", val_ann=args.val_ann or "", val_images=args.val_images or "").paths(
        "val"
    )
    ds = CocoInstances(ann, img, eval_transforms(), with_masks=meta["masks"], train=False)
    _check_categories(ds, meta)
    metrics = evaluate_detector(
        model,
        ds,
        device,
        output_dir=args.output,
        batch_size=args.batch_size,
        num_workers=args.workers,
        max_images=args.max_images,
        category_ids=meta["category_ids"],
        masks=meta["masks"],
    )
    metrics["checkpoint"] = str(args.checkpoint)
    metrics["data_problems"] = ds.problems_report()
    if args.output:
        write_json(Path(args.output) / "metrics.json", metrics)
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if not k.endswith("_summary")}, indent=2))
    else:
        for iou in ("bbox", "segm"):
            if f"{iou}_summary" in metrics:
                print(f"{iou}:")
                print("\n".join(metrics[f"{iou}_summary"]))
        if args.output:
            print(f"wrote {Path(args.output) / 'metrics.json'} and {Path(args.output) / 'results.json'}")
    return 0


def _check_categories(ds: Any, meta: dict[str, Any]) -> None:
    # labels map through the checkpoint's categories, which may hold more (COCO DINO: 90 ids for 80 classes)
    if not set(ds.category_ids) <= set(meta["category_ids"]):
        raise ValueError(
            f"the checkpoint's categories ({len(meta['category_ids'])}: ids {meta['category_ids'][:5]}...) differ from "
            f"the dataset's ({len(ds.category_ids)}: ids {ds.category_ids[:5]}...)"
        )


def cmd_predict(args: argparse.Namespace) -> int:
    from .load import load_detector
    from .predict import predict_images

    missing = [p for p in args.images if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"image(s) not found: {', '.join(missing)}")
    overrides = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    device = _device(args.device)
    model, meta = load_detector(args.checkpoint, device, **overrides)
    records = predict_images(
        model,
        args.images,
        class_names=meta["class_names"],
        category_ids=meta["category_ids"],
        out_dir=args.out,
        score_thr=args.score_thr,
        device=device,
    )
    for r in records:
        if "error" in r:
            print(f"{r['image']}: {r['error']}", file=sys.stderr)
            continue
        names = ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"][:10])
        print(f"{r['image']}: {len(r['detections'])} detection(s){': ' + names if names else ''}")
    print(f"wrote {Path(args.out) / 'detections.json'} and the drawn images in {args.out}")
    return 0 if all("error" not in r for r in records) else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from .load import convert_detector

    print(convert_detector(args.input, args.output, to=getattr(args, "to", "focalnet")))
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from .config import config_path, list_configs

    for name in list_configs():
        print(f"{name}  ({config_path(name)})")
    return 0
