"""Mask2Former inference, per image, from ``class_logits [Q, K+1]`` (the last column "no object") and
``mask_logits [Q, H, W]`` already at the image's size (:func:`resize_mask_logits` brings the model's
quarter-resolution logits there): the semantic, panoptic and instance procedures of the detectron2 code.

Everything is tensor operations without loops over pixels or queries. :func:`semantic_inference`,
:func:`instance_inference` (``boxes=False``) and :func:`panoptic_maps` (the tensor part of
:func:`panoptic_inference`: fixed-shape per-query outputs, no Python control flow on values) trace to ONNX
(opset 17) with dynamic query count and size; :func:`panoptic_inference` adds the Python list of segments.

>>> import torch
>>> cls, masks = torch.tensor([[0.0, 9.0, 0.0]]), torch.full((1, 2, 3), 5.0)
>>> seg, info = panoptic_inference(cls, masks, thing_ids={0})
>>> seg.tolist(), [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in info]
([[1, 1, 1], [1, 1, 1]], [(1, 1, False, 6)])
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import masks_to_boxes

__all__ = [
    "instance_inference",
    "panoptic_inference",
    "panoptic_maps",
    "resize_mask_logits",
    "semantic_inference",
]


def resize_mask_logits(
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int] | None = None,
) -> Tensor:
    """Mask logits ``[..., h, w]`` (a quarter of the padded input) -> ``[..., *output_size]``: bilinear
    (``align_corners=False``) to ``padded_size``, the padding cropped off to ``image_size`` (the resized
    image inside the padded batch), bilinear to ``output_size`` (the original image; default
    ``image_size``), as detectron2's ``sem_seg_postprocess``."""
    lead = mask_logits.shape[:-2]
    x = mask_logits.reshape(1, -1, *mask_logits.shape[-2:])
    x = F.interpolate(x, size=tuple(padded_size), mode="bilinear", align_corners=False)
    x = x[..., : image_size[0], : image_size[1]]
    if output_size is not None and tuple(output_size) != tuple(image_size):
        x = F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class scores ``[K, H, W]``: ``sum_q softmax(class)[q, :K] * sigmoid(mask)[q]``; the label map is
    its ``argmax(0)``."""
    return torch.einsum("qc,qhw->chw", class_logits.softmax(-1)[:, :-1], mask_logits.sigmoid())


def panoptic_maps(
    class_logits: Tensor,
    mask_logits: Tensor,
    is_thing: Tensor,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The tensor part of :func:`panoptic_inference`: ``(segment id map int32 [H, W], segment id per query
    int64 [Q] (0: dropped), score [Q], class [Q])``. ``is_thing`` is a bool ``[K]`` per class.

    A query is kept when its most probable class is not "no object" and its probability exceeds
    ``object_mask_threshold``. Each pixel goes to the kept query of largest ``score * sigmoid(mask)``
    (the first on ties) and stays void when that query's mask probability is below 0.5. A kept query
    becomes a segment when its pixels are not empty and cover at least ``overlap_threshold`` of its own
    mask (``sigmoid >= 0.5``). Ids count the segments in query order; the segments of a stuff class take
    the id of its first one."""
    scores, labels = class_logits.softmax(-1).max(-1)
    num_classes = class_logits.shape[-1] - 1
    probs = mask_logits.sigmoid()
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    q = probs.shape[0]
    # dropped queries weigh in [-2, -1], below every kept one (>= 0): the argmax is the one over the kept
    weighted = probs * torch.where(keep, scores, -1.0)[:, None, None]
    weighted -= (~keep).to(probs.dtype)[:, None, None]
    owner = weighted.argmax(0)  # [H, W]
    foreground = probs.gather(0, owner[None])[0] >= 0.5
    flat = owner.flatten()
    ones = torch.ones_like(flat, dtype=torch.int64)
    mask_area = torch.zeros(q, dtype=torch.int64, device=flat.device).scatter_add(0, flat, ones)
    visible = torch.zeros(q, dtype=torch.int64, device=flat.device).scatter_add(0, flat, foreground.flatten().long())
    original_area = (probs >= 0.5).flatten(1).sum(1)
    ratio = mask_area.double() / original_area.clamp(min=1).double()
    accepted = keep & (mask_area > 0) & (original_area > 0) & (visible > 0) & (ratio >= overlap_threshold)
    # a stuff segment whose class already has an accepted query (earlier in query order) is merged into it
    thing = is_thing.to(labels.device)[labels.clamp(max=num_classes - 1)]
    earlier = torch.ones(q, q, dtype=torch.bool, device=labels.device).tril(-1)  # [k, j]: j < k
    same_before = earlier & labels[:, None].eq(labels[None, :]) & accepted[None, :]
    merged = accepted & ~thing & same_before.any(1)
    new = accepted & ~merged
    new_id = torch.cumsum(new.long(), 0) * new.long()
    first = same_before.long().argmax(1)  # the first accepted query of the same class
    segment_id = torch.where(merged, new_id[first], new_id)
    seg_map = torch.where(foreground, segment_id[owner], torch.zeros_like(owner)).to(torch.int32)
    return seg_map, segment_id, scores, labels


