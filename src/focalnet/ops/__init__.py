"""Operators that more than one task needs, below the task packages (as ``torchvision.ops`` is for
torchvision's models): multi-scale deformable attention and the encoder layer built on it (DINO's transformer, Mask2Former's pixel decoder)
and Hungarian matching of set predictions (Sparse R-CNN, DINO, Mask2Former).

>>> from focalnet.ops import MSDeformAttn, HungarianMatcher, linear_assignment
"""

from .deformable_encoder import DeformableEncoderLayer
from .matching import HungarianMatcher, focal_cost, linear_assignment
from .ms_deform_attn import MSDeformAttn, ms_deform_attn

__all__ = [
    "DeformableEncoderLayer",
    "HungarianMatcher",
    "MSDeformAttn",
    "focal_cost",
    "linear_assignment",
    "ms_deform_attn",
]
