"""FocalNet Sparse R-CNN (Sun et al., CVPR 2021) as the original FocalNet config builds it (mmdetection 2.x
``SparseRCNN`` + ``EmbeddingRPNHead`` + ``SparseRoIHead`` with ``DIIHead`` stages), in torchvision style.

>>> from focalnet.detection import sparse_rcnn
>>> model = sparse_rcnn("focalnet_tiny_lrf", num_classes=81)  # 80 COCO classes + background, 111.2 M

Structure (``sparse_rcnn_focalnet_tiny_fpn_300_proposals_crop_mstrain_480-800_3x_coco_lrf``):

* ``backbone``: FocalNet (focal windows [11, 9, 9, 7] by default) + torchvision FPN with 4 outputs (strides
  4-32, 256 channels; mmdet's ``start_level=0, num_outs=4``: no extra level);
* ``rpn``: 300 learned proposal boxes (normalised cx, cy, w, h, initialised to the whole image) and
  300 learned proposal features (``EmbeddingRPNHead``);
* ``roi_heads``: 6 dynamic-instance-interaction stages. Each pools 7x7 RoIs (RoIAlign ``aligned=True``,
  ``sampling_ratio=2``, mmdet's level rule), then: 8-head self-attention over the proposals (+ residual,
  LayerNorm), a dynamic conv (per-proposal 256->64->256 kernels generated from the proposal feature,
  LayerNorms, ReLU, then a fc over the 7x7x256 map; + residual, LayerNorm), an FFN 256-2048-256
  (+ residual, LayerNorm), one cls fc (sigmoid, no background) and three reg fcs; the 4 deltas are
  decoded with stds (0.5, 0.5, 1, 1) on the stage's input boxes (no clipping), and the boxes are
  detached before the next stage.

Training: at every stage the predictions are matched one-to-one to the ground truths
(:class:`~focalnet.ops.matching.HungarianMatcher`: focal 2, L1 5 on normalised x1y1x2y2, GIoU 2) and
penalised with focal loss x2 (over all proposals), L1 x5 (normalised boxes) and GIoU loss x2 (matched
proposals), each divided by the number of ground truths in the batch averaged over the processes (at
least 1). Test: the last stage's ``sigmoid`` scores, top ``detections_per_img`` (300) of the
``proposals x classes`` pairs; no NMS.

Labels follow the rest of the package: ``num_classes`` counts the background (COCO: 81), targets and
outputs use labels ``1..num_classes - 1``; the classifier itself has ``num_classes - 1`` sigmoid outputs
(mmdet's 80), class ``k`` of the head is label ``k + 1``.

Original checkpoints (:data:`MMDET_SPARSE_RCNN`, read by :func:`~focalnet.detection.load_detector`):
:func:`convert_mmdet_sparse_rcnn` maps the mmdetection keys (table below); the head's settings are read
off the keys.

==========================================  ==================================================
``backbone.*``                              ``backbone.body.*``
``neck.lateral_convs.{i}.conv.*``           ``backbone.fpn.inner_blocks.{i}.0.*``
``neck.fpn_convs.{i}.conv.*``               ``backbone.fpn.layer_blocks.{i}.0.*``
``rpn_head.init_proposal_{bboxes,features}``  ``rpn.init_proposal_{bboxes,features}``
``roi_head.bbox_head.{s}.*``                ``roi_heads.stages.{s}.*`` (same names inside a stage)
==========================================  ==================================================
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..engine.distributed import mean_over_processes
from ..ops.matching import HungarianMatcher
from . import mmdet
from .backbone import build_backbone, check_num_classes, pop_backbone_options
from .image_transform import detection_transform
from .necks import SparseRCNNFPN
from .rcnn_parts import FPN_LEVELS, AlignedMultiScaleRoIAlign
from .spec import DetectorSpec, Layout, LayoutRead, resolve_options

__all__ = [
    "SPARSE_RCNN_DEFAULTS",
    "SPARSE_RCNN",
    "MMDET_SPARSE_RCNN",
    "SparseRCNN",
    "SparseRCNNFPN",
    "EmbeddingProposals",
    "DynamicConv",
    "DIIStage",
    "SparseRoIHeads",
    "set_prediction_losses",
    "sparse_rcnn",
    "build_sparse_rcnn",
    "is_mmdet_sparse_rcnn",
    "convert_mmdet_sparse_rcnn",
]

# the released config (``sparse_rcnn_focalnet_tiny_..._3x_coco_lrf``): every option of the builder
SPARSE_RCNN_DEFAULTS: dict[str, Any] = dict(
    fpn_channels=256,
    num_proposals=300,
    num_stages=6,
    num_heads=8,
    feedforward_channels=2048,
    dynamic_channels=64,
    num_cls_fcs=1,
    num_reg_fcs=3,
    pooler_size=7,
    sampling_ratio=2,
    dropout=0.0,
    cls_weight=2.0,
    l1_weight=5.0,
    giou_weight=2.0,
    focal_alpha=0.25,
    focal_gamma=2.0,
    bbox_stds=(0.5, 0.5, 1.0, 1.0),
    stage_loss_weights=None,  # None: 1 for every stage
    min_size=800,
    max_size=1333,
    score_thresh=0.0,
    detections_per_img=300,
    image_mean=None,  # None: ImageNet's
    image_std=None,
)
BACKBONE_DEFAULTS: dict[str, Any] = {
    "backbone": "focalnet_tiny_lrf",
    "focal_windows": (11, 9, 9, 7),
    "drop_path_rate": 0.3,
}
_WH_RATIO_CLIP = 16 / 1000  # mmdet's DeltaXYWHBBoxCoder: |log scale| <= log(1000 / 16)


class EmbeddingProposals(nn.Module):
    """mmdet ``EmbeddingRPNHead``: ``num_proposals`` learned boxes (normalised cx, cy, w, h; initialised
    to the whole image) and proposal features, the same for every image."""

    def __init__(self, num_proposals: int = 300, channels: int = 256) -> None:
        super().__init__()
        self.init_proposal_bboxes = nn.Embedding(num_proposals, 4)
        self.init_proposal_features = nn.Embedding(num_proposals, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.init_proposal_bboxes.weight[:, :2] = 0.5
            self.init_proposal_bboxes.weight[:, 2:] = 1.0

    def forward(self, whwh: Tensor) -> tuple[Tensor, Tensor]:
        """Absolute x1y1x2y2 boxes ``[B, Q, 4]`` and features ``[B, Q, C]`` for images of size ``whwh [B, 4]``."""
        cxcywh = self.init_proposal_bboxes.weight
        xyxy = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], dim=1)
        boxes = xyxy[None] * whwh[:, None, :]
        feats = self.init_proposal_features.weight[None].expand(len(whwh), -1, -1)
        return boxes, feats


class DynamicConv(nn.Module):
    """mmdet ``DynamicConv``: each proposal feature generates the kernels of two 1x1 convs
    (``in -> feat -> out`` channels) applied to its own RoI features, then a fc over the whole RoI map."""

    def __init__(
        self, in_channels: int = 256, feat_channels: int = 64, out_channels: int = 256, input_feat_shape: int = 7
    ) -> None:
        super().__init__()
        self.in_channels, self.feat_channels, self.out_channels = in_channels, feat_channels, out_channels
        self.num_params_in = in_channels * feat_channels
        self.num_params_out = out_channels * feat_channels
        self.dynamic_layer = nn.Linear(in_channels, self.num_params_in + self.num_params_out)
        self.norm_in = nn.LayerNorm(feat_channels)
        self.norm_out = nn.LayerNorm(out_channels)
        self.activation = nn.ReLU(inplace=True)
        self.fc_layer = nn.Linear(out_channels * input_feat_shape**2, out_channels)
        self.fc_norm = nn.LayerNorm(out_channels)

    def forward(self, param_feature: Tensor, input_feature: Tensor) -> Tensor:
        """``param_feature [N, C]`` (one per RoI), ``input_feature [N, C, S, S]`` -> ``[N, out_channels]``."""
        x = input_feature.flatten(2).transpose(1, 2)  # [N, S*S, C]
        params = self.dynamic_layer(param_feature)
        w_in = params[:, : self.num_params_in].view(-1, self.in_channels, self.feat_channels)
        w_out = params[:, -self.num_params_out :].view(-1, self.feat_channels, self.out_channels)
        x = self.activation(self.norm_in(torch.bmm(x, w_in)))
        x = self.activation(self.norm_out(torch.bmm(x, w_out)))
        return self.activation(self.fc_norm(self.fc_layer(x.flatten(1))))  # position-major flatten, as mmdet


class _SelfAttention(nn.Module):
    """mmcv ``MultiheadAttention`` (residual inside) over the proposals of each image."""

    def __init__(self, channels: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, num_heads, dropout=dropout, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(x, x, x, need_weights=False)[0]


class _FFN(nn.Module):
    """mmcv ``FFN`` with 2 fcs (residual inside): ``layers = [[fc, ReLU, Dropout], fc, Dropout]``."""

    def __init__(self, channels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(hidden, channels),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


def _fc_stack(channels: int, n: int) -> nn.ModuleList:
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(channels, channels, bias=False), nn.LayerNorm(channels), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class DIIStage(nn.Module):
    """One Sparse R-CNN stage (mmdet ``DIIHead``; the submodule names are the original ones)."""

    def __init__(
        self,
        num_classes: int = 80,
        channels: int = 256,
        num_heads: int = 8,
        feedforward_channels: int = 2048,
        dynamic_channels: int = 64,
        pooler_size: int = 7,
        num_cls_fcs: int = 1,
        num_reg_fcs: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.attention = _SelfAttention(channels, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(channels)
        self.instance_interactive_conv = DynamicConv(channels, dynamic_channels, channels, pooler_size)
        self.instance_interactive_conv_dropout = nn.Dropout(dropout)
        self.instance_interactive_conv_norm = nn.LayerNorm(channels)
        self.ffn = _FFN(channels, feedforward_channels, dropout)
        self.ffn_norm = nn.LayerNorm(channels)
        self.cls_fcs = _fc_stack(channels, num_cls_fcs)
        self.fc_cls = nn.Linear(channels, num_classes)
        self.reg_fcs = _fc_stack(channels, num_reg_fcs)
        self.fc_reg = nn.Linear(channels, 4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmdet ``DIIHead.init_weights``: Xavier (uniform) for every matrix, classifier bias for a 1 %
        prior, zero regression bias; other vectors keep PyTorch's defaults."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_cls.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, roi_feats: Tensor, proposal_feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``roi_feats [B*Q, C, S, S]``, ``proposal_feats [B, Q, C]`` -> class logits ``[B, Q, K]``,
        box deltas ``[B, Q, 4]`` and the new proposal features ``[B, Q, C]``."""
        b, q = proposal_feats.shape[:2]
        x = self.attention_norm(self.attention(proposal_feats)).reshape(b * q, self.channels)
        x = x + self.instance_interactive_conv_dropout(self.instance_interactive_conv(x, roi_feats))
        obj = self.ffn_norm(self.ffn(self.instance_interactive_conv_norm(x)))
        cls, reg = obj, obj
        for layer in self.cls_fcs:
            cls = layer(cls)
        for layer in self.reg_fcs:
            reg = layer(reg)
        return self.fc_cls(cls).view(b, q, -1), self.fc_reg(reg).view(b, q, 4), obj.view(b, q, -1)


