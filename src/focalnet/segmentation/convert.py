"""Original mmsegmentation 0.x FocalNet UPerNet files <-> this package's segmentation files.

The released ADE20K models are mmcv checkpoints ``{"meta": {...}, "state_dict": {...}}`` (sometimes with
an ``optimizer`` entry, which is dropped) of mmseg's ``EncoderDecoder``: the FocalNet backbone
(``backbone.*``), ``UPerHead`` (``decode_head.psp_modules/bottleneck/lateral_convs/fpn_convs/
fpn_bottleneck/conv_seg``) and the auxiliary ``FCNHead`` (``auxiliary_head.convs/conv_seg``), BatchNorm
statistics included. :class:`~focalnet.segmentation.UPerNet` has the same module tree (mmcv's
``ConvModule`` child names ``conv``/``bn``), so the keys map one to one; converting means reading the
architecture off the keys and carrying the metadata:

* backbone: variant, depths, widths, focal levels and windows from the kernels (as for mmdetection
  files, :func:`focalnet.weights.infer.mmdet_backbone_config`);
* head: classes and channels from ``conv_seg``, the number of pyramid-pooling branches, the auxiliary
  head's channels, number of convs and input level (from its input width); pool scales, ``align_corners``,
  dropout and the normalisation come from the config text mmseg stores in ``meta["config"]`` where
  present, else the released recipe (scales 1/2/3/6, ``align_corners=False``, dropout 0.1, mmseg's
  ImageNet mean/std);
* class names: ``meta["CLASSES"]`` where present, else the 150 ADE20K names for a 150-class head.

``focalnet_to_mmseg`` writes the original layout back (keys in the order mmseg builds them; the
original ``meta`` where the file came from one), so that a round trip is bit-exact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .data import ADE20K_CLASSES
from .model import FORMAT, IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, HeadConfig

__all__ = [
    "is_mmseg_segmentor",
    "mmseg_head_config",
    "mmseg_to_focalnet",
    "focalnet_to_mmseg",
    "convert_segmentor",
]

StateDict = dict[str, torch.Tensor]
_DEFAULT_SCALE = (2048, 512)  # the ADE20K test resize of the released configs


def is_mmseg_segmentor(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict is an mmseg encoder-decoder (``backbone.`` and ``decode_head.`` keys)."""
    return any(k.startswith("backbone.") for k in sd) and any(k.startswith("decode_head.") for k in sd)


