"""The segmentors of the package, one line each, and what derives from them: names, the spec of a file's
``meta``, the checkpoint layouts :func:`~focalnet.segmentation.load_segmentor` recognises.

A segmentor defined outside the package joins with :func:`register_segmentor` (its
:class:`~focalnet.segmentation.spec.SegmentorSpec`); from then on ``--segmentor NAME``, configs,
training, saving and loading know it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..weights.errors import MalformedCheckpointError
from ..weights.layouts import Layout
from .segmentors import MASK2FORMER, UPERNET
from .spec import Read, SegmentorSpec

__all__ = [
    "SEGMENTORS",
    "DEFAULT_SEGMENTOR",
    "register_segmentor",
    "get_segmentor",
    "segmentor_of",
    "segmentor_layouts",
]

DEFAULT_SEGMENTOR = "upernet"

# every segmentor: name -> spec (one line each)
SEGMENTORS: dict[str, SegmentorSpec] = {s.name: s for s in (UPERNET, MASK2FORMER)}


def register_segmentor(spec: SegmentorSpec, *, replace: bool = False) -> SegmentorSpec:
    """Add a segmentor defined outside the package (``replace=True`` to redefine a name)."""
    if not isinstance(spec, SegmentorSpec):
        raise TypeError(f"expected a SegmentorSpec, got {type(spec).__name__}")
    if spec.name in SEGMENTORS and SEGMENTORS[spec.name] is not spec and not replace:
        raise ValueError(f"a segmentor named {spec.name!r} exists already (replace=True to redefine it)")
    SEGMENTORS[spec.name] = spec
    return spec


def get_segmentor(name: str) -> SegmentorSpec:
    """The spec of segmentor ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return SEGMENTORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown segmentor {name!r}; one of {', '.join(SEGMENTORS)}") from None


def segmentor_of(meta: Mapping[str, Any], source: str = "checkpoint") -> SegmentorSpec:
    """The spec a file's ``meta`` names (``meta["segmentor"]``; files written before Mask2Former existed
    have none: UPerNet); a :class:`MalformedCheckpointError` for a name no spec has."""
    name = meta.get("segmentor", DEFAULT_SEGMENTOR)
    if not isinstance(name, str) or name not in SEGMENTORS:
        raise MalformedCheckpointError(f"{source}: stored segmentor {name!r:.40} is not one of {', '.join(SEGMENTORS)}")
    return SEGMENTORS[name]


def segmentor_layouts() -> list[Layout[Read]]:
    """The original checkpoint layouts of every registered segmentor (each once)."""
    out: list[Layout[Read]] = []
    for spec in SEGMENTORS.values():
        out += [layout for layout in spec.layouts if all(layout is not o for o in out)]
    return out
