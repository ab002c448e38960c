"""Every detector of :data:`~focalnet.detection.registry.DETECTORS` as one checked ONNX graph, and
``focalnet detection predict`` on such a file.

The graph (:class:`DetectorGraph`) takes one RGB image, ``image`` (uint8, ``H x W x 3``, any height and
width), and holds what a deployer would otherwise rewrite: scaling to 0-1, the detector's own
normalise/resize/pad, the detector, box decoding, NMS, top-k, boxes mapped back to the image and (Mask
R-CNN, Cascade) masks pasted into it. Outputs: ``boxes`` (N x 4, x1 y1 x2 y2 in image pixels), ``labels``
(N, 1-based class indices; FocalNet-DINO's background slot dropped), ``scores`` (N) and, for detectors with
masks, ``masks`` (N x 1 x H x W probabilities). Boxes, masks and the N kept follow the detector's own
``score_thresh`` and ``detections_per_img``; predict's ``--score-thr`` filters further.
Query-based detectors (FocalNet-DINO) take :class:`QueryDetectorGraph`: DETR's test resize (antialiased,
as two matrix products) with traced sizes, the model, then the top ``num_select`` (query, class) pairs by
sigmoid score with boxes scaled to the image; its deformable attention traces as per-level ``grid_sample``
(:func:`~focalnet.ops.ms_deform_attn.ms_deform_attn_grid_sample`).

The export check runs the traced image and two images of other sizes and aspect ratios through ONNX
Runtime and through the same module in PyTorch: same number of detections (aside score ties), boxes within
0.5 px after matching, scores within 1e-3, mask IoU at least 0.99.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..engine.onnx import check_detections, export_metadata, open_exported, sample_image, write_checked
from .registry import get_detector

__all__ = [
    "DetectorGraph",
    "QueryDetectorGraph",
    "antialias_resize",
    "CHECK_SIZES",
    "export_detector",
    "OnnxDetector",
    "load_onnx_detector",
]

#: image sizes (height, width) of the export check: the traced one first, then two others
CHECK_SIZES: tuple[tuple[int, int], ...] = ((480, 640), (427, 320), (400, 400))


class DetectorGraph(nn.Module):
    """A detector (eval mode) as a function of one uint8 ``H x W x 3`` image -> boxes, labels, scores(, masks)."""

    def __init__(self, detector: nn.Module, masks: bool) -> None:
        super().__init__()
        self.detector = detector
        self.masks = masks

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = image.permute(2, 0, 1).to(torch.float32) / 255.0
        det = self.detector([x])[0]
        keep = torch.where(det["labels"] >= 1)[0]  # label 0: FocalNet-DINO's background slot
        out = [det["boxes"][keep], det["labels"][keep].to(torch.int64), det["scores"][keep]]
        if self.masks:
            out.append(det["masks"][keep])
        return tuple(out)


def resized_size_traced(hw: Tensor, min_size: int, max_size: int) -> Tensor:
    """:func:`~focalnet.detection.dino.model.resized_size` of an image's ``(h, w)`` (int64 tensor) as int64
    tensors, traceable: the same float64 arithmetic in the same order (Python's ``round`` of a tie to even
    is ``floor(x + 0.5)`` here)."""
    f = hw.to(torch.float64)
    short, long = torch.amin(f, 0, keepdim=True), torch.amax(f, 0, keepdim=True)
    fitted = torch.floor(max_size * short / long + 0.5)
    size = torch.where(long / short * min_size > max_size, fitted, torch.full_like(short, float(min_size)))
    other = torch.floor(size * long / short)
    return torch.where(f[1:] < f[:1], torch.cat([other, size]), torch.cat([size, other])).to(torch.int64)


def _antialias_matrix(n_in: Tensor, n_out: Tensor) -> Tensor:
    """``n_out x n_in`` weights of PyTorch's antialiased bilinear resize along one axis (``align_corners=False``:
    a triangle filter widened by the scale when shrinking, normalised per output pixel)."""
    scale = n_in.to(torch.float32) / n_out.to(torch.float32)
    centre = (torch.arange(n_out, dtype=torch.float32) + 0.5) * scale  # type: ignore[call-overload]
    x = (torch.arange(n_in, dtype=torch.float32)[None, :] + 0.5 - centre[:, None]) / scale.clamp(min=1.0)  # type: ignore[call-overload]
    w = (1.0 - x.abs()).clamp(min=0.0)
    return w / w.sum(1, keepdim=True)


def antialias_resize(x: Tensor, size: Tensor) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", antialias=True)`` of ``[N, C, H, W]`` as two matrix products
    (ONNX's exporter has no antialiased resize); equal within float rounding, any traced ``size``."""
    hw = torch._shape_as_tensor(x)[-2:]
    return torch.einsum("ih,nchw,jw->ncij", _antialias_matrix(hw[0], size[0]), x, _antialias_matrix(hw[1], size[1]))


