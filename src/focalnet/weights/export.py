"""``config.json`` of model folders that transformers and timm load (``focalnet convert --to ...``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models.focalnet import FocalNetConfig

__all__ = ["timm_config", "transformers_config"]


def transformers_config(cfg: FocalNetConfig, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A ``FocalNetConfig`` of transformers (``model_type: focalnet``) describing ``cfg``."""
    n = len(cfg.depths)
    names = list(class_names) if class_names and len(class_names) == cfg.num_classes else None
    id2label = {str(i): names[i] if names else f"LABEL_{i}" for i in range(cfg.num_classes)}
    return {
        "architectures": ["FocalNetForImageClassification"],
        "model_type": "focalnet",
        "embed_dim": cfg.embed_dim,
        "depths": list(cfg.depths),
        "focal_levels": list(cfg.focal_levels),
        "focal_windows": list(cfg.focal_windows),
        "hidden_sizes": [cfg.embed_dim * 2 ** (i + 1) for i in range(n - 1)] + [cfg.embed_dim * 2 ** (n - 1)],
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "mlp_ratio": cfg.mlp_ratio,
        "use_conv_embed": cfg.use_conv_embed,
        "use_layerscale": cfg.use_layerscale,
        "layerscale_value": cfg.layerscale_value,
        "use_post_layernorm": cfg.use_postln,
        "use_post_layernorm_in_modulation": cfg.use_postln_in_modulation,
        "normalize_modulator": cfg.normalize_modulator,
        "drop_path_rate": cfg.drop_path_rate,
        "hidden_dropout_prob": cfg.drop_rate,
        "id2label": id2label,
        "label2id": {v: int(k) for k, v in id2label.items()},
    }


def timm_config(cfg: FocalNetConfig, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A timm hub ``config.json`` (architecture + ``model_args``) for ``timm.create_model("local-dir:...")``."""
    from ..models import VARIANTS

    if cfg.patch_size != 4 or len(cfg.depths) != 4:
        raise ValueError(
            f"timm's FocalNet has 4 stages and a stride-4 stem; this model has {len(cfg.depths)} stage(s) and "
            f"patch {cfg.patch_size} (use --to transformers or original)"
        )
    ours = {
        "embed_dim": cfg.embed_dim,
        "depths": list(cfg.depths),
        "focal_levels": list(cfg.focal_levels),
        "focal_windows": list(cfg.focal_windows),
        "mlp_ratio": cfg.mlp_ratio,
        "use_overlap_down": cfg.use_conv_embed,
        "use_post_norm": cfg.use_postln,
        "use_post_norm_in_modulation": cfg.use_postln_in_modulation,
        "normalize_modulator": cfg.normalize_modulator,
        "layerscale_value": cfg.layerscale_value if cfg.use_layerscale else None,
        "in_chans": cfg.in_chans,
    }
    # timm's entry points fix the widths and depths (and some more) of each released variant: take the
    # variant of the same widths and depths and pass only what differs from it
    best: tuple[int, str, dict[str, Any]] | None = None
    for name, v in VARIANTS.items():
        c = v.cfg
        if c.embed_dim != cfg.embed_dim or tuple(c.depths) != tuple(cfg.depths) or c.patch_size != 4:
            continue
        theirs = {
            "focal_levels": list(c.focal_levels),
            "focal_windows": list(c.focal_windows),
            "mlp_ratio": c.mlp_ratio,
            "use_overlap_down": c.use_conv_embed,
            "use_post_norm": c.use_postln,
            "use_post_norm_in_modulation": c.use_postln_in_modulation,
            "normalize_modulator": c.normalize_modulator,
            "layerscale_value": c.layerscale_value if c.use_layerscale else None,
            "in_chans": c.in_chans,
        }
        diff = {k: val for k, val in ours.items() if k in theirs and theirs[k] != val}
        if best is None or len(diff) < best[0]:
            best = (len(diff), name, diff)
    if best is None:
        raise ValueError(
            f"timm has no FocalNet of embed_dim {cfg.embed_dim} and depths {tuple(cfg.depths)} "
            "(its variants are the released ones); use --to transformers or original"
        )
    _, arch, args = best
    config: dict[str, Any] = {
        "architecture": arch,
        "num_classes": cfg.num_classes,
        "num_features": cfg.embed_dim * 2 ** (len(cfg.depths) - 1),
        "global_pool": "avg",
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [cfg.in_chans, 224, 224],
            "interpolation": "bicubic",
            "crop_pct": 0.875,
            "mean": [0.485, 0.456, 0.406][: cfg.in_chans] if cfg.in_chans <= 3 else [0.5] * cfg.in_chans,
            "std": [0.229, 0.224, 0.225][: cfg.in_chans] if cfg.in_chans <= 3 else [0.5] * cfg.in_chans,
            "num_classes": cfg.num_classes,
        },
    }
    if class_names and len(class_names) == cfg.num_classes:
        config["label_names"] = list(class_names)
    return config
