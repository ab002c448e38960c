"""``focalnet segmentation convert``: our segmentation files <-> each segmentor's original layout
(mmsegmentation 0.x UPerNet files, official Mask2Former files).

Reading goes through the one loading path (:mod:`focalnet.segmentation.load`: layout, meta, tensors,
finite, keys and shapes all checked) before anything is written; the layout translation itself is the
segmentor spec's ``write`` (UPerNet: :mod:`focalnet.segmentation.mmseg`, whose names are re-exported here,
where they lived before).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..weights.io import atomic_save
from .load import FORMAT, check_segmentor, read_segmentor
from .mmseg import config_hints, focalnet_to_mmseg, is_mmseg_segmentor, mmseg_head_config, mmseg_to_focalnet
from .registry import segmentor_of

__all__ = [
    "is_mmseg_segmentor",
    "config_hints",
    "mmseg_head_config",
    "mmseg_to_focalnet",
    "focalnet_to_mmseg",
    "convert_segmentor",
]


def convert_segmentor(src: str | os.PathLike, dst: str | os.PathLike, to: str = "focalnet") -> Path:
    """Convert a segmentation file: ``to="focalnet"`` writes this package's format (what ``train``
    writes as ``model.pt``), ``to="original"`` the segmentor's original layout (UPerNet: mmsegmentation
    0.x; Mask2Former: the official detectron2 key names, a ``.pth`` file). The input may be any layout;
    it passes every check of the loading path (stored settings, tensor types and sizes, NaN/inf, keys
    and shapes against the model it describes, on the meta device) before anything is written.
    Returns the output path."""
    if to not in ("focalnet", "original"):
        raise ValueError(f"to must be 'focalnet' or 'original', got {to!r}")
    from ..engine.outputs import refuse_input_overwrite

    dst = refuse_input_overwrite(dst, [src])
    meta, sd, extra = read_segmentor(src)
    check_segmentor(meta, sd, os.fspath(src))
    if to == "focalnet":
        atomic_save({"format": FORMAT, "meta": meta, "extra": extra, "state_dict": dict(sd)}, dst)
    else:
        spec = segmentor_of(meta, os.fspath(src))
        if spec.write is None:
            raise ValueError(f"{spec.title} has no original layout to write; convert to focalnet instead")
        atomic_save(spec.write(meta, sd, extra), dst)
    return dst
