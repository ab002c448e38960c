"""Original FocalNet-DINO checkpoints: recognise them, infer their configuration, load them strictly,
and convert them to this package's format and back.

An original file is ``{"model": state_dict}`` (training checkpoints may add ``"ema_model"``, optimiser
state, ``args``...) with the keys of the original module tree: ``backbone.0.*`` (FocalNet),
``input_proj.*``, ``transformer.*``, ``label_enc.weight``, and the shared heads under 12 names each.
Our format is ``{"format": "focalnet-dino", "dino_config": {...}, "model": state_dict, "class_names",
"category_ids", "num_classes"}`` with the very same state dict, so the round trip is exact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .model import DINO, DINOConfig, build_dino

__all__ = [
    "FORMAT",
    "CheckpointMismatch",
    "dino_config_from_state_dict",
    "dino_state_dict",
    "is_dino_checkpoint",
    "is_dino_state_dict",
    "load_dino",
    "load_dino_state_dict",
    "save_dino",
    "save_original",
]

FORMAT = "focalnet-dino"


class CheckpointMismatch(ValueError):
    """A state dict that does not fit the DINO model inferred for it."""


def is_dino_state_dict(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd`` has the original FocalNet-DINO layout."""
    return (
        isinstance(sd, Mapping)
        and "transformer.tgt_embed.weight" in sd
        and "label_enc.weight" in sd
        and any(k.startswith("backbone.0.") for k in sd)
    )


def is_dino_checkpoint(obj: Any) -> bool:
    """Whether a loaded checkpoint is a FocalNet-DINO one (ours, or original with ``model``/``ema_model``/bare)."""
    if not isinstance(obj, Mapping):
        return False
    if obj.get("format") == FORMAT:
        return True
    return any(
        is_dino_state_dict(_strip_module(obj.get(k) or {})) for k in ("model", "ema_model")
    ) or is_dino_state_dict(_strip_module(obj))


def dino_state_dict(obj: Any, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The DINO state dict inside a loaded checkpoint (``model`` or ``ema_model`` entry, or bare;
    a ``module.`` prefix is removed). Raises ``ValueError`` when there is none."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a dict checkpoint, got {type(obj).__name__}")
    candidates = ["ema_model", "model"] if use_ema else ["model", "ema_model"]
    for key in candidates:
        sd = obj.get(key)
        if isinstance(sd, Mapping):
            sd = _strip_module(sd)
            if is_dino_state_dict(sd):
                return dict(sd)
    sd = _strip_module(obj)
    if is_dino_state_dict(sd):
        return dict(sd)
    raise ValueError(
        "not a FocalNet-DINO checkpoint (no 'model'/'ema_model' state dict with backbone.0.*, "
        "transformer.tgt_embed.weight and label_enc.weight)"
    )


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


def _build_meta(cfg: DINOConfig) -> DINO:
    with torch.device("meta"):
        return build_dino(cfg)


def _check_fit(model: DINO, sd: Mapping[str, torch.Tensor], what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {tuple(sd[k].shape)} != {expected[k]}" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:6]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:6]}")
        if shapes:
            parts.append(f"mis-shaped {len(shapes)}: {shapes[:4]}")
        raise CheckpointMismatch(f"{what} does not fit the inferred FocalNet-DINO model: " + "; ".join(parts))


def load_dino_state_dict(
    sd: Mapping[str, torch.Tensor], cfg: DINOConfig | None = None, what: str = "state dict"
) -> DINO:
    """A :class:`DINO` (eval mode, CPU) holding ``sd``, loaded strictly (every key of the model present
    with its shape, nothing else; each alias of a shared head must equal the first name's tensor)."""
    cfg = cfg or dino_config_from_state_dict(sd)
    model = _build_meta(cfg)
    _check_fit(model, sd, what)
    _check_aliases(model, sd, what)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    # ``assign`` gave each alias its own tensor: share the heads again, as the model was built
    model.bbox_embed = torch.nn.ModuleList([model.bbox_embed[0]] * len(model.bbox_embed))
    model.class_embed = torch.nn.ModuleList([model.class_embed[0]] * len(model.class_embed))
    model.transformer.decoder.bbox_embed = model.bbox_embed
    model.transformer.decoder.class_embed = model.class_embed
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            raise CheckpointMismatch(f"{what}: buffer {name} was not loaded")
    return model.eval()


