"""One-to-one (Hungarian) matching of set predictions to ground truths, shared by the query-based models
(Sparse R-CNN and DINO with box costs; Mask2Former with its own mask costs through :func:`linear_assignment`).

The cost of assigning prediction ``q`` to ground truth ``t`` is

    cost_class * focal(q, label_t) + cost_bbox * L1(box_q, box_t) + cost_giou * (-GIoU(box_q, box_t))

where ``focal`` is the focal-loss cost of the sigmoid class probability ``p`` of the ground truth's label,
``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))`` (the difference between the
positive and the negative focal loss, as in Deformable DETR and mmdetection's ``FocalLossCost``). The
assignment that minimises the total cost is solved per image with
:func:`scipy.optimize.linear_sum_assignment`.

Boxes are given in one format (``"cxcywh"`` or ``"xyxy"``) and one scale for predictions and ground
truths alike; the L1 cost is taken in that format (DINO: normalised cx, cy, w, h; Sparse R-CNN:
normalised x1, y1, x2, y2), the GIoU on the corresponding corners (GIoU does not depend on the scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "focal_cost", "linear_assignment"]


def linear_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The minimum-cost one-to-one assignment of a ``[Q, N]`` cost matrix: ``(rows, cols)`` int64 tensors on
    ``cost``'s device, sorted by row, ``min(Q, N)`` pairs. Non-finite costs raise ``FloatingPointError``."""
    if not torch.isfinite(cost).all():
        raise FloatingPointError("non-finite matching cost (NaN/inf in the predictions)")
    rows, cols = linear_sum_assignment(cost.detach().float().cpu().numpy())
    as_index = lambda a: torch.as_tensor(a, dtype=torch.int64, device=cost.device)  # noqa: E731
    return as_index(rows), as_index(cols)


def focal_cost(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0, eps: float = 1e-8) -> Tensor:
    """Focal classification cost ``[Q, N]`` of predictions ``logits [Q, C]`` for ground-truth ``labels [N]``."""
    p = logits.sigmoid()[:, labels]
    pos = alpha * (1 - p).pow(gamma) * -(p + eps).log()
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + eps).log()
    return pos - neg


@dataclass
class HungarianMatcher:
    """Hungarian matcher with focal, L1 and GIoU costs (weights 2 / 5 / 2 as in DINO and Sparse R-CNN).

    ``matcher(logits, boxes, targets)`` with ``logits [B, Q, C]`` (one sigmoid per class, no background
    column), ``boxes [B, Q, 4]`` and ``targets[i]`` holding ``labels [N_i]`` (indices into the ``C``
    classes) and ``boxes [N_i, 4]`` (same format and scale as ``boxes``) returns, per image, the pair
    ``(prediction indices, target indices)`` of the ``min(Q, N_i)`` matches, sorted by prediction index.
    """

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_format: Literal["cxcywh", "xyxy"] = "cxcywh"

    def __post_init__(self) -> None:
        if self.box_format not in ("cxcywh", "xyxy"):
            raise ValueError(f"box_format must be 'cxcywh' or 'xyxy', got {self.box_format!r}")
        if min(self.cost_class, self.cost_bbox, self.cost_giou) < 0:
            raise ValueError("matching cost weights must be >= 0")

    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """The ``[Q, N]`` cost matrix of one image."""
        logits, boxes, tgt_boxes = logits.float(), boxes.float(), tgt_boxes.float()
        cost = self.cost_class * focal_cost(logits, labels, self.focal_alpha, self.focal_gamma)
        cost = cost + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
        if self.box_format == "cxcywh":
            boxes, tgt_boxes = box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        return cost - self.cost_giou * generalized_box_iou(boxes, tgt_boxes)

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        if logits.dim() != 3 or boxes.shape[:2] != logits.shape[:2] or len(targets) != logits.shape[0]:
            raise ValueError(
                f"expected logits [B, Q, C], boxes [B, Q, 4] and B targets, got {tuple(logits.shape)}, "
                f"{tuple(boxes.shape)} and {len(targets)} targets"
            )
        matches = []
        for i, t in enumerate(targets):
            labels, tgt_boxes = t["labels"], t["boxes"]
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
                matches.append((empty, empty.clone()))
                continue
            matches.append(linear_assignment(self.cost_matrix(logits[i], boxes[i], labels, tgt_boxes)))
        return matches
