"""FocalNet Mask R-CNN / Faster R-CNN: torchvision's detectors with the original FocalNet settings, and
their mmdetection 2.x checkpoints.

The detectors are plain :class:`torchvision.models.detection.MaskRCNN` / ``FasterRCNN`` modules:

* backbone: :class:`~focalnet.detection.necks.FocalNetFPN` = a FocalNet (strides 4-32) + torchvision
  ``FeaturePyramidNetwork`` (256 channels) + ``LastLevelMaxPool`` (stride 64);
* RPN: anchors 32-512 (one size per level), ratios 0.5/1/2, 2000/1000 proposals before NMS per level,
  1000 after (mmdet's ``max_per_img``), NMS 0.7;
* RoI heads: RoIAlign 7x7 (boxes) and 14x14 (masks), box coder weights (10, 10, 5, 5), 512 RoIs per
  image at 25 % positives, test score threshold 0.05, NMS 0.5, 100 detections;
* transform: resize to 800 (short) / 1333 (long) at test time, pad to a multiple of 32. During training
  the data pipeline (:mod:`focalnet.detection.transforms`) does the multi-scale resizing, so the model's
  transform only normalises and pads (``train_resize=False``).

``mmdet_compat=True`` switches to mmdetection 2.x behaviour where that is cheap (see
:mod:`~focalnet.detection.rcnn_parts`).

mmdetection -> torchvision keys (anchors: both libraries order the 3 anchors of a location by aspect ratio
and lay the RPN channels out as ``anchor * 4 + coordinate``, so the RPN weights need no permutation):

==========================================  ==================================================
``backbone.*``                              ``backbone.body.*`` (same FocalNetBackbone keys)
``neck.lateral_convs.{i}.conv.*``           ``backbone.fpn.inner_blocks.{i}.0.*``
``neck.fpn_convs.{i}.conv.*``               ``backbone.fpn.layer_blocks.{i}.0.*``
``rpn_head.rpn_{conv,cls,reg}.*``           ``rpn.head.{conv.0.0,cls_logits,bbox_pred}.*``
``roi_head.bbox_head.shared_fcs.{0,1}.*``   ``roi_heads.box_head.fc6/fc7.*``
``roi_head.bbox_head.fc_cls.*`` (K+1, bg last)  ``roi_heads.box_predictor.cls_score.*`` (bg first)
``roi_head.bbox_head.fc_reg.*`` (4K)        ``roi_heads.box_predictor.bbox_pred.*`` (4(K+1), zero bg rows)
``roi_head.mask_head.convs.{i}.conv.*``     ``roi_heads.mask_head.{i}.0.*``
``roi_head.mask_head.upsample.*``           ``roi_heads.mask_predictor.conv5_mask.*``
``roi_head.mask_head.conv_logits.*`` (K)    ``roi_heads.mask_predictor.mask_fcn_logits.*`` (zero bg row)
==========================================  ==================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from ..weights.convert import rename_key
from . import mmdet
from .backbone import build_backbone, check_num_classes, pop_backbone_options
from .image_transform import detection_transform
from .necks import FocalNetFPN
from .rcnn_parts import RCNN_CONFIG_FIELDS, RCNN_HEAD_DEFAULTS, anchor_generator, multiscale_roi_align
from .spec import DetectorSpec, Layout, LayoutRead, resolve_options

__all__ = [
    "BACKBONE_DEFAULTS",
    "MASK_RCNN",
    "FASTER_RCNN",
    "MMDET_RCNN",
    "mask_rcnn",
    "faster_rcnn",
    "build_rcnn",
    "convert_mmdet_state_dict",
    "is_mmdet_detector",
]

# the released recipe's backbone (mask_rcnn_focalnet_tiny_lrf_1x): focal windows 9, drop path 0.1
BACKBONE_DEFAULTS: dict[str, Any] = {
    "backbone": "focalnet_tiny_lrf",
    "focal_windows": (9, 9, 9, 9),
    "drop_path_rate": 0.1,
}


def build_rcnn(
    masks: bool,
    backbone: str | None = None,
    num_classes: int = 81,
    *,
    train_resize: bool = False,
    **options: Any,
) -> MaskRCNN | FasterRCNN:
    """A FocalNet Mask R-CNN (``masks=True``) or Faster R-CNN; ``num_classes`` includes the background.

    ``options``: backbone keywords (``backbone_checkpoint``, ``frozen_stages``, ``grad_checkpointing``,
    ``backbone_overrides``, any :class:`~focalnet.FocalNetConfig` field such as ``drop_path_rate=0.2``;
    defaults :data:`BACKBONE_DEFAULTS`) and the head options of :data:`RCNN_HEAD_DEFAULTS` (torchvision
    ``MaskRCNN`` arguments such as ``min_size``, ``box_score_thresh``, ``rpn_post_nms_top_n_test``)."""
    check_num_classes(num_classes)
    body = build_backbone(backbone, BACKBONE_DEFAULTS, **pop_backbone_options(options))
    s = resolve_options("Mask R-CNN" if masks else "Faster R-CNN", RCNN_HEAD_DEFAULTS, options)
    fpn, rep, mask_ch, compat = (
        s.pop(k) for k in ("fpn_channels", "representation_size", "mask_head_channels", "mmdet_compat")
    )
    image_mean, image_std = s.pop("image_mean"), s.pop("image_std")
    kwargs: dict[str, Any] = dict(
        rpn_anchor_generator=anchor_generator(compat),
        box_roi_pool=multiscale_roi_align(7, compat),
        box_head=TwoMLPHead(fpn * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes),
        **s,
    )
    neck = FocalNetFPN(body, fpn)
    if masks:
        kwargs["mask_roi_pool"] = multiscale_roi_align(14, compat)
        kwargs["mask_head"] = MaskRCNNHeads(fpn, [mask_ch] * 4, 1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(mask_ch, mask_ch, num_classes)
        model: MaskRCNN | FasterRCNN = MaskRCNN(neck, **kwargs)
    else:
        model = FasterRCNN(neck, **kwargs)
    model.transform = detection_transform(s["min_size"], s["max_size"], image_mean, image_std, train_resize)
    return model


def mask_rcnn(
    backbone: str | None = None,
    num_classes: int = 81,
    backbone_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> MaskRCNN:
    """FocalNet Mask R-CNN (see :func:`build_rcnn` for the options); ``num_classes`` includes background."""
    return build_rcnn(True, backbone, num_classes, backbone_checkpoint=backbone_checkpoint, **overrides)


def faster_rcnn(
    backbone: str | None = None,
    num_classes: int = 81,
    backbone_checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> FasterRCNN:
    """FocalNet Faster R-CNN (see :func:`build_rcnn`); ``num_classes`` includes background."""
    return build_rcnn(False, backbone, num_classes, backbone_checkpoint=backbone_checkpoint, **overrides)


# ---------------------------------------------------------------------------------------------- mmdet files
_RULES = [
    *mmdet.BACKBONE_RULES,
    *mmdet.FPN_RULES,
    *mmdet.RPN_RULES,
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)$", r"roi_heads.box_head.fc6.\1"),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)$", r"roi_heads.box_head.fc7.\1"),
    (r"^roi_head\.bbox_head\.fc_cls\.(weight|bias)$", r"roi_heads.box_predictor.cls_score.\1"),
    (r"^roi_head\.bbox_head\.fc_reg\.(weight|bias)$", r"roi_heads.box_predictor.bbox_pred.\1"),
    (r"^roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)$", r"roi_heads.mask_head.\1.0.\2"),
    (r"^roi_head\.mask_head\.upsample\.(weight|bias)$", r"roi_heads.mask_predictor.conv5_mask.\1"),
    (r"^roi_head\.mask_head\.conv_logits\.(weight|bias)$", r"roi_heads.mask_predictor.mask_fcn_logits.\1"),
]


def is_mmdet_detector(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict is an mmdetection two-stage detector (``rpn_head.``/``roi_head.`` keys)."""
    return mmdet.has_key(sd, r"rpn_head\.") and mmdet.has_key(sd, r"roi_head\.")


