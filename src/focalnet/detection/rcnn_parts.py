"""Parts the two-stage (R-CNN) detectors share: anchors, RoIAlign, the released RPN / box-head settings.

``mmdet_compat=True`` switches to mmdetection 2.x behaviour where that is cheap: RoIAlign with
``aligned=True`` and adaptive sampling (``sampling_ratio=0``), and anchors without rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = [
    "ANCHOR_SIZES",
    "ASPECT_RATIOS",
    "DETECTION_DEFAULTS",
    "FPN_LEVELS",
    "RCNN_CONFIG_FIELDS",
    "RCNN_HEAD_DEFAULTS",
    "AlignedMultiScaleRoIAlign",
    "UnroundedAnchorGenerator",
    "anchor_generator",
    "multiscale_roi_align",
]

ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5
FPN_LEVELS = ["0", "1", "2", "3"]  # the FPN maps RoIs are pooled from (strides 4-32)

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

# every head option of the R-CNN builders: widths, mmdet_compat, torchvision MaskRCNN arguments
RCNN_HEAD_DEFAULTS: dict[str, Any] = {
    "fpn_channels": 256,
    "representation_size": 1024,
    "mask_head_channels": 256,
    "mmdet_compat": False,
    **DETECTION_DEFAULTS,
    "rpn_score_thresh": 0.0,
    "image_mean": None,  # None: ImageNet's
    "image_std": None,
}
# ModelConfig field -> builder keyword, for the R-CNNs (Cascade included)
RCNN_CONFIG_FIELDS = {
    "fpn_channels": "fpn_channels",
    "representation_size": "representation_size",
    "mask_head_channels": "mask_head_channels",
    "mmdet_compat": "mmdet_compat",
    "min_size": "min_size",
    "max_size": "max_size",
    "score_thresh": "box_score_thresh",
    "nms_thresh": "box_nms_thresh",
    "detections_per_img": "box_detections_per_img",
}


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
        rois = _convert_to_roi_format(boxes)  # rois.shape[0], not len(rois): a traced graph keeps it dynamic
        levels = self.map_levels(boxes)
        out = torch.zeros(
            (rois.shape[0], feats[0].shape[1], *self.output_size), dtype=feats[0].dtype, device=feats[0].device
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
            # scatter rather than out[idx] = res: the same in eager mode, and a traced (ONNX) graph keeps the
            # number of RoIs per level dynamic
            out = out.scatter(0, idx.view(-1, 1, 1, 1).expand_as(res), res.to(out.dtype))
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


def anchor_generator(mmdet_compat: bool) -> AnchorGenerator:
    """The RPN anchors of the released configs: sizes 32-512 (one per level), ratios 0.5/1/2."""
    return (UnroundedAnchorGenerator if mmdet_compat else AnchorGenerator)(ANCHOR_SIZES, ASPECT_RATIOS)


def multiscale_roi_align(output_size: int, mmdet_compat: bool) -> AlignedMultiScaleRoIAlign:
    """RoIAlign over P2-P5: mmdetection's (aligned, adaptive sampling) or torchvision's (2 samples)."""
    return AlignedMultiScaleRoIAlign(FPN_LEVELS, output_size, 0 if mmdet_compat else 2, aligned=mmdet_compat)
