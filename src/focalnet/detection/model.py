"""FocalNet + FPN backbone and torchvision Mask R-CNN / Faster R-CNN builders with the original settings.

The detectors are plain :class:`torchvision.models.detection.MaskRCNN` / ``FasterRCNN`` modules:

* backbone: :class:`FocalNetFPN` = :func:`focalnet.create_backbone` (strides 4-32) + torchvision
  ``FeaturePyramidNetwork`` (256 channels) + ``LastLevelMaxPool`` (stride 64);
* RPN: anchors 32-512 (one size per level), ratios 0.5/1/2, 2000/1000 proposals before NMS per level,
  1000 after (mmdet's ``max_per_img``), NMS 0.7;
* RoI heads: RoIAlign 7x7 (boxes) and 14x14 (masks), box coder weights (10, 10, 5, 5), 512 RoIs per
  image at 25 % positives, test score threshold 0.05, NMS 0.5, 100 detections;
* transform: resize to 800 (short) / 1333 (long) at test time, pad to a multiple of 32. During training
  the data pipeline (:mod:`focalnet.detection.transforms`) does the multi-scale resizing, so the model's
  transform only normalises and pads (``train_resize=False``).

``mmdet_compat=True`` switches to mmdetection 2.x behaviour where that is cheap: RoIAlign with
``aligned=True`` and adaptive sampling (``sampling_ratio=0``), and anchors without rounding.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from ..factory import create_backbone
from ..models.focalnet import FocalNetBackbone
from .config import DETECTORS

__all__ = [
    "FocalNetFPN",
    "AlignedMultiScaleRoIAlign",
    "UnroundedAnchorGenerator",
    "DetectionTransform",
    "mask_rcnn",
    "faster_rcnn",
    "build_detector",
    "DETECTION_DEFAULTS",
]

ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5

# settings of the original FocalNet Mask R-CNN configs (mmdetection 2.x) in torchvision's terms
DETECTION_DEFAULTS: dict[str, Any] = dict(
    min_size=800,
    max_size=1333,
    rpn_pre_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_train=1000,
    rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.7,
    rpn_fg_iou_thresh=0.7,
    rpn_bg_iou_thresh=0.3,
    rpn_batch_size_per_image=256,
    rpn_positive_fraction=0.5,
    box_score_thresh=0.05,
    box_nms_thresh=0.5,
    box_detections_per_img=100,
    box_fg_iou_thresh=0.5,
    box_bg_iou_thresh=0.5,
    box_batch_size_per_image=512,
    box_positive_fraction=0.25,
    bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
)


class FocalNetFPN(nn.Module):
    """FocalNet backbone + FPN: ``forward(x)`` gives ``OrderedDict`` ``"0".."3"`` (strides 4-32) and
    ``"pool"`` (stride 64, max-pooled top level), each with ``out_channels`` channels."""

    def __init__(self, body: FocalNetBackbone, out_channels: int = 256) -> None:
        super().__init__()
        if len(body.out_indices) != 4:
            raise ValueError(
                f"the FPN needs the 4 stages of a hierarchical FocalNet, got out_indices {body.out_indices}"
            )
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = [*body.strides, body.strides[-1] * 2]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` with a choice of ``aligned`` (mmdetection 2.x uses ``aligned=True``, half-pixel
    offset; torchvision's default is ``False``). Level mapping is torchvision's, which equals mmdet's
    ``finest_scale=56`` rule (``floor(log2(sqrt(wh) / 56))`` clamped to P2-P5)."""

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int, aligned: bool = True) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned = aligned

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                feats, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        out = torch.zeros(
            (len(rois), feats[0].shape[1], *self.output_size), dtype=feats[0].dtype, device=feats[0].device
        )
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            res = roi_align(
                feat,
                rois[idx],
                self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=self.aligned,
            )
            out[idx] = res.to(out.dtype)
        return out


