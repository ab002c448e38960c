"""What the package knows about a segmentor, declared once per segmentor: :class:`SegmentorSpec`.

:mod:`focalnet.segmentation.registry` lists the specs (one line each) and everything else derives from
there: ``model.segmentor`` validation, the ``--segmentor`` choices and help, the tasks a segmentor may be
trained for (``--task``), building from a configuration and rebuilding from a file's ``meta``, the
checkpoint layouts :func:`~focalnet.segmentation.load_segmentor` recognises, ``convert --to original``
and the docs tables. This module imports no torch model (the command-line parser reads the registry
lazily), and neither does :mod:`focalnet.segmentation.segmentors`, where the specs are declared: their
builders, readers and defaults import the models on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..weights.layouts import Layout

__all__ = ["TASKS", "SegmentorSpec", "Read", "LazyMapping"]

# what a segmentation model is trained and evaluated for
TASKS = ("semantic", "panoptic", "instance")

# what a layout's reader returns: (meta, state dict in our key names, extra)
Read = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


class LazyMapping(Mapping[str, Any]):
    """A read-only mapping computed on first use: a spec's defaults read off its model's configuration class,
    so that listing the segmentors (``--segmentor`` choices and help) imports no model and no torch."""

    def __init__(self, load: Callable[[], Mapping[str, Any]]) -> None:
        self._load = load
        self._data: dict[str, Any] | None = None

    def _values(self) -> dict[str, Any]:
        if self._data is None:
            self._data = dict(self._load())
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._values()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return repr(self._values())


@dataclass(frozen=True)
class SegmentorSpec:
    """Everything the package needs to know about one segmentor.

    * ``title`` (``"Mask2Former"``) and ``summary`` (one line for ``--segmentor`` help and the docs);
    * ``build(backbone, num_classes, backbone_checkpoint=None, *, pretrained, class_names, head,
      **backbone_overrides)``: the model of a training configuration (``head``: a mapping of
      ``head_defaults`` keys);
    * ``from_meta(meta, **backbone_overrides)``: the (randomly initialised) model a file's ``meta``
      describes, called only after :func:`~focalnet.segmentation.load.check_meta`;
    * ``check_head(meta, state_dict, source) -> meta``: the segmentor's own stored settings (its head)
      checked for type and against the tensors, raising the errors of :mod:`focalnet.weights.errors`;
    * ``backbone_defaults``: what the released recipe changes in the FocalNet backbone;
    * ``head_defaults``: every head setting ``build`` takes, with the released value;
    * ``config_field``: the ``model`` section's field of a training config holding these settings
      (UPerNet: ``head``, Mask2Former: ``mask2former``);
    * ``tasks``: the tasks of :data:`TASKS` it predicts (the first is its default);
    * ``layouts``: the original checkpoint layouts it reads (ours, ``model.pt`` and training
      checkpoints, are the package's); each ``recognise`` must exclude every other layout;
    * ``write(meta, state_dict, extra) -> obj``: the file in its original layout (``convert --to
      original``; ``None``: no writer);
    * ``recipe``: the packaged config of its released (or reference) model.
    """

    name: str
    title: str
    summary: str
    build: Callable[..., Any]
    from_meta: Callable[..., Any]
    check_head: Callable[[Mapping[str, Any], Mapping[str, Any], str], dict[str, Any]]
    backbone_defaults: Mapping[str, Any]
    head_defaults: Mapping[str, Any]
    tasks: tuple[str, ...]
    config_field: str = "head"
    layouts: tuple[Layout[Read], ...] = ()
    write: Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if not self.tasks or unknown:
            raise ValueError(f"segmentor {self.name!r}: tasks must be among {TASKS}, got {self.tasks}")

    def head_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``head_defaults`` updated with ``given``; keys it does not know are a ``ValueError`` naming them."""
        unknown = sorted(set(given) - set(self.head_defaults))
        if unknown:
            raise ValueError(f"unknown {self.title} head setting(s) {unknown}; valid: {sorted(self.head_defaults)}")
        return {**self.head_defaults, **given}
