"""The detectors of the package, one line each, and what derives from them: names, build dispatch, the
resolution of a :class:`~focalnet.detection.config.ModelConfig` (``None`` fields: the detector's own),
the checkpoint layouts :func:`~focalnet.detection.load_detector` recognises.

A detector defined outside the package joins with :func:`register_detector` (its
:class:`~focalnet.detection.spec.DetectorSpec`); from then on ``--detector NAME``, configs, training,
saving and loading know it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..weights.checks import check_config_size
from .atss import ATSS_SPEC
from .cascade import CASCADE_MASK_RCNN
from .dino import DINO_SPEC
from .rcnn import FASTER_RCNN, MASK_RCNN
from .sparse_rcnn import SPARSE_RCNN
from .spec import BACKBONE_FIELDS, DetectorSpec, Layout

__all__ = [
    "DETECTORS",
    "register_detector",
    "get_detector",
    "detector_layouts",
    "resolve_model_config",
    "check_model_config",
    "builder_kwargs",
    "build_detector",
    "build_from_config",
]

# every detector: name -> spec (one line each; a detector module declares its spec next to its builder)
DETECTORS: dict[str, DetectorSpec] = {
    s.name: s
    for s in (
        MASK_RCNN,
        FASTER_RCNN,
        CASCADE_MASK_RCNN,
        ATSS_SPEC,
        SPARSE_RCNN,
        DINO_SPEC,
    )
}


def register_detector(spec: DetectorSpec, *, replace: bool = False) -> DetectorSpec:
    """Add a detector defined outside the package (``replace=True`` to redefine a name)."""
    if not isinstance(spec, DetectorSpec):
        raise TypeError(f"expected a DetectorSpec, got {type(spec).__name__}")
    if spec.name in DETECTORS and DETECTORS[spec.name] is not spec and not replace:
        raise ValueError(f"a detector named {spec.name!r} exists already (replace=True to redefine it)")
    DETECTORS[spec.name] = spec
    return spec


def get_detector(name: str) -> DetectorSpec:
    """The spec of detector ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return DETECTORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown detector {name!r}; one of {', '.join(DETECTORS)}") from None


def detector_layouts() -> list[Layout]:
    """The original checkpoint layouts of every registered detector (each once)."""
    out: list[Layout] = []
    for spec in DETECTORS.values():
        out += [layout for layout in spec.layouts if all(layout is not o for o in out)]
    return out


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def resolve_model_config(mc: Any) -> None:
    """Fill the ``None`` fields of a ``ModelConfig`` in place with its detector's own values (the backbone
    and the head fields the detector takes; the others stay ``None``)."""
    spec = get_detector(mc.detector)
    for f in BACKBONE_FIELDS:
        if getattr(mc, f) is None:
            setattr(mc, f, _plain(spec.backbone_defaults[f]))
    for f, key in spec.config_fields.items():
        if getattr(mc, f) is None:
            setattr(mc, f, _plain(spec.head_defaults[key]))


def check_model_config(mc: Any) -> None:
    """``ValueError`` for keys of ``model.detector_overrides`` / ``model.dino`` the detector does not take."""
    spec = get_detector(mc.detector)
    field = spec.overrides_field
    other = "dino" if field == "detector_overrides" else "detector_overrides"
    if getattr(mc, other, None):
        raise ValueError(f"model.{other} is not used by {spec.name} (its options go in model.{field})")
    given = getattr(mc, field)
    unknown = sorted(set(given) - set(spec.head_defaults))
    if unknown:
        raise ValueError(
            f"model.{field}: unknown key(s) {unknown} for {spec.name}; valid: {sorted(spec.head_defaults)}"
        )
    owned = {key: f for f, key in spec.config_fields.items() if key in given}
    if owned:
        raise ValueError(f"model.{field}: set {', '.join(f'model.{f}' for f in owned.values())} instead")


def builder_kwargs(mc: Any, num_classes: int) -> dict[str, Any]:
    """The arguments of the detector's ``build`` for a ``ModelConfig`` (resolved on a copy)."""
    mc = dataclasses.replace(mc)
    resolve_model_config(mc)
    spec = get_detector(mc.detector)
    overrides = dict(mc.backbone_overrides)
    for f in ("focal_windows", "drop_path_rate"):
        if getattr(mc, f) is not None:
            overrides.setdefault(f, _plain(getattr(mc, f)))
    kwargs: dict[str, Any] = dict(
        backbone=mc.backbone,
        num_classes=num_classes,
        backbone_checkpoint=mc.backbone_checkpoint or None,
        frozen_stages=mc.frozen_stages,
        grad_checkpointing=mc.grad_checkpointing,
        backbone_overrides=overrides,
    )
    for f, key in spec.config_fields.items():
        if getattr(mc, f) is not None:
            kwargs[key] = getattr(mc, f)
    kwargs.update(getattr(mc, spec.overrides_field))
    return kwargs


def build_detector(
    detector: str = "mask_rcnn", backbone: str | None = None, num_classes: int = 81, **options: Any
) -> nn.Module:
    """Build any registered detector: ``options`` are its builder's (backbone keywords, any
    :class:`~focalnet.FocalNetConfig` field, the keys of its spec's ``head_defaults``); ``num_classes``
    counts the background (COCO: 81; FocalNet-DINO: the number of class logits, 91 for COCO ids)."""
    return get_detector(detector).build(backbone=backbone, num_classes=num_classes, **options)


def build_from_config(mc: Any, num_classes: int, *, training: bool = False) -> nn.Module:
    """The detector a ``ModelConfig`` describes. With ``training``, the configuration is first built on
    the meta device and refused (:class:`~focalnet.weights.checks.ModelTooLargeError`, one line naming
    the size) when training it would not fit the memory budget."""
    spec = get_detector(mc.detector)
    kwargs = builder_kwargs(mc, num_classes)
    if training:
        probe = {**kwargs, "backbone_checkpoint": None}
        check_config_size(
            lambda: spec.build(**probe), f"model configuration ({spec.name}, {kwargs['backbone']})", training=True
        )
    return spec.build(**kwargs)