class UnroundedAnchorGenerator(AnchorGenerator):
    """Anchors exactly as mmdetection 2.x makes them (torchvision rounds the base anchors to integers)."""

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        device = device if device is not None else torch.device("cpu")
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h = torch.sqrt(ratios)
        w = 1 / h
        ws = (w[:, None] * scales_t[None, :]).view(-1)
        hs = (h[:, None] * scales_t[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


class DetectionTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that can skip resizing in training (the data pipeline already did the
    multi-scale / crop augmentation); at test time it resizes to ``min_size``/``max_size`` as usual."""

    def __init__(self, *args: Any, train_resize: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_resize = train_resize

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        if self.training and not self.train_resize:
            return image, target
        return super().resize(image, target)


def _build_body(
    backbone: str,
    backbone_checkpoint: str | os.PathLike | None,
    frozen_stages: int,
    backbone_overrides: dict[str, Any],
) -> FocalNetBackbone:
    overrides = {"focal_windows": (9, 9, 9, 9), "drop_path_rate": 0.1, **backbone_overrides}
    for k in ("focal_windows", "depths", "focal_levels"):
        if k in overrides and isinstance(overrides[k], list):
            overrides[k] = tuple(overrides[k])
    return create_backbone(backbone, checkpoint_path=backbone_checkpoint, frozen_stages=frozen_stages, **overrides)


def build_detector(
    detector: str = "mask_rcnn",
    backbone: str = "focalnet_tiny_lrf",
    num_classes: int = 81,
    *,
    backbone_checkpoint: str | os.PathLike | None = None,
    frozen_stages: int = -1,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    mask_head_channels: int = 256,
    mmdet_compat: bool = False,
    train_resize: bool = False,
    grad_checkpointing: bool = False,
    backbone_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a FocalNet Mask R-CNN (``detector="mask_rcnn"``), Faster R-CNN or Cascade Mask R-CNN
    (``"cascade_mask_rcnn"``: :func:`focalnet.detection.cascade.build_cascade_mask_rcnn`).

    ``num_classes`` counts the background (COCO: 81). ``backbone_overrides`` (and any ``overrides`` that
    are :class:`~focalnet.FocalNetConfig` fields, e.g. ``drop_path_rate=0.2``) go to
    :func:`focalnet.create_backbone` (default ``focal_windows=(9, 9, 9, 9)``, ``drop_path_rate=0.1``;
    e.g. ``embed_dim=32, depths=(1, 1, 1, 1)`` for tiny tests). Other ``overrides`` are torchvision
    ``MaskRCNN`` arguments (``min_size``, ``box_score_thresh``, ``rpn_post_nms_top_n_test``, ...).
    ``detector="atss"`` builds :func:`focalnet.detection.atss.build_atss` (R-CNN-only options ignored).
    ``detector="dino"`` builds FocalNet-DINO (:func:`focalnet.detection.dino.dino`): ``num_classes`` is
    then the number of class logits (labels ``0..num_classes-1``; with this package's datasets, whose
    labels are ``1..K``, ``K + 1``), ``overrides`` are :class:`~focalnet.detection.dino.DINOConfig` fields.
    """
    common: dict[str, Any] = dict(
        backbone_checkpoint=backbone_checkpoint,
        frozen_stages=frozen_stages,
        fpn_channels=fpn_channels,
        train_resize=train_resize,
        grad_checkpointing=grad_checkpointing,
        backbone_overrides=backbone_overrides,
    )
    rcnn_heads: dict[str, Any] = dict(
        representation_size=representation_size, mask_head_channels=mask_head_channels, mmdet_compat=mmdet_compat
    )
    if detector == "atss":
        from .atss import build_atss

        return build_atss(backbone, num_classes, **common, **overrides)
    if detector == "cascade_mask_rcnn":
        from .cascade import build_cascade_mask_rcnn

        return build_cascade_mask_rcnn(backbone, num_classes, **common, **rcnn_heads, **overrides)
    if detector == "sparse_rcnn":
        from .sparse_rcnn import build_sparse_rcnn

        return build_sparse_rcnn(backbone, num_classes, **common, **overrides)
    if detector == "dino":
        from .dino import dino

        return dino(
            backbone,
            num_classes=num_classes,
            backbone_checkpoint=backbone_checkpoint,
            frozen_stages=frozen_stages,
            grad_checkpointing=grad_checkpointing,
            backbone_overrides=backbone_overrides,
            **overrides,
        )
    if detector not in ("mask_rcnn", "faster_rcnn"):
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}; got {detector!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    from ..models.focalnet import FocalNetConfig

    backbone_fields = set(FocalNetConfig.__dataclass_fields__) - {"num_classes"}
    direct = {k: overrides.pop(k) for k in list(overrides) if k in backbone_fields}
    bb_over = {**(backbone_overrides or {}), **direct}
    body = _build_body(backbone, backbone_checkpoint, frozen_stages, bb_over)
    if grad_checkpointing:
        body.set_grad_checkpointing(True)
    neck = FocalNetFPN(body, fpn_channels)
    settings = {**DETECTION_DEFAULTS, **overrides}
    unknown = set(settings) - set(DETECTION_DEFAULTS) - {"image_mean", "image_std", "rpn_score_thresh"}
    if unknown:
        raise TypeError(f"unknown detector option(s) {sorted(unknown)}; valid: {sorted(DETECTION_DEFAULTS)}")
    anchor_cls = UnroundedAnchorGenerator if mmdet_compat else AnchorGenerator
    anchors = anchor_cls(ANCHOR_SIZES, ASPECT_RATIOS)
    sampling = 0 if mmdet_compat else 2
    box_pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling, aligned=mmdet_compat)
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
    box_predictor = FastRCNNPredictor(representation_size, num_classes)
    kwargs: dict[str, Any] = dict(
        rpn_anchor_generator=anchors, box_roi_pool=box_pool, box_head=box_head, box_predictor=box_predictor, **settings
    )
    if detector == "mask_rcnn":
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        kwargs["mask_roi_pool"] = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 14, sampling, aligned=mmdet_compat)
        kwargs["mask_head"] = MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes)
        model: MaskRCNN | FasterRCNN = MaskRCNN(neck, **kwargs)
    else:
        model = FasterRCNN(neck, **kwargs)
    t = model.transform
    model.transform = DetectionTransform(
        t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=32, train_resize=train_resize
    )
    model.detector_kind = detector
    return model


