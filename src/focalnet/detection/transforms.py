"""Training/evaluation transforms (torchvision.transforms.v2 on ``tv_tensors``), after the Swin/FocalNet recipe.

Training (mmdetection's ``AutoAugment`` two-branch policy from the Swin configs): random horizontal flip,
then with probability 1/2 each

1. multi-scale resize: short side from ``scales`` (480, 512, ..., 800), long side <= ``max_size`` (1333);
2. resize (short side 400/500/600) -> random crop of an absolute size in [384, 600] -> multi-scale resize
   as in 1.

Boxes that become empty after cropping are removed with their labels and masks
(``SanitizeBoundingBoxes``). Evaluation only converts to float: the model's transform resizes to
800x1333 and maps the detections back to the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

__all__ = ["RandomCropAbsoluteRange", "train_transforms", "eval_transforms", "DEFAULT_SCALES"]

DEFAULT_SCALES: tuple[int, ...] = tuple(range(480, 801, 32))


class RandomCropAbsoluteRange(v2.Transform):
    """mmdet ``RandomCrop(crop_type="absolute_range", allow_negative_crop=True)``: crop height and width
    drawn independently from ``[min(size, lo), min(size, hi)]`` at a random position."""

    def __init__(self, crop_range: Sequence[int] = (384, 600)) -> None:
        super().__init__()
        lo, hi = int(crop_range[0]), int(crop_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"crop_range must be 0 < low <= high, got {crop_range}")
        self.lo, self.hi = lo, hi

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        ch = int(torch.randint(min(h, self.lo), min(h, self.hi) + 1, ()))
        cw = int(torch.randint(min(w, self.lo), min(w, self.hi) + 1, ()))
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)

    # torchvision < 0.21 calls the private names
    _get_params = make_params
    _transform = transform


def _labels_getter(inputs: Any) -> tuple[torch.Tensor, ...]:
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return tuple(target[k] for k in ("labels", "iscrowd") if k in target)


def train_transforms(
    scales: Sequence[int] = DEFAULT_SCALES,
    max_size: int = 1333,
    crop_branch: bool = True,
    crop_resize_scales: Sequence[int] = (400, 500, 600),
    crop_range: Sequence[int] = (384, 600),
    flip_prob: float = 0.5,
) -> v2.Transform:
    """The training pipeline; call it as ``image, target = t(image, target)``."""
    resize = v2.RandomShortestSize(list(scales), max_size=max_size)
    policy: v2.Transform = resize
    if crop_branch:
        crop = v2.Compose(
            [
                v2.RandomShortestSize(list(crop_resize_scales), max_size=max_size),
                RandomCropAbsoluteRange(crop_range),
                v2.RandomShortestSize(list(scales), max_size=max_size),
            ]
        )
        policy = v2.RandomChoice([resize, crop])
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(flip_prob),
            policy,
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_getter),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        ]
    )


def eval_transforms() -> v2.Transform:
    """Evaluation/prediction: only uint8 -> float in [0, 1]; the model resizes and pads."""
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
