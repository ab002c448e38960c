"""Building models: ``create_model``, ``create_backbone``, ``model_from_checkpoint``, ``save_model``.

Every classifier built from a file takes one road (``create_model(checkpoint_path=...)``,
``model_from_checkpoint`` and ``classification.load_classifier`` alike)::

    read_checkpoint (weights_only / safetensors; tensors checked: types, expanded storage, memory budget)
    -> the layout (original, timm, transformers, ours) converted to the original keys
    -> FocalNetConfig (read off the keys; flags from the stored config or the registered variant)
    -> build_checked (finite check, meta-device build compared key by key, strict load)
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .bounds import SIDE, Bound, BoundsError, check_bounds, check_normalization
from .models.focalnet import FocalNet, FocalNetBackbone, FocalNetConfig, PretrainedCfg
from .models.registry import get_variant, match_variant
from .weights.checks import build_checked, check_config_size, expect_names
from .weights.convert import convert_state_dict
from .weights.errors import CheckpointMismatchError, MalformedCheckpointError
from .weights.hub import download_pretrained
from .weights.infer import check_state_dict, infer_config, infer_structure, stored_config, tensor_shape
from .weights.io import Checkpoint, read_checkpoint, save_safetensors

__all__ = [
    "checkpoint_config",
    "original_state_dict",
    "build_from_state_dict",
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


def original_state_dict(ckpt: Checkpoint) -> StateDict:
    """The checkpoint's tensors under the original keys (whatever its layout: timm, transformers, ...)."""
    return convert_state_dict(ckpt.state_dict, to="original", source=ckpt.layout)


def load_weights(model: nn.Module, sd: Mapping[str, torch.Tensor], ignore: tuple[str, ...] = ()) -> None:
    """Load an original-layout state dict strictly (keys starting with ``ignore`` may be missing),
    raising :class:`CheckpointMismatchError` that lists the offending keys and shapes."""
    check_state_dict(model.state_dict(), sd, ignore)
    result = model.load_state_dict(sd, strict=not ignore)
    bad = [k for k in result.unexpected_keys]
    if bad:
        raise CheckpointMismatchError(f"unexpected keys: {bad}")


def build_from_state_dict(
    cfg: FocalNetConfig, sd: Mapping[str, torch.Tensor], source: str, out_indices: Sequence[int] | None = None
) -> FocalNet | FocalNetBackbone:
    """A :class:`FocalNet` (or, with ``out_indices``, a :class:`FocalNetBackbone`) of ``cfg`` holding the
    original-layout ``sd``, through :func:`~focalnet.weights.checks.build_checked`: tensors checked, no
    NaN/inf, keys and shapes compared on the meta device, then loaded strictly (the checkpoint tensors
    are adopted as float32 instead of initialising weights that would be overwritten)."""
    if out_indices is not None:
        backbone = build_checked(lambda: FocalNetBackbone(cfg, out_indices=out_indices), sd, source, assign=True)
        backbone._freeze_stages()
        return backbone
    return build_checked(lambda: FocalNet(cfg), sd, source, assign=True)


def _head_classes(sd: Mapping[str, torch.Tensor]) -> int:
    """Rows of the classifier head in ``sd`` (0 without one)."""
    return tensor_shape(sd, "head.weight", 2)[0] if "head.weight" in sd else 0