def _check_aliases(model: DINO, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """The 12 names of a shared head must hold one value (else the file is not this architecture)."""
    groups: dict[str, list[str]] = {}
    for k in model.state_dict():
        m = re.match(r"^(?:transformer\.decoder\.)?(bbox_embed|class_embed)\.\d+\.(.+)$", k)
        if m:
            groups.setdefault(f"{m.group(1)}.{m.group(2)}", []).append(k)
    for names in groups.values():
        first = sd[names[0]]
        for k in names[1:]:
            t = sd[k]
            if t.data_ptr() != first.data_ptr() and not torch.equal(t, first):
                raise CheckpointMismatch(f"{what}: {k} differs from {names[0]} (the decoder heads are shared)")


def _read(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {first} (read with weights_only=True)"
        ) from e


def coco91_class_names() -> tuple[list[str], list[int]]:
    """Names and category ids of labels 1..90 of the COCO DINO models (label = COCO category id, slot 0
    unused; ids without a category are named 'N/A'), in this package's ``class_names[label - 1]`` layout."""
    from ..convert import coco_class_names

    names, ids = coco_class_names()
    table = ["N/A"] * 91
    for n, i in zip(names, ids):
        table[i] = n
    return table[1:], list(range(1, 91))


def load_dino(
    obj_or_path: Any, device: str | torch.device = "cpu", *, use_ema: bool = False, **overrides: Any
) -> tuple[DINO, dict[str, Any]]:
    """``(model in eval mode, meta)`` from an original FocalNet-DINO checkpoint or one of ours.

    ``overrides`` change :class:`DINOConfig` fields that do not affect the weights (``num_select``,
    ``min_size``, ``max_size``...). ``meta``: ``class_names`` and ``category_ids`` of labels ``1..C-1`` at
    index ``label - 1`` (label 0 is the unused slot, as in COCO's 91; for the COCO models label = category
    id), ``dino_config``, ``source`` (``"original"`` or ``"focalnet"``).
    """
    obj = _read(obj_or_path) if isinstance(obj_or_path, (str, os.PathLike)) else obj_or_path
    what = str(obj_or_path) if isinstance(obj_or_path, (str, os.PathLike)) else "checkpoint"
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        cfg_dict = {**dict(obj["dino_config"]), **overrides}
        cfg = DINOConfig.from_dict(cfg_dict)
        model = load_dino_state_dict(obj["model"], cfg, what)
        meta = {
            "class_names": list(obj["class_names"]),
            "category_ids": [int(c) for c in obj["category_ids"]],
            "source": "focalnet",
        }
    else:
        sd = dino_state_dict(obj, use_ema=use_ema)
        cfg = dino_config_from_state_dict(sd)
        if overrides:
            cfg = DINOConfig.from_dict({**cfg.to_dict(), **overrides})
        model = load_dino_state_dict(sd, cfg, what)
        if cfg.num_classes == 91:
            names, ids = coco91_class_names()
        else:
            names, ids = [f"class_{i}" for i in range(1, cfg.num_classes)], list(range(1, cfg.num_classes))
        meta = {"class_names": names, "category_ids": ids, "source": "original"}
    meta["dino_config"] = model.cfg.to_dict()
    model.class_names = meta["class_names"]
    model.category_ids = meta["category_ids"]
    return model.to(device).eval(), meta


def save_dino(
    model: DINO,
    path: str | os.PathLike,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write our format (``state_dict`` defaults to the model's; shared heads are stored once on disk)."""
    from ...weights.io import atomic_save

    names = class_names or model.class_names or [f"class_{i}" for i in range(1, model.num_classes)]
    ids = category_ids or model.category_ids or list(range(1, model.num_classes))
    atomic_save(
        {
            "format": FORMAT,
            "dino_config": model.cfg.to_dict(),
            "model": dict(state_dict if state_dict is not None else model.state_dict()),
            "num_classes": model.num_classes,
            "class_names": list(names),
            "category_ids": [int(i) for i in ids],
        },
        path,
    )


def save_original(sd: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write ``{"model": state_dict}`` as the original code saves it."""
    from ...weights.io import atomic_save

    atomic_save({"model": dict(sd)}, path)


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, to: str = "focalnet") -> str:
    """Convert an original FocalNet-DINO file to our format (``to="focalnet"``) or ours back to the
    original layout (``to="original"``); the state dict is copied as it is. Returns a one-line summary.
    A ``dst`` that is ``src`` (also through a link) is refused before anything is read."""
    from ...engine.outputs import refuse_input_overwrite

    refuse_input_overwrite(dst, [src])
    obj = _read(src)
    if to == "focalnet":
        if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
            raise ValueError(f"{src} is already in the focalnet format")
        model, meta = load_dino(obj)
        sd = dino_state_dict(obj)
        save_dino(model, dst, meta["class_names"], meta["category_ids"], state_dict=sd)
    elif to == "original":
        if not (isinstance(obj, Mapping) and obj.get("format") == FORMAT):
            raise ValueError(f"{src} is not a focalnet-format DINO checkpoint")
        load_dino(obj)  # checks that it fits
        save_original(obj["model"], dst)
        model = None
    else:
        raise ValueError(f"to must be 'focalnet' or 'original', got {to!r}")
    cfg = model.cfg if model is not None else DINOConfig.from_dict(dict(obj["dino_config"]))
    return (
        f"wrote {dst} (FocalNet-DINO, backbone {cfg.backbone}, {cfg.num_feature_levels} feature levels, "
        f"{cfg.num_classes} classes, {to} layout)"
    )
