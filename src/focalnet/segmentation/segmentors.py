"""The segmentors' specs (:class:`~focalnet.segmentation.spec.SegmentorSpec`): UPerNet (with its original
mmsegmentation layout) and Mask2Former (with the official detectron2 layouts: ``.pth`` and the model
zoo's ``.pkl``).

Each spec carries what the loading path needs besides the common steps: the segmentor's head settings
checked against the tensors (``check_head``), the model rebuilt from a file's ``meta`` (``from_meta``),
the original layouts it reads, and the writer of ``convert --to original``. The models (and torch) are
imported on first use: listing the segmentors (``--segmentor`` choices and help) costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from ..weights.errors import CheckpointMismatchError, MalformedCheckpointError
from ..weights.layouts import Layout
from .spec import LazyMapping, Read, SegmentorSpec

__all__ = ["UPERNET", "MASK2FORMER", "MMSEG_LAYOUT", "MASK2FORMER_OFFICIAL_LAYOUT", "stored_head"]


def stored_head(meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``meta["head"]`` as a dict (``{}`` where absent); a :class:`MalformedCheckpointError` if it is not a mapping."""
    head = meta.get("head")
    if head is None:
        return {}
    if not isinstance(head, Mapping):
        raise MalformedCheckpointError(f"{source}: stored 'head' must be a mapping, got {type(head).__name__}")
    return dict(head)


def _check_tensors(sd: Any, source: str) -> dict[str, Any]:
    from ..weights.checks import check_tensors

    return check_tensors(sd, source)


# --------------------------------------------------------------------------------------------- UPerNet
_BOUNDED = ("pool_scales",)  # sequences whose length decides how many modules are built


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pat.match(k))})


def _check_upernet_head(meta: Mapping[str, Any], sd: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The stored :class:`HeadConfig` of the right types, with as many pool scales and aux convs as the
    tensors have."""
    from .model import HeadConfig

    head = stored_head(meta, source)
    unknown = sorted(set(head) - {f.name for f in fields(HeadConfig)})
    if unknown:
        raise MalformedCheckpointError(f"{source}: stored head settings {unknown} are not HeadConfig fields")
    try:
        cfg = HeadConfig(**{k: tuple(v) if k in _BOUNDED else v for k, v in head.items()})
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise MalformedCheckpointError(f"{source}: stored head settings are invalid: {e}") from None
    for k in ("channels", "aux_in_index", "aux_channels", "aux_num_convs"):
        if not isinstance(getattr(cfg, k), int) or isinstance(getattr(cfg, k), bool):
            raise MalformedCheckpointError(f"{source}: stored head {k!r} must be an integer")
    if not all(isinstance(s, int) for s in cfg.pool_scales):
        raise MalformedCheckpointError(f"{source}: stored head 'pool_scales' must be integers")
    for what, n_stored, prefix in (
        ("pool scales", len(cfg.pool_scales), "decode_head.psp_modules."),
        ("auxiliary convs", cfg.aux_num_convs if cfg.aux else 0, "auxiliary_head.convs."),
    ):
        if n_stored != _count(sd, prefix):
            raise CheckpointMismatchError(
                f"{source}: the stored head has {n_stored} {what}, the tensors {_count(sd, prefix)} ({prefix}*)"
            )
    return dict(meta)


def _build_upernet(*args: Any, **kwargs: Any) -> Any:
    from .model import upernet

    return upernet(*args, **kwargs)


def _upernet_from_meta(meta: Mapping[str, Any], **backbone_overrides: Any) -> Any:
    from .model import upernet_from_meta

    return upernet_from_meta(meta, **backbone_overrides)


def _upernet_head_defaults() -> dict[str, Any]:
    from .model import HeadConfig

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(HeadConfig()).items()}


def _upernet_backbone_defaults() -> dict[str, Any]:
    from .model import UPERNET_BACKBONE_DEFAULTS

    return dict(UPERNET_BACKBONE_DEFAULTS)


def _is_mmseg(obj: Mapping[str, Any]) -> bool:
    from .mmseg import is_mmseg_segmentor

    return (
        "format" not in obj
        and "segmentation_meta" not in obj
        and isinstance(obj.get("state_dict"), Mapping)
        and is_mmseg_segmentor(obj["state_dict"])
    )


def _write_mmseg(meta: Mapping[str, Any], sd: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    from .mmseg import focalnet_to_mmseg

    return focalnet_to_mmseg(meta, sd, extra)


def _read_mmseg(obj: Mapping[str, Any], source: str) -> Read:
    from .mmseg import mmseg_to_focalnet

    _check_tensors(obj["state_dict"], source)  # string keys, tensors, sizes: before any shape is read
    try:
        return mmseg_to_focalnet(obj, source)
    except (CheckpointMismatchError, MalformedCheckpointError) as e:
        msg = str(e) if str(e).startswith(source) else f"{source}: {e}"
        raise type(e)(msg) from None


MMSEG_LAYOUT: Layout[Read] = Layout(
    "mmsegmentation",
    "{'meta', 'state_dict'} with backbone./decode_head. keys (an original mmseg 0.x UPerNet)",
    _is_mmseg,
    _read_mmseg,
)

UPERNET = SegmentorSpec(
    name="upernet",
    title="UPerNet",
    summary="UPerHead + auxiliary FCN head, per-pixel classes (the released ADE20K models)",
    build=_build_upernet,
    from_meta=_upernet_from_meta,
    check_head=_check_upernet_head,
    backbone_defaults=LazyMapping(_upernet_backbone_defaults),
    head_defaults=LazyMapping(_upernet_head_defaults),
    tasks=("semantic",),
    layouts=(MMSEG_LAYOUT,),
    write=_write_mmseg,
    recipe="upernet_focalnet_tiny_srf_ade20k_160k",
)


# ----------------------------------------------------------------------------------------- Mask2Former
def _check_dataset_meta(meta: dict[str, Any], source: str) -> None:
    """``thing_classes`` (one bool per class) and ``category_ids`` (one distinct integer per class), where
    stored: what panoptic inference and the COCO panoptic files need besides the weights."""
    n = meta["num_classes"]
    things = meta.get("thing_classes")
    if things is not None:
        if not isinstance(things, (list, tuple)) or len(things) != n or not all(isinstance(t, bool) for t in things):
            raise MalformedCheckpointError(f"{source}: stored thing_classes must be a list of {n} booleans")
        meta["thing_classes"] = list(things)
    ids = meta.get("category_ids")
    if ids is not None:
        if (
            not isinstance(ids, (list, tuple))
            or len(ids) != n
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**31 for i in ids)
            or len(set(ids)) != n
        ):
            raise MalformedCheckpointError(f"{source}: stored category_ids must be a list of {n} distinct integers")
        meta["category_ids"] = list(ids)


def _check_mask2former_head(meta: Mapping[str, Any], sd: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The stored :class:`Mask2FormerConfig` (known fields, types, bounds) and the dataset's thing classes
    and category ids; sizes against the tensors are the strict build's to compare."""
    from .mask2former.model import Mask2FormerConfig

    meta = dict(meta)
    try:
        meta["head"] = Mask2FormerConfig.from_dict(stored_head(meta, source)).to_dict()
    except (TypeError, ValueError) as e:
        raise MalformedCheckpointError(f"{source}: stored head settings are invalid: {e}") from None
    _check_dataset_meta(meta, source)
    return meta


def _official_weights(obj: Mapping[str, Any]) -> Any:
    model = obj.get("model")
    return model if isinstance(model, Mapping) else obj


def _is_official_mask2former(obj: Mapping[str, Any]) -> bool:
    from .mask2former.official import is_official_mask2former

    return "format" not in obj and "segmentation_meta" not in obj and is_official_mask2former(_official_weights(obj))


def _read_official(obj: Mapping[str, Any], source: str) -> Read:
    from .mask2former.official import official_to_ours
    from .model import IMAGENET_MEAN, IMAGENET_STD

    sd = _check_tensors(_official_weights(obj), source)  # string keys, tensors, sizes: before any shape is read
    try:
        meta, ours = official_to_ours(sd)
    except (CheckpointMismatchError, MalformedCheckpointError) as e:
        msg = str(e) if str(e).startswith(source) else f"{source}: {e}"
        raise type(e)(msg) from None
    stored = obj.get("focalnet_meta") if sd is not obj else None  # what our writer adds (names, things, ids)
    if stored is not None:
        if not isinstance(stored, Mapping):
            raise MalformedCheckpointError(f"{source}: stored 'focalnet_meta' must be a mapping")
        meta.update({k: stored[k] for k in ("class_names", "thing_classes", "category_ids") if k in stored})
    extra = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "source": "mask2former"}  # detectron2's
    return meta, ours, extra