def _classifier_from_sd(cfg: FocalNetConfig, sd: StateDict, num_classes: int | None, source: str) -> FocalNet:
    """A classifier of ``cfg`` (head size taken from ``sd``) holding ``sd``; a different ``num_classes``
    replaces the head, a missing head is freshly initialised, each with a warning."""
    ckpt_classes = _head_classes(sd)
    fresh_head = 0
    if ckpt_classes:
        cfg = cfg.replace(num_classes=ckpt_classes)
    elif cfg.num_classes > 0:
        warnings.warn(
            f"{source} has no classifier head: the head of {cfg.num_classes} classes is freshly initialised",
            stacklevel=3,
        )
        fresh_head, cfg = cfg.num_classes, cfg.replace(num_classes=0)
    model = build_from_state_dict(cfg, sd, source)
    assert isinstance(model, FocalNet)
    if fresh_head:
        model.reset_classifier(fresh_head)
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
        check_config_size(lambda: FocalNet(cfg), f"{name} with {overrides or 'its settings'}")
        model = FocalNet(cfg)
    else:
        ckpt = read_checkpoint(path, allow_nonfinite=True)  # build_checked checks the canonical tensors
        model = _classifier_from_sd(cfg, original_state_dict(ckpt), num_classes, str(path))
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
    sd = original_state_dict(ckpt)
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
        found = infer_structure(original_state_dict(ckpt))
        for k in ("focal_windows", "focal_levels"):
            overrides.setdefault(k, found[k])
    cfg = get_variant(name).cfg.replace(**overrides)
    if cfg.num_stages == 1 and tuple(out_indices) == (0, 1, 2, 3):
        out_indices = (0,)
    ctor = lambda: FocalNetBackbone(cfg, out_indices=out_indices, frozen_stages=frozen_stages)  # noqa: E731
    check_config_size(ctor, f"{name} backbone with {overrides or 'its settings'}")
    backbone = ctor()
    if ckpt is not None:
        _load_backbone_ckpt(backbone, ckpt)
        backbone._freeze_stages()
    return backbone


def _is_dense_file(ckpt: Checkpoint) -> bool:
    return ckpt.backbone_prefix or any(re.match(r"norm\d+\.", k) for k in ckpt.state_dict)


_FLAGS = {"use_postln": bool, "normalize_modulator": bool, "layerscale_value": (int, float)}


def checkpoint_config(ckpt: Checkpoint, sd: StateDict) -> tuple[FocalNetConfig, tuple[int, ...] | None]:
    """The architecture of a checkpoint and, for detection/segmentation files, its output indices.

    Structure comes from the original-layout ``sd``; post-norm and ``normalize_modulator`` from the
    config stored with the file (ours, or a hub folder's ``config.json``), else from the registered
    variant the file names or matches (see :func:`~focalnet.weights.infer_config`). A stored config of
    the wrong type is a :class:`MalformedCheckpointError`; one that disagrees with the tensors a
    :class:`CheckpointMismatchError`.
    """
    stored = ckpt.config
    flags_only = stored is not None and set(stored) <= set(_FLAGS)
    if flags_only:
        bad = [k for k, v in stored.items() if not isinstance(v, _FLAGS[k])]
        if bad:
            raise MalformedCheckpointError(f"{ckpt.path}: stored {bad[0]!r} is {stored[bad[0]]!r}, of the wrong type")
    elif stored is not None:
        stored_config(stored, ckpt.path)
    if ckpt.variant and stored is None:
        try:
            v = get_variant(ckpt.variant)
            stored = {"use_postln": v.cfg.use_postln, "normalize_modulator": v.cfg.normalize_modulator}
            flags_only = True
        except ValueError:
            pass
    norms = tuple(sorted(int(m.group(1)) for k in sd if (m := re.match(r"norm(\d+)\.weight$", k))))
    is_backbone = ckpt.backbone_prefix or bool(norms) or ckpt.extra.get("kind") == "backbone"
    try:
        if stored is None:
            cfg = infer_config(sd, backbone=is_backbone)
        elif flags_only:
            cfg = infer_config(sd, warn=False, backbone=is_backbone).replace(**stored)
        else:
            cfg = infer_config(sd, stored=stored)
    except CheckpointMismatchError as e:  # the message names the file
        raise CheckpointMismatchError(e if str(e).startswith(f"{ckpt.path}:") else f"{ckpt.path}: {e}") from None
    if not is_backbone:
        return cfg, None
    return cfg, norms or tuple(range(cfg.num_stages))


_NUMBER = (int, float)


