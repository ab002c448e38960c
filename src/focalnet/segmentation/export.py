"""A segmentor as one checked ONNX graph, and ``focalnet segmentation predict`` on such a file.

The graph (:class:`SegmentorGraph`) takes one RGB image, ``image`` (uint8, ``H x W x 3``, any height and
width) and returns ``label_map`` (int64 ``H x W`` class indices at the image's size): the test-time
keep-ratio resize to the file's test scale (mmcv's rule, sizes computed in float64 as in Python), the
normalisation, the segmentor's logits (whole-image inference), bilinear resize back to the image and the
argmax are all in the graph.

The export check runs the traced image and two images of other sizes through ONNX Runtime and the same
module in PyTorch: at least 99.9 % of the label-map pixels equal.

A universal segmentor (Mask2Former: ``forward_logits``) takes :class:`UniversalGraph` instead: the same
resize and normalisation, padding to a multiple of 32, the last prediction, the mask logits brought back to
the image (detectron2's ``sem_seg_postprocess``) and both inferences of
:mod:`~focalnet.segmentation.mask2former.postprocess`. Outputs: ``label_map`` (semantic argmax),
``panoptic_map`` (int64 segment ids, 0 void) and per query ``segment_ids`` (0: dropped),
``segment_scores``, ``segment_labels`` (``panoptic_maps``, thresholds stored at export), and the instance
output ``instance_masks`` (uint8 ``k x H x W``), ``instance_scores``, ``instance_labels``
(``instance_inference`` without boxes, top ``max_instances``);
:meth:`OnnxUniversal.panoptic` makes ``panoptic_inference``'s ``segments_info`` of them, so ``predict``
writes the same COCO panoptic PNGs + JSON, label PNGs and overlays as on the checkpoint (the instance
output is for deployers; predict writes none). Its check: the maps, the instance masks and the ids and
labels at least 99.9 % equal, scores within 1e-4.

Differences from the PyTorch ``predict`` path, said in ``docs/deploy.md``: the graph resizes the image
with ``F.interpolate`` (bilinear, on 0-255 floats; PyTorch's predict resizes the uint8 image with Pillow,
whose bilinear filter widens when it shrinks), so label maps agree exactly only where the test scale
leaves the image at its size; a sliding-window test mode is exported as whole-image inference.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.onnx import check_close, check_label_maps, export_metadata, open_exported, sample_image, write_checked
from .evaluate import TestConfig
from .mask2former.postprocess import instance_inference, panoptic_maps, semantic_inference
from .model import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "SegmentorGraph",
    "CHECK_SIZES",
    "export_segmentor",
    "OnnxSegmentor",
    "load_onnx_segmentor",
    "UNIVERSAL_OUTPUTS",
    "UniversalGraph",
    "export_universal",
    "OnnxUniversal",
    "segments_info",
]

#: image sizes (height, width) of the export check: the traced one first, then two others
CHECK_SIZES: tuple[tuple[int, int], ...] = ((256, 320), (200, 152), (240, 288))


def rescaled_size(image: Tensor, scale: Sequence[float]) -> Tensor:
    """mmcv ``imrescale``'s output ``(h, w)`` of an ``H x W x C`` tensor as int64 tensors, traceable (the
    same float64 arithmetic as :func:`~focalnet.segmentation.transforms.rescale_size`)."""
    hw = torch._shape_as_tensor(image)[:2].to(torch.float64)
    # 1-d tensors throughout: the exporter casts 0-d ones (scalars) to float32
    limits = torch.tensor([min(scale), max(scale)], dtype=torch.float64)
    factor = torch.amin(limits / torch.sort(hw).values, dim=0, keepdim=True)
    return torch.floor(hw * factor + 0.5).to(torch.int64).clamp(min=1)


def _pool_matrix(length: Tensor, bins: int) -> Tensor:
    """``bins x length`` averaging weights of adaptive average pooling along one axis (PyTorch's bins:
    ``floor(i * L / bins)`` to ``ceil((i + 1) * L / bins)``)."""
    i = torch.arange(bins, dtype=torch.int64)
    start = torch.div(i * length, bins, rounding_mode="floor")
    end = torch.div((i + 1) * length + bins - 1, bins, rounding_mode="floor")
    pos = torch.arange(length, dtype=torch.int64)  # type: ignore[call-overload]
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside.to(torch.float32) / (end - start)[:, None].to(torch.float32)


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, exportable for any input size (ONNX has no adaptive
    pooling to a fixed output size of a dynamic input); same bins, equal within float rounding."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.bins = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: Tensor) -> Tensor:
        hw = torch._shape_as_tensor(x)[-2:]
        ph, pw = _pool_matrix(hw[0], self.bins[0]), _pool_matrix(hw[1], self.bins[1])
        return torch.einsum("ih,nchw,jw->ncij", ph, x, pw)


def exportable(model: nn.Module) -> nn.Module:
    """``model`` (in place) with its adaptive average pools (UPerNet's PPM) in their exportable form."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.AdaptiveAvgPool2d) and None not in np.atleast_1d(child.output_size):
            setattr(model, name, MatrixAdaptiveAvgPool2d(child.output_size))
        else:
            exportable(child)
    return model


class SegmentorGraph(nn.Module):
    """A segmentor (eval mode, with ``encode_decode``) as a function of one uint8 ``H x W x 3`` image ->
    ``H x W`` int64 label map."""

    def __init__(
        self,
        segmentor: nn.Module,
        scale: Sequence[int] | None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.scale = tuple(scale) if scale else None
        self.align_corners = align_corners
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        size = torch._shape_as_tensor(image)[:2]
        x = image.permute(2, 0, 1)[None].to(torch.float32)
        if self.scale is not None:
            hw = rescaled_size(image, self.scale)
            x = F.interpolate(x, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        logits = self.segmentor.encode_decode(x)
        logits = F.interpolate(logits, size=(size[0], size[1]), mode="bilinear", align_corners=self.align_corners)
        return logits.argmax(1)[0]


def export_segmentor(
    model: nn.Module,
    extra: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
    opset: int = 17,
    fp16: bool = False,
) -> Path:
    """Write ``model`` (from :func:`~focalnet.segmentation.load_segmentor`, with its ``extra``: the test
    settings and mean/std) as a checked ONNX graph (see the module docstring). Returns the path."""
    from ..models.inference import inference_path

    if hasattr(model, "forward_logits"):  # a universal segmentor (Mask2Former): label and panoptic maps
        return export_universal(model, extra, path, source=source, sizes=sizes, opset=opset, fp16=fp16)
    if not hasattr(model, "encode_decode"):
        raise ValueError(
            f"{type(model).__name__} has no whole-image logits (encode_decode) to export yet; UPerNet files export"
        )
    test = TestConfig.from_stored(extra.get("test"))
    data = dict(extra.get("data") or {})
    mean = tuple(data.get("mean") or IMAGENET_MEAN)
    std = tuple(data.get("std") or IMAGENET_STD)
    align = bool(getattr(getattr(model, "head_cfg", None), "align_corners", False))
    seg = exportable(inference_path(copy.deepcopy(model).cpu().eval()))
    graph = SegmentorGraph(seg, test.scale, mean, std, align).eval()
    meta = dict(getattr(model, "meta", {}) or {})
    names = list(getattr(model, "class_names", None) or meta.get("class_names") or [])
    info = export_metadata(
        "segmentation",
        str(meta.get("segmentor", "upernet")),
        inputs=[("image", "uint8")],
        outputs=[("label_map", "int64")],
        input_format="uint8 RGB image, H x W x 3 (any size); the graph resizes, normalises and resizes back",
        class_names=names,
        source=source,
        num_classes=int(model.num_classes),
        mean=list(mean),
        std=list(std),
        size_rules={"test_scale": list(test.scale) if test.scale else None, "mode": "whole"},
        dtype="float16" if fp16 else "float32",
    )
    images = [sample_image(h, w, i) for i, (h, w) in enumerate(sizes)]

    def check(session: Any) -> None:
        for img in images:
            with torch.no_grad():
                ref = graph(img).numpy()
            got = session.run(["label_map"], {"image": img.numpy()})[0]
            check_label_maps("label_map", ref, got, where=f" at {img.shape[0]}x{img.shape[1]}")

    return write_checked(
        graph,
        (images[0],),
        path,
        input_names=["image"],
        output_names=["label_map"],
        dynamic_axes={"image": {0: "height", 1: "width"}, "label_map": {0: "height", 1: "width"}},
        metadata=info,
        check=None if fp16 else check,
        opset=opset,
        fp16=fp16,
    )


class OnnxSegmentor:
    """An exported segmentor: ``label_map(image)`` (uint8 ``H x W x 3``) -> uint8 ``H x W`` class ids."""

    def __init__(self, exported: Any) -> None:
        self.exported = exported
        self.num_classes = int(exported.meta.get("num_classes") or len(exported.meta["class_names"]))
        self.class_names = list(exported.meta["class_names"])

    def label_map(self, image: np.ndarray) -> np.ndarray:
        out = self.exported.run({"image": np.ascontiguousarray(image, dtype=np.uint8)})["label_map"]
        return out.astype(np.uint8)


def load_onnx_segmentor(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An exported segmentor, checked (a segmentation export of ``focalnet export``) before it runs: an
    :class:`OnnxSegmentor`, or for a universal segmentor's export (its ``panoptic_map`` output) an
    :class:`OnnxUniversal`."""
    exported = open_exported(path, "segmentation", threads)
    if any(name == "panoptic_map" for name, _ in exported.meta["outputs"]):
        return OnnxUniversal(exported)
    return OnnxSegmentor(exported)


# ------------------------------------------------------------- universal segmentors (Mask2Former)
#: the graph's outputs and their element types
UNIVERSAL_OUTPUTS: tuple[tuple[str, str], ...] = (
    ("label_map", "int64"),
    ("panoptic_map", "int64"),
    ("segment_ids", "int64"),
    ("segment_scores", "float32"),
    ("segment_labels", "int64"),
    ("instance_masks", "uint8"),
    ("instance_scores", "float32"),
    ("instance_labels", "int64"),
)
SIZE_DIVISIBILITY = 32  # detectron2's padding of the batch


class UniversalGraph(nn.Module):
    """A mask-classification segmentor (``forward_logits``) as a function of one uint8 ``H x W x 3`` image
    -> the outputs of :data:`UNIVERSAL_OUTPUTS`."""

    def __init__(
        self,
        model: nn.Module,
        scale: Sequence[int] | None,
        mean: Sequence[float],
        std: Sequence[float],
        is_thing: Sequence[bool],
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        max_instances: int = 100,
    ) -> None:
        super().__init__()
        self.model = model
        self.max_instances = int(max_instances)
        self.scale = tuple(scale) if scale else None
        self.thresholds = (float(object_mask_threshold), float(overlap_threshold))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("is_thing", torch.tensor(list(is_thing), dtype=torch.bool), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        size = torch._shape_as_tensor(image)[:2]
        x = image.permute(2, 0, 1)[None].to(torch.float32)
        if self.scale is not None:
            hw = rescaled_size(image, self.scale)
            x = F.interpolate(x, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        rh, rw = x.shape[-2], x.shape[-1]  # traced while exporting
        x = F.pad(x, (0, (-rw) % SIZE_DIVISIBILITY, 0, (-rh) % SIZE_DIVISIBILITY))
        cls, masks = self.model.forward_logits(x)
        # detectron2's sem_seg_postprocess: to the padded size, crop, to the image's size
        masks = F.interpolate(masks, size=(x.shape[-2], x.shape[-1]), mode="bilinear", align_corners=False)
        masks = F.interpolate(masks[..., :rh, :rw], size=(size[0], size[1]), mode="bilinear", align_corners=False)
        cls, masks = cls[0].float(), masks[0].float()
        label_map = semantic_inference(cls, masks).argmax(0)
        seg_map, segment_id, scores, labels = panoptic_maps(cls, masks, self.is_thing, *self.thresholds)
        inst = instance_inference(cls, masks, topk=self.max_instances, boxes=False)
        return (
            label_map,
            seg_map.to(torch.int64),
            segment_id,
            scores,
            labels,
            inst["masks"].to(torch.uint8),
            inst["scores"],
            inst["labels"],
        )


def export_universal(
    model: nn.Module,
    extra: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
    opset: int = 17,
    fp16: bool = False,
) -> Path:
    """Write ``model`` (a universal segmentor from :func:`~focalnet.segmentation.load_segmentor`, with its
    ``extra``: test settings, mean/std, the run's ``universal`` thresholds) as a checked ONNX graph (see the
    module docstring). Returns the path."""
    from ..models.inference import inference_path

    meta = dict(getattr(model, "meta", {}) or {})
    names = list(model.class_names)
    test = TestConfig.from_stored(extra.get("test"))
    mean = tuple(extra.get("mean") or (123.675, 116.28, 103.53))
    std = tuple(extra.get("std") or (58.395, 57.12, 57.375))
    stored = dict((extra.get("config") or {}).get("universal") or {})
    thresholds = (float(stored.get("object_mask_threshold", 0.8)), float(stored.get("overlap_threshold", 0.8)))
    max_instances = int(stored.get("max_instances", 100))
    things = [bool(t) for t in (meta.get("thing_classes") or [False] * len(names))]
    seg = inference_path(copy.deepcopy(model).cpu().eval())
    graph = UniversalGraph(seg, test.scale, mean, std, things, *thresholds, max_instances).eval()
    info = export_metadata(
        "segmentation",
        str(meta.get("segmentor", "mask2former")),
        inputs=[("image", "uint8")],
        outputs=list(UNIVERSAL_OUTPUTS),
        input_format="uint8 RGB image, H x W x 3 (any size); the graph resizes, normalises, pads and resizes back",
        class_names=names,
        source=source,
        num_classes=int(model.num_classes),
        thing_classes=things,
        category_ids=[int(c) for c in (meta.get("category_ids") or range(1, len(names) + 1))],
        mean=list(mean),
        std=list(std),
        size_rules={
            "test_scale": list(test.scale) if test.scale else None,
            "size_divisibility": SIZE_DIVISIBILITY,
            "object_mask_threshold": thresholds[0],
            "overlap_threshold": thresholds[1],
            "max_instances": max_instances,
        },
        dtype="float16" if fp16 else "float32",
    )
    output_names = [n for n, _ in UNIVERSAL_OUTPUTS]
    images = [sample_image(h, w, i) for i, (h, w) in enumerate(sizes)]

    def check(session: Any) -> None:
        for img in images:
            where = f" at {img.shape[0]}x{img.shape[1]}"
            with torch.no_grad():
                ref = dict(zip(output_names, (t.numpy() for t in graph(img))))
            got = dict(zip(output_names, session.run(output_names, {"image": img.numpy()})))
            for name in ("label_map", "panoptic_map", "segment_ids", "segment_labels", "instance_labels"):
                check_label_maps(name, ref[name], got[name], where=where)
            check_label_maps("instance_masks", ref["instance_masks"], got["instance_masks"], where=where)
            for name in ("segment_scores", "instance_scores"):
                check_close(name, ref[name], got[name], 1e-4, where=where)

    hw = {0: "height", 1: "width"}
    return write_checked(
        graph,
        (images[0],),
        path,
        input_names=["image"],
        output_names=output_names,
        dynamic_axes={
            "image": hw,
            "label_map": hw,
            "panoptic_map": hw,
            "instance_masks": {0: "instances", 1: "height", 2: "width"},
            "instance_scores": {0: "instances"},
            "instance_labels": {0: "instances"},
        },
        metadata=info,
        check=None if fp16 else check,
        opset=opset,
        fp16=fp16,
    )


def segments_info(
    segment_ids: np.ndarray, scores: np.ndarray, labels: np.ndarray, areas: np.ndarray, is_thing: Sequence[bool]
) -> list[dict[str, Any]]:
    """``panoptic_inference``'s ``segments_info`` from the graph's per-query arrays and the pixel count of
    every id (``areas[i]``: pixels of id ``i``): per segment, its first query's class and its queries'
    largest score."""
    n = int(segment_ids.max()) if segment_ids.size else 0
    best = np.full(n + 1, -1.0, dtype=scores.dtype)
    np.maximum.at(best, segment_ids, scores)
    first = np.full(n + 1, segment_ids.size, dtype=np.int64)
    np.minimum.at(first, segment_ids, np.arange(segment_ids.size))
    info = []
    for sid in range(1, n + 1):
        cat = int(labels[first[sid]])
        info.append(
            {
                "id": sid,
                "category_id": cat,
                "isthing": bool(is_thing[cat]),
                "score": float(best[sid]),
                "area": int(areas[sid]),
            }
        )
    return info


class OnnxUniversal:
    """An exported universal segmentor behind what ``segmentation predict`` uses: ``meta`` (``segmentor``,
    ``thing_classes``, ``category_ids``), ``class_names``, ``num_classes``, :meth:`panoptic` and
    :meth:`label_map` of a uint8 ``H x W x 3`` image."""

    def __init__(self, exported: Any) -> None:
        m = exported.meta
        self.exported = exported
        self.class_names = list(m["class_names"])
        self.num_classes = int(m.get("num_classes") or len(self.class_names))
        things = m.get("thing_classes")
        ids = m.get("category_ids")
        if not isinstance(things, list) or len(things) != len(self.class_names):
            raise ValueError(f"{exported.path}: the export's thing_classes do not match its class names")
        if not isinstance(ids, list) or len(ids) != len(self.class_names):
            raise ValueError(f"{exported.path}: the export's category_ids do not match its class names")
        self.meta = {
            "segmentor": m["model"],
            "class_names": self.class_names,
            "thing_classes": [bool(t) for t in things],
            "category_ids": ids,
        }

    def eval(self) -> OnnxUniversal:
        return self

    def to(self, device: Any) -> OnnxUniversal:
        """No-op: ONNX Runtime's CPU provider runs it whatever ``device`` is."""
        return self

    def _run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return self.exported.run({"image": np.ascontiguousarray(image, dtype=np.uint8)})

    def panoptic(self, image: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """``(segment id map int32 H x W, segments_info)`` as ``panoptic_inference`` gives them."""
        out = self._run(image)
        seg = out["panoptic_map"].astype(np.int32)
        n = int(out["segment_ids"].max()) if out["segment_ids"].size else 0
        areas = np.bincount(seg.ravel(), minlength=n + 1)
        thing = self.meta["thing_classes"]
        return seg, segments_info(out["segment_ids"], out["segment_scores"], out["segment_labels"], areas, thing)

    def label_map(self, image: np.ndarray) -> np.ndarray:
        """The semantic label map (class indices)."""
        return self._run(image)["label_map"].astype(np.uint8 if self.num_classes < 256 else np.int32)
