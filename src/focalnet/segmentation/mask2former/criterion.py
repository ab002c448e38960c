"""Mask2Former's set criterion: Hungarian matching on uniformly sampled points, then a class loss over
every query and mask losses on importance-sampled points of the matched masks (Cheng et al., CVPR 2022;
the semantics of the public detectron2 code).

For one prediction set (``pred_logits [B, Q, K+1]``, the last column "no object"; ``pred_masks
[B, Q, h, w]``, logits at a quarter of the padded input) and ``targets[i] = {"labels": int64 [N_i],
"masks": bool/float [N_i, H, W]}`` at the padded input size:

* **matching** (:class:`Mask2FormerMatcher`): per image, one set of ``num_points`` uniform points in
  normalised ``[0, 1]^2`` coordinates, shared by every prediction and ground truth of the image; cost
  ``2 * (-softmax prob of the target class) + 5 * BCE averaged over the points + 5 * dice``, solved by
  :func:`focalnet.ops.linear_assignment`;
* ``loss_ce``: cross entropy over all ``B * Q`` queries (unmatched ones towards "no object"), the
  "no object" class weighted ``eos_coef`` (a weighted mean, as ``F.cross_entropy`` with ``weight``);
* ``loss_mask`` / ``loss_dice``: per matched mask, ``num_points`` points: 75 % the most uncertain
  (smallest ``|logit|``) of ``3 * num_points`` uniform points, 25 % uniform; sigmoid BCE averaged over the
  points and dice ``1 - (2 p.t + 1) / (p.1 + t.1 + 1)``, each summed over the masks and divided by the
  number of ground-truth masks in the batch (averaged over DDP processes, at least 1).

Every decoder layer is matched and supervised on its own (``aux_outputs`` -> ``loss_ce_0``, ...). The
returned terms are unweighted; ``"loss"`` is their weighted sum (class 2, mask 5, dice 5 by default).

Random points come from ``generator`` (a ``torch.Generator``) when one is given, else from torch's global
generator, in the reference's order (per prediction set: the matcher's points image by image, then the
oversampled and the uniform points of the mask loss), so a seeded run is exact and repeatable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...engine.distributed import mean_over_processes
from ...ops import linear_assignment

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "Mask2FormerCriterion",
    "Mask2FormerMatcher",
    "batch_dice_cost",
    "batch_sigmoid_ce_cost",
    "dice_loss",
    "point_sample",
    "sample_points_by_uncertainty",
    "sigmoid_ce_loss",
]

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}

Indices = list[tuple[Tensor, Tensor]]


def _uniform(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``torch.rand(shape)`` from ``generator`` (drawn on its own device) or the global generator."""
    if generator is None:
        return torch.rand(*shape, device=device)
    return torch.rand(*shape, generator=generator, device=generator.device).to(device)


