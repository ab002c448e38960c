"""The FocalNet backbone of every detector, built one way: the backbone's keywords are sieved out of a
builder's options once (:func:`pop_backbone_options`) and turned into a
:class:`~focalnet.models.focalnet.FocalNetBackbone` by :func:`build_backbone`, with the detector's own
defaults (its spec's ``backbone_defaults``) under whatever the caller gave."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..factory import create_backbone
from ..models.focalnet import FocalNetBackbone, FocalNetConfig

__all__ = ["BACKBONE_KEYWORDS", "FOCALNET_FIELDS", "build_backbone", "pop_backbone_options", "check_num_classes"]

# builder keywords that belong to the backbone, besides FocalNetConfig fields
BACKBONE_KEYWORDS = ("backbone_checkpoint", "frozen_stages", "grad_checkpointing", "backbone_overrides")
FOCALNET_FIELDS = frozenset(FocalNetConfig.__dataclass_fields__) - {"num_classes"}
_TUPLE_FIELDS = ("focal_windows", "depths", "focal_levels")


def pop_backbone_options(options: dict[str, Any]) -> dict[str, Any]:
    """Remove the backbone's keywords (:data:`BACKBONE_KEYWORDS` and any ``FocalNetConfig`` field, e.g.
    ``drop_path_rate=0.2``) from a builder's ``options`` in place and return them; what stays is the head's."""
    return {k: options.pop(k) for k in list(options) if k in BACKBONE_KEYWORDS or k in FOCALNET_FIELDS}


def build_backbone(
    backbone: str | None,
    defaults: Mapping[str, Any],
    *,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    backbone_checkpoint: str | os.PathLike | None = None,
    frozen_stages: int = -1,
    grad_checkpointing: bool = False,
    backbone_overrides: Mapping[str, Any] | None = None,
    **fields: Any,
) -> FocalNetBackbone:
    """The FocalNet variant ``backbone`` (default ``defaults["backbone"]``) as a dense backbone.

    Settings, later winning: ``defaults["focal_windows"]`` (``None``: the variant's own) and
    ``defaults["drop_path_rate"]``, then ``backbone_overrides``, then ``fields`` (``FocalNetConfig``
    fields given directly). ``backbone_checkpoint`` loads ImageNet or detection weights (see
    :func:`focalnet.create_backbone`)."""
    unknown = set(fields) - FOCALNET_FIELDS
    if unknown:
        raise TypeError(f"unknown backbone option(s) {sorted(unknown)}; valid: {sorted(FOCALNET_FIELDS)}")
    settings = {k: defaults[k] for k in ("focal_windows", "drop_path_rate") if defaults.get(k) is not None}
    settings.update(backbone_overrides or {})
    settings.update(fields)
    for k in _TUPLE_FIELDS:
        if isinstance(settings.get(k), list):
            settings[k] = tuple(settings[k])
    body = create_backbone(
        backbone or defaults["backbone"],
        out_indices=tuple(out_indices),
        checkpoint_path=backbone_checkpoint,
        frozen_stages=frozen_stages,
        **settings,
    )
    if grad_checkpointing:
        body.set_grad_checkpointing(True)
    return body


def check_num_classes(num_classes: int) -> None:
    """``num_classes`` counts the background: at least 2 (one class and the background)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be an integer >= 2, got {num_classes!r}")
