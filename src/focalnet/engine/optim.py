"""Parameter groups for AdamW: no weight decay on norms, biases and layer scales; layer-wise lr decay."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["param_groups", "layer_id", "build_adamw", "set_group_lrs"]


def _no_decay(name: str, p: torch.Tensor, extra: Iterable[str]) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or "gamma" in name or any(s in name for s in extra)


def layer_id(name: str, depths: tuple[int, ...]) -> int:
    """Depth index of a FocalNet parameter for layer-wise lr decay: stem 0, blocks 1..N, rest N+1.

    Names may carry a prefix (``backbone.body.``); ``layers.i.downsample`` counts with stage ``i``'s
    last block (it runs right after it).
    """
    n = sum(depths)
    m = re.search(r"(?:^|\.)layers\.(\d+)\.blocks\.(\d+)\.", name)
    if m:
        return sum(depths[: int(m.group(1))]) + int(m.group(2)) + 1
    m = re.search(r"(?:^|\.)layers\.(\d+)\.downsample\.", name)
    if m:
        return sum(depths[: int(m.group(1)) + 1])
    if re.search(r"(?:^|\.)patch_embed\.", name):
        return 0
    return n + 1


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    depths: tuple[int, ...] | None = None,
    no_decay_names: Iterable[str] = (),
) -> list[dict]:
    """AdamW parameter groups. With ``layer_decay`` (< 1) each group gets ``lr_scale = decay ** (N + 1 - id)``,
    which timm's schedulers apply; ``depths`` defaults to ``model.cfg.depths``."""
    extra = tuple(no_decay_names)
    if layer_decay is not None and depths is None:
        cfg = getattr(model, "cfg", None) or getattr(getattr(model, "backbone", None), "cfg", None)
        if cfg is None:
            raise ValueError("layer_decay needs the FocalNet depths (pass depths=...)")
        depths = tuple(cfg.depths)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        nd = _no_decay(name, p, extra)
        lid = layer_id(name, depths) if layer_decay is not None else 0
        key = (lid, nd)
        if key not in groups:
            g = {"params": [], "weight_decay": 0.0 if nd else weight_decay, "names": []}
            if layer_decay is not None:
                g["lr_scale"] = layer_decay ** (sum(depths) + 1 - lid)
            groups[key] = g
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    out = []
    for g in groups.values():
        g.pop("names")
        out.append(g)
    return out


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (fused kernels on CUDA)."""
    groups = set_group_lrs(param_groups(model, weight_decay, layer_decay), lr)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def set_group_lrs(groups: list[dict], lr: float) -> list[dict]:
    """Give each group its learning rate ``lr * lr_scale`` and record ``lr`` itself as ``initial_lr``:
    timm's schedulers take ``initial_lr`` as the base of their schedule and multiply their value by the
    group's ``lr_scale``, so the scale is applied once (with ``initial_lr`` left to timm, it would be the
    already scaled lr and the layer decay would be applied twice)."""
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        g["initial_lr"] = lr
    return groups