def _indices(sd: Mapping[str, Any], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _key(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"not a FocalNet UPerNet: key {key!r} is missing")
    return sd[key]


def config_hints(text: str) -> dict[str, Any]:
    """Head and preprocessing settings from an mmseg config text (``meta["config"]``), where present."""
    hints: dict[str, Any] = {}
    if m := re.search(r"pool_scales\s*=\s*[(\[]([\d,\s]+)[)\]]", text):
        hints["pool_scales"] = tuple(int(v) for v in m.group(1).replace(" ", "").split(",") if v)
    if m := re.search(r"align_corners\s*=\s*(True|False)", text):
        hints["align_corners"] = m.group(1) == "True"
    if m := re.search(r"dropout_ratio\s*=\s*([\d.]+)", text):
        hints["dropout"] = float(m.group(1))
    if m := re.search(r"img_norm_cfg\s*=\s*dict\(\s*mean\s*=\s*\[([^\]]*)\]\s*,\s*std\s*=\s*\[([^\]]*)\]", text):
        hints["mean"] = [float(v) for v in m.group(1).split(",")]
        hints["std"] = [float(v) for v in m.group(2).split(",")]
    if m := re.search(r"img_scale\s*=\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", text):
        hints["scale"] = [int(m.group(1)), int(m.group(2))]
    return hints


def mmseg_head_config(
    sd: Mapping[str, torch.Tensor], dims: tuple[int, ...], hints: Mapping[str, Any] | None = None
) -> tuple[int, HeadConfig]:
    """``(num_classes, HeadConfig)`` of an mmseg UPerNet state dict on a backbone of widths ``dims``."""
    hints = dict(hints or {})
    seg = _key(sd, "decode_head.conv_seg.weight")
    num_classes, channels = int(seg.shape[0]), int(seg.shape[1])
    n_pool = len(_indices(sd, "decode_head.psp_modules."))
    scales = tuple(hints.get("pool_scales") or ((1, 2, 3, 6) if n_pool == 4 else ()))
    if len(scales) != n_pool:
        raise ValueError(
            f"decode_head has {n_pool} pyramid-pooling branches but the pool scales {scales or '(none)'} "
            "(from the file's config, else 1/2/3/6) do not match; the weights cannot show the scales"
        )
    head = HeadConfig(
        channels=channels,
        pool_scales=scales,
        dropout=float(hints.get("dropout", 0.1)),
        align_corners=bool(hints.get("align_corners", False)),
        aux=any(k.startswith("auxiliary_head.") for k in sd),
    )
    if head.aux:
        convs = _indices(sd, "auxiliary_head.convs.")
        if not convs:
            raise ValueError("auxiliary_head has no convs (FCNHead with num_convs=0 is not supported)")
        w = _key(sd, "auxiliary_head.convs.0.conv.weight")
        in_ch = int(w.shape[1])
        if in_ch not in dims:
            raise ValueError(f"auxiliary_head takes {in_ch} channels: no backbone level has that width {list(dims)}")
        head.aux_in_index = dims.index(in_ch)
        head.aux_channels = int(w.shape[0])
        head.aux_num_convs = len(convs)
    head.validate()
    return num_classes, head


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def mmseg_to_focalnet(obj: Mapping[str, Any]) -> tuple[dict[str, Any], StateDict, dict[str, Any]]:
    """``(meta, state_dict, extra)`` in this package's terms for a loaded mmseg file
    (``{"meta": ..., "state_dict": ...}``); the weights are the file's tensors, unchanged."""
    from ..weights.infer import mmdet_backbone_config
    from ..models.focalnet import FocalNetConfig

    sd = dict(obj["state_dict"])
    if not is_mmseg_segmentor(sd):
        raise ValueError("not an mmsegmentation encoder-decoder state dict (no backbone./decode_head. keys)")
    original_meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else None
    hints = config_hints(str(original_meta.get("config", ""))) if original_meta else {}
    variant, fields = mmdet_backbone_config(sd)
    cfg = FocalNetConfig.from_dict(fields)
    num_classes, head = mmseg_head_config(sd, tuple(cfg.dims), hints)
    names = original_meta.get("CLASSES") if original_meta else None
    if names is None or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        names = ADE20K_CLASSES if num_classes == len(ADE20K_CLASSES) else None
    meta = {
        "backbone": variant,
        "backbone_overrides": {k: _plain(v) for k, v in fields.items()},
        "backbone_config": cfg.to_dict(),
        "num_classes": num_classes,
        "class_names": list(names) if names is not None else None,
        "head": {k: _plain(v) for k, v in asdict(head).items()},
        "source": "mmsegmentation",
    }
    extra: dict[str, Any] = {
        "mean": list(hints.get("mean", IMAGENET_MEAN)),
        "std": list(hints.get("std", IMAGENET_STD)),
        "test": {"mode": "whole", "scale": list(hints.get("scale", _DEFAULT_SCALE))},
        "source": "mmsegmentation",
        "original_meta": original_meta,
    }
    if names is not None and tuple(names) == ADE20K_CLASSES:
        extra["data"] = {"layout": "ade20k", "reduce_zero_label": True, "ignore_index": IGNORE_INDEX}
    return meta, sd, extra


def _mmseg_rank(key: str) -> int:
    # mmseg builds BaseDecodeHead.conv_seg before the head's own modules
    for i, prefix in enumerate(
        ("backbone.", "decode_head.conv_seg.", "decode_head.", "auxiliary_head.conv_seg.", "auxiliary_head.")
    ):
        if key.startswith(prefix):
            return i
    raise ValueError(f"{key!r} has no place in an mmseg UPerNet (backbone./decode_head./auxiliary_head.)")


def focalnet_to_mmseg(
    meta: Mapping[str, Any], sd: Mapping[str, torch.Tensor], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The original mmseg layout ``{"meta": ..., "state_dict": ...}`` of one of our segmentors: the same
    tensors, keys in mmseg's module order; ``meta`` is the original file's where the model came from
    one, else ``{"CLASSES": ...}`` (what mmseg reads) plus our model description."""
    keys = sorted(sd, key=_mmseg_rank)  # stable: module order within each group
    original = (extra or {}).get("original_meta")
    if original is None:
        names = meta.get("class_names") or [str(i) for i in range(int(meta["num_classes"]))]
        original = {"CLASSES": tuple(names), "focalnet_meta": dict(meta)}
    return {"meta": original, "state_dict": {k: sd[k] for k in keys}}


def convert_segmentor(src: str | os.PathLike, dst: str | os.PathLike, to: str = "focalnet") -> Path:
    """Convert a segmentation file: ``to="focalnet"`` writes this package's format (what ``train``
    writes as ``model.pt``), ``to="original"`` the mmsegmentation 0.x layout. The input may be either;
    it is checked strictly against the model it describes (missing, unexpected and mis-shaped keys are
    named) before anything is written. Returns the output path."""
    from ..weights.infer import CheckpointMismatchError, check_state_dict
    from ..weights.io import atomic_save
    from .model import _build_from_meta, read_segmentor

    if to not in ("focalnet", "original"):
        raise ValueError(f"to must be 'focalnet' or 'original', got {to!r}")
    meta, sd, extra = read_segmentor(src)
    with torch.device("meta"):  # shapes only: no weights are initialised
        model = _build_from_meta(meta)
    try:
        check_state_dict(model.state_dict(), sd)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{os.fspath(src)}: {e}") from None
    dst = Path(dst)
    if dst.resolve() == Path(src).resolve():
        raise ValueError(f"refusing to overwrite the input {src}")
    if to == "focalnet":
        atomic_save({"format": FORMAT, "meta": meta, "extra": extra, "state_dict": dict(sd)}, dst)
    else:
        atomic_save(focalnet_to_mmseg(meta, sd, extra), dst)
    return dst