def _from_mmdet(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The mmdetection Faster/Mask R-CNN tensors in torchvision's names and layout; unknown keys kept."""
    num_classes = int(sd["roi_head.bbox_head.fc_cls.weight"].shape[0]) - 1
    out = mmdet.rename_keeping_unknown(sd, _RULES)
    for k, v in out.items():
        if ".box_predictor.cls_score." in k:  # mmdet: K classes then background; torchvision: background first
            out[k] = torch.cat([v[-1:], v[:-1]])
        elif ".box_predictor.bbox_pred." in k:
            if v.shape[0] == 4:  # class-agnostic regression: the same deltas for every class
                v = v.repeat(num_classes, *([1] * (v.dim() - 1)))
            elif v.shape[0] != 4 * num_classes:
                raise ValueError(f"{k} has {v.shape[0]} rows; expected 4 x {num_classes} classes or 4")
            out[k] = torch.cat([torch.zeros_like(v[:4]), v])
        elif ".mask_predictor.mask_fcn_logits." in k:
            out[k] = torch.cat([torch.zeros_like(v[:1]), v])
    return out


def _to_mmdet(key: str, v: Tensor) -> Tensor:
    if ".box_predictor.cls_score." in key:
        return torch.cat([v[1:], v[:1]])
    if ".box_predictor.bbox_pred." in key:
        return v[4:]
    if ".mask_predictor.mask_fcn_logits." in key:
        return v[1:]
    return v


def convert_mmdet_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an mmdetection 2.x Faster/Mask R-CNN state dict onto :func:`mask_rcnn` / :func:`faster_rcnn`
    (see the module docstring for the table). Raises ``ValueError`` naming the keys it does not know."""
    if not is_mmdet_detector(sd):
        raise ValueError("not an mmdetection two-stage detector state dict (no rpn_head./roi_head. keys)")
    unknown = [k for k in sd if rename_key(k, _RULES) is None]
    if unknown:
        raise ValueError(f"unknown mmdetection keys (not a Faster/Mask R-CNN with FPN?): {unknown[:10]}")
    return _from_mmdet(sd)


def _recognise(obj: Any) -> bool:
    return (
        mmdet.has_key(obj, r"rpn_head\.rpn_")
        and mmdet.has_key(obj, r"roi_head\.")
        and not mmdet.has_key(obj, r"roi_head\.bbox_head\.\d+\.")
    )


def _read(obj: Any, source: str) -> LayoutRead:
    sd = mmdet.state_dict_of(obj)
    masks = any(k.startswith("roi_head.mask_head.") for k in sd)
    fields = {"detector": "mask_rcnn" if masks else "faster_rcnn", **mmdet.backbone_fields(sd), "mmdet_compat": True}
    fields["representation_size"] = int(sd["roi_head.bbox_head.shared_fcs.0.weight"].shape[0])
    if masks:
        fields["mask_head_channels"] = int(sd["roi_head.mask_head.convs.0.conv.weight"].shape[0])
    num_classes = int(sd["roi_head.bbox_head.fc_cls.weight"].shape[0])
    return LayoutRead(fields, _from_mmdet(sd), mmdet.mmdet_meta(num_classes), mmdet.reverse_namer(_RULES))


MMDET_RCNN = Layout(
    name="mmdet-rcnn",
    describe="mmdetection 2.x Mask / Faster R-CNN (state_dict with rpn_head.rpn_* and roi_head.bbox_head.fc_* keys)",
    recognise=_recognise,
    weights=mmdet.state_dict_of,
    read=_read,
    write=lambda sd: mmdet.mmdet_file(sd, _RULES, _to_mmdet),
)

MASK_RCNN = DetectorSpec(
    name="mask_rcnn",
    title="Mask R-CNN",
    summary="two-stage detector with an instance-mask branch (torchvision MaskRCNN heads)",
    build=mask_rcnn,
    backbone_defaults=BACKBONE_DEFAULTS,
    head_defaults=RCNN_HEAD_DEFAULTS,
    config_fields=RCNN_CONFIG_FIELDS,
    masks=True,
    layouts=(MMDET_RCNN,),
    recipe="mask_rcnn_focalnet_tiny_lrf_1x",
)
FASTER_RCNN = DetectorSpec(
    name="faster_rcnn",
    title="Faster R-CNN",
    summary="two-stage box detector (Mask R-CNN without the mask branch)",
    build=faster_rcnn,
    backbone_defaults=BACKBONE_DEFAULTS,
    head_defaults=RCNN_HEAD_DEFAULTS,
    config_fields=RCNN_CONFIG_FIELDS,
    layouts=(MMDET_RCNN,),
    recipe="faster_rcnn_focalnet_tiny_lrf_1x",
)
