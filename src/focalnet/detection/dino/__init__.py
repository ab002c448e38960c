"""FocalNet-DINO (DETR with improved deNoising anchor boxes) on FocalNet backbones.

>>> from focalnet.detection.dino import dino
>>> model = dino("focalnet_large_fl4", num_feature_levels=5).eval()   # the released COCO configuration

See :mod:`.model` (the detector), :mod:`.transformer` (on :mod:`focalnet.ops` pure-PyTorch multi-scale
deformable attention), :mod:`.convert` (original checkpoints), :mod:`.denoising` (contrastive denoising
queries) and :mod:`.criterion` (the training loss). :data:`DINO_SPEC` is what the package knows of it.
"""

from ...ops.ms_deform_attn import MSDeformAttn, ms_deform_attn
from ..spec import DetectorSpec
from .convert import FOCALNET_DINO_V1, ORIGINAL_DINO
from .criterion import DINOCriterion
from .denoising import dn_post_process, prepare_for_cdn
from .model import BACKBONE_DEFAULTS, DINO, DINO_DEFAULTS, DINOConfig, PositionEmbeddingSine, build_dino, dino

__all__ = [
    "DINO",
    "DINOConfig",
    "DINOCriterion",
    "DINO_SPEC",
    "MSDeformAttn",
    "PositionEmbeddingSine",
    "build_dino",
    "dino",
    "dn_post_process",
    "ms_deform_attn",
    "prepare_for_cdn",
]

DINO_SPEC = DetectorSpec(
    name="dino",
    title="FocalNet-DINO",
    summary="DETR-style set prediction: deformable transformer, two-stage query selection, denoising queries",
    build=dino,
    backbone_defaults=BACKBONE_DEFAULTS,
    head_defaults=DINO_DEFAULTS,
    config_fields={"min_size": "min_size", "max_size": "max_size"},
    layouts=(ORIGINAL_DINO, FOCALNET_DINO_V1),
    recipe="dino_focalnet_large_fl4_5scale",
    overrides_field="dino",
)
