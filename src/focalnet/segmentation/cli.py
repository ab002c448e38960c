"""``focalnet segmentation {train,evaluate,predict,convert}``: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import math
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

__all__ = ["TRAIN_FLAGS", "register", "cmd_train", "cmd_evaluate", "cmd_predict", "cmd_convert", "cmd_configs"]


def _add_data_args(p: argparse.ArgumentParser, train: bool) -> None:
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument(
        "--layout",
        choices=["ade20k", "folder"],
        help="ade20k: images/ + annotations/ (labels "
        "shifted down, 0 ignored); folder: ROOT/{train,val}/ + ROOT/{train,val}annot/ (default: "
        "ade20k for train, the checkpoint's for evaluate)",
    )
    p.add_argument(
        "--img-dir",
        help="image folder (relative to ROOT) of the "
        + ("training" if train else "evaluated")
        + " split, overriding the layout's",
    )
    p.add_argument("--ann-dir", help="label folder (relative to ROOT), overriding the layout's")
    if train:
        p.add_argument("--val-img-dir", help="validation image folder (relative to ROOT)")
        p.add_argument("--val-ann-dir", help="validation label folder (relative to ROOT)")
        p.add_argument(
            "--classes-file",
            help="class names, one a line (default: ROOT/classes.txt or ROOT/objectInfo150.csv; else numbered classes)",
        )
        p.add_argument("--class-names", help="comma-separated class names (overrides --classes-file)")
        p.add_argument("--num-classes", type=int, help="number of classes where no names are given")
    p.add_argument(
        "--ignore-index",
        type=int,
        help="label value meaning 'ignore' in the files (folder layout; 255 always is; e.g. 11 for CamVid)",
    )
    p.add_argument(
        "--reduce-zero-label",
        choices=["true", "false"],
        help="0 = ignore, k -> k-1 (default: true for ade20k, false for folder)",
    )
    p.add_argument("--workers", type=int, help="data loading processes")


def _add_test_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["whole", "slide"], help="whole-image or sliding-window inference")
    p.add_argument("--multi-scale", action="store_true", help="average scales 0.5, 0.75, 1.0, 1.25, 1.5, 1.75")
    p.add_argument("--ratios", type=float, nargs="+", help="the scales of --multi-scale")
    p.add_argument("--flip", action="store_true", help="also average horizontally flipped passes")
    p.add_argument(
        "--scale",
        type=int,
        nargs=2,
        metavar=("LONG", "SHORT"),
        help="keep-ratio test resize (default: the training run's, 2048 512 for ADE20K)",
    )
    p.add_argument("--no-resize", action="store_true", help="run at the original image size")
    p.add_argument("--crop-size", type=int, help="sliding window size (default 512)")
    p.add_argument("--stride", type=int, help="sliding window step (default 341)")


def _class_names(value: str, base: Callable[[], Any]) -> Mapping[str, Any]:
    return {"data.class_names": [s.strip() for s in value.split(",") if s.strip()]}


def _reduce_zero_label(value: str, base: Callable[[], Any]) -> Mapping[str, Any]:
    return {"data.reduce_zero_label": value == "true"}


def _crop_size(size: int, base: Callable[[], Any]) -> Mapping[str, Any]:
    """``--crop-size S``: the training crop, the sliding window and its stride (2/3 of it)."""
    return {"aug.crop_size": [size, size], "eval.crop_size": [size, size], "eval.stride": [math.ceil(size * 2 / 3)] * 2}


# training flags -> config keys (the shared options of engine.options included)
TRAIN_FLAGS: FlagTable = {
    "backbone": "model.backbone",
    "data": "data.root",
    "layout": "data.layout",
    "img_dir": "data.train_img_dir",
    "ann_dir": "data.train_ann_dir",
    "val_img_dir": "data.val_img_dir",
    "val_ann_dir": "data.val_ann_dir",
    "classes_file": "data.classes_file",
    "class_names": _class_names,
    "num_classes": "data.num_classes",
    "ignore_index": "data.ignore_index",
    "reduce_zero_label": _reduce_zero_label,
    "workers": "data.num_workers",
    "device": "train.device",
    "iters": "train.iters",
    "batch_size": "train.batch_size",
    "accum_steps": "train.accum_steps",
    "resume": "train.resume",
    "amp": "train.amp",
    "lr": "optim.lr",
    "crop_size": _crop_size,
    "backbone_checkpoint": "model.backbone_checkpoint",
    "checkpoint": "model.checkpoint",
    "pretrained": "model.pretrained",
    "no_progress": off("train.progress"),
    "max_images": "eval.max_images",
    "eval_every": "eval.every",
    "no_eval": off("eval.enabled"),
    "segmentor": "model.segmentor",
    "task": "task",
    "train_annotations": "universal.train_json",
    "val_annotations": "universal.val_json",
    "train_png_dir": "universal.train_png_dir",
    "val_png_dir": "universal.val_png_dir",
}


def register(subparsers: Any) -> None:
    """Add ``focalnet segmentation ...`` to the main parser."""
    from .universal_cli import TASK_CHOICES, add_coco_file_args, add_segmentor_args  # torch-free

    seg = subparsers.add_parser("segmentation")
    sub = seg.add_subparsers(dest="seg_command", required=True)

    p = sub.add_parser(
        "train",
        help="train a FocalNet segmentor (UPerNet, Mask2Former: --segmentor)",
        description="Train a FocalNet segmentor: UPerNet (semantic) or Mask2Former (--segmentor mask2former "
        "--task panoptic|semantic|instance). Settings: defaults (the UPerNet ADE20K recipe) < --config "
        "< options < --set key=value. Works under torchrun.",
    )
    p.add_argument("--backbone", help="FocalNet variant, e.g. focalnet_tiny_srf (see `focalnet models`)")
    add_segmentor_args(p)
    _add_data_args(p, train=True)
    add_coco_file_args(p, train=True)
    p.add_argument("--config", help="YAML file or shipped config name, e.g. upernet_focalnet_tiny_srf_ade20k_160k")
    p.add_argument("--iters", type=int, help="optimizer steps (default 160000)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="images per process (an update: x processes x --accum-steps; default 2: the recipes' 16 on 8 processes)",
    )
    p.add_argument("--accum-steps", type=int, help="gradient accumulation micro-batches per step")
    p.add_argument("--crop-size", type=int, help="square training crop (default 512)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 6e-5)")
    p.add_argument("--backbone-checkpoint", help="ImageNet (or segmentation) checkpoint for the backbone")
    p.add_argument(
        "--checkpoint",
        help="fine-tune a whole segmentor: one of ours (model.pt) or an original mmsegmentation UPerNet "
        "file (architecture from the file; new classifiers when the classes differ)",
    )
    p.add_argument("--pretrained", action="store_true", help="download the released ImageNet weights")
    p.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"])
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    add_shared_options(p, "train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="mIoU of a trained model (single/multi-scale, whole/slide, flip); PQ or mask AP of a Mask2Former",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="OUTPUT/model.pt, a training checkpoint or an original mmsegmentation UPerNet file",
    )
    _add_data_args(p, train=False)
    add_coco_file_args(p, train=False)
    p.add_argument(
        "--task", choices=TASK_CHOICES, help="Mask2Former: the task to evaluate (default: the one it was trained for)"
    )
    p.add_argument("--split", choices=["train", "val"], default="val")
    _add_test_args(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_compile_arg(p)
    add_shared_options(p, "evaluate")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="label PNGs, colour masks and overlays for images")
    p.add_argument("images", nargs="+", help="image files or folders (their images, recursively, sorted)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="OUTPUT/model.pt, an original mmsegmentation UPerNet file, or an .onnx file of focalnet export",
    )
    _add_test_args(p)
    add_compile_arg(p)
    add_shared_options(p, "predict")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "convert",
        help="original layout (mmsegmentation UPerNet, official Mask2Former) <-> focalnet segmentation file",
        description="Convert an original segmentation file (a released mmsegmentation 0.x FocalNet UPerNet, an "
        "official Mask2Former .pth or model-zoo .pkl) into this package's format (--to focalnet, the default), "
        "or write any segmentation file in its segmentor's original layout (--to original). The file is "
        "checked strictly against the model it describes first.",
    )
    p.add_argument(
        "input",
        help="original UPerNet .pth, official Mask2Former .pth/.pkl, or one of ours (model.pt, checkpoint-*.pt)",
    )
    p.add_argument("output")
    p.add_argument("--to", choices=["focalnet", "original"], default="focalnet")
    add_overwrite_arg(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("configs", help="list the shipped configs, or print one resolved")
    p.add_argument("name", nargs="?", help="a shipped config name or YAML file to print resolved")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_configs)

    from .pq import add_pq_parser  # numpy only: the parser stays torch-free

    add_pq_parser(sub)  # `segmentation pq`: the standalone PQ scorer (its code is in pq.py)


def cmd_configs(args: argparse.Namespace) -> int:
    """``focalnet segmentation configs [NAME]``: the shipped configs, or one of them resolved."""
    import yaml

    from ..engine import config_to_dict, packaged_configs
    from .train import config_path, load_segmentation_config

    if args.name is None:
        for name in packaged_configs("segmentation"):
            print(f"{name}  ({config_path(name)})")
        return 0
    cfg = load_segmentation_config(args.name, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def _bool(s: str | None) -> bool | None:
    return None if s is None else s == "true"


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine import fit_workers, set_threads
    from .train import load_segmentation_config, train

    cfg = config_from_args(args, TRAIN_FLAGS, load_segmentation_config)
    set_threads(args.threads, workers=fit_workers(cfg.data.num_workers))
    if cfg.model.backbone_checkpoint and not Path(cfg.model.backbone_checkpoint).exists():
        raise FileNotFoundError(f"backbone checkpoint not found: {cfg.model.backbone_checkpoint}")
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).exists():
        raise FileNotFoundError(f"checkpoint not found: {cfg.model.checkpoint}")
    if args.dry_run:
        from .train import dry_run

        return dry_run(cfg)
    metrics = train(cfg, args.output, overwrite=args.overwrite)
    raise_if_interrupted(metrics, args.output)  # exit 130, as every interrupted command
    if int(os.environ.get("RANK", "0")) == 0:
        if cfg.model.segmentor != "upernet":  # a universal segmentor: its task's metrics
            from .universal_cli import print_metrics

            print_metrics(metrics, cfg.task, args.json)
        else:
            _print_summary(metrics, args.json)
    return 0


def _print_summary(metrics: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    per = metrics.get("per_class") or {}
    if per:
        width = max(len(n) for n in per)
        print(f"{'class'.ljust(width)}  {'IoU':>6}  {'Acc':>6}")
        for name, v in per.items():
            iou = "-" if v["IoU"] is None else f"{v['IoU']:6.2f}"
            acc = "-" if v["Acc"] is None else f"{v['Acc']:6.2f}"
            print(f"{name.ljust(width)}  {iou:>6}  {acc:>6}")
    keys = [k for k in ("mIoU", "mAcc", "aAcc") if metrics.get(k) is not None]
    if keys:
        print("  ".join(f"{k} {metrics[k]:.2f}" for k in keys))
    for k in ("num_images", "skipped_images", "num_skipped_samples", "model_file", "metrics_file"):
        if k in metrics:
            print(f"{k}: {metrics[k]}")


def _test_config(args: argparse.Namespace, stored: dict[str, Any] | None) -> Any:
    from .evaluate import TestConfig

    t = dict(stored or {})
    if args.no_resize:
        scale = None
    elif args.scale:
        scale = tuple(args.scale)
    elif "scale" in t:
        scale = tuple(t["scale"]) if t["scale"] else None
    else:
        scale = (2048, 512)
    cfg = TestConfig(
        mode=args.mode or t.get("mode", "whole"),
        scale=scale,
        crop_size=(args.crop_size,) * 2 if args.crop_size else tuple(t.get("crop_size", (512, 512))),
        stride=(args.stride,) * 2
        if args.stride
        else ((math.ceil(args.crop_size * 2 / 3),) * 2 if args.crop_size else tuple(t.get("stride", (341, 341)))),
        multi_scale=bool(args.multi_scale),
        ratios=tuple(args.ratios) if args.ratios else tuple(t.get("ratios") or (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)),
        flip=bool(args.flip),
    )
    cfg.validate()
    return cfg


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine import init_distributed, write_json
    from ..engine.outputs import OutputRule
    from ..models.inference import inference_path
    from .data import DataConfig, build_dataset
    from .evaluate import evaluate
    from .load import load_segmentor
    from .universal_cli import evaluate_command, is_universal

    dist = init_distributed(args.device or "auto")
    model, extra = load_segmentor(args.checkpoint)
    inference_path(model, compile=args.compile)  # fused (and compiled) backbone: same outputs within 1e-5
    model.to(dist.device)
    if is_universal(model.meta):  # Mask2Former: PQ, mIoU or mask AP by task
        return evaluate_command(args, model, extra, _test_config(args, extra.get("test")))
    stored = dict(extra.get("data") or {})
    layout = args.layout or stored.get("layout", "ade20k")
    same_layout = layout == stored.get("layout", layout)
    dcfg = DataConfig(
        root=args.data,
        layout=layout,
        ignore_index=args.ignore_index
        if args.ignore_index is not None
        else (stored.get("ignore_index", 255) if same_layout else 255),
        reduce_zero_label=_bool(args.reduce_zero_label)
        if args.reduce_zero_label
        else (stored.get("reduce_zero_label") if same_layout else None),
        num_workers=args.workers if args.workers is not None else 2,
    )
    if args.img_dir or args.ann_dir:
        setattr(dcfg, f"{args.split}_img_dir", args.img_dir)
        setattr(dcfg, f"{args.split}_ann_dir", args.ann_dir)
    elif (
        same_layout
        and Path(args.data).expanduser()
        == Path(str(extra.get("config", {}).get("data", {}).get("root", ""))).expanduser()
    ):
        setattr(dcfg, f"{args.split}_img_dir", stored.get(f"{args.split}_img_dir"))
        setattr(dcfg, f"{args.split}_ann_dir", stored.get(f"{args.split}_ann_dir"))
    dcfg.validate()
    dataset = build_dataset(dcfg, args.split, None, class_names=model.class_names)
    test_cfg = _test_config(args, extra.get("test"))
    mean, std = extra.get("mean", (123.675, 116.28, 103.53)), extra.get("std", (58.395, 57.12, 57.375))
    out = (
        Path(args.output)
        if args.output
        else Path(args.checkpoint).resolve().parent
        / (
            f"eval-{args.split}-{test_cfg.mode}"
            + ("-ms" if test_cfg.multi_scale else "")
            + ("-flip" if test_cfg.flip else "")
        )
    )
    rule = OutputRule("segmentation evaluate", [args.checkpoint, args.data], overwrite=args.overwrite)
    if dist.is_main:  # before the evaluation runs
        rule.claim([out / "metrics.json"], out, "--output")
    metrics = evaluate(
        model,
        dataset,
        test_cfg,
        device=dist.device,
        max_images=args.max_images or 0,
        num_workers=dcfg.num_workers,
        rank=dist.rank,
        world_size=dist.world_size,
        mean=mean,
        std=std,
        progress=not args.no_progress,
    )
    metrics["checkpoint"] = str(args.checkpoint)
    metrics["data"] = {"root": str(args.data), "layout": layout, "split": args.split}
    metrics["data_problems"] = dataset.problems
    metrics["num_skipped_samples"] = len(dataset.problems) + metrics["skipped_images"]
    if dist.is_main:
        write_json(out / "metrics.json", metrics)
        rule.finish()
        metrics["metrics_file"] = str(out / "metrics.json")
        _print_summary(metrics, args.json)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..engine import resolve_device, write_json
    from ..engine.images import collect_images
    from ..engine.outputs import OutputRule
    from ..models.inference import inference_path
    from .load import load_segmentor
    from .predict import predict_images, prediction_files
    from .universal_cli import is_universal

    args.images = [str(p) for p in collect_images(args.images)]  # folders: their images, recursively, sorted
    device = resolve_device(args.device)
    out = args.output or "predictions"
    rule = OutputRule("segmentation predict", [*args.images, args.checkpoint], overwrite=args.overwrite)
    files = [f for named in prediction_files(args.images, out).values() for f in named]
    rule.claim([*files, Path(out) / "predictions.json"], out)  # before anything is read
    if str(args.checkpoint).endswith(".onnx"):  # an export of `focalnet export`, run on ONNX Runtime
        from .export import load_onnx_segmentor

        model, extra = load_onnx_segmentor(args.checkpoint), {}
    else:
        model, extra = load_segmentor(args.checkpoint)
        inference_path(model, compile=args.compile)  # fused (and compiled) backbone: same outputs within 1e-5
        model.to(device)
    test_cfg = _test_config(args, extra.get("test"))
    if is_universal(getattr(model, "meta", None)):  # Mask2Former: panoptic PNGs + JSON, label PNGs, overlays
        from .universal_cli import predict_command

        return predict_command(args, model, extra, test_cfg, rule)
    records = predict_images(
        model,
        args.images,
        out,
        test_cfg,
        device,
        extra.get("mean", (123.675, 116.28, 103.53)),
        extra.get("std", (58.395, 57.12, 57.375)),
        progress=not args.no_progress,
        rule=rule,
    )
    write_json(Path(out) / "predictions.json", {"checkpoint": str(args.checkpoint), "predictions": records})
    rule.finish()
    for r in records:
        if "error" in r:
            print(f"{r['image']}: {r['error']}", file=sys.stderr)
            continue
        top = ", ".join(f"{k} {v:.1f}%" for k, v in list(r["class_percent"].items())[:5])
        print(f"{r['image']}: {r['color']}  ({top})")
    done = sum("error" not in r for r in records)
    if not done:  # nothing was readable: no "wrote ..." line
        print(f"error: none of the {len(records)} input image(s) could be read", file=sys.stderr)
        return 1
    print(f"wrote {done} prediction(s) to {out} (predictions.json)")
    return 0 if done == len(records) else 1  # 1: some inputs failed, as detection predict


def cmd_convert(args: argparse.Namespace) -> int:
    from ..engine.outputs import OutputRule
    from .convert import convert_segmentor
    from .load import read_segmentor
    from .registry import segmentor_of

    rule = OutputRule("segmentation convert", [args.input], overwrite=args.overwrite)
    rule.claim([args.output])  # before anything is read
    out = convert_segmentor(args.input, args.output, to=args.to)
    rule.finish()
    meta, sd, _ = read_segmentor(out)
    n = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    print(
        f"wrote {out} ({args.to} layout): {segmentor_of(meta).title} on {meta['backbone']}, {meta['num_classes']} classes, "
        f"{n / 1e6:.3f}M parameters"
    )
    return 0
