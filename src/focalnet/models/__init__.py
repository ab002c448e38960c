"""FocalNet modules, the variant registry and FLOP counting."""

from .focalnet import (
    FocalModulation,
    FocalNet,
    FocalNetBackbone,
    FocalNetBlock,
    FocalNetConfig,
    FocalNetStage,
    PatchEmbed,
    PretrainedCfg,
    count_flops,
    fuse_blocks,
    num_params,
)
from .registry import VARIANTS, Variant, get_variant, imagenet_class_names, list_models, match_variant

__all__ = [
    "VARIANTS",
    "FocalModulation",
    "FocalNet",
    "FocalNetBackbone",
    "FocalNetBlock",
    "FocalNetConfig",
    "FocalNetStage",
    "PatchEmbed",
    "PretrainedCfg",
    "Variant",
    "count_flops",
    "fuse_blocks",
    "get_variant",
    "imagenet_class_names",
    "list_models",
    "match_variant",
    "num_params",
]
