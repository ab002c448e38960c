"""Mask2Former (masked-attention mask transformer) on FocalNet: universal segmentation (panoptic, semantic,
instance). The model and its configuration (:mod:`.model`), the pixel decoder and the transformer decoder
in detectron2's parameter names, and the official checkpoint layout (:mod:`.official`).

>>> from focalnet.segmentation.mask2former import mask2former
>>> model = mask2former("focalnet_tiny_lrf", num_classes=3, embed_dim=16, depths=(1, 1, 1, 1),
...                     head={"hidden_dim": 32, "conv_dim": 32, "mask_dim": 32, "dim_feedforward": 64,
...                           "enc_dim_feedforward": 64, "enc_layers": 1, "dec_layers": 3, "num_queries": 5})
>>> import torch
>>> logits, masks = model.eval().forward_logits(torch.zeros(1, 3, 64, 48))
>>> tuple(logits.shape), tuple(masks.shape)
((1, 5, 4), (1, 5, 16, 12))
"""

from typing import TYPE_CHECKING

from ...lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy)
    from .criterion import Mask2FormerCriterion, Mask2FormerMatcher, point_sample, sample_points_by_uncertainty
    from .model import (
        MASK2FORMER_BACKBONE_DEFAULTS,
        Mask2Former,
        Mask2FormerConfig,
        Mask2FormerHead,
        default_num_queries,
        mask2former,
        mask2former_from_meta,
    )
    from .official import is_official_mask2former, official_to_ours, ours_to_official
    from .pixel_decoder import MSDeformAttnPixelDecoder
    from .postprocess import (
        instance_inference,
        panoptic_inference,
        panoptic_maps,
        resize_mask_logits,
        semantic_inference,
    )
    from .transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = [
    "MASK2FORMER_BACKBONE_DEFAULTS",
    "MSDeformAttnPixelDecoder",
    "Mask2Former",
    "Mask2FormerConfig",
    "Mask2FormerCriterion",
    "Mask2FormerHead",
    "Mask2FormerMatcher",
    "MultiScaleMaskedTransformerDecoder",
    "default_num_queries",
    "instance_inference",
    "is_official_mask2former",
    "mask2former",
    "mask2former_from_meta",
    "official_to_ours",
    "ours_to_official",
    "panoptic_inference",
    "panoptic_maps",
    "point_sample",
    "resize_mask_logits",
    "sample_points_by_uncertainty",
    "semantic_inference",
]

lazy_exports(__name__)
