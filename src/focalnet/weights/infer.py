"""Read a FocalNet architecture off an original-layout state dict, and explain mismatches."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..models.focalnet import FocalNetConfig
from ..models.registry import match_variant

__all__ = [
    "infer_config",
    "CheckpointMismatchError",
    "NonFiniteWeightsError",
    "check_state_dict",
    "check_finite",
    "check_buildable",
    "mmdet_backbone_config",
]

ALLOW_NONFINITE_ENV = "FOCALNET_ALLOW_NONFINITE"


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model: lists missing/unexpected keys and shape differences."""


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or infinite weights."""


def check_finite(sd: Mapping[str, Any], source: str, allow: bool | None = None) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first floating tensor of ``sd`` holding NaN/inf.

    ``allow`` (default: the environment variable ``FOCALNET_ALLOW_NONFINITE=1``) skips the check, for debugging.
    """
    if allow is None:
        allow = os.environ.get(ALLOW_NONFINITE_ENV, "") not in ("", "0")
    if allow:
        return
    for k, v in sd.items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel():
            bad = ~torch.isfinite(v)
            if bool(bad.any()):
                raise NonFiniteWeightsError(
                    f"{source}: tensor {k!r} holds {int(bad.sum())} non-finite value(s) (NaN or inf) of "
                    f"{v.numel()}; the weights are broken (set {ALLOW_NONFINITE_ENV}=1 to load them anyway)"
                )


def check_buildable(ctor: Callable[[], torch.nn.Module], sd: Mapping[str, Any], source: str) -> None:
    """Build ``ctor()`` on the meta device (no memory) and check ``sd`` against it *before* the real
    build: invalid stored settings or settings that disagree with the tensors (an ``embed_dim`` of
    100,000 next to 96-wide weights) are a ``ValueError`` instead of a huge allocation."""
    try:
        with torch.device("meta"):
            probe = ctor()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, AssertionError) as e:
        raise ValueError(f"{source}: the settings stored with the weights are invalid: {type(e).__name__}: {e}") from e
    try:
        check_state_dict(probe.state_dict(), sd)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{source}: the stored settings do not match the tensors: {e}") from e


def _get(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"not a FocalNet checkpoint: key {key!r} is missing (first keys: {list(sd)[:5]})")
    return sd[key]


