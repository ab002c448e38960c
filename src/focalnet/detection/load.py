"""One loading path for every detection checkpoint, and the package's one detection file format.

:func:`load_detector`::

    torch.load(weights_only=True)
    -> recognise the layout: ours (:data:`FOCALNET_FORMAT`) or one of a registered detector's
       (mmdetection, FocalNet-DINO, ...); exactly one must match
    -> the file's tensors checked before anything reads them (types, expanded storage, memory budget)
    -> the layout's reader: (ModelConfig fields, state dict in our names, meta)
    -> stored settings and metadata checked (ModelConfig, class names, category ids, num_classes)
    -> build_checked: finite check, meta-device build compared key by key, real build, strict load

Every failure is one of :mod:`focalnet.weights.checks`' error types (``ValueError`` subclasses) with a
one-line message naming the file. :func:`save_detector` writes the format training writes; the
``focalnet detection convert`` command is :func:`convert_detector`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..engine.config import ConfigError, build_config, config_to_dict
from ..weights.checks import (
    CheckpointMismatchError,
    MalformedCheckpointError,
    ModelTooLargeError,
    NonFiniteWeightsError,
    build_checked,
    check_one_task,
    check_tensors,
    expect_mapping,
    expect_names,
)
from ..weights.io import atomic_save, safe_torch_load
from ..weights.kind import wrong_kind
from .config import DetectionConfig, ModelConfig
from .mmdet import state_dict_of
from .registry import builder_kwargs, detector_layouts, get_detector
from .spec import Layout, LayoutRead

__all__ = [
    "FOCALNET_FORMAT",
    "recognise_layout",
    "load_detector",
    "save_detector",
    "detector_file_meta",
    "convert_detector",
]

_CHECK_ERRORS = (CheckpointMismatchError, MalformedCheckpointError, ModelTooLargeError, NonFiniteWeightsError)
_DICT_FIELDS = ("backbone_overrides", "detector_overrides", "dino")


def _read_own(obj: Mapping[str, Any], source: str) -> LayoutRead:
    data = expect_mapping(obj, "detection_config", source)
    fields = expect_mapping(data, "model", source)
    meta = {
        "num_classes": obj.get("num_classes"),
        "class_names": obj.get("class_names"),
        "category_ids": obj.get("category_ids"),
        "source": "focalnet",
        "detection_config": data,
    }
    return LayoutRead(fields, dict(obj["model"]), meta)


FOCALNET_FORMAT = Layout(
    name="focalnet",
    describe="focalnet detection file (model.pt or checkpoints/checkpoint-*.pt: 'model' and 'detection_config')",
    recognise=lambda obj: isinstance(obj, Mapping) and "detection_config" in obj and "model" in obj,
    weights=lambda obj: obj.get("model"),
    read=_read_own,
)


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    keys = [repr(k) for k in list(obj)[:6]]
    text = f"a dict with keys [{', '.join(keys)}{', ...' if len(obj) > 6 else ''}]"
    sd = state_dict_of(obj)
    if sd is not obj and isinstance(sd, Mapping):
        text += f"; its state_dict has {len(sd)} entries starting [{', '.join(repr(k) for k in list(sd)[:4])}]"
    return text


def recognise_layout(obj: Any, source: str) -> Layout:
    """The one layout (ours or a registered detector's) that ``obj`` has; a one-line
    :class:`~focalnet.weights.checks.MalformedCheckpointError` saying what the file looks like otherwise."""
    layouts = [FOCALNET_FORMAT, *detector_layouts()]
    found = []
    for layout in layouts:
        try:
            if layout.recognise(obj):
                found.append(layout)
        except Exception:  # noqa: BLE001 - a recogniser that trips over a hostile file did not recognise it
            continue
    if len(found) == 1:
        return found[0]
    if found:
        raise MalformedCheckpointError(
            f"{source}: the file matches several detection layouts ({', '.join(f.name for f in found)})"
        )
    other = wrong_kind(source, "detection", obj)  # a classifier's or segmentor's file: say so in one line
    if other is not None:
        raise CheckpointMismatchError(other)
    raise MalformedCheckpointError(
        f"{source}: not a detection checkpoint of a known layout; the file holds {_describe(obj)}; known layouts: "
        + "; ".join(f"{layout.name}: {layout.describe}" for layout in layouts)
    )


def _merge(fields: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for k, v in overrides.items():
        if k in _DICT_FIELDS and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _num_classes(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 10**6:
        raise MalformedCheckpointError(f"{source}: stored num_classes {value!r} is not an integer in 2..1000000")
    return value


def _category_ids(ids: Any, count: int, source: str) -> list[int]:
    if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)) or len(ids) != count:
        raise MalformedCheckpointError(f"{source}: stored category_ids must be a list of {count} integers")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise MalformedCheckpointError(f"{source}: stored category_ids must hold integers only")
    return list(ids)


def load_detector(
    path: str | os.PathLike,
    device: Any = "cpu",
    *,
    mmdet_compat: bool | None = None,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build and load a detector from a checkpoint of any known layout; returns ``(model in eval mode, meta)``.

    Layouts: this package's ``model.pt`` and training checkpoints (``checkpoints/checkpoint-*.pt``), and
    those of the registered detectors: original mmdetection 2.x Mask / Faster R-CNN, Cascade Mask R-CNN,
    ATSS and Sparse R-CNN files (the architecture read off the keys; 80 COCO classes named when the head
    has 81 outputs), original FocalNet-DINO files and the ``focalnet-dino`` files of earlier releases.
    ``overrides`` are :class:`~focalnet.detection.config.ModelConfig` fields (``score_thresh``,
    ``min_size``, ``detector_overrides={...}``, ...; dict fields are merged); ``mmdet_compat`` (default:
    on for mmdetection files) selects the original RoIAlign and anchors. ``meta``: ``class_names``,
    ``category_ids`` (of labels ``1..num_classes-1``), ``detector``, ``masks`` (whether it predicts
    masks), ``layout``, ``source`` and ``detection_config``.
    """
    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = safe_torch_load(path)
    check_one_task(obj, "detection", source)  # a file holding a segmentor too is refused, not half-read
    layout = recognise_layout(obj, source)
    check_tensors(layout.weights(obj), source)  # before any reader touches a tensor
    try:
        read = layout.read(obj, source)
        fields = _merge(read.fields, overrides)
        fields["backbone_checkpoint"] = ""
        if mmdet_compat is not None:
            fields["mmdet_compat"] = mmdet_compat
        mc = build_config(ModelConfig, fields)
    except _CHECK_ERRORS:
        raise
    except ConfigError as e:
        raise MalformedCheckpointError(f"{source}: the stored model settings are invalid: {e}") from e
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError) as e:
        msg = " ".join(str(e).split())[:300]
        raise MalformedCheckpointError(f"{source}: not a readable {layout.name} file: {type(e).__name__}: {msg}") from e
    num_classes = _num_classes(read.meta.get("num_classes"), source)
    names = expect_names(read.meta.get("class_names"), num_classes - 1, source)
    ids = _category_ids(read.meta.get("category_ids"), num_classes - 1, source)
    spec = get_detector(mc.detector)
    kwargs = builder_kwargs(mc, num_classes)
    model = build_checked(lambda: spec.build(**kwargs), read.state_dict, source, key_name=read.file_key)
    stored = read.meta.get("detection_config") or {}
    meta = {
        "class_names": names,
        "category_ids": ids,
        "detector": spec.name,
        "masks": spec.masks,
        "layout": layout.name,
        "source": read.meta.get("source", layout.name),
        "detection_config": {**stored, "model": config_to_dict(mc)},
    }
    model.class_names = names
    model.category_ids = ids
    return model.to(device).eval(), meta


