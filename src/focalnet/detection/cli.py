"""``focalnet detection {train,evaluate,predict,convert,configs}``: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..engine.options import (
    FlagTable,
    add_compile_arg,
    add_overwrite_arg,
    add_shared_options,
    config_from_args,
    off,
    raise_if_interrupted,
)

__all__ = ["TRAIN_FLAGS", "register", "resolve_config"]


def _detector_name(name: str) -> str:
    """``--detector``: a registered detector's name, checked when given (building the parser, hence
    ``--help``, imports no detector: neither torch nor torchvision)."""
    from .registry import DETECTORS

    if name not in DETECTORS:
        raise argparse.ArgumentTypeError(f"unknown detector {name!r} (choose from {', '.join(DETECTORS)})")
    return name


def _rescaled_sizes(min_size: int, base: Callable[[], Any]) -> Mapping[str, Any]:
    """``--min-size``: the test short side, and the training scales, crop sizes and crop range rescaled by
    ``min_size`` / the config's test short side (the detector's own where the config leaves it unset; the
    largest training scale for a detector without one)."""
    cfg = base()
    r = min_size / (cfg.model.min_size or max(cfg.data.scales))
    return {
        "model.min_size": min_size,
        "data.scales": sorted({max(16, round(s * r)) for s in cfg.data.scales}),
        "data.crop_resize_scales": [max(16, round(s * r)) for s in cfg.data.crop_resize_scales],
        "data.crop_range": [max(8, round(s * r)) for s in cfg.data.crop_range],
    }


# training flags -> config keys (the shared options of engine.options included)
TRAIN_FLAGS: FlagTable = {
    "backbone": "model.backbone",
    "detector": "model.detector",
    "backbone_checkpoint": "model.backbone_checkpoint",
    "min_size": _rescaled_sizes,
    "max_size": ("model.max_size", "data.max_size"),
    "data": "data.root",
    "train_ann": "data.train_ann",
    "train_images": "data.train_images",
    "val_ann": "data.val_ann",
    "val_images": "data.val_images",
    "workers": "data.num_workers",
    "lr": "optim.lr",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "amp": "amp",
    "device": "device",
    "no_progress": off("progress"),
    "max_images": "eval_max_images",
    "eval_every": ("eval_every_epochs", "eval_every_steps"),
    "no_eval": off("eval_enabled"),
}


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
    det = subparsers.add_parser("detection")
    sub = det.add_subparsers(dest="detection_command", required=True)

    p = sub.add_parser(
        "train",
        help="train a FocalNet detector (--detector: see `focalnet detection train --help`) on COCO-format data",
        description="Train on COCO-format data. Single process, or torchrun --nproc_per_node N -m "
        "focalnet detection train ... for DDP. Settings: defaults < --config < options < --set key=value.",
    )
    p.add_argument("--config", help="packaged config name (see `focalnet detection configs`) or YAML file")
    p.add_argument("--backbone", help="FocalNet variant, e.g. focalnet_tiny_lrf")
    p.add_argument(
        "--detector",
        type=_detector_name,
        metavar="NAME",
        help="which detector (default: mask_rcnn; unset settings are its released recipe's); "
        "`focalnet detection configs` lists the detectors with their recipes",
    )
    _add_data_args(p, train=True)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="iteration-based schedule (lr steps scale with it)")
    p.add_argument("--batch-size", type=int, help="images per process")
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--min-size",
        type=int,
        help="test short side (the training scales and crops are rescaled by MIN_SIZE / the recipe's test short side)",
    )
    p.add_argument("--max-size", type=int, help="long-side limit for training and test")
    p.add_argument("--backbone-checkpoint", help="ImageNet (or detection) FocalNet checkpoint for the backbone")
    p.add_argument("--workers", type=int, help="data loader workers")
    p.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"])
    add_shared_options(p, "train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="COCO bbox/segm mAP of a checkpoint on a COCO-format validation set")
    p.add_argument("--checkpoint", required=True, help="model.pt, checkpoints/checkpoint-*.pt or an mmdetection file")
    _add_data_args(p, train=False)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="data loader workers (at most the cores)")
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument(
        "--mmdet-compat",
        action="store_true",
        default=None,
        help="aligned RoIAlign / unrounded anchors as mmdetection (default for mmdet files)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_compile_arg(p)
    add_shared_options(p, "evaluate")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="detect objects in images: drawn PNGs and detections.json")
    p.add_argument("images", nargs="+", help="image files or folders (their images, recursively, sorted)")
    p.add_argument("--checkpoint", required=True, help="model.pt, any layout evaluate reads, or an .onnx export")
    p.add_argument("--score-thr", type=float, default=0.5)
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    add_compile_arg(p)
    add_shared_options(p, "predict")
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
    add_overwrite_arg(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("configs", help="list the detectors and the packaged detection configs")
    p.set_defaults(func=cmd_configs)


def resolve_config(args: argparse.Namespace) -> Any:
    """The run config: packaged/YAML ``--config``, then the flags (:data:`TRAIN_FLAGS`), then ``--set``."""
    from .config import load_detection_config

    return config_from_args(args, TRAIN_FLAGS, load_detection_config)


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine import cleanup_distributed, fit_workers, set_threads
    from .train import train

    cfg = resolve_config(args)
    set_threads(args.threads, workers=fit_workers(cfg.data.num_workers))
    if not (cfg.data.root or cfg.data.train_ann):
        raise ValueError("no training data: give --data ROOT or --train-ann/--train-images")
    if args.dry_run:
        from .train import dry_run

        return dry_run(cfg)
    try:
        final = train(cfg, args.output, resume=args.resume, overwrite=args.overwrite)
    finally:
        cleanup_distributed()
    raise_if_interrupted(final, args.output)  # exit 130, as every interrupted command
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    from .evaluate import map_percent

    if map_percent(final):
        print(map_percent(final))  # percent, as the other tasks; metrics.json keeps pycocotools' fractions
    print(f"run folder: {args.output} (metrics.json, model.pt)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine import resolve_device, write_json
    from ..engine.outputs import OutputRule
    from ..models.inference import inference_path
    from .config import DataConfig
    from .data import CocoInstances
    from .evaluate import evaluate_detector, map_percent
    from .load import load_detector
    from .transforms import eval_transforms

    if not args.data and not (args.val_ann and args.val_images):
        raise ValueError("give --data ROOT (COCO 2017 layout) or both --val-ann and --val-images")
    inputs = [args.checkpoint, args.data, args.val_ann, args.val_images]
    rule = OutputRule("detection evaluate", inputs, overwrite=args.overwrite)
    if args.output:  # before anything runs
        rule.claim([Path(args.output) / "metrics.json", Path(args.output) / "results.json"], args.output, "--output")
    overrides = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    device = resolve_device(args.device)
    model, meta = load_detector(args.checkpoint, device, mmdet_compat=args.mmdet_compat, **overrides)
    inference_path(model, compile=args.compile)  # fused (and compiled) backbone: same outputs within 1e-5
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
        max_images=args.max_images or 0,
        category_ids=meta["category_ids"],
        progress=not args.no_progress,
        masks=meta["masks"],
    )
    metrics["checkpoint"] = str(args.checkpoint)
    metrics["data_problems"] = ds.problems_report()
    if args.output:
        write_json(Path(args.output) / "metrics.json", metrics)
        rule.finish()
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if not k.endswith("_summary")}, indent=2))
    else:
        for iou in ("bbox", "segm"):
            if f"{iou}_summary" in metrics:
                print(f"{iou}:")
                print("\n".join(metrics[f"{iou}_summary"]))
        print(map_percent(metrics))  # the headline numbers in percent, as the other tasks print theirs
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
    from ..engine import resolve_device
    from ..engine.images import collect_images
    from ..engine.outputs import OutputRule
    from ..models.inference import inference_path
    from .load import load_detector
    from .predict import predict_images, prediction_files

    args.images = [str(p) for p in collect_images(args.images)]  # folders: their images, recursively, sorted
    out = args.output or "predictions"
    rule = OutputRule("detection predict", [*args.images, args.checkpoint], overwrite=args.overwrite)
    drawn, json_path = prediction_files(args.images, out)
    rule.claim([*drawn, json_path], out)  # before the model is read: nothing is written on a refusal
    overrides = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    device = resolve_device(args.device)
    if str(args.checkpoint).endswith(".onnx"):  # an export of `focalnet export`, run on ONNX Runtime
        from .export import load_onnx_detector

        if overrides:
            raise ValueError("--min-size/--max-size are part of an ONNX export's graph; export again to change them")
        model, meta = load_onnx_detector(args.checkpoint)
    else:
        model, meta = load_detector(args.checkpoint, device, **overrides)
        inference_path(model, compile=args.compile)  # fused (and compiled) backbone: same outputs within 1e-5
    records = predict_images(
        model,
        args.images,
        class_names=meta["class_names"],
        category_ids=meta["category_ids"],
        out_dir=out,
        score_thr=args.score_thr,
        device=device,
        progress=not args.no_progress,
        rule=rule,
    )
    for r in records:
        if "error" in r:
            print(f"{r['image']}: {r['error']}", file=sys.stderr)
            continue
        names = ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"][:10])
        print(f"{r['image']}: {len(r['detections'])} detection(s){': ' + names if names else ''}")
    failed = sum("error" in r for r in records)
    if failed == len(records):  # nothing was readable: no "wrote ..." line
        print(f"error: none of the {failed} input image(s) could be read", file=sys.stderr)
        return 1
    print(f"wrote {json_path} and the drawn images in {out}")
    return 0 if not failed else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from ..engine.outputs import OutputRule
    from .load import convert_detector

    rule = OutputRule("detection convert", [args.input], overwrite=args.overwrite)
    rule.claim([args.output])  # before anything is read
    print(convert_detector(args.input, args.output, to=getattr(args, "to", "focalnet")))
    rule.finish()
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from .config import config_path, list_configs
    from .registry import DETECTORS

    print("detectors (--detector NAME; default mask_rcnn):")
    for spec in DETECTORS.values():
        print(f"  {spec.name}: {spec.title}, {spec.summary} (recipe: {spec.recipe})")
    print("configs (--config NAME):")
    for name in list_configs():
        print(f"  {name}  ({config_path(name)})")
    return 0
