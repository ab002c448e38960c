"""FocalNet-DINO checkpoint layouts: original files (recognised, configuration read off the keys) and
the ``focalnet-dino`` format of earlier releases. Both are read by
:func:`~focalnet.detection.load_detector` through :data:`ORIGINAL_DINO` / :data:`FOCALNET_DINO_V1`;
``focalnet detection convert`` writes this package's detection format (the one training writes), and
``--to original`` writes an original file.

An original file is ``{"model": state_dict}`` (training checkpoints may add ``"ema_model"``, optimiser
state, ``args``...) with the keys of the original module tree: ``backbone.0.*`` (FocalNet),
``input_proj.*``, ``transformer.*``, ``label_enc.weight``, and the shared heads under 12 names each.
The older format is ``{"format": "focalnet-dino", "dino_config": {...}, "model": state_dict,
"class_names", "category_ids", "num_classes"}`` with the very same state dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..classes import default_class_names
from ..spec import Layout, LayoutRead
from .model import DINOConfig

__all__ = [
    "FORMAT",
    "FOCALNET_DINO_V1",
    "ORIGINAL_DINO",
    "dino_config_from_state_dict",
    "dino_fields",
    "dino_state_dict",
    "is_dino_checkpoint",
    "is_dino_state_dict",
]

FORMAT = "focalnet-dino"


def is_dino_state_dict(sd: Any) -> bool:
    """Whether ``sd`` has the original FocalNet-DINO layout."""
    return (
        isinstance(sd, Mapping)
        and "transformer.tgt_embed.weight" in sd
        and "label_enc.weight" in sd
        and any(isinstance(k, str) and k.startswith("backbone.0.") for k in sd)
    )


def is_dino_checkpoint(obj: Any) -> bool:
    """Whether a loaded file is an original FocalNet-DINO one (``model``/``ema_model``/bare state dict)."""
    if not isinstance(obj, Mapping) or "format" in obj or "detection_config" in obj:
        return False
    return _find_state_dict(obj) is not None


def _find_state_dict(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in ("model", "ema_model"):
        sd = obj.get(key)
        if isinstance(sd, Mapping) and is_dino_state_dict(_strip_module(sd)):
            return _strip_module(sd)
    sd = _strip_module(obj)
    return sd if is_dino_state_dict(sd) else None


def dino_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The DINO state dict inside a loaded original file (``model``, else ``ema_model``, else bare; a
    ``module.`` prefix is removed). Raises ``ValueError`` when there is none."""
    sd = _find_state_dict(obj) if isinstance(obj, Mapping) else None
    if sd is None:
        raise ValueError(
            "not a FocalNet-DINO checkpoint (no 'model'/'ema_model' state dict with backbone.0.*, "
            "transformer.tgt_embed.weight and label_enc.weight)"
        )
    return dict(sd)


