"""FocalNet Cascade Mask R-CNN (Cai & Vasconcelos) on torchvision's detection pieces, as the original
FocalNet config (mmdetection 2.x ``CascadeRoIHead``) builds it.

Backbone, FPN, RPN and transform are those of :func:`focalnet.detection.mask_rcnn` (the RPN keeps 2000
proposals per image in training). What torchvision lacks is the cascade RoI head,
:class:`CascadeRoIHeads`:

* 3 stages with their own :class:`~torchvision.models.detection._utils.Matcher` (IoU 0.5 / 0.6 / 0.7,
  no low-quality matches), :class:`~torchvision.models.detection._utils.BalancedPositiveNegativeSampler`
  (512 RoIs, 25 % positives, ground truths added as proposals) and
  :class:`~torchvision.models.detection._utils.BoxCoder` (stds 0.1/0.1/0.2/0.2, 0.05/0.05/0.1/0.1,
  0.033/0.033/0.067/0.067, i.e. weights ``1 / std``);
* box head per stage: ``4conv1fc`` (:class:`ConvFCBoxHead`: 4 shared 3x3 convs with BatchNorm, SyncBN
  under CUDA DDP, and one fc of 1024) with background-first classification and class-specific
  regression (4 per foreground class);
* losses per stage, times the stage weight (1 / 0.5 / 0.25): cross-entropy over the sampled RoIs and
  GIoU x10 between the decoded boxes of the positives and their ground truths, summed and divided by
  the number of sampled RoIs (mmdetection's ``avg_factor``); one mask head per stage trained on that
  stage's positives;
* between stages (training and test) every RoI is regressed with the deltas of its class (ground-truth
  label for positives, best foreground class otherwise), clipped to the image; ground truths that had
  been added as proposals are dropped before the next stage adds them again;
* test: class logits averaged over the 3 stages then softmax, boxes from the last stage's regression of
  its input RoIs, per-class NMS (0.5), score > 0.05, 100 per image; masks are the mean of the 3 mask
  heads' sigmoid probabilities on the final boxes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss
from torchvision.ops.misc import Conv2dNormActivation

from . import mmdet
from .backbone import build_backbone, check_num_classes, pop_backbone_options
from .image_transform import detection_transform
from .necks import FocalNetFPN
from .rcnn_parts import (
    DETECTION_DEFAULTS,
    RCNN_CONFIG_FIELDS,
    RCNN_HEAD_DEFAULTS,
    anchor_generator,
    multiscale_roi_align,
)
from .spec import DetectorSpec, Layout, LayoutRead, resolve_options

__all__ = [
    "CASCADE_DEFAULTS",
    "CASCADE_HEAD_DEFAULTS",
    "CASCADE_MASK_RCNN",
    "MMDET_CASCADE",
    "CascadeMaskRCNN",
    "CascadeRoIHeads",
    "ConvFCBoxHead",
    "build_cascade_mask_rcnn",
    "cascade_mask_rcnn",
    "convert_mmdet_cascade_state_dict",
    "is_mmdet_cascade",
]

# the original config (cascade_mask_rcnn_focalnet_tiny_patch4_mstrain_480-800_adamw_3x_coco_lrf) in our terms
CASCADE_DEFAULTS: dict[str, Any] = dict(
    {
        k: v
        for k, v in DETECTION_DEFAULTS.items()
        if k not in ("box_fg_iou_thresh", "box_bg_iou_thresh", "bbox_reg_weights")
    },
    rpn_post_nms_top_n_train=2000,
    stage_iou_thresholds=(0.5, 0.6, 0.7),
    stage_loss_weights=(1.0, 0.5, 0.25),
    stage_box_stds=((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)),
    giou_loss_weight=10.0,
    box_num_convs=4,
)
# every head option of the builder: the R-CNN widths and mmdet_compat, then the cascade's settings
CASCADE_HEAD_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in RCNN_HEAD_DEFAULTS.items() if k not in DETECTION_DEFAULTS},
    **CASCADE_DEFAULTS,
}
BACKBONE_DEFAULTS: dict[str, Any] = {
    "backbone": "focalnet_tiny_lrf",
    "focal_windows": (11, 9, 9, 7),
    "drop_path_rate": 0.3,
}
BOX_CLIP = math.log(1000.0 / 16)  # mmdet's wh_ratio_clip = 16 / 1000 (torchvision's default too)


class ConvFCBoxHead(nn.Module):
    """mmdetection's ``ConvFCBBoxHead`` in its ``4conv1fc`` form: ``num_convs`` 3x3 conv + BN + ReLU, one
    fc + ReLU, then ``cls_score`` (``num_classes`` with the background first) and ``bbox_pred``
    (4 deltas per foreground class). ``forward(x [N, C, 7, 7]) -> (logits [N, K+1], deltas [N, 4K])``."""

    def __init__(
        self,
        in_channels: int = 256,
        num_classes: int = 81,
        conv_channels: int = 256,
        num_convs: int = 4,
        fc_channels: int = 1024,
        roi_size: int = 7,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        chans = [in_channels] + [conv_channels] * num_convs
        self.shared_convs = nn.Sequential(
            *[Conv2dNormActivation(chans[i], chans[i + 1], 3, norm_layer=norm_layer) for i in range(num_convs)]
        )
        self.shared_fc = nn.Linear(chans[-1] * roi_size * roi_size, fc_channels)
        self.cls_score = nn.Linear(fc_channels, num_classes)
        self.bbox_pred = nn.Linear(fc_channels, 4 * (num_classes - 1))
        # mmdet's initialisation of the two predictors
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.shared_fc(self.shared_convs(x).flatten(1)))
        return self.cls_score(x), self.bbox_pred(x)


def _class_deltas(deltas: Tensor, labels: Tensor) -> Tensor:
    """The 4 deltas of each row's foreground class ``labels`` (1..K) from ``deltas [N, 4K]``."""
    return deltas.view(deltas.shape[0], -1, 4)[torch.arange(deltas.shape[0], device=deltas.device), labels - 1]


