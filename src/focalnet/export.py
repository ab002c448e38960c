"""``focalnet export``: any checkpoint the package loads -> a checked ONNX file (or a TorchScript classifier).

The command dispatches on the checkpoint's kind, recognised by each task's one loading path: a detection
layout (:func:`~focalnet.detection.load_detector`: ours, mmdetection, FocalNet-DINO), a segmentation
layout (:func:`~focalnet.segmentation.load_segmentor`: ours, mmsegmentation), else a classifier
(:func:`~focalnet.classification.evaluate.load_classifier`: every layout of :mod:`focalnet.factory`).
The graphs and their checks live in each task's ``export`` module; :mod:`focalnet.engine.onnx` writes
atomically and reads exported files back.

:func:`export_onnx`, :func:`export_torchscript` and :func:`check_export` (a model in, no metadata, no
check) stay importable from here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use (below): `focalnet export --help` needs neither torch nor a task
    from .classification.export import check_export, export_onnx, export_torchscript

_FROM_CLASSIFICATION = ("check_export", "export_onnx", "export_torchscript")

__all__ = ["export_onnx", "export_torchscript", "check_export", "checkpoint_kind", "export_checkpoint", "register"]


def __getattr__(name: str) -> Any:
    """:func:`export_onnx`, :func:`export_torchscript` and :func:`check_export`, imported on first use."""
    if name in _FROM_CLASSIFICATION:
        from .classification import export as classification_export

        return getattr(classification_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"detection"``, ``"segmentation"`` or ``"classification"``: the task whose loading path recognises
    the file's layout (a folder or a ``.safetensors`` file: classification)."""
    from .weights.io import safe_torch_load

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_dir() or p.suffix == ".safetensors":
        return "classification"
    obj = safe_torch_load(p)
    from .detection.load import recognise_layout

    try:
        recognise_layout(obj, str(p))
        return "detection"
    except ValueError:
        pass
    from .segmentation import load as seg_load

    layouts = seg_load.layouts() if hasattr(seg_load, "layouts") else seg_load.LAYOUTS
    for layout in layouts:
        try:
            if isinstance(obj, Mapping) and layout.recognise(obj):
                return "segmentation"
        except Exception:  # noqa: BLE001 - a recogniser that trips over a file did not recognise it
            continue
    return "classification"


