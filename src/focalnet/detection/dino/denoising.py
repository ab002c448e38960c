"""Contrastive denoising (CDN) queries of DINO, with the semantics of the original ``dn_components``.

In training, DINO feeds the decoder, in front of its ``num_queries`` matching queries, noised copies
of the ground truths that it must reconstruct. ``dn_number`` (100) is a budget of ``2 * dn_number``
query slots split into groups: ``num_groups = 2 * dn_number // (2 * max_boxes)`` where ``max_boxes`` is
the largest number of ground truths of an image in the batch (1 group when that quotient is 0 or the
batch has no boxes; a ``dn_number`` below 50 gives ``2 * dn_number`` groups, as in the original).
Each group holds ``2 * max_boxes`` slots: ``max_boxes`` *positive* queries (slots ``0..n_i-1`` of the
first half, the rest padding), then as many *negative* ones. Per query:

* label noise: with probability ``label_noise_ratio / 2`` the label is replaced by one drawn uniformly
  from ``0..num_classes-1`` (positives and negatives alike);
* box noise: each corner ``(x1, y1, x2, y2)`` moves by ``sign * u * box_noise_scale * (w/2, h/2)`` with a
  random sign and ``u`` uniform in ``[0, 1)`` for positives, ``[1, 2)`` for negatives, then the corners
  are clamped to ``[0, 1]``; positives therefore stay within ``lambda/2`` of the box side, negatives lie
  between ``lambda/2`` and ``lambda`` (``lambda = box_noise_scale``).

The decoder's self-attention mask (``True`` = blocked) lets no matching query see a denoising one and no
denoising group see another group; denoising queries see the matching queries and their own group.
Negatives are trained towards "no object" by the criterion (:class:`~focalnet.detection.dino.criterion.DINOCriterion`),
positives towards their ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

__all__ = ["prepare_for_cdn", "dn_post_process", "num_dn_groups", "dn_attention_mask", "inverse_sigmoid"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """``log(x / (1 - x))`` of ``x`` clamped to ``[0, 1]``, both terms floored at ``eps`` (as DINO does)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def num_dn_groups(dn_number: int, max_boxes: int) -> int:
    """Number of denoising groups for a batch whose fullest image has ``max_boxes`` ground truths."""
    slots = 2 * dn_number
    if max_boxes == 0:
        return 1
    if slots >= 100:
        slots //= 2 * max_boxes
    return max(slots, 1)


def dn_attention_mask(single_pad: int, num_groups: int, num_queries: int, device: Any = None) -> Tensor:
    """Self-attention mask ``[pad + Q, pad + Q]`` (``True`` = blocked), ``pad = 2 * single_pad * num_groups``."""
    pad = 2 * single_pad * num_groups
    mask = torch.zeros(pad + num_queries, pad + num_queries, dtype=torch.bool, device=device)
    mask[pad:, :pad] = True  # matching queries do not see the denoising part
    if pad:
        group = torch.arange(pad, device=device) // (2 * single_pad)
        mask[:pad, :pad] = group[:, None] != group[None, :]
    return mask


def _rand(shape: Sequence[int], device: torch.device, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gen_device).to(device)


def _randint(high: int, shape: Sequence[int], device: torch.device, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, high, tuple(shape), generator=generator, device=gen_device).to(device)