class CascadeRoIHeads(nn.Module):
    """The cascade RoI head (see the module docstring). Same call as torchvision's ``RoIHeads``:
    ``forward(features, proposals, image_shapes, targets) -> (detections, losses)``; labels 1..K with 0 the
    background, as in torchvision."""

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        mask_roi_pool: nn.Module | None = None,
        mask_heads: Sequence[nn.Module] | None = None,
        mask_predictors: Sequence[nn.Module] | None = None,
        *,
        stage_iou_thresholds: Sequence[float] = (0.5, 0.6, 0.7),
        stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
        stage_box_stds: Sequence[Sequence[float]] = CASCADE_DEFAULTS["stage_box_stds"],
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        giou_loss_weight: float = 10.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        n = len(box_heads)
        if not n or len(stage_iou_thresholds) != n or len(stage_loss_weights) != n or len(stage_box_stds) != n:
            raise ValueError(
                f"need one IoU threshold, loss weight and box std per stage: {n} box heads, "
                f"{len(stage_iou_thresholds)} IoUs, {len(stage_loss_weights)} weights, {len(stage_box_stds)} stds"
            )
        if mask_heads is not None and (len(mask_heads) != n or mask_predictors is None or len(mask_predictors) != n):
            raise ValueError(f"need one mask head and mask predictor per stage ({n})")
        self.box_roi_pool = box_roi_pool
        self.box_heads = nn.ModuleList(box_heads)
        self.mask_roi_pool = mask_roi_pool
        self.mask_heads = nn.ModuleList(mask_heads) if mask_heads is not None else None
        self.mask_predictors = nn.ModuleList(mask_predictors) if mask_predictors is not None else None
        self.stage_iou_thresholds = tuple(float(t) for t in stage_iou_thresholds)
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)
        self.stage_box_stds = tuple(tuple(float(s) for s in std) for std in stage_box_stds)
        self.matchers = [Matcher(t, t, allow_low_quality_matches=False) for t in self.stage_iou_thresholds]
        self.box_coders = [BoxCoder(tuple(1.0 / s for s in std), BOX_CLIP) for std in self.stage_box_stds]
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.giou_loss_weight = giou_loss_weight
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def has_mask(self) -> bool:
        return self.mask_heads is not None

    # ------------------------------------------------------------------ training targets and losses
    def stage_targets(
        self, stage: int, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Sampled RoIs of ``stage`` per image: ``(rois, labels (0 = background), matched ground-truth index
        (-1 for background), is_gt (the RoI is a ground truth added as a proposal))``."""
        all_rois, all_labels, all_idx, all_is_gt = [], [], [], []
        labels_per_image, matched_per_image, cands = [], [], []
        for props, boxes, labels in zip(proposals, gt_boxes, gt_labels):
            cand = torch.cat([props, boxes.to(props.dtype)])
            is_gt = torch.arange(len(cand), device=cand.device) >= len(props)
            if boxes.numel() == 0:
                matched = torch.full((len(cand),), -1, dtype=torch.int64, device=cand.device)
                lab = torch.zeros(len(cand), dtype=torch.int64, device=cand.device)
            else:
                matched = self.matchers[stage](box_iou(boxes, cand))
                lab = labels[matched.clamp(min=0)].to(torch.int64)
                lab[matched == Matcher.BELOW_LOW_THRESHOLD] = 0
                lab[matched == Matcher.BETWEEN_THRESHOLDS] = -1
                matched = torch.where(lab > 0, matched, -1)
            cands.append((cand, is_gt))
            labels_per_image.append(lab)
            matched_per_image.append(matched)
        pos, neg = self.sampler(labels_per_image)
        for (cand, is_gt), lab, matched, p, q in zip(cands, labels_per_image, matched_per_image, pos, neg):
            keep = torch.where((p | q).bool())[0]
            # positives first, as mmdetection's sampler orders them
            keep = torch.cat([keep[lab[keep] > 0], keep[lab[keep] == 0]])
            all_rois.append(cand[keep])
            all_labels.append(lab[keep])
            all_idx.append(matched[keep])
            all_is_gt.append(is_gt[keep])
        return all_rois, all_labels, all_idx, all_is_gt

    def stage_box_loss(
        self,
        stage: int,
        class_logits: Tensor,
        box_deltas: Tensor,
        rois: Tensor,
        labels: Tensor,
        matched_gt_boxes: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Unweighted (classification, GIoU) losses of one stage over all sampled RoIs (concatenated over
        the images): cross-entropy mean, and ``giou_loss_weight * sum(GIoU loss of the positives' decoded
        boxes) / number of RoIs``. ``matched_gt_boxes`` holds each positive's ground truth (rows of
        negatives are ignored)."""
        loss_cls = F.cross_entropy(class_logits, labels)
        pos = torch.where(labels > 0)[0]
        if pos.numel() == 0:
            return loss_cls, box_deltas[pos].sum()
        decoded = self.box_coders[stage].decode_single(_class_deltas(box_deltas[pos], labels[pos]), rois[pos])
        giou = generalized_box_iou_loss(decoded, matched_gt_boxes[pos], reduction="sum")
        return loss_cls, self.giou_loss_weight * giou / max(labels.numel(), 1)

    def refine(
        self,
        stage: int,
        rois: list[Tensor],
        class_logits: Tensor,
        box_deltas: Tensor,
        labels: Tensor | None,
        image_shapes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Each RoI regressed by ``stage`` with the deltas of its class (``labels`` where > 0, else the best
        foreground class), clipped to its image."""
        best = class_logits[:, 1:].argmax(1) + 1
        cls = best if labels is None else torch.where(labels > 0, labels, best)
        boxes = self.box_coders[stage].decode_single(_class_deltas(box_deltas, cls), torch.cat(rois))
        out = boxes.split([len(r) for r in rois])
        return [clip_boxes_to_image(b, s) for b, s in zip(out, image_shapes)]

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        proposals = [p.float() for p in proposals]  # boxes stay fp32 under autocast
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            return [], self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_test(features, proposals, image_shapes), {}

    def _forward_train(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        gt_boxes = [t["boxes"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        if self.has_mask() and any("masks" not in t for t in targets):
            raise ValueError("Cascade Mask R-CNN training needs 'masks' in every target")
        losses: dict[str, Tensor] = {}
        for s in range(self.num_stages):
            w = self.stage_loss_weights[s]
            rois, labels, idx, is_gt = self.stage_targets(s, proposals, gt_boxes, gt_labels)
            logits, deltas = (t.float() for t in self.box_heads[s](self.box_roi_pool(features, rois, image_shapes)))
            all_labels = torch.cat(labels)
            matched = torch.cat([g[i.clamp(min=0)] if len(g) else r for g, i, r in zip(gt_boxes, idx, rois)])
            loss_cls, loss_box = self.stage_box_loss(s, logits, deltas, torch.cat(rois), all_labels, matched)
            losses[f"loss_classifier_s{s}"] = w * loss_cls
            losses[f"loss_box_giou_s{s}"] = w * loss_box
            if self.has_mask():
                assert self.mask_roi_pool is not None and self.mask_heads is not None
                assert self.mask_predictors is not None
                pos_rois = [r[lab > 0] for r, lab in zip(rois, labels)]
                pos_idx = [i[lab > 0] for i, lab in zip(idx, labels)]
                if sum(len(r) for r in pos_rois):
                    x = self.mask_heads[s](self.mask_roi_pool(features, pos_rois, image_shapes))
                    mask_logits = self.mask_predictors[s](x)
                    fg = [lab - 1 for lab in gt_labels]  # the predictor has no background channel
                    loss_mask = maskrcnn_loss(mask_logits, pos_rois, [t["masks"] for t in targets], fg, pos_idx)
                else:
                    loss_mask = sum(p.sum() for p in self.mask_predictors[s].parameters()) * 0.0
                losses[f"loss_mask_s{s}"] = w * loss_mask
            if s < self.num_stages - 1:
                with torch.no_grad():
                    refined = self.refine(s, rois, logits, deltas, all_labels, image_shapes)
                proposals = [b[~g] for b, g in zip(refined, is_gt)]
        return losses

    def _forward_test(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        rois = proposals
        logits_sum: Tensor | None = None
        deltas = torch.empty(0)
        for s in range(self.num_stages):
            logits, deltas = (t.float() for t in self.box_heads[s](self.box_roi_pool(features, rois, image_shapes)))
            logits_sum = logits if logits_sum is None else logits_sum + logits
            if s < self.num_stages - 1:
                rois = self.refine(s, rois, logits, deltas, None, image_shapes)
        assert logits_sum is not None
        scores = F.softmax(logits_sum / self.num_stages, -1)
        n = deltas.shape[0]
        num_fg = deltas.shape[1] // 4
        flat_rois = torch.cat(rois)
        boxes = (
            self.box_coders[-1]
            .decode_single(deltas.reshape(n * num_fg, 4), flat_rois[:, None].expand(n, num_fg, 4).reshape(-1, 4))
            .view(n, num_fg, 4)
        )
        results = []
        counts = [len(r) for r in rois]
        for b, sc, shape in zip(boxes.split(counts), scores.split(counts), image_shapes):
            b = clip_boxes_to_image(b, shape)
            lab = torch.arange(1, num_fg + 1, device=b.device).expand(len(b), num_fg)
            b, sc, lab = b.reshape(-1, 4), sc[:, 1:].reshape(-1), lab.reshape(-1)
            keep = torch.where(sc > self.score_thresh)[0]
            b, sc, lab = b[keep], sc[keep], lab[keep]
            keep = batched_nms(b, sc, lab, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": b[keep], "scores": sc[keep], "labels": lab[keep]})
        if self.has_mask():
            assert self.mask_roi_pool is not None and self.mask_heads is not None
            assert self.mask_predictors is not None
            det_boxes = [r["boxes"] for r in results]
            labels = torch.cat([r["labels"] for r in results])
            x = self.mask_roi_pool(features, det_boxes, image_shapes)
            idx = torch.arange(len(labels), device=labels.device)
            prob = torch.stack(
                [p(h(x))[idx, labels - 1].float().sigmoid() for h, p in zip(self.mask_heads, self.mask_predictors)]
            ).mean(0)
            for r, m in zip(results, prob[:, None].split([len(b) for b in det_boxes])):
                r["masks"] = m
        return results


class CascadeMaskRCNN(GeneralizedRCNN):
    """torchvision's ``GeneralizedRCNN`` (transform, FocalNet+FPN backbone, RPN) with a
    :class:`CascadeRoIHeads`; list of images in, list of dicts (``boxes``, ``labels``, ``scores``, ``masks``)
    out in eval mode, a dict of losses in training."""


def _stage_tuple(v: Any, n: int, name: str) -> tuple:
    v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    if len(v) != n:
        raise ValueError(f"{name} needs one entry per stage ({n}), got {len(v)}")
    return v


def build_cascade_mask_rcnn(
    backbone: str | None = None,
    num_classes: int = 81,
    *,
    train_resize: bool = False,
    **options: Any,
) -> CascadeMaskRCNN:
    """Build a FocalNet Cascade Mask R-CNN; ``num_classes`` includes the background.

    ``options``: backbone keywords as for :func:`~focalnet.detection.rcnn.build_rcnn` (defaults: focal
    windows (11, 9, 9, 7), drop path 0.3, the released config) and the keys of
    :data:`CASCADE_HEAD_DEFAULTS`: ``fpn_channels``, ``representation_size`` (the box heads' fc width; their
    convs have ``fpn_channels``), ``mask_head_channels``, ``mmdet_compat``, the RPN/test settings of
    :data:`CASCADE_DEFAULTS` plus ``stage_iou_thresholds``, ``stage_loss_weights``, ``stage_box_stds``
    (one per stage), ``giou_loss_weight`` and ``box_num_convs``."""
    check_num_classes(num_classes)
    body = build_backbone(backbone, BACKBONE_DEFAULTS, **pop_backbone_options(options))
    s = resolve_options("Cascade Mask R-CNN", CASCADE_HEAD_DEFAULTS, options)
    n = len(s["stage_iou_thresholds"])
    stage_weights = _stage_tuple(s["stage_loss_weights"], n, "stage_loss_weights")
    stage_stds = _stage_tuple(s["stage_box_stds"], n, "stage_box_stds")
    fpn, compat = s["fpn_channels"], s["mmdet_compat"]
    neck = FocalNetFPN(body, fpn)
    anchors = anchor_generator(compat)
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(fpn, anchors.num_anchors_per_location()[0]),
        s["rpn_fg_iou_thresh"],
        s["rpn_bg_iou_thresh"],
        s["rpn_batch_size_per_image"],
        s["rpn_positive_fraction"],
        {"training": s["rpn_pre_nms_top_n_train"], "testing": s["rpn_pre_nms_top_n_test"]},
        {"training": s["rpn_post_nms_top_n_train"], "testing": s["rpn_post_nms_top_n_test"]},
        s["rpn_nms_thresh"],
        score_thresh=s["rpn_score_thresh"],
    )
    mask_ch = s["mask_head_channels"]
    roi_heads = CascadeRoIHeads(
        multiscale_roi_align(7, compat),
        [ConvFCBoxHead(fpn, num_classes, fpn, s["box_num_convs"], s["representation_size"]) for _ in range(n)],
        multiscale_roi_align(14, compat),
        [MaskRCNNHeads(fpn, [mask_ch] * 4, 1) for _ in range(n)],
        [MaskRCNNPredictor(mask_ch, mask_ch, num_classes - 1) for _ in range(n)],
        stage_iou_thresholds=s["stage_iou_thresholds"],
        stage_loss_weights=stage_weights,
        stage_box_stds=stage_stds,
        batch_size_per_image=s["box_batch_size_per_image"],
        positive_fraction=s["box_positive_fraction"],
        giou_loss_weight=s["giou_loss_weight"],
        score_thresh=s["box_score_thresh"],
        nms_thresh=s["box_nms_thresh"],
        detections_per_img=s["box_detections_per_img"],
    )
    transform = detection_transform(s["min_size"], s["max_size"], s["image_mean"], s["image_std"], train_resize)
    return CascadeMaskRCNN(neck, rpn, roi_heads, transform)


def cascade_mask_rcnn(
    backbone: str | None = None,
    num_classes: int = 81,
    backbone_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> CascadeMaskRCNN:
    """FocalNet Cascade Mask R-CNN as released (FocalNet-T LRF, focal windows [11, 9, 9, 7], 87.1 M
    parameters with 81 classes); ``num_classes`` includes the background. Options: see
    :func:`build_cascade_mask_rcnn`."""
    return build_cascade_mask_rcnn(backbone, num_classes, backbone_checkpoint=backbone_checkpoint, **overrides)


# ---------------------------------------------------------------------------------------------- mmdet files
_RULES = [
    *mmdet.BACKBONE_RULES,
    *mmdet.FPN_RULES,
    *mmdet.RPN_RULES,
    (
        r"^roi_head\.bbox_head\.(\d+)\.shared_convs\.(\d+)\.conv\.weight$",
        r"roi_heads.box_heads.\1.shared_convs.\2.0.weight",
    ),
    (
        r"^roi_head\.bbox_head\.(\d+)\.shared_convs\.(\d+)\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)$",
        r"roi_heads.box_heads.\1.shared_convs.\2.1.\3",
    ),
    (r"^roi_head\.bbox_head\.(\d+)\.shared_fcs\.0\.(weight|bias)$", r"roi_heads.box_heads.\1.shared_fc.\2"),
    (r"^roi_head\.bbox_head\.(\d+)\.fc_cls\.(weight|bias)$", r"roi_heads.box_heads.\1.cls_score.\2"),
    (r"^roi_head\.bbox_head\.(\d+)\.fc_reg\.(weight|bias)$", r"roi_heads.box_heads.\1.bbox_pred.\2"),
    (r"^roi_head\.mask_head\.(\d+)\.convs\.(\d+)\.conv\.(weight|bias)$", r"roi_heads.mask_heads.\1.\2.0.\3"),
    (r"^roi_head\.mask_head\.(\d+)\.upsample\.(weight|bias)$", r"roi_heads.mask_predictors.\1.conv5_mask.\2"),
    (r"^roi_head\.mask_head\.(\d+)\.conv_logits\.(weight|bias)$", r"roi_heads.mask_predictors.\1.mask_fcn_logits.\2"),
]


def is_mmdet_cascade(sd: Any) -> bool:
    """Whether an mmdetection state dict is a Cascade R-CNN (an RPN and per-stage ``roi_head.bbox_head.{i}.`` keys)."""
    return mmdet.has_key(sd, r"rpn_head\.rpn_") and mmdet.has_key(sd, r"roi_head\.bbox_head\.\d+\.")


def _from_mmdet(sd: Any) -> dict[str, Tensor]:
    out = mmdet.rename_keeping_unknown(sd, _RULES)
    for k, v in out.items():
        if ".cls_score." in k:  # background moves from last to first
            out[k] = torch.cat([v[-1:], v[:-1]])
    return out


def convert_mmdet_cascade_state_dict(sd: Any) -> dict[str, Tensor]:
    """Map an mmdetection 2.x Cascade (Mask) R-CNN state dict onto :func:`cascade_mask_rcnn`'s keys.

    Backbone, neck and RPN as for Mask R-CNN (:func:`~focalnet.detection.rcnn.convert_mmdet_state_dict`);
    ``roi_head.bbox_head.{i}.shared_convs.{j}.{conv,bn}`` -> ``roi_heads.box_heads.{i}.shared_convs.{j}.{0,1}``,
    ``shared_fcs.0`` -> ``shared_fc``, ``fc_cls`` -> ``cls_score`` (background moved from last to first),
    ``fc_reg`` -> ``bbox_pred`` (same 4K rows), ``roi_head.mask_head.{i}.convs.{j}.conv`` ->
    ``roi_heads.mask_heads.{i}.{j}.0``, ``upsample`` / ``conv_logits`` ->
    ``roi_heads.mask_predictors.{i}.conv5_mask`` / ``mask_fcn_logits`` (K rows, no background).
    Raises ``ValueError`` naming the keys it does not know."""
    from ..weights.convert import rename_key

    unknown = [k for k in sd if rename_key(k, _RULES) is None]
    if unknown:
        raise ValueError(f"unknown mmdetection keys (not a Cascade Mask R-CNN with FPN?): {unknown[:10]}")
    return _from_mmdet(sd)


def _read(obj: Any, source: str) -> LayoutRead:
    sd = mmdet.state_dict_of(obj)
    fields = {"detector": "cascade_mask_rcnn", **mmdet.backbone_fields(sd), "mmdet_compat": True}
    fields["representation_size"] = int(sd["roi_head.bbox_head.0.shared_fcs.0.weight"].shape[0])
    fields["mask_head_channels"] = int(sd["roi_head.mask_head.0.convs.0.conv.weight"].shape[0])
    fields["detector_overrides"] = {"box_num_convs": mmdet.count_indexed(sd, "roi_head.bbox_head.0.shared_convs.")}
    num_classes = int(sd["roi_head.bbox_head.0.fc_cls.weight"].shape[0])
    return LayoutRead(fields, _from_mmdet(sd), mmdet.mmdet_meta(num_classes), mmdet.reverse_namer(_RULES))


def _to_mmdet(key: str, v: Tensor) -> Tensor:
    return torch.cat([v[1:], v[:1]]) if ".cls_score." in key else v


MMDET_CASCADE = Layout(
    name="mmdet-cascade",
    describe="mmdetection 2.x Cascade (Mask) R-CNN (state_dict with rpn_head.rpn_* and roi_head.bbox_head.{i}.* keys)",
    recognise=is_mmdet_cascade,
    weights=mmdet.state_dict_of,
    read=_read,
    write=lambda sd: mmdet.mmdet_file(sd, _RULES, _to_mmdet),
)

CASCADE_MASK_RCNN = DetectorSpec(
    name="cascade_mask_rcnn",
    title="Cascade Mask R-CNN",
    summary="three-stage cascade of box heads (IoU 0.5/0.6/0.7) with a mask head per stage",
    build=build_cascade_mask_rcnn,
    backbone_defaults=BACKBONE_DEFAULTS,
    head_defaults=CASCADE_HEAD_DEFAULTS,
    config_fields=RCNN_CONFIG_FIELDS,
    masks=True,
    layouts=(MMDET_CASCADE,),
    recipe="cascade_mask_rcnn_focalnet_tiny_lrf_3x",
)