def set_prediction_losses(
    logits: Tensor,
    boxes: Tensor,
    targets: list[dict[str, Tensor]],
    whwh: Tensor,
    matcher: HungarianMatcher,
    *,
    cls_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, Tensor]:
    """The losses of one stage, as mmdet's ``DIIHead.loss`` after ``HungarianAssigner``.

    ``logits [B, Q, K]`` (sigmoid, class ``k`` = label ``k + 1``), ``boxes [B, Q, 4]`` absolute x1y1x2y2,
    ``targets[i]`` with ``boxes [N_i, 4]`` (absolute x1y1x2y2) and ``labels [N_i]`` in ``1..K``, ``whwh
    [B, 4]`` the image sizes (w, h, w, h) that normalise the boxes. Matching uses the detached predictions.
    Returns ``loss_cls`` (focal over every proposal and class), ``loss_bbox`` (L1 on normalised boxes) and
    ``loss_iou`` (1 - GIoU), each weighted and divided by the number of ground truths (averaged over
    the processes, at least 1).
    """
    logits, boxes, whwh = logits.float(), boxes.float(), whwh.float()
    k = logits.shape[-1]
    for t in targets:
        lab = t["labels"]
        if lab.numel() and (int(lab.min()) < 1 or int(lab.max()) > k):
            raise ValueError(f"target labels must be in 1..{k} (0 is the background), got {lab.tolist()}")
    norm_targets = [{"labels": t["labels"] - 1, "boxes": t["boxes"].float() / whwh[i]} for i, t in enumerate(targets)]
    matches = matcher(logits.detach(), boxes.detach() / whwh[:, None], norm_targets)
    onehot = torch.zeros_like(logits)
    pred_idx, gt_boxes = [], []
    for i, ((rows, cols), t) in enumerate(zip(matches, norm_targets)):
        onehot[i, rows, t["labels"][cols]] = 1.0
        pred_idx.append(rows + i * logits.shape[1])
        gt_boxes.append(targets[i]["boxes"].float()[cols])
    num_pos = torch.as_tensor(float(sum(len(r) for r, _ in matches)), device=logits.device)
    avg = mean_over_processes(num_pos).clamp(min=1.0).item()
    losses = {
        "loss_cls": cls_weight
        * sigmoid_focal_loss(logits.reshape(-1, k), onehot.reshape(-1, k), focal_alpha, focal_gamma, "sum")
        / avg
    }
    idx = torch.cat(pred_idx)
    if idx.numel() == 0:
        losses["loss_bbox"] = losses["loss_iou"] = boxes.sum() * 0.0
        return losses
    pred = boxes.reshape(-1, 4)[idx]
    gt = torch.cat(gt_boxes)
    scale = whwh[:, None].expand(-1, logits.shape[1], -1).reshape(-1, 4)[idx]
    losses["loss_bbox"] = l1_weight * F.l1_loss(pred / scale, gt / scale, reduction="sum") / avg
    losses["loss_iou"] = giou_weight * generalized_box_iou_loss(pred, gt, reduction="sum") / avg
    return losses


