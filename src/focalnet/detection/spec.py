"""What the package knows about a detector, declared once per detector: :class:`DetectorSpec` and the
checkpoint :class:`Layout` objects it reads.

Each detector module ends with its ``SPEC`` next to its builder; :mod:`focalnet.detection.registry`
collects them (one line per detector) and everything else derives from there: ``ModelConfig.detector``
validation, the ``--detector`` choices and help, build dispatch, whether a detector predicts masks, the
checkpoint layouts :func:`~focalnet.detection.load_detector` recognises, the docs tables. A detector defined
outside the package is added with :func:`~focalnet.detection.registry.register_detector`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["DetectorSpec", "Layout", "LayoutRead", "BACKBONE_FIELDS", "HEAD_FIELDS", "resolve_options"]

# ModelConfig fields whose default is "the detector's own" (None in the config, resolved from the spec)
BACKBONE_FIELDS = ("backbone", "focal_windows", "drop_path_rate")
HEAD_FIELDS = (
    "fpn_channels",
    "representation_size",
    "mask_head_channels",
    "min_size",
    "max_size",
    "score_thresh",
    "nms_thresh",
    "detections_per_img",
    "mmdet_compat",
)


class LayoutRead(NamedTuple):
    """What a :class:`Layout` reads off a file: ``ModelConfig`` fields (a dict), the state dict in the
    package's own key names, ``meta`` (``num_classes`` with the background, ``source``, and
    ``class_names`` / ``category_ids`` where the file has them) and ``file_key``, the file's own name of
    a key of ours (mismatch errors speak the file's names; ``None``: the same names)."""

    fields: dict[str, Any]
    state_dict: dict[str, Any]
    meta: dict[str, Any]
    file_key: Callable[[str], str] | None = None


@dataclass(frozen=True)
class Layout:
    """One checkpoint layout a detector reads.

    * ``recognise(obj)``: whether a loaded file (``torch.load`` result) has this layout; must never raise
      and must exclude every other layout (``load_detector`` needs exactly one match);
    * ``weights(obj)``: the file's state dict as stored (checked for tensor types and sizes before ``read``);
    * ``read(obj, source)``: :class:`LayoutRead`;
    * ``write(state_dict) -> obj``: the file in this layout from a state dict of ours (``convert --to
      original``; ``None`` where there is no writer).
    """

    name: str
    describe: str
    recognise: Callable[[Any], bool]
    weights: Callable[[Any], Any]
    read: Callable[[Any, str], LayoutRead]
    write: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class DetectorSpec:
    """Everything the package needs to know about one detector.

    * ``title`` (``"Cascade Mask R-CNN"``) and ``summary`` (one line for ``--detector`` help and the docs);
    * ``build(backbone=None, num_classes=81, **options)``: the model; ``options`` are backbone keywords
      (``backbone_checkpoint``, ``frozen_stages``, ``grad_checkpointing``, ``backbone_overrides`` or any
      :class:`~focalnet.FocalNetConfig` field), ``train_resize``, and keys of ``head_defaults``;
    * ``backbone_defaults``: ``backbone`` (variant), ``focal_windows`` (``None``: the variant's own) and
      ``drop_path_rate`` of the released recipe;
    * ``head_defaults``: every head option ``build`` takes, with its released value;
    * ``config_fields``: ``ModelConfig`` field -> ``build`` keyword, for the head fields it takes (the
      others are unused by this detector and stay ``None`` in its configs);
    * ``overrides_field``: the ``ModelConfig`` dict holding further ``head_defaults`` keys
      (``detector_overrides``, DINO: ``dino``);
    * ``masks``: whether it predicts instance masks (training targets, ``segm`` evaluation);
    * ``layouts``: the original checkpoint layouts it reads (our own format is the package's);
    * ``recipe``: the packaged config of the released model (``focalnet detection configs``).
    """

    name: str
    title: str
    summary: str
    build: Callable[..., Any]
    backbone_defaults: Mapping[str, Any]
    head_defaults: Mapping[str, Any]
    config_fields: Mapping[str, str]
    masks: bool = False
    layouts: tuple[Layout, ...] = ()
    recipe: str | None = None
    overrides_field: str = "detector_overrides"

    def __post_init__(self) -> None:
        missing = set(BACKBONE_FIELDS) - set(self.backbone_defaults)
        if missing:
            raise ValueError(f"detector {self.name!r}: backbone_defaults lacks {sorted(missing)}")
        unknown = set(self.config_fields) - set(HEAD_FIELDS)
        if unknown:
            raise ValueError(f"detector {self.name!r}: config_fields {sorted(unknown)} are not ModelConfig head fields")
        absent = set(self.config_fields.values()) - set(self.head_defaults)
        if absent:
            raise ValueError(f"detector {self.name!r}: config_fields map to {sorted(absent)}, not in head_defaults")

    def options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``head_defaults`` updated with ``given`` (a ``TypeError`` naming unknown keys)."""
        return resolve_options(self.title, self.head_defaults, given)


def resolve_options(title: str, defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``{**defaults, **given}``; keys not in ``defaults`` are a ``TypeError`` naming them."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise TypeError(f"unknown {title} option(s) {sorted(unknown)}; valid: {sorted(defaults)}")
    return {**defaults, **given}