def infer_structure(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Every setting a state dict shows: dims, depths, patch, levels, windows, stem, layer scale, ..."""
    w = _get(sd, "patch_embed.proj.weight")
    embed_dim, in_chans, k = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    use_conv_embed = k == 7
    patch_size = 4 if use_conv_embed else k
    stages = sorted({int(m.group(1)) for key in sd if (m := re.match(r"layers\.(\d+)\.blocks\.", key))})
    if stages != list(range(len(stages))) or not stages:
        raise ValueError(f"not a FocalNet checkpoint: stage indices {stages} (keys 'layers.<i>.blocks.<j>...')")
    depths, levels, windows, factors = [], [], [], []
    for i in stages:
        blocks = {int(m.group(1)) for key in sd if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", key))}
        depths.append(max(blocks) + 1)
        kernels = []
        while (key := f"layers.{i}.blocks.0.modulation.focal_layers.{len(kernels)}.0.weight") in sd:
            kernels.append(int(sd[key].shape[-1]))
        if not kernels:
            raise ValueError(f"not a FocalNet checkpoint: stage {i} has no focal layers")
        levels.append(len(kernels))
        windows.append(kernels[0])
        factors.append(kernels[1] - kernels[0] if len(kernels) > 1 else 2)
        dim = int(_get(sd, f"layers.{i}.blocks.0.norm1.weight").shape[0])
        if dim != embed_dim * 2**i:
            raise ValueError(f"stage {i} has width {dim}, expected {embed_dim * 2**i} (embed_dim * 2**{i})")
    fc1 = _get(sd, "layers.0.blocks.0.mlp.fc1.weight")
    head = sd.get("head.weight")
    return dict(
        embed_dim=embed_dim,
        in_chans=in_chans,
        patch_size=patch_size,
        use_conv_embed=use_conv_embed,
        depths=tuple(depths),
        focal_levels=tuple(levels),
        focal_windows=tuple(windows),
        focal_factor=factors[0],
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        use_layerscale="layers.0.blocks.0.gamma_1" in sd,
        use_postln_in_modulation="layers.0.blocks.0.modulation.ln.weight" in sd,
        num_classes=int(head.shape[0]) if head is not None else 0,
    )


def infer_config(
    sd: Mapping[str, torch.Tensor],
    stored: Mapping[str, Any] | None = None,
    warn: bool = True,
    backbone: bool = False,
) -> FocalNetConfig:
    """The architecture of an original-layout state dict.

    What keys cannot show (``use_postln``, ``normalize_modulator``) comes from ``stored`` (the config
    our own checkpoints carry), else from the registered variant of the same structure, else the
    defaults (pre-norm, no normalization) with a warning. ``backbone=True`` (detection/segmentation
    files, whose focal windows are enlarged downstream) matches variants regardless of focal windows.
    """
    found = infer_structure(sd)
    cfg = FocalNetConfig(**found)
    if stored:
        stored_cfg = FocalNetConfig.from_dict(dict(stored))
        diff = {k: (getattr(stored_cfg, k), v) for k, v in found.items() if getattr(stored_cfg, k) != v}
        if diff:
            raise ValueError(f"the config stored with the checkpoint disagrees with its weights: {diff}")
        return stored_cfg
    variant = match_variant(cfg)
    if variant is None and backbone:
        variant = match_variant(cfg, ignore=("focal_windows",))
    if variant is not None:
        return cfg.replace(
            use_postln=variant.cfg.use_postln,
            normalize_modulator=variant.cfg.normalize_modulator,
            layerscale_value=variant.cfg.layerscale_value,
        )
    if warn:
        warnings.warn(
            "checkpoint matches no registered variant: assuming pre-norm blocks and normalize_modulator=False "
            "(these flags cannot be read from weights; pass use_postln=/normalize_modulator= to override)",
            stacklevel=2,
        )
    return cfg


def mmdet_backbone_config(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """(variant name, backbone overrides) reproducing the FocalNet under ``backbone.`` of an mmdetection /
    mmsegmentation state dict (structure read off the keys, flags from the variant of that structure)."""
    body = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    cfg = infer_config(body, backbone=True, warn=False)
    variant = match_variant(cfg, ignore=("focal_windows",))
    fields = cfg.to_dict()
    fields.pop("num_classes")
    fields["drop_path_rate"] = 0.0
    return (variant.name if variant else "focalnet_tiny_srf"), fields


def _fit_hint(sd: Mapping[str, torch.Tensor]) -> str:
    try:
        found = infer_structure(sd)
    except ValueError:
        return ""
    cfg = FocalNetConfig(**found)
    v = match_variant(cfg)
    desc = (
        f"embed_dim={found['embed_dim']}, depths={list(found['depths'])}, focal_levels={list(found['focal_levels'])}, "
        f"focal_windows={list(found['focal_windows'])}, use_conv_embed={found['use_conv_embed']}, "
        f"use_layerscale={found['use_layerscale']}, use_postln_in_modulation={found['use_postln_in_modulation']}, "
        f"num_classes={found['num_classes']}"
    )
    name = f"variant {v.name!r}" if v else "no registered variant"
    return f" The checkpoint has {desc}: it fits {name} (use focalnet.model_from_checkpoint to build it)."


def check_state_dict(
    model_sd: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()
) -> None:
    """Raise :class:`CheckpointMismatchError` listing missing, unexpected and mis-shaped keys."""
    missing = [k for k in model_sd if k not in sd and not k.startswith(ignore)]
    unexpected = [k for k in sd if k not in model_sd and not k.startswith(ignore)]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in model_sd
        if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def _fmt(title: str, items: list[str]) -> str:
        if not items:
            return ""
        more = f" ... and {len(items) - 10} more" if len(items) > 10 else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:10]) + more

    raise CheckpointMismatchError(
        "checkpoint does not fit the model:"
        + _fmt("missing keys", missing)
        + _fmt("unexpected keys", unexpected)
        + _fmt("shape mismatches", shapes)
        + _fit_hint(sd)
    )