def _write_official(meta: Mapping[str, Any], sd: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """detectron2's checkpoint ``{"model": state dict}`` plus ``focalnet_meta`` (class names, thing classes,
    category ids: keys detectron2 leaves alone)."""
    from .mask2former.official import ours_to_official

    keep = {k: meta.get(k) for k in ("class_names", "thing_classes", "category_ids") if meta.get(k) is not None}
    return {"model": ours_to_official(sd), "focalnet_meta": keep}


def _build_mask2former(*args: Any, **kwargs: Any) -> Any:
    from .mask2former.model import mask2former

    return mask2former(*args, **kwargs)


def _mask2former_from_meta(meta: Mapping[str, Any], **backbone_overrides: Any) -> Any:
    from .mask2former.model import mask2former_from_meta

    return mask2former_from_meta(meta, **backbone_overrides)


def _mask2former_head_defaults() -> dict[str, Any]:
    from .mask2former.model import Mask2FormerConfig

    return Mask2FormerConfig().to_dict()


def _mask2former_backbone_defaults() -> dict[str, Any]:
    from .mask2former.model import MASK2FORMER_BACKBONE_DEFAULTS

    return dict(MASK2FORMER_BACKBONE_DEFAULTS)


MASK2FORMER_OFFICIAL_LAYOUT: Layout[Read] = Layout(
    "mask2former",
    "{'model': {...}} (or a bare state dict) with backbone./sem_seg_head.pixel_decoder./sem_seg_head.predictor. "
    "keys: an official Mask2Former .pth, or a model zoo .pkl",
    _is_official_mask2former,
    _read_official,
)

MASK2FORMER = SegmentorSpec(
    name="mask2former",
    title="Mask2Former",
    summary="masked-attention mask transformer: panoptic, semantic or instance masks (Cheng et al., CVPR 2022)",
    build=_build_mask2former,
    from_meta=_mask2former_from_meta,
    check_head=_check_mask2former_head,
    backbone_defaults=LazyMapping(_mask2former_backbone_defaults),
    head_defaults=LazyMapping(_mask2former_head_defaults),
    tasks=("panoptic", "semantic", "instance"),
    config_field="mask2former",
    layouts=(MASK2FORMER_OFFICIAL_LAYOUT,),
    write=_write_official,
    recipe="mask2former_focalnet_tiny_coco_panoptic",
)