def _stored_pretrained_cfg(model: FocalNet, stored: Any, source: str) -> None:
    """Preprocessing stored with a file (our ``pretrained_cfg``, a timm folder's) onto ``model``."""
    if stored is None:
        return
    if not isinstance(stored, Mapping):
        raise MalformedCheckpointError(f"{source}: stored 'pretrained_cfg' must be a mapping")
    pc = model.pretrained_cfg
    for k, kind in (("input_size", int), ("mean", _NUMBER), ("std", _NUMBER), ("crop_pct", _NUMBER)):
        if k not in stored:
            continue
        v = stored[k]
        values = [v] if k == "crop_pct" else v if isinstance(v, (list, tuple)) and v else [None]
        if not all(isinstance(x, kind) and not isinstance(x, bool) for x in values):
            raise MalformedCheckpointError(f"{source}: stored pretrained_cfg {k!r} is {v!r:.60}, of the wrong type")
        setattr(pc, k, v if k == "crop_pct" else tuple(v))
    if "interpolation" in stored:
        if not isinstance(stored["interpolation"], str):
            raise MalformedCheckpointError(f"{source}: stored pretrained_cfg 'interpolation' must be a name")
        pc.interpolation = stored["interpolation"]
    try:  # sizes and normalisation within bounds: a 100000-px input or a std of 0 is refused here
        if len(pc.input_size) != 3:
            raise BoundsError(f"input_size must be [channels, height, width], got {list(pc.input_size)}")
        check_bounds(
            {"input_size": list(pc.input_size[1:]), "crop_pct": pc.crop_pct},
            {"input_size": SIDE, "crop_pct": Bound(0.01, 1.0)},
            "pretrained_cfg.",
        )
        check_normalization(pc.mean, pc.std, "pretrained_cfg")  # channels: fitted to the model on use
    except BoundsError as e:
        raise MalformedCheckpointError(f"{source}: stored {e}") from None


def model_from_checkpoint(path: str | os.PathLike | Checkpoint, **overrides: Any) -> FocalNet | FocalNetBackbone:
    """Build the model a checkpoint describes, reading the architecture off the file, and load it.

    Depths, widths, patch size, levels, windows, conv stem, layer scale, modulation LayerNorm and head
    size come from the weights; post-norm and ``normalize_modulator`` from the config stored in the
    file (ours, or a hub folder's ``config.json``), else from the registered variant of that structure.
    Detection/segmentation files give a :class:`FocalNetBackbone` with their ``norm{i}`` outputs.
    ``path`` may also be a :class:`~focalnet.weights.Checkpoint` already read.
    """
    # the finite check runs once, in build_checked, on the canonical tensors
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path, allow_nonfinite=True)
    sd = original_state_dict(ckpt)
    cfg, out_indices = checkpoint_config(ckpt, sd)
    cfg = cfg.replace(**overrides) if overrides else cfg
    variant = match_variant(cfg)
    model = build_from_state_dict(cfg, sd, ckpt.path, out_indices)
    if isinstance(model, FocalNet):
        model.pretrained_cfg = _pretrained_cfg(cfg, variant.name if variant else None)
        _stored_pretrained_cfg(model, ckpt.extra.get("pretrained_cfg"), ckpt.path)
    _attach_class_names(model, ckpt, ckpt.path)
    model.variant_name = variant.name if variant else None
    return model


def _attach_class_names(model: nn.Module, ckpt: Checkpoint, source: str, replaced_head: bool = False) -> None:
    """Give ``model`` the class names stored with ``ckpt``: strings, one per output of the head
    (:class:`MalformedCheckpointError` otherwise); a new fine-tuning head (``replaced_head``) of another
    size simply gets none."""
    names = ckpt.extra.get("class_names")
    if names is None:
        return
    n_out = getattr(model, "num_classes", 0) if isinstance(model, FocalNet) else 0
    if replaced_head and isinstance(names, (list, tuple)) and len(names) != n_out:
        return
    count = n_out or (len(names) if isinstance(names, (list, tuple)) else -1)
    model.class_names = expect_names(names, count, source)


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
