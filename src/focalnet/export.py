"""Export a FocalNet to ONNX or TorchScript with dynamic batch and image size (``focalnet export``)."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx", "export_torchscript", "register"]


def _example(model: nn.Module, batch: int = 2, size: int = 64) -> torch.Tensor:
    cfg = getattr(model, "cfg", None)
    in_chans = cfg.in_chans if cfg is not None else 3
    stride = cfg.stride if cfg is not None else 32
    size = max(size, 2 * stride)
    p = next(model.parameters())
    return torch.randn(batch, in_chans, size, size, device=p.device, dtype=p.dtype)


def _prepared(
    model: nn.Module, path: str | os.PathLike, example: torch.Tensor | None, fuse: bool
) -> tuple[Path, nn.Module, torch.Tensor]:
    """The output path (its folder created), an eval copy of ``model`` (folded when ``fuse``) and the
    example input that export traces with."""
    import copy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    if fuse and hasattr(model, "fuse"):
        model.fuse()
    return path, model, _example(model) if example is None else example


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    example: torch.Tensor | None = None,
    opset: int = 17,
    dynamo: bool = False,
    fuse: bool = True,
) -> Path:
    """Write ``model`` (in eval mode) as ONNX with dynamic batch, height and width; returns the path.

    ``fuse=True`` exports the folded weights of :meth:`FocalNet.fuse` (same outputs, fewer ops) on a
    copy; the model itself is left unchanged. ``dynamo=True`` uses the ``torch.export`` based exporter
    (slower to export) instead of the TorchScript-based one. Input ``images``, output ``output``.
    """
    path, model, x = _prepared(model, path, example, fuse)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            stride = getattr(getattr(model, "cfg", None), "stride", 32)
            dims = {
                0: torch.export.Dim("batch", min=1, max=4096),
                2: torch.export.Dim("height", min=stride, max=8192),
                3: torch.export.Dim("width", min=stride, max=8192),
            }
            prog = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                dynamic_shapes={"x": dims},
                input_names=["images"],
                output_names=["output"],
                optimize=True,
                verbose=False,
            )
            prog.save(str(path))
        else:
            out = model(x)
            outs = ["output"] if isinstance(out, torch.Tensor) else [f"output{i}" for i in range(len(out))]
            axes = {"images": {0: "batch", 2: "height", 3: "width"}}
            for name in outs:
                axes[name] = (
                    {0: "batch"}
                    if isinstance(out, torch.Tensor) and out.ndim == 2
                    else {0: "batch", 2: "out_height", 3: "out_width"}
                )
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=outs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
    return path


def export_torchscript(
    model: nn.Module, path: str | os.PathLike, *, example: torch.Tensor | None = None, fuse: bool = True
) -> Path:
    """Trace ``model`` (eval mode) to TorchScript; the traced graph accepts any batch and image size."""
    path, model, x = _prepared(model, path, example, fuse)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        traced = torch.jit.freeze(traced) if hasattr(torch.jit, "freeze") else traced
    torch.jit.save(traced, str(path))
    return path


def _cmd_export(args: argparse.Namespace) -> int:
    from .engine.outputs import refuse_input_overwrite
    from .factory import create_model, model_from_checkpoint

    if args.checkpoint:
        refuse_input_overwrite(args.out, [args.checkpoint], "--output")
        model = model_from_checkpoint(args.checkpoint)
    else:
        model = create_model(args.model, pretrained=args.pretrained or False)
    model.eval()
    pc = getattr(model, "pretrained_cfg", None)
    size = args.img_size or (pc.input_size[-1] if pc is not None else 224)
    cfg = model.cfg
    example = torch.randn(args.batch, cfg.in_chans, size, size)
    if args.format == "onnx":
        out = export_onnx(model, args.out, example=example, opset=args.opset, dynamo=args.dynamo, fuse=not args.no_fuse)
    else:
        out = export_torchscript(model, args.out, example=example, fuse=not args.no_fuse)
    print(f"wrote {out} ({args.format}; dynamic batch and image size)")
    if args.check:
        err = check_export(model, out, args.format)
        print(f"max |difference| against PyTorch: {err:.2e}")
    return 0


def check_export(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    sizes: tuple[tuple[int, int, int], ...] = ((1, 224, 224), (2, 160, 192)),
) -> float:
    """Max absolute difference between ``model`` and the exported file (onnxruntime or TorchScript)."""
    model.eval()
    worst = 0.0
    for b, h, w in sizes:
        x = torch.randn(b, model.cfg.in_chans, h, w)
        with torch.no_grad():
            ref = model(x)
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
        else:
            with torch.no_grad():
                got = torch.jit.load(str(path))(x)
        worst = max(worst, float((got - ref).abs().max()))
    return worst


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``focalnet export``."""
    p = subparsers.add_parser("export")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="focalnet_tiny_srf", help="registered variant name")
    src.add_argument("--checkpoint", help="any checkpoint that model_from_checkpoint reads")
    p.add_argument("--pretrained", nargs="?", const=True, default=None, help="use released weights (optional tag)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--output", "--out", dest="out", required=True, help="output file")
    p.add_argument("--img-size", type=int, default=None, help="size of the example input (any size works later)")
    p.add_argument("--batch", type=int, default=1, help="batch of the example input")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter")
    p.add_argument("--no-fuse", action="store_true", help="export the weights unfolded")
    p.add_argument("--check", action="store_true", help="compare the file's outputs with PyTorch's")
    p.set_defaults(func=_cmd_export)