class SparseRoIHeads(nn.Module):
    """mmdet ``SparseRoIHead``: iterative refinement of the proposals through the DII stages."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 256,
        *,
        num_stages: int = 6,
        num_heads: int = 8,
        feedforward_channels: int = 2048,
        dynamic_channels: int = 64,
        num_cls_fcs: int = 1,
        num_reg_fcs: int = 3,
        pooler_size: int = 7,
        sampling_ratio: int = 2,
        dropout: float = 0.0,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        bbox_stds: tuple[float, ...] = (0.5, 0.5, 1.0, 1.0),
        stage_loss_weights: tuple[float, ...] | None = None,
        score_thresh: float = 0.0,
        detections_per_img: int = 300,
    ) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        self.box_roi_pool = AlignedMultiScaleRoIAlign(FPN_LEVELS, pooler_size, sampling_ratio, aligned=True)
        self.stages = nn.ModuleList(
            DIIStage(
                num_classes,
                channels,
                num_heads,
                feedforward_channels,
                dynamic_channels,
                pooler_size,
                num_cls_fcs,
                num_reg_fcs,
                dropout,
            )
            for _ in range(num_stages)
        )
        self.matcher = HungarianMatcher(cls_weight, l1_weight, giou_weight, focal_alpha, focal_gamma, box_format="xyxy")
        self.loss_weights = dict(cls_weight=cls_weight, l1_weight=l1_weight, giou_weight=giou_weight)
        self.focal = dict(focal_alpha=focal_alpha, focal_gamma=focal_gamma)
        self.box_coder = BoxCoder(tuple(1.0 / s for s in bbox_stds), bbox_xform_clip=math.log(1 / _WH_RATIO_CLIP))
        self.stage_loss_weights = tuple(stage_loss_weights or (1.0,) * num_stages)
        self.score_thresh = score_thresh
        self.detections_per_img = detections_per_img

    def has_mask(self) -> bool:
        return False

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """mmdet ``DeltaXYWHBBoxCoder.decode`` without clipping: the log-scale deltas are clamped on both
        sides to ``log(1000 / 16)`` (torchvision's coder clamps only from above)."""
        deltas, boxes = deltas.float(), boxes.float()  # absolute pixel boxes: never in half precision
        clip = self.box_coder.bbox_xform_clip
        w = torch.as_tensor(self.box_coder.weights[2:], dtype=deltas.dtype, device=deltas.device)
        codes = torch.cat([deltas[..., :2], torch.maximum(deltas[..., 2:], -clip * w)], dim=-1)
        return self.box_coder.decode_single(codes.reshape(-1, 4), boxes.reshape(-1, 4)).view(boxes.shape)

    def forward(
        self,
        features: Mapping[str, Tensor],
        proposal_boxes: Tensor,
        proposal_feats: Tensor,
        image_sizes: list[tuple[int, int]],
        whwh: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        boxes, obj = proposal_boxes, proposal_feats
        losses: dict[str, Tensor] = {}
        logits = boxes  # set by the loop
        for s, stage in enumerate(self.stages):
            roi_feats = self.box_roi_pool(dict(features), list(boxes), image_sizes)
            logits, deltas, obj = stage(roi_feats, obj)
            new_boxes = self.decode(deltas, boxes)
            if targets is not None:
                parts = set_prediction_losses(
                    logits, new_boxes, targets, whwh, self.matcher, **self.loss_weights, **self.focal
                )
                for k, v in parts.items():
                    losses[f"stage{s}_{k}"] = v * self.stage_loss_weights[s]
            boxes = new_boxes.detach()
        if targets is not None:
            return [], losses
        return self.postprocess(logits, boxes), losses

    def postprocess(self, logits: Tensor, boxes: Tensor) -> list[dict[str, Tensor]]:
        """Top ``detections_per_img`` (proposal, class) pairs by sigmoid score per image; labels ``1..K``."""
        scores = logits.float().sigmoid()
        k = scores.shape[-1]
        out = []
        for s, b in zip(scores, boxes):
            top, idx = s.flatten().topk(min(self.detections_per_img, s.numel()))
            keep = top > self.score_thresh if self.score_thresh > 0 else slice(None)
            top, idx = top[keep], idx[keep]
            out.append({"boxes": b[idx // k], "scores": top, "labels": idx % k + 1})
        return out


class SparseRCNN(nn.Module):
    """Torchvision-style Sparse R-CNN: ``model(images, targets)`` -> loss dict in training,
    ``model(images)`` -> ``[{"boxes", "labels", "scores"}]`` (original image coordinates) in eval."""

    def __init__(
        self,
        backbone: SparseRCNNFPN,
        num_classes: int,
        *,
        num_proposals: int = 300,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        train_resize: bool = False,
        **head_kwargs: Any,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        if num_proposals < 1:
            raise ValueError(f"num_proposals must be >= 1, got {num_proposals}")
        self.transform = detection_transform(min_size, max_size, image_mean, image_std, train_resize)
        self.backbone = backbone
        self.rpn = EmbeddingProposals(num_proposals, backbone.out_channels)
        self.roi_heads = SparseRoIHeads(num_classes - 1, backbone.out_channels, **head_kwargs)
        self.num_classes = num_classes

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are needed in training mode")
            for t in targets:
                b = t["boxes"]
                if b.dim() != 2 or b.shape[-1] != 4:
                    raise ValueError(f"expected target boxes of shape [N, 4], got {tuple(b.shape)}")
                if len(b) and not bool((b[:, 2:] > b[:, :2]).all()):
                    raise ValueError("target boxes must have positive width and height (x1 < x2, y1 < y2)")
        original_sizes = [(im.shape[-2], im.shape[-1]) for im in images]  # not int(): traced (ONNX) sizes stay dynamic
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        sizes = image_list.image_sizes
        # stacked from the sizes (not torch.tensor of them): a traced (ONNX) graph keeps them dynamic
        whwh = torch.stack([torch.stack([torch.as_tensor(v) for v in (w, h, w, h)]) for h, w in sizes]).to(
            dtype=image_list.tensors.dtype, device=image_list.tensors.device
        )
        boxes, feats = self.rpn(whwh)
        detections, losses = self.roi_heads(features, boxes, feats, sizes, whwh, targets if self.training else None)
        if self.training:
            return losses
        return self.transform.postprocess(detections, sizes, original_sizes)


# ---------------------------------------------------------------------------------------------- builders
def build_sparse_rcnn(
    backbone: str | None = None,
    num_classes: int = 81,
    *,
    train_resize: bool = False,
    **options: Any,
) -> SparseRCNN:
    """Build a FocalNet Sparse R-CNN. ``options``: backbone keywords as for
    :func:`~focalnet.detection.rcnn.build_rcnn` (defaults: focal windows (11, 9, 9, 7), drop path 0.3) and
    the keys of :data:`SPARSE_RCNN_DEFAULTS` (``num_proposals``, ``num_stages``, ``detections_per_img``, ...)."""
    body = build_backbone(backbone, BACKBONE_DEFAULTS, **pop_backbone_options(options))
    s = resolve_options("Sparse R-CNN", SPARSE_RCNN_DEFAULTS, options)
    s["bbox_stds"] = tuple(s["bbox_stds"])
    neck = SparseRCNNFPN(body, s.pop("fpn_channels"))
    return SparseRCNN(neck, num_classes, train_resize=train_resize, **s)


def sparse_rcnn(
    backbone: str | None = None,
    num_classes: int = 81,
    backbone_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> SparseRCNN:
    """FocalNet Sparse R-CNN (see :func:`build_sparse_rcnn`); ``num_classes`` includes the background
    (81 for COCO: the classifier has 80 sigmoid outputs, labels are 1..80)."""
    return build_sparse_rcnn(backbone, num_classes, backbone_checkpoint=backbone_checkpoint, **overrides)


# ---------------------------------------------------------------------------------------------- mmdetection files
_RULES = [
    *mmdet.BACKBONE_RULES,
    *mmdet.FPN_RULES,
    (r"^rpn_head\.(init_proposal_bboxes|init_proposal_features)\.weight$", r"rpn.\1.weight"),
    (r"^roi_head\.bbox_head\.(\d+)\.(.+)$", r"roi_heads.stages.\1.\2"),
]


def is_mmdet_sparse_rcnn(sd: Any) -> bool:
    """Whether a state dict is an mmdetection Sparse R-CNN (``rpn_head.init_proposal_*`` keys)."""
    return mmdet.has_key(sd, r"rpn_head\.init_proposal_")


def convert_mmdet_sparse_rcnn(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an mmdetection Sparse R-CNN state dict onto :class:`SparseRCNN` keys (table in the module
    docstring). Keys outside the table are kept under their original names, so that a strict load names
    them as unexpected."""
    return mmdet.rename_keeping_unknown(sd, _RULES)


def _architecture(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """The head settings a Sparse R-CNN state dict implies (absent keys: the defaults)."""
    arch: dict[str, Any] = {}
    if "rpn_head.init_proposal_bboxes.weight" in sd:
        arch["num_proposals"] = int(sd["rpn_head.init_proposal_bboxes.weight"].shape[0])
    arch["num_stages"] = mmdet.count_indexed(sd, "roi_head.bbox_head.") or SPARSE_RCNN_DEFAULTS["num_stages"]
    p = "roi_head.bbox_head.0."
    if p + "ffn.layers.0.0.weight" in sd:
        arch["feedforward_channels"] = int(sd[p + "ffn.layers.0.0.weight"].shape[0])
    if p + "instance_interactive_conv.norm_in.weight" in sd:
        arch["dynamic_channels"] = int(sd[p + "instance_interactive_conv.norm_in.weight"].shape[0])
    for name in ("cls", "reg"):
        n = sum(
            1 for k in sd if re.match(rf"^roi_head\.bbox_head\.0\.{name}_fcs\.\d+\.weight$", k) and sd[k].dim() == 2
        )
        if n:
            arch[f"num_{name}_fcs"] = n
    fc, feat = p + "instance_interactive_conv.fc_layer.weight", "rpn_head.init_proposal_features.weight"
    if fc in sd and feat in sd:
        arch["pooler_size"] = round(math.sqrt(sd[fc].shape[1] / sd[feat].shape[1]))
    return arch


def _read(obj: Any, source: str) -> LayoutRead:
    sd = mmdet.state_dict_of(obj)
    num_classes = int(sd["roi_head.bbox_head.0.fc_cls.weight"].shape[0]) + 1
    fields = {"detector": "sparse_rcnn", **mmdet.backbone_fields(sd), "detector_overrides": _architecture(sd)}
    if "rpn_head.init_proposal_features.weight" in sd:
        fields["fpn_channels"] = int(sd["rpn_head.init_proposal_features.weight"].shape[1])
    return LayoutRead(fields, convert_mmdet_sparse_rcnn(sd), mmdet.mmdet_meta(num_classes), mmdet.reverse_namer(_RULES))


MMDET_SPARSE_RCNN = Layout(
    name="mmdet-sparse-rcnn",
    describe="mmdetection 2.x Sparse R-CNN (state_dict with rpn_head.init_proposal_* keys)",
    recognise=is_mmdet_sparse_rcnn,
    weights=mmdet.state_dict_of,
    read=_read,
    write=lambda sd: mmdet.mmdet_file(sd, _RULES),
)

SPARSE_RCNN = DetectorSpec(
    name="sparse_rcnn",
    title="Sparse R-CNN",
    summary="300 learned proposals refined by 6 dynamic-interaction stages, set prediction without NMS",
    build=build_sparse_rcnn,
    backbone_defaults=BACKBONE_DEFAULTS,
    head_defaults=SPARSE_RCNN_DEFAULTS,
    config_fields={k: k for k in ("fpn_channels", "min_size", "max_size", "score_thresh", "detections_per_img")},
    layouts=(MMDET_SPARSE_RCNN,),
    recipe="sparse_rcnn_focalnet_tiny_lrf_3x",
)
