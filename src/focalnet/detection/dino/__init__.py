"""FocalNet-DINO (DETR with improved deNoising anchor boxes) on FocalNet backbones.

>>> from focalnet.detection.dino import dino
>>> model = dino("focalnet_large_fl4", num_feature_levels=5).eval()   # the released COCO configuration

See :mod:`.model` (the detector), :mod:`.transformer`, :mod:`.ms_deform_attn` (pure-PyTorch multi-scale
deformable attention), :mod:`.convert` (original checkpoints), :mod:`.denoising` (contrastive denoising
queries) and :mod:`.criterion` (the training loss).
"""

from .criterion import DINOCriterion
from .denoising import dn_post_process, prepare_for_cdn
from .model import DINO, DINOConfig, PositionEmbeddingSine, build_dino, dino
from .ms_deform_attn import MSDeformAttn, ms_deform_attn

__all__ = [
    "DINO",
    "DINOConfig",
    "DINOCriterion",
    "MSDeformAttn",
    "PositionEmbeddingSine",
    "build_dino",
    "dino",
    "dn_post_process",
    "ms_deform_attn",
    "prepare_for_cdn",
]
