"""The model-side image transform of the torchvision-style detectors: normalise (ImageNet mean/std),
resize at test time, pad to a multiple of 32, and map detections back to the input image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..bounds import SIDE, check_bounds, check_normalization

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
        if torch.jit.is_tracing() and target is None and self.fixed_size is None:
            return _traced_resize(image, float(self.min_size[-1]), float(self.max_size)), target
        return super().resize(image, target)


def _traced_resize(image: Tensor, min_size: float, max_size: float) -> Tensor:
    """The test-time resize as a traced (ONNX) graph computes it: the scale and the output size in float64
    like Python does in eager mode (torchvision's traced path computes them in float32, which can make the
    output one pixel smaller, say 159 instead of 160 for 200 x 0.8, and then pads differently)."""
    hw = torch._shape_as_tensor(image)[-2:].to(torch.float64)
    # 1-d tensors throughout: the exporter casts 0-d ones (scalars) to float32
    limits = torch.tensor([min_size, max_size], dtype=torch.float64)
    scale = torch.amin(limits / torch.sort(hw).values, dim=0, keepdim=True)
    size = torch.floor(hw * scale).to(torch.int64)
    return torch.nn.functional.interpolate(image[None], size=(size[0], size[1]), mode="bilinear", align_corners=False)[
        0
    ]


def detection_transform(
    min_size: int,
    max_size: int,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    train_resize: bool = False,
) -> DetectionTransform:
    """A :class:`DetectionTransform` padding to multiples of 32 (ImageNet mean/std unless given). The sizes
    and the normalisation every detector reads from its file or config are checked here (one line naming
    the setting: a test side of 100000 px or a std of 0 would give a huge allocation or NaN scores)."""
    check_bounds({"min_size": min_size, "max_size": max_size}, {"min_size": SIDE, "max_size": SIDE}, "model.")
    if image_mean is not None or image_std is not None:
        check_normalization(
            list(image_mean or IMAGENET_DEFAULT_MEAN),
            list(image_std or IMAGENET_DEFAULT_STD),
            "detector image_mean/std",
        )
    return DetectionTransform(
        min_size,
        max_size,
        list(image_mean or IMAGENET_DEFAULT_MEAN),
        list(image_std or IMAGENET_DEFAULT_STD),
        size_divisible=32,
        train_resize=train_resize,
    )