def prepare_for_cdn(
    dn_args: tuple[list[dict[str, Tensor]], int, float, float],
    training: bool,
    num_queries: int,
    num_classes: int,
    hidden_dim: int,
    label_enc: nn.Module,
    generator: torch.Generator | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, dict[str, Any] | None]:
    """Denoising queries of a training batch.

    ``dn_args = (targets, dn_number, label_noise_ratio, box_noise_scale)`` with ``targets[i]`` holding
    ``labels [N_i]`` (``0..num_classes-1``) and ``boxes [N_i, 4]`` (normalised cx, cy, w, h);
    ``label_enc`` embeds labels into ``hidden_dim``. Returns ``(query_label [B, pad, hidden_dim],
    query_bbox [B, pad, 4]`` (inverse-sigmoid boxes), ``attn_mask [pad + Q, pad + Q]`` (bool, ``True`` =
    blocked), ``dn_meta = {"pad_size", "num_dn_group"}``), or four ``None`` when not ``training``.
    ``generator`` makes the noise reproducible.
    """
    if not training:
        return None, None, None, None
    targets, dn_number, label_noise_ratio, box_noise_scale = dn_args
    weight = getattr(label_enc, "weight", None)
    device = weight.device if isinstance(weight, Tensor) else targets[0]["boxes"].device
    batch = len(targets)
    counts = [int(t["labels"].numel()) for t in targets]
    max_boxes = max(counts, default=0)
    groups = num_dn_groups(dn_number, max_boxes)
    single_pad = max_boxes
    pad_size = 2 * single_pad * groups

    labels = torch.cat([t["labels"].reshape(-1) for t in targets]).to(device=device, dtype=torch.long)
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).to(device=device, dtype=torch.float32)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"target labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    image = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    local = torch.cat([torch.arange(n, device=device) for n in counts])
    total = labels.numel()
    reps = 2 * groups  # repeat r: group r // 2, positive when r is even, negative when odd

    noisy_labels = labels.repeat(reps)
    if label_noise_ratio > 0 and total:
        flip = _rand((reps * total,), device, generator) < label_noise_ratio * 0.5
        new = _randint(num_classes, (int(flip.sum()),), device, generator)
        noisy_labels[flip] = new

    noisy_boxes = boxes.repeat(reps, 1)
    if box_noise_scale > 0 and total:
        corners = box_convert(noisy_boxes, "cxcywh", "xyxy")
        half = noisy_boxes[:, 2:].repeat(1, 2) / 2  # (w/2, h/2, w/2, h/2)
        sign = _randint(2, noisy_boxes.shape, device, generator).float() * 2 - 1
        part = _rand(noisy_boxes.shape, device, generator)
        negative = (torch.arange(reps, device=device) % 2 == 1).repeat_interleave(total)
        part[negative] += 1.0
        corners = (corners + part * sign * half * box_noise_scale).clamp(0.0, 1.0)
        noisy_boxes = box_convert(corners, "xyxy", "cxcywh")

    query_label = torch.zeros(batch, pad_size, hidden_dim, device=device)
    query_bbox = torch.zeros(batch, pad_size, 4, device=device)
    if total:
        slot = (local.repeat(reps) + single_pad * torch.arange(reps, device=device).repeat_interleave(total)).long()
        rows = image.repeat(reps)
        query_label[rows, slot] = label_enc(noisy_labels).to(query_label.dtype)
        query_bbox[rows, slot] = inverse_sigmoid(noisy_boxes)
    attn_mask = dn_attention_mask(single_pad, groups, num_queries, device)
    return query_label, query_bbox, attn_mask, {"pad_size": pad_size, "num_dn_group": groups}


def dn_post_process(
    outputs_class: Tensor,
    outputs_coord: Tensor,
    dn_meta: dict[str, Any] | None,
    aux_loss: bool,
    set_aux_loss_fn: Callable[[Tensor, Tensor], list[dict[str, Tensor]]],
) -> tuple[Tensor, Tensor]:
    """Split the denoising queries off per-layer outputs ``[L, B, pad + Q, ...]``: they go to
    ``dn_meta["output_known_lbs_bboxes"]`` (``pred_logits``, ``pred_boxes`` of the last layer and, with
    ``aux_loss``, ``aux_outputs`` of the others); the matching part ``[L, B, Q, ...]`` is returned."""
    if dn_meta and dn_meta["pad_size"] > 0:
        pad = dn_meta["pad_size"]
        known_class, known_coord = outputs_class[:, :, :pad], outputs_coord[:, :, :pad]
        out: dict[str, Any] = {"pred_logits": known_class[-1], "pred_boxes": known_coord[-1]}
        if aux_loss:
            out["aux_outputs"] = set_aux_loss_fn(known_class, known_coord)
        dn_meta["output_known_lbs_bboxes"] = out
        outputs_class, outputs_coord = outputs_class[:, :, pad:], outputs_coord[:, :, pad:]
    return outputs_class, outputs_coord