def detector_file_meta(
    config: Any, class_names: Sequence[str], category_ids: Sequence[int], num_classes: int | None = None
) -> dict[str, Any]:
    """What this package's detection file carries besides ``model`` (the state dict):
    ``detection_config`` (a :class:`~focalnet.detection.config.DetectionConfig`, or its dict),
    ``class_names``, ``category_ids`` and ``num_classes`` (with the background). Training checkpoints
    carry the same keys."""
    data = config if isinstance(config, Mapping) else config_to_dict(config)
    return {
        "detection_config": dict(data),
        "class_names": list(class_names),
        "category_ids": [int(i) for i in category_ids],
        "num_classes": int(num_classes if num_classes is not None else len(class_names) + 1),
    }


def save_detector(
    path: str | os.PathLike, model: nn.Module, config: Any, class_names: Sequence[str], category_ids: Sequence[int]
) -> None:
    """Write ``model`` in this package's detection format (atomically); see :func:`detector_file_meta`."""
    atomic_save({"model": model.state_dict(), **detector_file_meta(config, class_names, category_ids)}, path)


def convert_detector(src: str | os.PathLike, dst: str | os.PathLike, to: str = "focalnet") -> str:
    """``focalnet detection convert``: any layout :func:`load_detector` reads -> this package's format
    (``to="focalnet"``), or -> the detector's original layout (``to="original"``; the detectors whose spec
    has a layout with a writer). Every check of loading runs first. Returns a one-line summary."""
    if to not in ("focalnet", "original"):
        raise ValueError(f"to must be 'focalnet' or 'original', got {to!r}")
    from ..engine.outputs import refuse_input_overwrite

    refuse_input_overwrite(dst, [src])  # before anything is read: `convert IN IN` keeps IN
    model, meta = load_detector(src)
    spec = get_detector(meta["detector"])
    mc = build_config(ModelConfig, meta["detection_config"]["model"])
    if to == "focalnet":
        if meta["layout"] == FOCALNET_FORMAT.name:
            raise ValueError(f"{src} is already a focalnet detection checkpoint")
        save_detector(dst, model, DetectionConfig(model=mc), meta["class_names"], meta["category_ids"])
        layout_name = FOCALNET_FORMAT.name
    else:
        writer = next((layout for layout in spec.layouts if layout.write is not None), None)
        if writer is None:
            raise ValueError(f"{spec.title} has no original layout to write; convert to focalnet instead")
        atomic_save(writer.write(model.state_dict()), dst)
        layout_name = writer.name
    return (
        f"wrote {dst} ({spec.name}, backbone {mc.backbone}, {len(meta['class_names'])} classes, {layout_name} layout)"
    )