class QueryDetectorGraph(nn.Module):
    """A query-based detector (FocalNet-DINO: ``forward_raw`` on a normalised batch, ``cfg`` with
    ``min_size``/``max_size``/``num_select``/``image_mean``/``image_std``) as a function of one uint8
    ``H x W x 3`` image -> boxes, labels, scores: its ``preprocess`` (normalise, DETR's test resize; one
    image needs no padding) with the sizes kept as traced values, ``forward_raw``, and its ``postprocess``
    (top ``num_select`` over queries x classes by sigmoid score, boxes scaled to the image); label 0 (the
    background slot) dropped as :class:`DetectorGraph` does."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        cfg = detector.cfg
        self.min_size, self.max_size, self.num_select = int(cfg.min_size), int(cfg.max_size), int(cfg.num_select)
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        hw = torch._shape_as_tensor(image)[:2]
        x = (image.permute(2, 0, 1).to(torch.float32) / 255.0 - self.mean) / self.std
        size = resized_size_traced(hw, self.min_size, self.max_size)
        x = antialias_resize(x[None], size)
        out = self.detector.forward_raw(x)
        logits, boxes = out["pred_logits"][0], out["pred_boxes"][0]
        Q, C = logits.shape
        scores, idx = logits.sigmoid().reshape(-1).topk(min(self.num_select, Q * C))
        query, labels = torch.div(idx, C, rounding_mode="floor"), idx % C
        h, w = hw.to(boxes.dtype).unbind(0)
        scale = torch.stack([w, h, w, h])
        xyxy = box_convert(boxes, "cxcywh", "xyxy")[query] * scale
        keep = torch.where(labels >= 1)[0]
        return xyxy[keep], labels[keep].to(torch.int64), scores[keep]


def output_names(masks: bool) -> list[str]:
    """The graph's outputs."""
    return ["boxes", "labels", "scores", *(["masks"] if masks else [])]


def _numpy(outs: Sequence[Tensor] | Sequence[np.ndarray], masks: bool) -> dict[str, np.ndarray]:
    return {k: (v.numpy() if isinstance(v, Tensor) else v) for k, v in zip(output_names(masks), outs)}


def export_detector(
    model: nn.Module,
    meta: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
    opset: int = 17,
    fp16: bool = False,
) -> Path:
    """Write ``model`` (a detector from :func:`~focalnet.detection.load_detector`, with its ``meta``) as a
    checked ONNX graph (see the module docstring); ``sizes``: the traced image size, then the others of
    the check. ``fp16``: float16 weights for GPU execution providers (built and checked by ``onnx.checker``;
    the CPU runtime does not run it, so no comparison). Returns the path."""
    from ..models.inference import inference_path

    spec = get_detector(meta["detector"])
    detector = inference_path(copy.deepcopy(model).cpu().eval())
    query_based = hasattr(detector, "forward_raw") and not spec.masks
    graph = (QueryDetectorGraph(detector) if query_based else DetectorGraph(detector, spec.masks)).eval()
    names = output_names(spec.masks)
    mc = meta.get("detection_config", {}).get("model", {})
    transform = getattr(detector, "transform", None)
    info = export_metadata(
        "detection",
        spec.name,
        inputs=[("image", "uint8")],
        outputs=[(n, "int64" if n == "labels" else "float32") for n in names],
        input_format="uint8 RGB image, H x W x 3 (any size); the graph scales, normalises, resizes and pads",
        class_names=meta["class_names"],
        source=source,
        category_ids=list(meta["category_ids"]),
        mean=list(getattr(transform or getattr(detector, "cfg", None), "image_mean", []) or []),
        std=list(getattr(transform or getattr(detector, "cfg", None), "image_std", []) or []),
        size_rules={
            "min_size": mc.get("min_size"),
            "max_size": mc.get("max_size"),
            "size_divisible": getattr(transform, "size_divisible", 32),
        },
        score_thresh=mc.get("score_thresh"),
        masks=spec.masks,
        dtype="float16" if fp16 else "float32",
    )
    images = [sample_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]

    def check(session: Any) -> None:
        for img in images:
            with torch.no_grad():
                ref = _numpy(graph(img), spec.masks)
            got = _numpy(session.run(names, {"image": img.numpy()}), spec.masks)
            check_detections(ref, got, where=f" at {img.shape[0]}x{img.shape[1]}")

    return write_checked(
        graph,
        (images[0],),
        path,
        input_names=["image"],
        output_names=names,
        dynamic_axes={"image": {0: "height", 1: "width"}, **{n: {0: "detections"} for n in names}},
        metadata=info,
        check=None if fp16 else check,
        opset=opset,
        fp16=fp16,
    )


class OnnxDetector:
    """An exported detector behind the interface :func:`~focalnet.detection.predict.predict_images` uses:
    called on a list of float CHW images in 0-1 (exact uint8 values), it returns torch's detection dicts."""

    def __init__(self, exported: Any) -> None:
        self.exported = exported
        self.masks = bool(exported.meta.get("masks"))

    def eval(self) -> OnnxDetector:
        return self

    def to(self, device: Any) -> OnnxDetector:
        """No-op: ONNX Runtime's CPU provider runs it whatever ``device`` is (inputs and outputs are CPU tensors)."""
        return self

    def __call__(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        out = []
        for img in images:
            u8 = (img.detach().cpu().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
            res = self.exported.run({"image": np.ascontiguousarray(u8.numpy())})
            out.append({k: torch.from_numpy(np.asarray(v)) for k, v in res.items()})
        return out


def load_onnx_detector(path: str | os.PathLike, threads: int | None = None) -> tuple[OnnxDetector, dict[str, Any]]:
    """An exported detector (checked: a detection export of ``focalnet export``) and the ``meta`` predict
    needs (``class_names``, ``category_ids``, ``detector``, ``masks``)."""
    exported = open_exported(path, "detection", threads)
    m = exported.meta
    ids = m.get("category_ids")
    if not isinstance(ids, list) or len(ids) != len(m["class_names"]):
        raise ValueError(f"{path}: the export's category_ids do not match its {len(m['class_names'])} class names")
    meta = {"class_names": m["class_names"], "category_ids": ids, "detector": m["model"], "masks": m.get("masks")}
    return OnnxDetector(exported), meta
