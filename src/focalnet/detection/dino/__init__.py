"""FocalNet-DINO (DETR with improved deNoising anchor boxes) on FocalNet backbones.

>>> from focalnet.detection.dino import dino
>>> model = dino("focalnet_large_fl4", num_feature_levels=5).eval()   # the released COCO configuration

See :mod:`.model` (the detector), :mod:`.transformer`, :mod:`.ms_deform_attn` (pure-PyTorch multi-scale
deformable attention) and :mod:`.convert` (original checkpoints).
"""

from .model import DINO, DINOConfig, PositionEmbeddingSine, build_dino, dino
from .ms_deform_attn import MSDeformAttn, ms_deform_attn

__all__ = ["DINO", "DINOConfig", "MSDeformAttn", "PositionEmbeddingSine", "build_dino", "dino", "ms_deform_attn"]