def point_sample(input: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``input [N, C, H, W]`` at ``coords [N, P, 2]`` (x, y in ``[0, 1]``, pixel
    corners at 0 and 1, zero outside) -> ``[N, C, P]``: ``grid_sample`` with ``align_corners=False``."""
    return F.grid_sample(input, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def sample_points_by_uncertainty(
    logits: Tensor,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Point coordinates ``[R, num_points, 2]`` for mask logits ``[R, H, W]``: of
    ``int(num_points * oversample_ratio)`` uniform points, the ``int(importance_sample_ratio * num_points)``
    with the largest uncertainty ``-|logit|``, then uniform points for the rest."""
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1 or num_points < 1:
        raise ValueError("need num_points >= 1, oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1")
    if logits.dim() != 3:
        raise ValueError(f"expected mask logits [R, H, W], got {tuple(logits.shape)}")
    r = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    coords = _uniform((r, num_sampled, 2), generator, logits.device)
    uncertainty = -point_sample(logits[:, None].detach(), coords)[:, 0].abs()
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    coords = coords.gather(1, idx[..., None].expand(-1, -1, 2))
    if num_points > num_uncertain:
        coords = torch.cat([coords, _uniform((r, num_points - num_uncertain, 2), generator, logits.device)], 1)
    return coords


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sigmoid BCE of ``logits [R, P]`` against ``targets [R, P]``, averaged over points, summed over masks,
    divided by ``num_masks``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss ``1 - (2 p.t + 1) / (p.1 + t.1 + 1)`` of ``sigmoid(logits) [R, P]`` and ``targets [R, P]``,
    summed over masks, divided by ``num_masks``."""
    p = logits.sigmoid()
    loss = 1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)
    return loss.sum() / num_masks


def batch_sigmoid_ce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """``[Q, N]`` sigmoid BCE of every prediction ``logits [Q, P]`` against every target ``[N, P]``, averaged
    over the points."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def batch_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """``[Q, N]`` dice loss of every prediction ``sigmoid(logits) [Q, P]`` against every target ``[N, P]``."""
    p = logits.sigmoid()
    return 1 - (2 * (p @ targets.T) + 1) / (p.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1)


@dataclass
class Mask2FormerMatcher:
    """Hungarian matcher of Mask2Former (costs class 2, mask BCE 5, dice 5 on ``num_points`` uniform points).

    ``matcher(outputs, targets, generator=None)`` with ``outputs["pred_logits"] [B, Q, K+1]``,
    ``outputs["pred_masks"] [B, Q, h, w]`` and ``targets[i]`` holding ``labels [N_i]`` and ``masks
    [N_i, H, W]`` returns, per image, ``(prediction indices, target indices)`` of the ``min(Q, N_i)``
    matches, sorted by prediction index. One point set is drawn per image, even an image without targets
    (the reference's order of random draws).
    """

    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    num_points: int = 12544

    def __post_init__(self) -> None:
        if min(self.cost_class, self.cost_mask, self.cost_dice) < 0 or self.num_points < 1:
            raise ValueError("matching cost weights must be >= 0 and num_points >= 1")

    def cost_matrix(
        self, class_logits: Tensor, mask_logits: Tensor, labels: Tensor, masks: Tensor, coords: Tensor
    ) -> Tensor:
        """The ``[Q, N]`` cost of one image at the points ``coords [P, 2]``, in float32 (autocast off)."""
        with torch.autocast(mask_logits.device.type, enabled=False):
            cost = -class_logits.float().softmax(-1)[:, labels]
            pred = point_sample(mask_logits[:, None].float(), coords.expand(mask_logits.shape[0], -1, -1))[:, 0]
            tgt = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]
            return (
                self.cost_class * cost
                + self.cost_mask * batch_sigmoid_ce_cost(pred, tgt)
                + self.cost_dice * batch_dice_cost(pred, tgt)
            )

    @torch.no_grad()
    def __call__(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> Indices:
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if logits.dim() != 3 or masks.dim() != 4 or masks.shape[:2] != logits.shape[:2]:
            raise ValueError(
                f"expected pred_logits [B, Q, K+1] and pred_masks [B, Q, h, w], got {tuple(logits.shape)} "
                f"and {tuple(masks.shape)}"
            )
        if len(targets) != logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]} images")
        matches = []
        for i, t in enumerate(targets):
            coords = _uniform((1, self.num_points, 2), generator, masks.device)
            labels = t["labels"].to(logits.device)
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
                matches.append((empty, empty.clone()))
                continue
            tgt_masks = t["masks"].to(masks.device)
            matches.append(linear_assignment(self.cost_matrix(logits[i], masks[i], labels, tgt_masks, coords)))
        return matches


class Mask2FormerCriterion(nn.Module):
    """The Mask2Former loss. ``forward(outputs, targets, generator=None)`` returns the unweighted scalar
    terms ``loss_ce``, ``loss_mask``, ``loss_dice`` (and ``loss_ce_0``, ... for ``outputs["aux_outputs"]``
    when ``deep_supervision``) plus ``"loss"``, their sum weighted by ``weight_dict`` (a name it lacks,
    ``loss_dice_3``, takes its base name's weight)."""

    def __init__(
        self,
        num_classes: int,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        matcher: Mask2FormerMatcher | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if min(class_weight, mask_weight, dice_weight, eos_coef) < 0:
            raise ValueError("loss weights and eos_coef must be >= 0")
        if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1 or num_points < 1:
            raise ValueError("need num_points >= 1, oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1")
        self.num_classes = num_classes
        self.weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.matcher = matcher or Mask2FormerMatcher(class_weight, mask_weight, dice_weight, num_points)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def weight(self, name: str) -> float:
        """The weight of loss ``name`` (``loss_mask_3`` takes ``loss_mask``'s)."""
        if name in self.weight_dict:
            return float(self.weight_dict[name])
        return float(self.weight_dict["_".join(name.split("_")[:2])])

    def loss_labels(self, logits: Tensor, targets: Sequence[Mapping[str, Tensor]], indices: Indices) -> Tensor:
        """Weighted cross entropy of ``logits [B, Q, K+1]``; unmatched queries are "no object"."""
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for i, (t, (src, tgt)) in enumerate(zip(targets, indices)):
            target_classes[i, src] = t["labels"].to(logits.device)[tgt]
        weight = self.empty_weight.to(logits.device)
        return F.cross_entropy(logits.float().transpose(1, 2), target_classes, weight)

    def loss_masks(
        self,
        mask_logits: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_masks: float,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(BCE, dice) of the matched masks on importance-sampled points, divided by ``num_masks``."""
        src = torch.cat([mask_logits[i, s] for i, (s, _) in enumerate(indices)]).float()
        if src.shape[0] == 0:  # no ground truth in the batch: zero, still attached to the graph
            zero = mask_logits.sum() * 0.0
            return zero, zero.clone()
        tgt = torch.cat([t["masks"].to(mask_logits.device)[j] for t, (_, j) in zip(targets, indices)])
        with torch.no_grad():
            coords = sample_points_by_uncertainty(
                src, self.num_points, self.oversample_ratio, self.importance_sample_ratio, generator
            )
            labels = point_sample(tgt[:, None].to(src.dtype), coords)[:, 0]
        logits = point_sample(src[:, None], coords)[:, 0]
        return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    def set_losses(
        self,
        out: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        num_masks: float,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Match one prediction set and return its unweighted ``loss_ce``, ``loss_mask``, ``loss_dice``."""
        indices = self.matcher(out, targets, generator)
        loss_mask, loss_dice = self.loss_masks(out["pred_masks"], targets, indices, num_masks, generator)
        loss_ce = self.loss_labels(out["pred_logits"], targets, indices)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}

    def check_targets(self, targets: Sequence[Mapping[str, Tensor]], batch: int) -> None:
        """Raise ``ValueError`` for targets that do not fit the batch or the classes."""
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
        sizes = set()
        for t in targets:
            labels, masks = t["labels"], t["masks"]
            if labels.dim() != 1 or masks.dim() != 3 or masks.shape[0] != labels.numel():
                raise ValueError(
                    f"target labels must be [N] and masks [N, H, W], got {tuple(labels.shape)} and {tuple(masks.shape)}"
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"target labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}..{int(labels.max())}"
                )
            sizes.add(tuple(masks.shape[1:]))
        if len(sizes) > 1:
            raise ValueError(f"target masks must all have the padded input size, got sizes {sorted(sizes)}")

    def num_masks(self, targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> float:
        """The number of ground-truth masks in the batch, averaged over DDP processes, at least 1."""
        n = torch.tensor(float(sum(int(t["labels"].numel()) for t in targets)), device=device)
        return max(float(mean_over_processes(n).item()), 1.0)

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"pred_logits has {logits.shape[-1]} classes, expected {self.num_classes} + 1")
        self.check_targets(targets, logits.shape[0])
        num_masks = self.num_masks(targets, logits.device)
        # the masks as float on the predictions' device once, not once per layer and image (every layer
        # samples them at new points)
        dev = outputs["pred_masks"].device
        targets = [{"labels": t["labels"].to(dev), "masks": t["masks"].to(dev, torch.float32)} for t in targets]
        losses = self.set_losses(outputs, targets, num_masks, generator)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs") or []):
                part = self.set_losses(aux, targets, num_masks, generator)
                losses.update({f"{k}_{i}": v for k, v in part.items()})
        losses["loss"] = torch.stack([v * self.weight(k) for k, v in losses.items()]).sum()
        return losses
