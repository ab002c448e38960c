"""Building models: ``create_model``, ``create_backbone``, ``model_from_checkpoint``, ``save_model``."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .models.focalnet import FocalNet, FocalNetBackbone, FocalNetConfig, PretrainedCfg
from .models.registry import get_variant, match_variant
from .weights.convert import convert_state_dict
from .weights.hub import download_pretrained
from .weights.infer import CheckpointMismatchError, check_state_dict, infer_config
from .weights.io import Checkpoint, read_checkpoint, save_safetensors

__all__ = [
    "checkpoint_config",
    "create_model",
    "create_backbone",
    "model_from_checkpoint",
    "save_model",
    "load_weights",
    "adapt_to_backbone",
]

StateDict = dict[str, torch.Tensor]


def _pretrained_cfg(cfg: FocalNetConfig, name: str | None) -> PretrainedCfg:
    size = 224
    tags: dict[str, dict[str, str]] = {}
    if name is not None:
        v = get_variant(name)
        size = v.input_size
        tags = {t: {"url": s.url, "hf_hub_id": s.timm_repo or ""} for t, s in v.tags.items()}
    return PretrainedCfg(num_classes=cfg.num_classes, input_size=(cfg.in_chans, size, size), tags=tags)


def _original_sd(ckpt: Checkpoint) -> StateDict:
    return convert_state_dict(ckpt.state_dict, to="original", source=ckpt.layout)


def load_weights(model: nn.Module, sd: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> None:
    """Load an original-layout state dict strictly (keys starting with ``ignore`` may be missing),
    raising :class:`CheckpointMismatchError` that lists the offending keys and shapes."""
    check_state_dict(model.state_dict(), sd, ignore)
    result = model.load_state_dict(sd, strict=not ignore)
    bad = [k for k in result.unexpected_keys]
    if bad:
        raise CheckpointMismatchError(f"unexpected keys: {bad}")


def _build_loaded(
    ctor: Callable[[], nn.Module], sd: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()
) -> nn.Module:
    """Build a model holding ``sd``. When ``sd`` covers it exactly, build on the meta device and adopt
    the checkpoint tensors (as float32) instead of randomly initialising weights that would be
    overwritten; otherwise build normally and :func:`load_weights` (keys under ``ignore`` may be missing)."""
    with torch.device("meta"):
        meta = ctor()
    msd = meta.state_dict()
    if set(msd) != set(sd) or any(tuple(msd[k].shape) != tuple(sd[k].shape) for k in msd):
        model = ctor()
        load_weights(model, sd, ignore)
        return model
    sd32 = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    meta.load_state_dict(sd32, assign=True)
    if isinstance(meta, FocalNetBackbone):
        meta._freeze_stages()
    return meta


def _classifier_from_sd(cfg: FocalNetConfig, sd: StateDict, num_classes: int | None, source: str) -> FocalNet:
    """A classifier of ``cfg`` (head size taken from ``sd``) holding ``sd``; a different ``num_classes``
    replaces the head, a missing head is freshly initialised, each with a warning."""
    ckpt_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    ignore: tuple[str, ...] = ()
    if ckpt_classes:
        cfg = cfg.replace(num_classes=ckpt_classes)
    elif cfg.num_classes > 0:
        warnings.warn(
            f"{source} has no classifier head: the head of {cfg.num_classes} classes is freshly initialised",
            stacklevel=3,
        )
        ignore = ("head.",)
    model = _build_loaded(lambda: FocalNet(cfg), sd, ignore)
    if num_classes is not None and num_classes != model.num_classes:
        warnings.warn(
            f"{source} has a {ckpt_classes}-class head; it is dropped and a new {num_classes}-class head is "
            "initialised (fine-tuning)",
            stacklevel=3,
        )
        model.reset_classifier(num_classes)
    return model


def create_model(
    name: str,
    *,
    pretrained: bool | str = False,
    checkpoint_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> FocalNet:
    """A registered FocalNet classifier, optionally with weights.

    ``pretrained=True`` (or a tag such as ``"ms_in1k"``) downloads the released weights (cached);
    ``checkpoint_path`` loads a local file or model folder in any supported layout. ``num_classes``
    differing from the checkpoint's head replaces the head (with a warning). ``overrides`` change any
    :class:`FocalNetConfig` field (e.g. ``drop_path_rate=0.2``, ``in_chans=1``).
    """
    variant = get_variant(name)
    cfg = variant.cfg.replace(**overrides)
    path = checkpoint_path
    if path is None and pretrained:
        path = download_pretrained(name, pretrained)
    if path is None:
        if num_classes is not None:
            cfg = cfg.replace(num_classes=num_classes)
        model = FocalNet(cfg)
    else:
        ckpt = read_checkpoint(path)
        model = _classifier_from_sd(cfg, _original_sd(ckpt), num_classes, str(path))
        _attach_class_names(model, ckpt, str(path), replaced_head=num_classes is not None)
    model.pretrained_cfg = _pretrained_cfg(model.cfg, name)
    return model


def _resize_kernel(w: torch.Tensor, k: int) -> torch.Tensor:
    """Zero-pad a square kernel into the centre of a larger one, or centre-crop it to a smaller one."""
    k0 = w.shape[-1]
    if k0 == k:
        return w
    if k0 < k:
        p = (k - k0) // 2
        return F.pad(w, (p, k - k0 - p, p, k - k0 - p))
    s = (k0 - k) // 2
    return w[..., s : s + k, s : s + k].clone()


def adapt_to_backbone(sd: Mapping[str, torch.Tensor], backbone: FocalNetBackbone) -> StateDict:
    """Turn an ImageNet (classification) state dict into one for ``backbone``.

    Focal kernels are zero-padded into the centre of larger kernels (same output) or centre-cropped;
    when the backbone has more focal levels, the new levels keep their fresh init and the ``f`` rows
    are mapped: query/context copied, level gates to the first levels, the global gate to the last
    row, new gate rows zero. ``norm``/``head`` are dropped; ``norm{i}`` keep their init (1, 0).
    """
    target = backbone.state_dict()
    cfg = backbone.cfg
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith(("norm.", "head.")):
            continue
        m = re.match(
            r"layers\.(\d+)\.blocks\.(\d+)\.modulation\.(focal_layers\.(\d+)\.0\.weight|f\.weight|f\.bias)$", k
        )
        if m and k not in target and m.group(4) is not None:
            continue  # checkpoint level beyond the backbone's levels
        if m and m.group(4) is not None:
            out[k] = _resize_kernel(v, target[k].shape[-1])
            continue
        if m:  # f.weight / f.bias: remap gate rows when level counts differ
            stage = int(m.group(1))
            dim = cfg.dims[stage]
            new_levels = cfg.focal_levels[stage]
            old_levels = v.shape[0] - 2 * dim - 1
            if old_levels != new_levels:
                t = target[k].clone()
                t[: 2 * dim] = v[: 2 * dim]
                n = min(old_levels, new_levels)
                t[2 * dim : 2 * dim + n] = v[2 * dim : 2 * dim + n]
                t[2 * dim + n : 2 * dim + new_levels] = 0
                t[2 * dim + new_levels] = v[2 * dim + old_levels]
                v = t
            out[k] = v
            continue
        out[k] = v
    # new focal levels keep their fresh initialisation
    for k, v in target.items():
        if k not in out and ".modulation.focal_layers." in k:
            out[k] = v
    return out


def _load_backbone_ckpt(backbone: FocalNetBackbone, ckpt: Checkpoint) -> None:
    sd = _original_sd(ckpt)
    norms = tuple(f"norm{i}." for i in range(backbone.cfg.num_stages))
    if _is_dense_file(ckpt):
        # detection/segmentation checkpoint: same module, strict apart from unused output norms
        sd = {k: v for k, v in sd.items() if not k.startswith(norms) or k in backbone.state_dict()}
        load_weights(backbone, sd)
        return
    load_weights(backbone, adapt_to_backbone(sd, backbone), ignore=norms)


def create_backbone(
    name: str,
    *,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    checkpoint_path: str | os.PathLike | None = None,
    pretrained: bool | str = False,
    frozen_stages: int = -1,
    **overrides: Any,
) -> FocalNetBackbone:
    """A dense-prediction backbone (list of NCHW maps at strides 4..32) of a registered variant.

    ``checkpoint_path`` may be an original detection/segmentation checkpoint (``backbone.`` keys;
    other prefixes ignored), or any ImageNet checkpoint (kernels resized, levels expanded; see
    :func:`adapt_to_backbone`). ``overrides`` set e.g. ``focal_windows=(9, 9, 9, 9)``, ``drop_path_rate``.
    """
    path = checkpoint_path
    if path is None and pretrained:
        path = download_pretrained(name, pretrained)
    ckpt = read_checkpoint(path) if path is not None else None
    if ckpt is not None and _is_dense_file(ckpt):
        # a detection/segmentation file fixes the focal windows/levels it was trained with
        from .weights.infer import infer_structure

        found = infer_structure(_original_sd(ckpt))
        for k in ("focal_windows", "focal_levels"):
            overrides.setdefault(k, found[k])
    cfg = get_variant(name).cfg.replace(**overrides)
    if cfg.num_stages == 1 and tuple(out_indices) == (0, 1, 2, 3):
        out_indices = (0,)
    backbone = FocalNetBackbone(cfg, out_indices=out_indices, frozen_stages=frozen_stages)
    if ckpt is not None:
        _load_backbone_ckpt(backbone, ckpt)
        backbone._freeze_stages()
    return backbone


def _is_dense_file(ckpt: Checkpoint) -> bool:
    return ckpt.backbone_prefix or any(re.match(r"norm\d+\.", k) for k in ckpt.state_dict)


def checkpoint_config(ckpt: Checkpoint, sd: StateDict) -> tuple[FocalNetConfig, tuple[int, ...] | None]:
    """The architecture of a checkpoint and, for detection/segmentation files, its output indices.

    Structure comes from the original-layout ``sd``; post-norm and ``normalize_modulator`` from the
    config stored with the file (ours, or a hub folder's ``config.json``), else from the registered
    variant the file names or matches (see :func:`~focalnet.weights.infer_config`).
    """
    stored = ckpt.config
    flags_only = stored is not None and set(stored) <= {"use_postln", "normalize_modulator", "layerscale_value"}
    if ckpt.variant and stored is None:
        try:
            v = get_variant(ckpt.variant)
            stored = {"use_postln": v.cfg.use_postln, "normalize_modulator": v.cfg.normalize_modulator}
            flags_only = True
        except ValueError:
            pass
    norms = tuple(sorted(int(m.group(1)) for k in sd if (m := re.match(r"norm(\d+)\.weight$", k))))
    is_backbone = ckpt.backbone_prefix or bool(norms) or ckpt.extra.get("kind") == "backbone"
    if stored is None:
        cfg = infer_config(sd, backbone=is_backbone)
    elif flags_only:
        cfg = infer_config(sd, warn=False, backbone=is_backbone).replace(**stored)
    else:
        cfg = infer_config(sd, stored=stored)
    if not is_backbone:
        return cfg, None
    return cfg, norms or tuple(range(cfg.num_stages))


def model_from_checkpoint(path: str | os.PathLike, **overrides: Any) -> FocalNet | FocalNetBackbone:
    """Build the model a checkpoint describes, reading the architecture off the file, and load it.

    Depths, widths, patch size, levels, windows, conv stem, layer scale, modulation LayerNorm and head
    size come from the weights; post-norm and ``normalize_modulator`` from the config stored in the
    file (ours, or a hub folder's ``config.json``), else from the registered variant of that structure.
    Detection/segmentation files give a :class:`FocalNetBackbone` with their ``norm{i}`` outputs.
    """
    ckpt = read_checkpoint(path)
    sd = _original_sd(ckpt)
    cfg, out_indices = checkpoint_config(ckpt, sd)
    cfg = cfg.replace(**overrides) if overrides else cfg
    variant = match_variant(cfg)
    if out_indices is not None:
        model: FocalNet | FocalNetBackbone = _build_loaded(lambda: FocalNetBackbone(cfg, out_indices=out_indices), sd)
    else:
        model = _build_loaded(lambda: FocalNet(cfg), sd)
        model.pretrained_cfg = _pretrained_cfg(cfg, variant.name if variant else None)
        stored_pc = ckpt.extra.get("pretrained_cfg")
        if isinstance(stored_pc, Mapping):
            for k in ("input_size", "crop_pct", "interpolation", "mean", "std"):
                if k in stored_pc:
                    v = stored_pc[k]
                    setattr(model.pretrained_cfg, k, tuple(v) if isinstance(v, list) else v)
    _attach_class_names(model, ckpt, str(path))
    model.variant_name = variant.name if variant else None
    return model


def _attach_class_names(model: nn.Module, ckpt: Checkpoint, source: str, replaced_head: bool = False) -> None:
    """Give ``model`` the class names stored with ``ckpt``; a list that does not match the head's
    outputs is an error (a new fine-tuning head simply gets none)."""
    names = ckpt.extra.get("class_names")
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{source}: the stored class_names must be a list of strings")
    n_out = getattr(model, "num_classes", 0) if isinstance(model, FocalNet) else 0
    if n_out and len(names) != n_out:
        if replaced_head:
            return
        raise ValueError(f"{source}: stores {len(names)} class names for a {n_out}-output head (inconsistent file)")
    model.class_names = list(names)


def save_model(
    model: FocalNet | FocalNetBackbone,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save weights as safetensors with the full model config (and class names) in the metadata, so
    that :func:`model_from_checkpoint` rebuilds exactly this model."""
    meta: dict[str, Any] = {"format": "focalnet", "focalnet_config": model.cfg.to_dict()}
    if isinstance(model, FocalNetBackbone):
        meta["kind"] = "backbone"
        meta["out_indices"] = list(model.out_indices)
    else:
        meta["kind"] = "classifier"
        meta["pretrained_cfg"] = model.pretrained_cfg.to_dict()
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    if names is not None:
        meta["class_names"] = list(names)
    meta.update(extra or {})
    save_safetensors(model.state_dict(), path, meta)
