"""Segmentation files -> models: the one loading path of every segmentor and layout, and our file format.

Every file takes the same road::

    safe_torch_load (weights_only; the official Mask2Former ``.pkl`` files: numpy arrays and plain
    containers only)
    -> recognise_layout: ours (model.pt), a training checkpoint, or one of a registered segmentor's
       original layouts (mmsegmentation UPerNet, official Mask2Former); exactly one must claim the file
    -> (meta, canonical state dict, extra): meta = segmentor, backbone config, classes, head settings;
       the state dict under today's keys (older files' numbered ConvModule keys renamed)
    -> check_meta: the segmentor named (``meta["segmentor"]``, UPerNet where absent), types of every stored
       setting, class names (strings, one per class), the backbone config against what the tensors show,
       the segmentor's head settings against the tensors (its spec's ``check_head``)
    -> build_checked: tensors (types, expanded storage, memory budget), finite, meta-device build
       compared key by key and shape by shape, strict load

:func:`load_segmentor` runs it all; :func:`read_segmentor` stops before the build (checked meta and
state dict), :func:`check_segmentor` runs every check without the real build (what ``convert`` needs).
The segmentors and their layouts are :mod:`focalnet.segmentation.registry`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..bounds import BoundsError, check_normalization
from ..weights.checks import (
    build_checked,
    check_loadable,
    check_one_task,
    check_tensors,
    expect_mapping,
    expect_names,
)
from ..weights.errors import CheckpointMismatchError, MalformedCheckpointError
from ..weights.infer import infer_structure, stored_config
from ..weights.io import atomic_save, safe_torch_load
from ..weights.layouts import Layout, recognise_layout
from .registry import segmentor_layouts, segmentor_of
from .spec import Read

__all__ = [
    "FORMAT",
    "LAYOUTS",
    "layouts",
    "save_segmentor",
    "read_segmentor",
    "check_meta",
    "check_segmentor",
    "build_segmentor",
    "load_segmentor",
    "upgrade_state_dict",
]

FORMAT = "focalnet-segmentation"


def save_segmentor(model: nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
    """Save weights plus everything needed to rebuild the model (backbone config, classes, head,
    preprocessing/test settings in ``extra``) as one ``torch.save`` file loadable with ``weights_only=True``."""
    model = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "meta": dict(model.meta), "extra": dict(extra or {}), "state_dict": state}, path)


# ConvModule children were numbered (0 conv, 1 bn) before they took mmcv's names
_LEGACY_KEY = re.compile(
    r"^(decode_head\.(?:psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck)"
    r"|auxiliary_head\.convs\.\d+)\.([01])\.(.+)$"
)


def upgrade_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our files written before the ConvModules took mmcv's child names (``.0.`` -> ``.conv.``,
    ``.1.`` -> ``.bn.``): the same weights under today's keys (other keys unchanged)."""
    out = {}
    for k, v in sd.items():
        m = _LEGACY_KEY.match(k)
        out[f"{m.group(1)}.{'conv' if m.group(2) == '0' else 'bn'}.{m.group(3)}" if m else k] = v
    return out


