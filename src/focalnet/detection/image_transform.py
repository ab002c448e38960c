"""The model-side image transform of the torchvision-style detectors: normalise (ImageNet mean/std),
resize at test time, pad to a multiple of 32, and map detections back to the input image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "DetectionTransform", "detection_transform"]


class DetectionTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that can skip resizing in training (the data pipeline already did the
    multi-scale / crop augmentation); at test time it resizes to ``min_size``/``max_size`` as usual."""

    def __init__(self, *args: Any, train_resize: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_resize = train_resize

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        if self.training and not self.train_resize:
            return image, target
        return super().resize(image, target)


def detection_transform(
    min_size: int,
    max_size: int,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    train_resize: bool = False,
) -> DetectionTransform:
    """A :class:`DetectionTransform` padding to multiples of 32 (ImageNet mean/std unless given)."""
    return DetectionTransform(
        min_size,
        max_size,
        list(image_mean or IMAGENET_DEFAULT_MEAN),
        list(image_std or IMAGENET_DEFAULT_STD),
        size_divisible=32,
        train_resize=train_resize,
    )