def _strip_module(sd: Mapping[str, Any]) -> Mapping[str, Any]:
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def dino_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> DINOConfig:
    """The :class:`DINOConfig` of an original-layout state dict.

    Read off the keys: backbone width, depths, focal levels and kernels, conv stem, layer scale, output
    stages (``norm{i}``), feature levels, classes, queries, hidden size, layers, FFN size, sampling
    points (with 8 heads) and the denoising label book. What keys cannot show follows the FocalNet-DINO
    code: its large backbones are post-norm, and the 4-level ones of width 192/256 use
    ``normalize_modulator`` (the huge ones a LayerNorm in the modulation instead).
    """
    from ...models.registry import match_variant
    from ...weights.infer import infer_structure

    body = {k[len("backbone.0.") :]: v for k, v in sd.items() if k.startswith("backbone.0.")}
    found = infer_structure(body)
    out_indices = tuple(sorted(int(m.group(1)) for k in body if (m := re.match(r"norm(\d+)\.weight$", k))))
    big = bool(found.get("use_conv_embed")) and bool(found.get("use_layerscale"))
    levels = tuple(found["focal_levels"])
    overrides: dict[str, Any] = dict(found)
    if big:
        overrides["use_postln"] = True
        overrides["normalize_modulator"] = max(levels) == 4 and not found.get("use_postln_in_modulation", False)
    from ...models.focalnet import FocalNetConfig

    cfg = FocalNetConfig(**found)
    variant = match_variant(cfg) or match_variant(cfg, ignore=("focal_windows",))
    name = variant.name if variant is not None else "focalnet_tiny_srf"
    overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items() if k != "num_classes"}

    num_levels = _count(sd, r"input_proj\.(\d+)\.")
    hidden = int(sd["transformer.tgt_embed.weight"].shape[1])
    nheads = 8
    n_enc_levels = int(sd["transformer.level_embed"].shape[0])
    aw = sd.get("transformer.encoder.layers.0.self_attn.attention_weights.weight")
    dw = sd.get("transformer.decoder.layers.0.cross_attn.attention_weights.weight")
    enc_points = int(aw.shape[0]) // (nheads * n_enc_levels) if aw is not None else 4
    dec_points = int(dw.shape[0]) // (nheads * n_enc_levels) if dw is not None else 4
    ffn = sd.get("transformer.encoder.layers.0.linear1.weight", sd.get("transformer.decoder.layers.0.linear1.weight"))
    return DINOConfig(
        backbone=name,
        backbone_overrides=overrides,
        num_classes=int(sd["class_embed.0.weight"].shape[0]),
        num_feature_levels=num_levels,
        out_indices=out_indices,
        hidden_dim=hidden,
        nheads=nheads,
        num_queries=int(sd["transformer.tgt_embed.weight"].shape[0]),
        enc_layers=_count(sd, r"transformer\.encoder\.layers\.(\d+)\."),
        dec_layers=_count(sd, r"transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=int(ffn.shape[0]) if ffn is not None else 2048,
        enc_n_points=enc_points,
        dec_n_points=dec_points,
        dn_labelbook_size=int(sd["label_enc.weight"].shape[0]) - 1,
    )


def dino_fields(cfg: DINOConfig) -> dict[str, Any]:
    """The ``ModelConfig`` fields of a :class:`DINOConfig` (the DINO settings go to ``model.dino``)."""
    d = cfg.to_dict()
    overrides = dict(d.pop("backbone_overrides"))
    fields: dict[str, Any] = {
        "detector": "dino",
        "backbone": d.pop("backbone"),
        "backbone_overrides": overrides,
        "min_size": d.pop("min_size"),
        "max_size": d.pop("max_size"),
    }
    d.pop("num_classes")
    if overrides.get("focal_windows") is not None:
        fields["focal_windows"] = list(overrides["focal_windows"])
    fields["dino"] = d
    return fields


def _read_original(obj: Any, source: str) -> LayoutRead:
    sd = dino_state_dict(obj)
    cfg = dino_config_from_state_dict(sd)
    names, ids = default_class_names(cfg.num_classes)
    meta = {"num_classes": cfg.num_classes, "class_names": names, "category_ids": ids, "source": "original"}
    return LayoutRead(dino_fields(cfg), sd, meta)


def _read_v1(obj: Any, source: str) -> LayoutRead:
    from ...weights.checks import expect_mapping

    cfg = DINOConfig.from_dict(expect_mapping(obj, "dino_config", source))
    meta = {
        "num_classes": obj.get("num_classes", cfg.num_classes),
        "class_names": obj.get("class_names"),
        "category_ids": obj.get("category_ids"),
        "source": "focalnet",
    }
    return LayoutRead(dino_fields(cfg), dict(obj["model"]), meta)


ORIGINAL_DINO = Layout(
    name="original-dino",
    describe="original FocalNet-DINO file ({'model' or 'ema_model': state dict} with backbone.0.*, transformer.*, "
    "label_enc.weight)",
    recognise=is_dino_checkpoint,
    weights=lambda obj: _find_state_dict(obj),
    read=_read_original,
    write=lambda sd: {"model": dict(sd)},
)
FOCALNET_DINO_V1 = Layout(
    name="focalnet-dino-v1",
    describe="focalnet-dino file of earlier releases ({'format': 'focalnet-dino', 'dino_config', 'model', ...})",
    recognise=lambda obj: isinstance(obj, Mapping) and obj.get("format") == FORMAT,
    weights=lambda obj: obj.get("model"),
    read=_read_v1,
)