def _extra(obj: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    return expect_mapping(obj, key, source) if obj.get(key) is not None else {}


def _read_ours(obj: Mapping[str, Any], source: str) -> Read:
    meta = expect_mapping(obj, "meta", source)
    sd = check_tensors(obj.get("state_dict"), source)
    return meta, upgrade_state_dict(sd), _extra(obj, "extra", source)


def _read_training(obj: Mapping[str, Any], source: str) -> Read:
    meta = expect_mapping(obj, "segmentation_meta", source)
    sd = check_tensors(obj.get("model"), source)
    return meta, upgrade_state_dict(sd), _extra(obj, "segmentation_extra", source)


LAYOUTS: tuple[Layout[Read], ...] = (
    Layout(
        "focalnet",
        "{'format': 'focalnet-segmentation', 'meta', 'extra', 'state_dict'} (OUTPUT/model.pt)",
        lambda obj: obj.get("format") == FORMAT,
        _read_ours,
    ),
    Layout(
        "training checkpoint",
        "{'segmentation_meta', 'model', ...} (OUTPUT/checkpoints/checkpoint-*.pt)",
        lambda obj: "segmentation_meta" in obj and "model" in obj and "format" not in obj,
        _read_training,
    ),
)


def layouts() -> list[Layout[Read]]:
    """Every layout the loading path recognises: ours (:data:`LAYOUTS`), then each registered
    segmentor's original layouts."""
    return [*LAYOUTS, *segmentor_layouts()]


def check_meta(meta: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """``meta`` after checking every setting a model is built from, without building one: the segmentor
    (a registered name, UPerNet where absent), the backbone config (a valid :class:`~focalnet.FocalNetConfig`
    whose structure the backbone tensors show), ``num_classes`` (a positive integer), ``class_names``
    (``None`` or one string per class) and the segmentor's head settings (its spec's ``check_head``: types,
    and as many modules as the tensors have). Raises :class:`MalformedCheckpointError` or
    :class:`CheckpointMismatchError` naming the key."""
    meta = dict(meta)
    spec = segmentor_of(meta, source)
    cfg = stored_config(meta.get("backbone_config"), source, "backbone_config")
    body = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    try:
        found = infer_structure(body)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{source}: {e}") from None
    diff = {k: (getattr(cfg, k), v) for k, v in found.items() if k != "num_classes" and getattr(cfg, k) != v}
    if diff:
        raise CheckpointMismatchError(
            f"{source}: the stored backbone_config disagrees with the backbone tensors (stored, tensors): {diff}"
        )
    n = meta.get("num_classes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise MalformedCheckpointError(f"{source}: stored num_classes must be a positive integer, got {n!r:.40}")
    if meta.get("class_names") is not None:
        meta["class_names"] = expect_names(meta["class_names"], n, source)
    return spec.check_head(meta, sd, source)


def _check_extra(extra: dict[str, Any], source: str) -> dict[str, Any]:
    """``extra``'s preprocessing and test settings, where present, of the types evaluate/predict use."""
    for k in ("mean", "std"):
        v = extra.get(k)
        if v is not None and not (
            isinstance(v, (list, tuple))
            and v
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            raise MalformedCheckpointError(f"{source}: stored extra {k!r} must be a list of numbers")
    try:  # a std of 0 or NaN divides every pixel by zero: the prediction would be one class, silently
        check_normalization(extra.get("mean", [0.0]), extra.get("std", [1.0]), "stored extra", 3)
    except BoundsError as e:
        raise MalformedCheckpointError(f"{source}: {e}") from None
    for k in ("test", "data", "config"):
        if extra.get(k) is not None:
            expect_mapping(extra, k, source)
    if extra.get("test") is not None:  # test sizes within their bounds before any image is touched
        from .evaluate import TestConfig

        try:
            TestConfig.from_stored(extra["test"])
        except (TypeError, ValueError, KeyError) as e:
            raise MalformedCheckpointError(f"{source}: stored extra.test: {e}") from None
    return extra


def _read_file(source: str) -> Any:
    """The loaded file: ``torch.load(weights_only=True)``, or for ``.pkl`` files (the official model zoo's)
    an unpickler that admits numpy arrays and plain containers only."""
    if source.endswith(".pkl"):
        from ..weights.pickle_numpy import load_numpy_pickle

        return load_numpy_pickle(source)
    return safe_torch_load(source, "segmentation checkpoint")


def read_segmentor(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """``(meta, state_dict, extra)`` of a segmentation file in any layout of :func:`layouts`, checked
    (:func:`check_meta`, tensor types and sizes) but without building the model: ours
    (:func:`save_segmentor`, training checkpoints) or a registered segmentor's original layout (an
    mmsegmentation 0.x FocalNet UPerNet, see :mod:`focalnet.segmentation.mmseg`; the official Mask2Former
    ``.pth`` and ``.pkl`` files)."""
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"checkpoint not found: {source}")
    obj = _read_file(source)
    check_one_task(obj, "segmentation", source)  # a file holding a detector too is refused, not half-read
    layout = recognise_layout(obj, layouts(), source, "focalnet segmentation model", task="segmentation")
    meta, sd, extra = layout.read(obj, source)
    return check_meta(meta, sd, source), sd, _check_extra(extra, source)


def check_segmentor(meta: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Every check of :func:`build_segmentor` (meta, tensors, finite, keys and shapes on the meta device)
    without building the model."""
    meta = check_meta(meta, sd, source)
    spec = segmentor_of(meta, source)
    check_loadable(lambda: spec.from_meta(meta), sd, source)


def build_segmentor(
    meta: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: str = "checkpoint", **backbone_overrides: Any
) -> nn.Module:
    """The segmentor (:class:`~focalnet.segmentation.UPerNet`, Mask2Former, ...) that ``meta`` describes with the weights ``sd`` loaded strictly, after every
    check (:func:`check_meta`, then :func:`~focalnet.weights.checks.build_checked`: tensors, finite,
    keys and shapes compared on the meta device before anything is allocated). ``backbone_overrides``
    change backbone settings the weights do not fix (``drop_path_rate``)."""
    meta = check_meta(meta, sd, source)
    spec = segmentor_of(meta, source)
    return build_checked(lambda: spec.from_meta(meta, **backbone_overrides), sd, source, assign=True)


def load_segmentor(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a segmentor from a file written by :func:`save_segmentor`, a training checkpoint
    (``checkpoints/checkpoint-*.pt``, which carries the same ``meta``), an original mmsegmentation
    0.x FocalNet UPerNet file (``{"meta", "state_dict"}``: backbone and head read off the keys, ADE20K
    class names for 150 classes) or an official Mask2Former file (``.pth``, model zoo ``.pkl``); returns ``(model in eval mode, extra)``. Loads with
    ``weights_only=True`` and strictly, after every check of the module docstring: a file that does not
    fit names the missing, unexpected and mis-shaped keys."""
    meta, sd, extra = read_segmentor(path)
    model = build_segmentor(meta, sd, os.fspath(path))
    model.to(map_location)
    model.eval()
    return model, extra
