"""FocalNet-DINO: contrastive denoising queries and the set criterion (the model lands separately)."""

from .criterion import DINOCriterion
from .denoising import dn_post_process, prepare_for_cdn

__all__ = ["DINOCriterion", "dn_post_process", "prepare_for_cdn"]