def mask_rcnn(
    backbone: str = "focalnet_tiny_lrf",
    num_classes: int = 81,
    backbone_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> MaskRCNN:
    """FocalNet Mask R-CNN (see :func:`build_detector` for the options); ``num_classes`` includes background."""
    return build_detector("mask_rcnn", backbone, num_classes, backbone_checkpoint=backbone_checkpoint, **overrides)


def faster_rcnn(
    backbone: str = "focalnet_tiny_lrf",
    num_classes: int = 81,
    backbone_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> FasterRCNN:
    """FocalNet Faster R-CNN (see :func:`build_detector`); ``num_classes`` includes background."""
    return build_detector("faster_rcnn", backbone, num_classes, backbone_checkpoint=backbone_checkpoint, **overrides)


def detector_kwargs_from_config(model_cfg: Any, num_classes: int) -> dict[str, Any]:
    """Arguments of :func:`build_detector` from a :class:`~focalnet.detection.config.ModelConfig`: the
    backbone and test-size fields every detector takes, plus the detector's own (DINO: ``model.dino``;
    Sparse R-CNN: no R-CNN head or NMS fields; the others: FPN, R-CNN heads, NMS)."""
    overrides = dict(model_cfg.backbone_overrides)
    overrides.setdefault("focal_windows", tuple(model_cfg.focal_windows))
    overrides.setdefault("drop_path_rate", model_cfg.drop_path_rate)
    common: dict[str, Any] = dict(
        detector=model_cfg.detector,
        backbone=model_cfg.backbone,
        num_classes=num_classes,
        backbone_checkpoint=model_cfg.backbone_checkpoint or None,
        frozen_stages=model_cfg.frozen_stages,
        grad_checkpointing=model_cfg.grad_checkpointing,
        backbone_overrides=overrides,
        min_size=model_cfg.min_size,
        max_size=model_cfg.max_size,
    )
    if model_cfg.detector == "dino":
        return {**common, **dict(model_cfg.dino)}
    if model_cfg.detector == "sparse_rcnn":  # no R-CNN heads, no NMS (SPARSE_RCNN_DEFAULTS in detector_overrides)
        return dict(
            **common,
            fpn_channels=model_cfg.fpn_channels,
            score_thresh=model_cfg.score_thresh,
            detections_per_img=model_cfg.detections_per_img,
            **dict(model_cfg.detector_overrides),
        )
    return dict(
        **common,
        fpn_channels=model_cfg.fpn_channels,
        representation_size=model_cfg.representation_size,
        mask_head_channels=model_cfg.mask_head_channels,
        mmdet_compat=model_cfg.mmdet_compat,
        box_score_thresh=model_cfg.score_thresh,
        box_detections_per_img=model_cfg.detections_per_img,
        # None: the detector's own NMS IoU (0.5 for the R-CNNs, 0.6 for ATSS)
        **({"box_nms_thresh": model_cfg.nms_thresh} if model_cfg.nms_thresh is not None else {}),
        **dict(model_cfg.detector_overrides),
    )