def _thing_mask(thing_ids: Collection[int], class_logits: Tensor) -> Tensor:
    """A bool ``[K]`` with the ``thing_ids`` set (contiguous indices, checked against ``K``)."""
    num_classes = class_logits.shape[-1] - 1
    ids = [int(i) for i in thing_ids]
    if any(not 0 <= i < num_classes for i in ids):
        raise ValueError(f"thing_ids must lie in 0..{num_classes - 1}, got {sorted(ids)}")
    is_thing = torch.zeros(num_classes, dtype=torch.bool, device=class_logits.device)
    is_thing[ids] = True
    return is_thing


def panoptic_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    thing_ids: Collection[int] = (),
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Panoptic segmentation of one image: ``(segment id map int32 [H, W] (0: void), segments_info)``, one
    ``{"id", "category_id" (contiguous class index), "isthing", "score", "area"}`` per segment, in id
    order (see :func:`panoptic_maps`; a merged stuff segment's score is the largest of its queries').
    ``thing_ids`` are the thing classes' contiguous indices; every other class is stuff."""
    is_thing = _thing_mask(thing_ids, class_logits)
    seg_map, segment_id, scores, labels = panoptic_maps(
        class_logits, mask_logits, is_thing, object_mask_threshold, overlap_threshold
    )
    n = int(segment_id.max()) if segment_id.numel() else 0
    area = torch.bincount(seg_map.flatten().long(), minlength=n + 1)
    best = torch.full((n + 1,), -1.0, dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(0, segment_id, scores, reduce="amax")
    first = torch.full((n + 1,), segment_id.numel(), dtype=torch.int64, device=segment_id.device)
    first = first.scatter_reduce(0, segment_id, torch.arange(segment_id.numel(), device=segment_id.device), "amin")
    info = []
    for sid, k, a, s in zip(range(1, n + 1), first[1:].tolist(), area[1:].tolist(), best[1:].tolist()):
        cat = int(labels[k])
        info.append({"id": sid, "category_id": cat, "isthing": bool(is_thing[cat]), "score": float(s), "area": int(a)})
    return seg_map, info


def instance_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    topk: int | None = None,
    thing_ids: Collection[int] | None = None,
    boxes: bool = True,
) -> dict[str, Tensor]:
    """Instance segmentation of one image: the ``topk`` (default: the number of queries) best of the
    ``Q * K`` (query, class) pairs by class probability; each keeps its query's mask (``logit > 0``) and
    scores ``class probability * mean mask probability inside that mask``. With ``thing_ids`` (the
    panoptic model's instance output) pairs of other classes are dropped after the top-k. Returns
    ``{"masks": bool [k, H, W], "scores" [k], "labels" int64 [k], "boxes" [k, 4]}``, by decreasing class
    probability; a box holds the mask's pixel edges (x2 = last column + 1, as detectron2's ``BitMasks``),
    zeros for an empty mask. ``boxes=False`` leaves the boxes out; so it traces to ONNX (torchvision's
    ``masks_to_boxes`` exports a boolean index assignment that ONNX Runtime cannot broadcast)."""
    q, num_classes = class_logits.shape[0], class_logits.shape[-1] - 1
    probs = class_logits.softmax(-1)[:, :-1].flatten()
    top, index = probs.topk(min(q if topk is None else max(topk, 0), probs.numel()))
    labels = index % num_classes
    query = torch.div(index, num_classes, rounding_mode="floor")
    if thing_ids is not None:
        keep = _thing_mask(thing_ids, class_logits)[labels]
        top, labels, query = top[keep], labels[keep], query[keep]
    logits = mask_logits[query]
    masks = logits > 0
    inside = masks.flatten(1).to(logits.dtype)
    mask_score = (logits.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    out = {"masks": masks, "scores": top * mask_score, "labels": labels}
    if boxes:
        out["boxes"] = masks_to_boxes(masks)
        out["boxes"][:, 2:] += inside.sum(1, keepdim=True).gt(0).to(out["boxes"].dtype)
    return out
