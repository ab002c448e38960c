"""Bounds of every count and size a model or a run reads from a file or a flag, checked before any work.

A setting such as ``depths=[1000000, 1, 1, 1]``, ``enc_layers=10**6``, a test scale of 100000 px or a
RandAugment of a million ops per image is a valid number of the right type, yet building or running it
takes minutes to hours and gigabytes. Each such field declares its bounds here (or, for the typed run
configs, in the ``BOUNDS`` of its dataclass section, applied by :func:`focalnet.engine.config.build_config`),
and :func:`check_bounds` refuses a value outside them with one line naming the key, the value and the
range, before anything is built (the meta-device size check then runs on a bounded model, in milliseconds).

This module is at the bottom of the package (no torch, no other focalnet import), so that the models,
the weight readers, the factory, the engine and the tasks all check the same table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "Bound",
    "BoundsError",
    "COUNT_BOUNDS",
    "FOCALNET_BOUNDS",
    "MAX_DRAW_SIDE",
    "MAX_IMAGE_SIDE",
    "MAX_LEGEND_FONT",
    "SIDE",
    "check_bounds",
    "check_normalization",
    "check_sides",
    "check_value",
    "count_bound",
]


class BoundsError(ValueError):
    """A count or size outside its documented bounds (the message names the key, value and range)."""


class Bound(NamedTuple):
    """Inclusive range ``[lo, hi]`` of a number, or of each number of a list; ``max_len``: at most that
    many entries in the list."""

    lo: float
    hi: float
    max_len: int | None = None


MAX_IMAGE_SIDE = 8192  # the longest side any model works at (test scales, image sizes, crops)
MAX_DRAW_SIDE = 4096  # drawings (detections, overlays) are made at most this large on their long side
MAX_LEGEND_FONT = 64  # px: the legend's font never grows beyond it, whatever the image height
SIDE = Bound(16, MAX_IMAGE_SIDE)

# FocalNetConfig (every backbone: classifier, detector, segmentor; from files and from overrides)
FOCALNET_BOUNDS: dict[str, Bound] = {
    "embed_dim": Bound(1, 4096),
    "depths": Bound(1, 64, max_len=8),
    "focal_levels": Bound(1, 16, max_len=8),
    "focal_windows": Bound(1, 63, max_len=8),
    "focal_factor": Bound(0, 16),
    "patch_size": Bound(1, 64),
    "in_chans": Bound(1, 64),
    "num_classes": Bound(0, 100_000),
    "mlp_ratio": Bound(0.01, 64),
    "layerscale_value": Bound(0, 1e3),
    "drop_rate": Bound(0, 1),
    "drop_path_rate": Bound(0, 1),
}

# count and size settings without a table of their own (a detector head's, DINO's, a segmentor's) are
# bounded by their name: the first pattern that matches the key's last part applies (to any number)
COUNT_BOUNDS: tuple[tuple[re.Pattern[str], Bound], ...] = (
    (re.compile(r"(^|_)(heads|nheads|n_points|levels)$"), Bound(1, 64)),
    (re.compile(r"(^|_)(layers|depth|stages|convs|stacks|iters?)$"), Bound(0, 64)),
    (
        re.compile(r"(queries|proposals|select|detections_per_img|top_n(_\w+)?|per_img|dn_number|topk)$"),
        Bound(0, 10_000),
    ),
    (re.compile(r"(dim|channels|feedforward|representation_size|hidden|embed)$"), Bound(1, 8192)),
    (re.compile(r"^(min_size|max_size|img_size|image_size|crop_size|test_size)$"), Bound(1, MAX_IMAGE_SIDE)),
    (re.compile(r"(num_classes|labelbook_size)$"), Bound(1, 100_000)),
)


def count_bound(key: str) -> Bound | None:
    """The bound a setting named ``key`` (dotted: its last part counts) gets from :data:`COUNT_BOUNDS`."""
    name = key.rsplit(".", 1)[-1]
    for pattern, bound in COUNT_BOUNDS:
        if pattern.search(name):
            return bound
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_value(key: str, value: Any, bound: Bound) -> None:
    """:class:`BoundsError` where ``value`` (a number, or a list of them) is outside ``bound``; values of
    other types are left to the type checks."""
    if isinstance(value, (list, tuple)):
        if bound.max_len is not None and len(value) > bound.max_len:
            raise BoundsError(f"{key}: {len(value)} entries, at most {bound.max_len} allowed")
        for i, v in enumerate(value):
            check_value(f"{key}[{i}]", v, bound)
        return
    if not _is_number(value):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise BoundsError(f"{key}: {value!r} is not a finite number (allowed: {_range(bound)})")
    if not bound.lo <= value <= bound.hi:
        raise BoundsError(f"{key}: {_short(value)} is outside the allowed range {_range(bound)}")


def check_bounds(
    values: Mapping[str, Any],
    table: Mapping[str, Bound | Mapping[str, Any]],
    prefix: str = "",
    by_name: bool = False,
) -> None:
    """Check every entry of ``values`` that ``table`` bounds (a nested table bounds a nested mapping);
    ``by_name``: entries the table leaves out are bounded by their name (:func:`count_bound`), as are
    the entries of nested mappings. :class:`BoundsError` naming ``prefix + key`` otherwise."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        spec = table.get(key) if isinstance(key, str) else None
        if isinstance(spec, Mapping):
            if isinstance(value, Mapping):
                check_bounds(value, spec, name + ".", by_name=True)
            continue
        if spec is None and by_name and isinstance(key, str):
            if isinstance(value, Mapping):
                check_bounds(value, {}, name + ".", by_name=True)
                continue
            spec = count_bound(key)
        if spec is not None:
            check_value(name, value, spec)


def check_normalization(mean: Any, std: Any, where: str, channels: int | None = None) -> None:
    """Normalisation values as they must be wherever they are read: lists of finite numbers (one per
    channel, when ``channels`` is given), every ``std`` > 0 (a zero divides every pixel by zero: NaN maps
    and a confident wrong class). :class:`BoundsError` naming ``where`` otherwise."""
    for name, v in (("mean", mean), ("std", std)):
        vals = list(v) if isinstance(v, (list, tuple)) else None
        if not vals or not all(_is_number(x) for x in vals):
            raise BoundsError(f"{where}: {name} must be a list of numbers, got {_short(v)}")
        if not all(math.isfinite(x) for x in vals):
            raise BoundsError(f"{where}: {name} {_short(v)} holds a non-finite value")
        if channels is not None and len(vals) not in (1, channels):
            raise BoundsError(f"{where}: {name} has {len(vals)} values for {channels} channels")
        if name == "std" and min(vals) <= 0:
            raise BoundsError(f"{where}: std {_short(v)} must be > 0 for every channel (it divides the pixels)")


def check_sides(key: str, sides: Sequence[Any], bound: Bound = SIDE) -> None:
    """Image sides (``[h, w]``, a test scale, a crop) within ``bound``."""
    check_value(key, list(sides), bound)


def _range(b: Bound) -> str:
    return f"[{_short(b.lo)}, {_short(b.hi)}]"


def _short(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
