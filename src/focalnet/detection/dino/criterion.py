"""DINO's set criterion: Hungarian-matched focal / L1 / GIoU losses on every decoder layer, the encoder
proposals and the denoising queries, with the normalisation of the original ``SetCriterion``.

For one set of predictions (``pred_logits [B, Q, C]``, ``pred_boxes [B, Q, 4]`` sigmoid cx, cy, w, h) and
its matches to the ground truths:

* ``loss_ce``: sigmoid focal loss (alpha 0.25, gamma 2) over every query and class against one-hot
  targets (unmatched queries: all zeros), summed and divided by ``num_boxes``;
* ``loss_bbox``: L1 between matched normalised cx, cy, w, h, summed, / ``num_boxes``;
* ``loss_giou``: ``1 - GIoU`` of the matched boxes, summed, / ``num_boxes``.

``num_boxes`` is the number of ground truths in the batch, averaged over the DDP processes, at least 1.
The parts and their loss-name suffixes: the last decoder layer (none), the other decoder layers
(``aux_outputs``: ``_0`` .. ``_{L-2}``), the encoder's top-k proposals (``interm_outputs``: ``_interm``),
and, in training, the denoising queries (``dn_meta["output_known_lbs_bboxes"]``: ``_dn`` for the last
layer, ``_dn_0`` ..): these are matched by construction (positive query ``j`` of every group to ground
truth ``j``; negatives unmatched, so pushed to "no object") and normalised by ``num_boxes * groups``.
Outside training, or when a batch has no ground truth, the denoising losses are zeros.

The returned losses are already multiplied by their weights (the original DINO config: ce 1, L1 5,
GIoU 2 for every part), so their sum is the total loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from ...ops.matching import HungarianMatcher

__all__ = ["DINOCriterion", "DEFAULT_LOSS_WEIGHTS", "dn_match_indices"]

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}

Indices = list[tuple[Tensor, Tensor]]


def dn_match_indices(targets: list[dict[str, Tensor]], dn_meta: Mapping[str, Any], device: Any = None) -> Indices:
    """Per image, (denoising query indices, target indices) of the positive queries of every group:
    query ``g * group_size + j`` reconstructs ground truth ``j`` (``group_size = pad_size / num_dn_group``)."""
    groups, pad = int(dn_meta["num_dn_group"]), int(dn_meta["pad_size"])
    if pad % groups:
        raise ValueError(f"pad_size {pad} is not a multiple of num_dn_group {groups}")
    group_size = pad // groups
    out = []
    for t in targets:
        n = int(t["labels"].numel())
        j = torch.arange(n, device=device)
        queries = (torch.arange(groups, device=device)[:, None] * group_size + j[None, :]).flatten()
        out.append((queries, j.repeat(groups)))
    return out


class DINOCriterion(nn.Module):
    """The DINO loss. ``forward(outputs, targets)`` returns a dict of weighted scalar losses.

    ``outputs`` is the original DINO output dict (``pred_logits``, ``pred_boxes``, optional
    ``aux_outputs`` (list of dicts), ``interm_outputs`` (dict) and ``dn_meta`` (from
    :func:`~focalnet.detection.dino.denoising.prepare_for_cdn` after ``dn_post_process``)); ``targets[i]``
    holds ``labels [N_i]`` in ``0..num_classes-1`` and ``boxes [N_i, 4]`` (normalised cx, cy, w, h).
    ``weight_dict`` maps loss names to weights; a name it lacks (``loss_bbox_dn_3``) takes the weight of
    its base name (``loss_bbox``), which defaults to :data:`DEFAULT_LOSS_WEIGHTS`.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        weight_dict: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher(focal_alpha=focal_alpha)
        self.weight_dict = {**DEFAULT_LOSS_WEIGHTS, **(weight_dict or {})}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def weight(self, name: str) -> float:
        """Weight of loss ``name`` (its own entry, else its base name's)."""
        if name in self.weight_dict:
            return float(self.weight_dict[name])
        base = "_".join(name.split("_")[:2])
        if base not in self.weight_dict:
            raise KeyError(f"no weight for loss {name!r}")
        return float(self.weight_dict[base])

    # ------------------------------------------------------------------ losses of one prediction set
    def set_losses(
        self, out: Mapping[str, Tensor], targets: list[dict[str, Tensor]], indices: Indices, num_boxes: float
    ) -> dict[str, Tensor]:
        """Unweighted ``loss_ce``, ``loss_bbox``, ``loss_giou`` of one prediction set and its matches."""
        logits, boxes = out["pred_logits"].float(), out["pred_boxes"].float()
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        tgt_labels = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
        tgt_boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)])
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, src_idx, tgt_labels.to(logits.device).long()] = 1.0
        loss_ce = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum") / num_boxes
        if src_idx.numel() == 0:
            zero = boxes.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_bbox": zero, "loss_giou": zero.clone()}
        src_boxes = boxes[batch_idx, src_idx]
        tgt_boxes = tgt_boxes.to(src_boxes)
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes  # pairwise then diagonal: no epsilon, as the original
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _match(self, out: Mapping[str, Tensor], targets: list[dict[str, Tensor]]) -> Indices:
        return self.matcher(out["pred_logits"], out["pred_boxes"], targets)

    def _num_boxes(self, targets: list[dict[str, Tensor]], device: torch.device) -> float:
        n = torch.as_tensor([float(sum(int(t["labels"].numel()) for t in targets))], device=device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            world = dist.get_world_size()
        return max(float(n.item()) / world, 1.0)

    def _check_targets(self, targets: list[dict[str, Tensor]], batch: int) -> None:
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
        for t in targets:
            labels = t["labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"target labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}..{int(labels.max())}"
                )
            if t["boxes"].shape != (labels.numel(), 4):
                raise ValueError(f"target boxes must be [N, 4] with N labels, got {tuple(t['boxes'].shape)}")

    # ------------------------------------------------------------------ all parts
    def forward(self, outputs: Mapping[str, Any], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        self._check_targets(targets, logits.shape[0])
        num_boxes = self._num_boxes(targets, logits.device)
        raw: dict[str, Tensor] = {}

        def add(part: dict[str, Tensor], suffix: str) -> None:
            raw.update({f"{k}{suffix}": v for k, v in part.items()})

        add(self.set_losses(outputs, targets, self._match(outputs, targets), num_boxes), "")
        aux = list(outputs.get("aux_outputs") or [])
        for i, a in enumerate(aux):
            add(self.set_losses(a, targets, self._match(a, targets), num_boxes), f"_{i}")
        interm = outputs.get("interm_outputs")
        if interm is not None:
            add(self.set_losses(interm, targets, self._match(interm, targets), num_boxes), "_interm")

        dn_meta = outputs.get("dn_meta")
        known = dn_meta.get("output_known_lbs_bboxes") if dn_meta else None
        if self.training and known is not None:
            groups = int(dn_meta["num_dn_group"])
            indices = dn_match_indices(targets, dn_meta, logits.device)
            add(self.set_losses(known, targets, indices, num_boxes * groups), "_dn")
            for i, a in enumerate(known.get("aux_outputs") or []):
                add(self.set_losses(a, targets, indices, num_boxes * groups), f"_dn_{i}")
        else:
            zero = logits.new_zeros((), dtype=torch.float32)
            for suffix in ["_dn"] + [f"_dn_{i}" for i in range(len(aux))]:
                add({k: zero for k in DEFAULT_LOSS_WEIGHTS}, suffix)
        return {k: v * self.weight(k) for k, v in raw.items()}