def export_checkpoint(
    checkpoint: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    model_name: str | None = None,
    pretrained: bool | str | None = None,
    img_size: int | None = None,
    batch: int = 1,
    opset: int = 17,
    fuse: bool = True,
    fp16: bool = False,
) -> tuple[Path, str]:
    """Export the model of ``checkpoint`` (or the registered ``model_name``) as a checked ONNX file at
    ``output``; returns the path and a one-line description."""
    kind = checkpoint_kind(checkpoint) if checkpoint is not None else "classification"
    if kind == "detection":
        from .detection.export import CHECK_SIZES, export_detector
        from .detection.load import load_detector

        model, meta = load_detector(checkpoint)  # type: ignore[arg-type]
        sizes = CHECK_SIZES if img_size is None else ((img_size, img_size * 4 // 3), *CHECK_SIZES[1:])
        path = export_detector(model, meta, output, source=checkpoint, sizes=sizes, opset=opset, fp16=fp16)
        return path, f"detection, {meta['detector']}, {len(meta['class_names'])} classes"
    if kind == "segmentation":
        from .segmentation.export import CHECK_SIZES as SEG_SIZES
        from .segmentation.export import export_segmentor
        from .segmentation.load import load_segmentor

        seg, extra = load_segmentor(checkpoint)  # type: ignore[arg-type]
        sizes = SEG_SIZES if img_size is None else ((img_size, img_size * 5 // 4), *SEG_SIZES[1:])
        path = export_segmentor(seg, extra, output, source=checkpoint, sizes=sizes, opset=opset, fp16=fp16)
        return path, f"segmentation, {type(seg).__name__}, {seg.num_classes} classes"
    from .classification.evaluate import load_classifier
    from .classification.export import CHECK_SHAPES, export_classifier

    loaded = load_classifier(checkpoint, model_name=model_name, pretrained=pretrained)
    size = img_size or loaded.img_size
    pre = {k: getattr(loaded, k) for k in ("img_size", "crop_pct", "interpolation", "mean", "std")}
    path = export_classifier(
        loaded.model,
        output,
        source=checkpoint,
        class_names=loaded.class_names,
        preprocessing=pre,
        shapes=((batch, size, size), *CHECK_SHAPES[1:]),
        opset=opset,
        fuse=fuse,
        fp16=fp16,
    )
    return path, f"classification, {loaded.num_outputs} classes"


def _cmd_export(args: argparse.Namespace) -> int:
    from .engine.outputs import OutputRule

    if args.source and args.checkpoint:
        raise ValueError("give the checkpoint once (positionally or with --checkpoint)")
    checkpoint = args.source or args.checkpoint
    rule = OutputRule("export", [checkpoint], overwrite=args.overwrite)
    rule.claim([args.out], what="--output")  # before anything is read (the one output rule)
    try:
        return _export(args, checkpoint)
    finally:
        rule.finish()


def _export(args: argparse.Namespace, checkpoint: str | None) -> int:
    if args.format == "torchscript" or args.dynamo:
        return _export_classifier_unchecked(args, checkpoint)
    path, what = export_checkpoint(
        checkpoint,
        args.out,
        model_name=args.model,
        pretrained=args.pretrained or False,
        img_size=args.img_size,
        batch=args.batch_size,
        opset=args.opset,
        fuse=not args.no_fuse,
        fp16=args.fp16,
    )
    checked = (
        "float16 for GPU providers; onnx.checker passed and it loads, outputs not compared here"
        if args.fp16
        else "checked against PyTorch on ONNX Runtime at 3 input sizes"
    )
    print(f"wrote {path} (ONNX, {what}; dynamic image size; {checked})")
    if args.check and what.startswith("classification") and not args.fp16:
        from .classification.evaluate import load_classifier
        from .classification.export import check_export

        loaded = load_classifier(checkpoint, model_name=args.model, pretrained=args.pretrained or False)
        print(f"max |difference| against PyTorch: {check_export(loaded.model, path, 'onnx'):.2e}")
    return 0


def _export_classifier_unchecked(args: argparse.Namespace, checkpoint: str | None) -> int:
    """TorchScript, or ONNX through the ``torch.export``-based exporter: classifiers, as before."""
    import torch

    from .classification.export import check_export, export_onnx, export_torchscript
    from .factory import create_model, model_from_checkpoint

    if checkpoint and checkpoint_kind(checkpoint) != "classification":
        raise ValueError(f"--format torchscript and --dynamo export classifiers; {checkpoint} is not one")
    model = (
        model_from_checkpoint(checkpoint)
        if checkpoint
        else create_model(args.model, pretrained=args.pretrained or False)
    )
    model.eval()
    pc = getattr(model, "pretrained_cfg", None)
    size = args.img_size or (pc.input_size[-1] if pc is not None else 224)
    example = torch.randn(args.batch_size, model.cfg.in_chans, size, size)
    if args.format == "onnx":
        out = export_onnx(model, args.out, example=example, opset=args.opset, dynamo=True, fuse=not args.no_fuse)
    else:
        out = export_torchscript(model, args.out, example=example, fuse=not args.no_fuse)
    print(f"wrote {out} ({args.format}; dynamic batch and image size)")
    if args.check:
        err = check_export(model, out, args.format)
        print(f"max |difference| against PyTorch: {err:.2e}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``focalnet export``."""
    from .engine.options import add_old_spelling, add_overwrite_arg, positive_int

    p = subparsers.add_parser("export")
    p.add_argument(
        "source",
        nargs="?",
        default=None,
        metavar="CHECKPOINT",
        help="any classification, detection or segmentation checkpoint",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model", default="focalnet_tiny_srf", help="registered classifier variant (without a checkpoint)"
    )
    src.add_argument("--checkpoint", help="the same as CHECKPOINT")
    p.add_argument("--pretrained", nargs="?", const=True, default=None, help="use released weights (optional tag)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="torchscript: classifiers")
    p.add_argument("--output", "--out", dest="out", required=True, help="output file")
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="size of the traced example (any size works later); checks use 2 more",
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of the traced example (classifiers)")
    add_old_spelling(p, "--batch", "--batch-size")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--fp16", action="store_true", help="float16 weights for GPU execution providers (not run on CPU)")
    p.add_argument("--dynamo", action="store_true", help="classifiers: the torch.export-based exporter, unchecked")
    p.add_argument("--no-fuse", action="store_true", help="export the weights unfolded")
    p.add_argument("--check", action="store_true", help="also print the max difference (ONNX files are always checked)")
    add_overwrite_arg(p)
    p.set_defaults(func=_cmd_export)
