"""FocalNet ATSS (Zhang et al., CVPR 2020) as the original FocalNet config builds it (mmdetection 2.x).

The detector is a torchvision-style module (list of images in; a loss dict in training, a list of
``{"boxes", "labels", "scores"}`` in eval, labels 1..K as the package's other detectors):

* backbone: :func:`focalnet.create_backbone` with ``out_indices=(1, 2, 3)`` (strides 8-32; no ``norm0``);
* neck: torchvision ``FeaturePyramidNetwork`` (256 channels) + :class:`LastLevelP6P7OnOutput`, two stride-2
  3x3 convs on the P5 *output* (mmdet ``add_extra_convs="on_output"``, no ReLU between them as
  ``relu_before_extra_convs=False``): 5 levels, strides 8-128;
* head (:class:`ATSSHead`): 4 stacked 3x3 conv + GroupNorm(32) + ReLU towers for classification and
  regression, ``atss_cls`` (K sigmoid logits, no background row), ``atss_reg`` (4 deltas times a
  learnable per-level :class:`Scale`), ``atss_centerness`` (on the regression tower);
* one square anchor per location, side ``8 x stride``, centred on ``(x, y) * stride`` (mmdet's
  ``AnchorGenerator`` with ``octave_base_scale=8``, ``center_offset=0``); deltas as mmdet's
  ``DeltaXYWHBBoxCoder`` with stds (0.1, 0.1, 0.2, 0.2) = torchvision ``BoxCoder`` weights (10, 10, 5, 5);
* training: :func:`atss_assign` (top 9 anchors per level by centre distance, IoU >= mean + std of the
  candidates' IoUs, anchor centre inside the box, ties to the highest IoU); :func:`atss_loss_terms`:
  focal loss (gamma 2, alpha 0.25) / number of positives, GIoU x2 on decoded boxes weighted by the
  centerness targets / their sum, centerness BCE / number of positives (both normalisers averaged over
  the processes under DDP, as mmdet's ``reduce_mean``). Anchors over the batch padding beyond an image's
  own 32-padded size are ignored, as mmdet's valid flags;
* test: per level the 1000 anchors of highest ``max(score x centerness)``, boxes clipped to the image,
  class scores > 0.05, score x centerness, class-wise NMS 0.6, 100 detections per image.

Original mmdetection ATSS checkpoints map onto this module key for key (:func:`convert_mmdet_atss_state_dict`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss, sigmoid_focal_loss

from ..engine.distributed import mean_over_processes
from . import mmdet
from .backbone import build_backbone, check_num_classes, pop_backbone_options
from .image_transform import detection_transform
from .necks import FocalNetFPNP3P7, LastLevelP6P7OnOutput
from .spec import DetectorSpec, Layout, LayoutRead, resolve_options

__all__ = [
    "ATSS",
    "ATSSHead",
    "ATSS_DEFAULTS",
    "ATSS_SPEC",
    "MMDET_ATSS",
    "FocalNetFPNP3P7",
    "LastLevelP6P7OnOutput",
    "Scale",
    "atss",
    "atss_assign",
    "atss_loss_terms",
    "build_atss",
    "centerness_targets",
    "convert_mmdet_atss_state_dict",
    "grid_anchors",
    "is_mmdet_atss",
]

# the original config's settings (atss_focalnet_tiny_patch4_fpn_3x_coco_lrf): every option of the builder
ATSS_DEFAULTS: dict[str, Any] = dict(
    fpn_channels=256,
    min_size=800,
    max_size=1333,
    strides=(8, 16, 32, 64, 128),
    anchor_scale=8.0,
    topk=9,
    focal_gamma=2.0,
    focal_alpha=0.25,
    bbox_loss_weight=2.0,
    centerness_loss_weight=1.0,
    cls_loss_weight=1.0,
    stacked_convs=4,
    gn_groups=32,
    relu_before_extra_convs=False,
    score_thresh=0.05,
    nms_thresh=0.6,
    pre_nms_top_n=1000,
    detections_per_img=100,
    image_mean=None,  # None: ImageNet's
    image_std=None,
)
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # 1 / target_stds (0.1, 0.1, 0.2, 0.2)
BACKBONE_DEFAULTS: dict[str, Any] = {
    "backbone": "focalnet_tiny_lrf",
    "focal_windows": (11, 9, 9, 7),
    "drop_path_rate": 0.3,
}
OUT_INDICES = (1, 2, 3)


# ---------------------------------------------------------------------------------------------------- modules
class Scale(nn.Module):
    """A learnable scalar multiplier (mmcv's ``Scale``; state-dict key ``scale``, shape ``[]``)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ConvGN(nn.Module):
    """3x3 conv (no bias) + GroupNorm + ReLU (mmcv ``ConvModule`` with a GN ``norm_cfg``: keys ``conv``, ``gn``)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.gn(self.conv(x)))


class ATSSHead(nn.Module):
    """Shared ATSS head: per level, class logits ``(B, K, H, W)``, scaled box deltas ``(B, 4, H, W)`` and
    centerness logits ``(B, 1, H, W)`` (one anchor per location)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_levels: int = 5,
        feat_channels: int | None = None,
        stacked_convs: int = 4,
        gn_groups: int = 32,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        feat = feat_channels or in_channels
        self.num_classes = num_classes
        self.cls_convs = nn.ModuleList(
            ConvGN(in_channels if i == 0 else feat, feat, gn_groups) for i in range(stacked_convs)
        )
        self.reg_convs = nn.ModuleList(
            ConvGN(in_channels if i == 0 else feat, feat, gn_groups) for i in range(stacked_convs)
        )
        self.atss_cls = nn.Conv2d(feat, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        # mmdet's init: N(0, 0.01) convs, zero bias, classification bias at prior probability 0.01
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.atss_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if len(feats) != len(self.scales):
            raise ValueError(f"the head has {len(self.scales)} levels, got {len(feats)} feature maps")
        cls_out, reg_out, ctr_out = [], [], []
        for x, scale in zip(feats, self.scales):
            c, r = x, x
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_out.append(self.atss_cls(c))
            reg_out.append(scale(self.atss_reg(r)).float())
            ctr_out.append(self.atss_centerness(r))
        return cls_out, reg_out, ctr_out


# ----------------------------------------------------------------------------------------- anchors / targets
def grid_anchors(
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    scale: float = 8.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Per level ``(H * W, 4)`` square anchors of side ``scale * stride`` centred on ``(x, y) * stride``,
    row-major (mmdet's ``AnchorGenerator``, ratio 1, one scale, ``center_offset=0``). torchvision's
    generator infers strides from padded sizes, which is wrong for P6/P7 on odd maps."""
    out = []
    for (h, w), s in zip(sizes, strides):
        ys = torch.arange(h, device=device, dtype=dtype) * s
        xs = torch.arange(w, device=device, dtype=dtype) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        half = scale * s / 2
        ctr = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
        out.append(torch.cat([ctr - half, ctr + half], dim=1))
    return out


def atss_assign(
    anchors: Tensor,
    num_level_anchors: Sequence[int],
    gt_boxes: Tensor,
    topk: int = 9,
    return_details: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """ATSS assignment (mmdet ``ATSSAssigner``): index of the assigned gt box per anchor, -1 for negatives.

    For each gt box: on each level the ``topk`` anchors whose centres are closest to the box centre are
    candidates; those with IoU >= mean + std (unbiased) of the candidates' IoUs and whose centre lies
    inside the box (all four distances > 0.01) are positives; an anchor positive for several boxes goes to
    the one of highest IoU (the first on ties). ``return_details=True`` also returns the candidates
    ``(C, G)`` (anchor indices) and the IoU thresholds ``(G,)``."""
    n, g = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    if n == 0 or g == 0:
        if return_details:
            empty = torch.zeros(0, g, dtype=torch.long, device=anchors.device)
            return assigned, empty, anchors.new_zeros(g)
        return assigned
    ious = box_iou(anchors, gt_boxes)  # (N, G)
    a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    g_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist_ = (a_ctr[:, None] - g_ctr[None]).pow(2).sum(-1).sqrt()  # (N, G); exact, unlike cdist's matmul path
    cands, start = [], 0
    for n_level in num_level_anchors:
        k = min(topk, n_level)
        if k > 0:
            cands.append(dist_[start : start + n_level].topk(k, dim=0, largest=False).indices + start)
        start += n_level
    cand = torch.cat(cands)  # (C, G)
    cand_iou = ious.gather(0, cand)
    thr = cand_iou.mean(0) + cand_iou.std(0)
    cx, cy = a_ctr[cand, 0], a_ctr[cand, 1]  # (C, G)
    inside = (
        torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=-1).amin(
            -1
        )
        > 0.01
    )
    is_pos = (cand_iou >= thr) & inside
    scores = torch.full_like(ious, -math.inf)
    cols = torch.arange(g, device=anchors.device).expand_as(cand)
    scores[cand[is_pos], cols[is_pos]] = ious[cand[is_pos], cols[is_pos]]
    best, arg = scores.max(1)
    pos = best > -math.inf
    assigned[pos] = arg[pos]
    if return_details:
        return assigned, cand, thr
    return assigned


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` of each anchor centre in its gt box."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], dim=1)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], dim=1)
    return torch.sqrt(lr.amin(1) / lr.amax(1) * (tb.amin(1) / tb.amax(1)))


def atss_loss_terms(
    cls_logits: Tensor,
    box_deltas: Tensor,
    ctr_logits: Tensor,
    anchors: Tensor,
    labels: Tensor,
    matched_boxes: Tensor,
    valid: Tensor,
    box_coder: BoxCoder | None = None,
    focal_gamma: float = 2.0,
    focal_alpha: float = 0.25,
    cls_weight: float = 1.0,
    bbox_weight: float = 2.0,
    centerness_weight: float = 1.0,
) -> dict[str, Tensor]:
    """ATSS losses of a batch, normalised as mmdet's ``ATSSHead.loss``.

    ``cls_logits (B, N, K)``, ``box_deltas (B, N, 4)``, ``ctr_logits (B, N)``, ``anchors (N, 4)``,
    ``labels (B, N)`` (0-based class of positives, -1 negatives), ``matched_boxes (B, N, 4)`` (gt box of
    positives; anything elsewhere), ``valid (B, N)`` (anchors that count).

    * ``loss_cls`` = sum of sigmoid focal losses over valid anchors and classes / P,
      with P = sum over images of max(positives, 1) (mean over processes, at least 1);
    * ``loss_bbox`` = ``bbox_weight`` x sum of GIoU losses of the decoded positives, each weighted by its
      centerness target / sum of the centerness targets (mean over processes, at least 1);
    * ``loss_centerness`` = sum of BCE(centerness logit, centerness target) over positives / P.
    """
    coder = box_coder or BoxCoder(BOX_CODER_WEIGHTS)
    cls_logits, box_deltas, ctr_logits = cls_logits.float(), box_deltas.float(), ctr_logits.float()
    pos = labels >= 0
    n_pos = pos.sum(1).clamp(min=1).sum().to(cls_logits)
    num_samples = mean_over_processes(n_pos).clamp(min=1.0)
    onehot = torch.zeros_like(cls_logits)
    b_idx, a_idx = pos.nonzero(as_tuple=True)
    onehot[b_idx, a_idx, labels[b_idx, a_idx]] = 1.0
    focal = sigmoid_focal_loss(cls_logits, onehot, alpha=focal_alpha, gamma=focal_gamma, reduction="none")
    loss_cls = (focal * valid[..., None].to(focal)).sum() / num_samples
    pos_anchors = anchors[a_idx]
    if len(a_idx):
        target_deltas = coder.encode_single(matched_boxes[b_idx, a_idx].float(), pos_anchors)
        target_boxes = coder.decode_single(target_deltas, pos_anchors)
        ctr_t = centerness_targets(pos_anchors, target_boxes)
        pred_boxes = coder.decode_single(box_deltas[b_idx, a_idx], pos_anchors)
        giou = generalized_box_iou_loss(pred_boxes, target_boxes, reduction="none")
        loss_bbox_sum = (giou * ctr_t).sum()
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[b_idx, a_idx], ctr_t, reduction="sum")
        ctr_sum = ctr_t.sum()
    else:
        loss_bbox_sum = box_deltas.sum() * 0
        loss_ctr = ctr_logits.sum() * 0
        ctr_sum = box_deltas.new_zeros(())
    bbox_norm = mean_over_processes(ctr_sum.detach()).clamp(min=1.0)
    return {
        "loss_cls": cls_weight * loss_cls,
        "loss_bbox": bbox_weight * loss_bbox_sum / bbox_norm,
        "loss_centerness": centerness_weight * loss_ctr / num_samples,
    }


# ------------------------------------------------------------------------------------------------- detector
class ATSS(nn.Module):
    """FocalNet ATSS detector; build it with :func:`atss` / :func:`build_atss`.

    ``num_classes`` counts the background as everywhere in this package (COCO: 81); the head has
    ``num_classes - 1`` sigmoid outputs and the detections' labels are 1..K."""

    def __init__(
        self,
        backbone: FocalNetFPNP3P7,
        num_classes: int,
        transform: nn.Module,
        *,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        anchor_scale: float = 8.0,
        topk: int = 9,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        cls_loss_weight: float = 1.0,
        bbox_loss_weight: float = 2.0,
        centerness_loss_weight: float = 1.0,
        stacked_convs: int = 4,
        gn_groups: int = 32,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        pre_nms_top_n: int = 1000,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        if list(strides) != list(backbone.strides):
            raise ValueError(f"anchor strides {list(strides)} differ from the feature strides {backbone.strides}")
        self.transform = transform
        self.backbone = backbone
        self.head = ATSSHead(
            backbone.out_channels, num_classes - 1, len(strides), stacked_convs=stacked_convs, gn_groups=gn_groups
        )
        self.box_coder = BoxCoder(BOX_CODER_WEIGHTS)
        self.strides = tuple(int(s) for s in strides)
        self.anchor_scale = float(anchor_scale)
        self.topk = topk
        self.loss_settings = dict(
            focal_gamma=focal_gamma,
            focal_alpha=focal_alpha,
            cls_weight=cls_loss_weight,
            bbox_weight=bbox_loss_weight,
            centerness_weight=centerness_loss_weight,
        )
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.detections_per_img = detections_per_img

    @property
    def num_classes(self) -> int:
        """Classes including the background (as the builders take it)."""
        return self.head.num_classes + 1

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        if targets is not None:
            k = self.head.num_classes
            for t in targets:
                b = t["boxes"]
                if b.dim() != 2 or b.shape[-1] != 4:
                    raise ValueError(f"target boxes must be (N, 4), got {tuple(b.shape)}")
                if len(b) and not bool((b[:, 2:] > b[:, :2]).all()):
                    raise ValueError("target boxes must have positive width and height (x1 < x2, y1 < y2)")
                lab = t["labels"]
                if lab.shape != b.shape[:1] or (len(lab) and not (1 <= int(lab.min()) <= int(lab.max()) <= k)):
                    raise ValueError(f"target labels must be one per box, in 1..{k} (0 is the background)")
        original_sizes = [(im.shape[-2], im.shape[-1]) for im in images]  # not int(): traced (ONNX) sizes stay dynamic
        image_list, targets = self.transform(images, targets)
        feats = list(self.backbone(image_list.tensors).values())
        cls_out, reg_out, ctr_out = self.head(feats)
        sizes = [(f.shape[-2], f.shape[-1]) for f in feats]  # not int(): a traced (ONNX) graph keeps them dynamic
        anchors = grid_anchors(sizes, self.strides, self.anchor_scale, feats[0].device)
        if self.training:
            assert targets is not None
            return self.compute_loss(cls_out, reg_out, ctr_out, anchors, sizes, targets, image_list.image_sizes)
        dets = self.postprocess(cls_out, reg_out, ctr_out, anchors, image_list.image_sizes)
        return self.transform.postprocess(dets, image_list.image_sizes, original_sizes)

    @staticmethod
    def _flatten(outs: list[Tensor], channels: int) -> Tensor:
        return torch.cat([o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, channels) for o in outs], dim=1)

    def valid_flags(self, sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        """Anchors over the image's own ``size_divisible``-padded area (mmdet's valid flags with ``pad_shape``)."""
        div = int(getattr(self.transform, "size_divisible", 32))
        ph, pw = (math.ceil(s / div) * div for s in image_size)
        flags = []
        for (h, w), s in zip(sizes, self.strides):
            vh, vw = min(math.ceil(ph / s), h), min(math.ceil(pw / s), w)
            m = torch.zeros(h, w, dtype=torch.bool)
            m[:vh, :vw] = True
            flags.append(m.reshape(-1))
        return torch.cat(flags)

    def compute_loss(
        self,
        cls_out: list[Tensor],
        reg_out: list[Tensor],
        ctr_out: list[Tensor],
        anchors: list[Tensor],
        sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Assign every image's anchors (:func:`atss_assign`) and compute :func:`atss_loss_terms`."""
        all_anchors = torch.cat(anchors)
        num_level = [len(a) for a in anchors]
        n = len(all_anchors)
        labels, matched, valid = [], [], []
        for t, size in zip(targets, image_sizes):
            v = self.valid_flags(sizes, size).to(all_anchors.device)
            level_ids = torch.repeat_interleave(torch.arange(len(num_level)), torch.tensor(num_level))
            num_level_valid = [int(v[level_ids.to(v.device) == i].sum()) for i in range(len(num_level))]
            idx = v.nonzero().squeeze(1)
            gt = t["boxes"].to(all_anchors)
            assigned = torch.full((n,), -1, dtype=torch.long, device=all_anchors.device)
            assigned[idx] = atss_assign(all_anchors[idx], num_level_valid, gt, self.topk)  # type: ignore[assignment]
            pos = assigned >= 0
            lab = torch.full((n,), -1, dtype=torch.long, device=all_anchors.device)
            lab[pos] = t["labels"].to(all_anchors.device)[assigned[pos]] - 1  # 1..K -> 0-based
            box = torch.zeros_like(all_anchors)
            box[pos] = gt[assigned[pos]]
            labels.append(lab)
            matched.append(box)
            valid.append(v)
        return atss_loss_terms(
            self._flatten(cls_out, self.head.num_classes),
            self._flatten(reg_out, 4),
            self._flatten(ctr_out, 1).squeeze(-1),
            all_anchors,
            torch.stack(labels),
            torch.stack(matched),
            torch.stack(valid),
            self.box_coder,
            **self.loss_settings,
        )

    @torch.no_grad()
    def postprocess(
        self,
        cls_out: list[Tensor],
        reg_out: list[Tensor],
        ctr_out: list[Tensor],
        anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections in the resized image's coordinates (mmdet's ``ATSSHead.get_bboxes`` + ``multiclass_nms``)."""
        results = []
        k = self.head.num_classes
        for i, size in enumerate(image_sizes):
            boxes_l, scores_l, ctr_l = [], [], []
            for cls, reg, ctr, anc in zip(cls_out, reg_out, ctr_out, anchors):
                scores = cls[i].permute(1, 2, 0).reshape(-1, k).float().sigmoid()
                cness = ctr[i].permute(1, 2, 0).reshape(-1).float().sigmoid()
                deltas = reg[i].permute(1, 2, 0).reshape(-1, 4).float()
                if 0 < self.pre_nms_top_n < len(scores):
                    top = (scores * cness[:, None]).amax(1).topk(self.pre_nms_top_n).indices
                    scores, cness, deltas, anc = scores[top], cness[top], deltas[top], anc[top]
                boxes_l.append(clip_boxes_to_image(self.box_coder.decode_single(deltas, anc), size))
                scores_l.append(scores)
                ctr_l.append(cness)
            boxes, scores, cness = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(ctr_l)
            box_idx, cls_idx = (scores > self.score_thresh).nonzero(as_tuple=True)
            final = scores[box_idx, cls_idx] * cness[box_idx]
            keep = batched_nms(boxes[box_idx], final, cls_idx, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[box_idx][keep], "scores": final[keep], "labels": cls_idx[keep] + 1})
        return results


# ------------------------------------------------------------------------------------------------- builders
def build_atss(
    backbone: str | None = None,
    num_classes: int = 81,
    *,
    train_resize: bool = False,
    **options: Any,
) -> ATSS:
    """FocalNet ATSS with the original settings; ``num_classes`` includes the background (COCO: 81, i.e.
    80 sigmoid outputs as the original head).

    ``options``: backbone keywords as for :func:`~focalnet.detection.rcnn.build_rcnn` (defaults: focal
    windows (11, 9, 9, 7), drop path 0.3, the released 3x config; backbone stages 1-3) and the keys of
    :data:`ATSS_DEFAULTS`."""
    body = build_backbone(backbone, BACKBONE_DEFAULTS, out_indices=OUT_INDICES, **pop_backbone_options(options))
    s = resolve_options("ATSS", ATSS_DEFAULTS, options)
    neck = FocalNetFPNP3P7(body, s.pop("fpn_channels"), s.pop("relu_before_extra_convs"))
    transform = detection_transform(
        s.pop("min_size"), s.pop("max_size"), s.pop("image_mean"), s.pop("image_std"), train_resize
    )
    return ATSS(neck, num_classes, transform, **s)


def atss(
    backbone: str | None = None,
    num_classes: int = 81,
    backbone_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> ATSS:
    """FocalNet ATSS (see :func:`build_atss` for the options); ``num_classes`` includes the background."""
    return build_atss(backbone, num_classes, backbone_checkpoint=backbone_checkpoint, **overrides)


# ------------------------------------------------------------------------------------------- mmdet weights
def is_mmdet_atss(sd: Any) -> bool:
    """Whether a state dict is an mmdetection ATSS detector (``bbox_head.atss_cls.*`` keys)."""
    return mmdet.has_key(sd, r"bbox_head\.atss_cls\.")


def _rules(num_inputs: int) -> list[tuple[str, str]]:
    """(mmdet pattern, ours) pairs; ``neck.fpn_convs.{n}`` / ``{n+1}`` are the P6 / P7 convs."""
    return [
        *mmdet.BACKBONE_RULES,
        (r"^neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.inner_blocks.\1.0.\2"),
        (rf"^neck\.fpn_convs\.{num_inputs}\.conv\.(weight|bias)$", r"backbone.fpn.extra_blocks.p6.\1"),
        (rf"^neck\.fpn_convs\.{num_inputs + 1}\.conv\.(weight|bias)$", r"backbone.fpn.extra_blocks.p7.\1"),
        (r"^neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.layer_blocks.\1.0.\2"),
        (r"^bbox_head\.(.+)$", r"head.\1"),
    ]


def convert_mmdet_atss_state_dict(sd: Any) -> dict[str, Tensor]:
    """Map an mmdetection 2.x ATSS state dict onto :class:`ATSS` (a renaming: the sigmoid head has no
    background row in either); keys outside the mapping keep their names (a strict load names them)."""
    if not is_mmdet_atss(sd):
        raise ValueError("not an mmdetection ATSS state dict (no bbox_head.atss_cls. keys)")
    return mmdet.rename_keeping_unknown(sd, _rules(mmdet.count_indexed(sd, "neck.lateral_convs.")))


def _read(obj: Any, source: str) -> LayoutRead:
    sd = mmdet.state_dict_of(obj)
    rules = _rules(mmdet.count_indexed(sd, "neck.lateral_convs."))
    num_classes = int(sd["bbox_head.atss_cls.weight"].shape[0]) + 1
    fields = {"detector": "atss", **mmdet.backbone_fields(sd)}
    fields["detector_overrides"] = {"stacked_convs": mmdet.count_indexed(sd, "bbox_head.cls_convs.")}
    return LayoutRead(
        fields, mmdet.rename_keeping_unknown(sd, rules), mmdet.mmdet_meta(num_classes), mmdet.reverse_namer(rules)
    )


MMDET_ATSS = Layout(
    name="mmdet-atss",
    describe="mmdetection 2.x ATSS (state_dict with bbox_head.atss_* keys)",
    recognise=is_mmdet_atss,
    weights=mmdet.state_dict_of,
    read=_read,
    write=lambda sd: mmdet.mmdet_file(sd, _rules(mmdet.count_indexed(sd, "backbone.fpn.inner_blocks."))),
)

ATSS_SPEC = DetectorSpec(
    name="atss",
    title="ATSS",
    summary="one-stage anchor detector with adaptive training-sample selection, focal loss and centerness",
    build=build_atss,
    backbone_defaults=BACKBONE_DEFAULTS,
    head_defaults=ATSS_DEFAULTS,
    config_fields={
        k: k for k in ("fpn_channels", "min_size", "max_size", "score_thresh", "nms_thresh", "detections_per_img")
    },
    layouts=(MMDET_ATSS,),
    recipe="atss_focalnet_tiny_lrf_3x",
)
