"""Classifiers (and backbones) to ONNX or TorchScript with dynamic batch and image size, and the checked
ONNX export of ``focalnet export`` with its metadata; ``classification predict`` on such a file.

The checked graph takes ``images`` (float32 ``N x C x H x W``, normalised with the file's mean/std; any
batch and size) and returns ``output`` (the logits). The export check compares ONNX Runtime with PyTorch on
the traced batch and two other sizes: logits within 1e-4.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "export_onnx",
    "export_torchscript",
    "check_export",
    "export_classifier",
    "OnnxClassifier",
    "load_onnx_classifier",
]


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
        # trace, trace_method, freeze and save each say that torch.jit is deprecated: said once below
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        traced = torch.jit.freeze(traced) if hasattr(torch.jit, "freeze") else traced
        torch.jit.save(traced, str(path))
    warnings.warn(
        "TorchScript (torch.jit) is deprecated in PyTorch: the file works today, ONNX (--format onnx) is the "
        "export that stays",
        FutureWarning,
        stacklevel=2,
    )
    return path


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
                with warnings.catch_warnings():  # its deprecation was said when the file was written
                    warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
                    got = torch.jit.load(str(path))(x)
        worst = max(worst, float((got - ref).abs().max()))
    return worst


#: batch and image sizes of the export check: the traced one first (its size set by the caller), then two others
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 224, 224), (2, 160, 192), (3, 97, 75))


def export_classifier(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES,
    opset: int = 17,
    fuse: bool = True,
    fp16: bool = False,
) -> Path:
    """Write a classifier as a checked ONNX file with its metadata (class names, preprocessing: ``img_size``,
    ``crop_pct``, ``interpolation``, ``mean``, ``std``); see the module docstring. ``shapes``: ``(batch,
    height, width)`` of the traced input, then of the other inputs of the check. Returns the path."""
    from ..engine.onnx import check_close, export_metadata, write_checked

    model = copy.deepcopy(model).cpu().eval()
    if fuse and hasattr(model, "fuse"):
        model.fuse()
    cfg = model.cfg
    pre = dict(preprocessing or {})
    stride = getattr(cfg, "stride", 32)
    inputs = [
        torch.randn(b, cfg.in_chans, max(h, stride), max(w, stride), generator=torch.Generator().manual_seed(i))
        for i, (b, h, w) in enumerate(shapes)
    ]
    names = list(class_names) if class_names else [str(i) for i in range(int(model.num_classes))]
    info = export_metadata(
        "classification",
        str(getattr(model, "name", None) or getattr(cfg, "name", "focalnet")),
        inputs=[("images", "float32")],
        outputs=[("output", "float32")],
        input_format=f"float32 N x {cfg.in_chans} x H x W, normalised with mean/std (0-1 pixel scale)",
        class_names=names,
        source=source,
        num_classes=int(model.num_classes),
        in_chans=int(cfg.in_chans),
        mean=list(pre.get("mean", (0.485, 0.456, 0.406))),
        std=list(pre.get("std", (0.229, 0.224, 0.225))),
        size_rules={
            "img_size": int(pre.get("img_size", 224)),
            "crop_pct": float(pre.get("crop_pct", 0.875)),
            "interpolation": str(pre.get("interpolation", "bicubic")),
            "min_size": int(stride),
        },
        dtype="float16" if fp16 else "float32",
    )

    def check(session: Any) -> None:
        for x in inputs:
            with torch.no_grad():
                ref = model(x).numpy()
            got = session.run(["output"], {"images": x.numpy()})[0]
            check_close("output", ref, got, 1e-4, where=f" at {tuple(x.shape)}")

    return write_checked(
        model,
        (inputs[0],),
        path,
        input_names=["images"],
        output_names=["output"],
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}},
        metadata=info,
        check=None if fp16 else check,
        opset=opset,
        fp16=fp16,
    )


class OnnxClassifier:
    """An exported classifier behind the model interface of :func:`~focalnet.classification.predict.predict`:
    called on a normalised float batch, it returns the logits (a tensor)."""

    def __init__(self, exported: Any) -> None:
        self.exported = exported
        self.num_classes = int(exported.meta.get("num_classes") or len(exported.meta["class_names"]))
        self.cfg = SimpleNamespace(in_chans=int(exported.meta.get("in_chans", 3)))

    def eval(self) -> OnnxClassifier:
        return self

    def to(self, device: Any) -> OnnxClassifier:
        """No-op: ONNX Runtime's CPU provider runs it whatever ``device`` is (inputs and outputs are CPU tensors)."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {"images": np.ascontiguousarray(x.detach().cpu().float().numpy())}
        return torch.from_numpy(self.exported.run(feed)["output"])


def load_onnx_classifier(path: str | os.PathLike, threads: int | None = None) -> Any:
    """A :class:`~focalnet.classification.evaluate.LoadedClassifier` running an exported file on ONNX Runtime
    (checked first: a classification export of ``focalnet export``), with the file's preprocessing."""
    from ..engine.onnx import open_exported
    from .evaluate import LoadedClassifier

    exported = open_exported(path, "classification", threads)
    m = exported.meta
    rules = m.get("size_rules") or {}
    return LoadedClassifier(
        model=OnnxClassifier(exported),  # type: ignore[arg-type]
        class_names=list(m["class_names"]),
        img_size=int(rules.get("img_size", 224)),
        crop_pct=float(rules.get("crop_pct", 0.875)),
        interpolation=str(rules.get("interpolation", "bicubic")),
        mean=tuple(m.get("mean") or (0.485, 0.456, 0.406)),
        std=tuple(m.get("std") or (0.229, 0.224, 0.225)),
        source=str(path),
    )
