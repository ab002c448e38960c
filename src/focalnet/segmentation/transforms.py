"""mmseg-style segmentation transforms on ``(H, W, 3) uint8`` RGB images and ``(H, W) uint8`` label maps.

Training (the ADE20K UPerNet pipeline): random keep-ratio resize to ``ratio x scale`` (ratio in
0.5-2.0, scale 2048x512), random crop 512x512 retried while one class covers >= ``cat_max_ratio`` of
it, horizontal flip, photometric distortion, normalization, padding to the crop size (image 0, label
255). Test: keep-ratio resize to the test scale and normalization; labels stay at the original size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .model import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "rescale_size",
    "resize_image",
    "resize_label",
    "random_resize",
    "random_crop",
    "photometric_distortion",
    "normalize",
    "pad_to",
    "TrainTransform",
    "TestTransform",
]


def rescale_size(w: int, h: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv ``imrescale`` size: the largest keep-ratio size with long side <= max(scale) and short
    side <= min(scale); returns ``(new_w, new_h)``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(int(w * factor + 0.5), 1), max(int(h * factor + 0.5), 1)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image to ``size = (w, h)``."""
    if (img.shape[1], img.shape[0]) == tuple(size):
        return img
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size = (w, h)``."""
    if (label.shape[1], label.shape[0]) == tuple(size):
        return label
    return np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))


def random_resize(
    img: np.ndarray, label: np.ndarray, scale: Sequence[int], ratio_range: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``Resize(img_scale=scale, ratio_range=...)``: target ``scale x U(ratio_range)``, keep ratio."""
    r = random.uniform(*ratio_range) if ratio_range[0] != ratio_range[1] else ratio_range[0]
    size = rescale_size(img.shape[1], img.shape[0], (scale[0] * r, scale[1] * r))
    return resize_image(img, size), resize_label(label, size)


def random_crop(
    img: np.ndarray,
    label: np.ndarray,
    crop_size: Sequence[int],
    cat_max_ratio: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    tries: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """mmseg ``RandomCrop``: a random ``crop_size = (h, w)`` window (smaller where the image is); with
    ``cat_max_ratio < 1`` re-draw (up to ``tries`` times) while one class covers >= that share."""
    ch, cw = crop_size
    h, w = label.shape

    def draw() -> tuple[int, int]:
        return random.randint(0, max(h - ch, 0)), random.randint(0, max(w - cw, 0))

    y, x = draw()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            crop = label[y : y + ch, x : x + cw]
            _, counts = np.unique(crop[crop != ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = draw()
    return img[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    img: np.ndarray,
    brightness_delta: int = 32,
    contrast_range: Sequence[float] = (0.5, 1.5),
    saturation_range: Sequence[float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion``: each step with probability 0.5 - brightness (+U(-32, 32)),
    contrast (xU(0.5, 1.5), before or after the colour steps), saturation (HSV S x U(0.5, 1.5)),
    hue (H + randint(-18, 18) on OpenCV's 0-180 scale)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    if random.randint(0, 1):
        img = _convert(img, beta=random.uniform(-brightness_delta, brightness_delta))
    contrast_first = random.randint(0, 1) == 1
    if contrast_first and random.randint(0, 1):
        img = _convert(img, alpha=random.uniform(*contrast_range))
    do_sat, do_hue = random.randint(0, 1), random.randint(0, 1)
    if do_sat or do_hue:
        hsv = rgb_to_hsv(img.astype(np.float32) / 255.0)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * random.uniform(*saturation_range), 0, 1)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + random.randint(-hue_delta, hue_delta) / 180.0) % 1.0
        img = np.clip(hsv_to_rgb(hsv) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if not contrast_first and random.randint(0, 1):
        img = _convert(img, alpha=random.uniform(*contrast_range))
    return img


def normalize(
    img: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> ``(3, H, W) float32`` with ``(x - mean) / std`` on the 0-255 scale."""
    t = torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


def pad_to(
    img: torch.Tensor, label: torch.Tensor, size: Sequence[int], ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom/right to ``size = (h, w)``: image with 0, label with ``ignore_index``."""
    h, w = label.shape
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph or pw:
        img = torch.nn.functional.pad(img, (0, pw, 0, ph), value=0.0)
        label = torch.nn.functional.pad(label, (0, pw, 0, ph), value=ignore_index)
    return img, label


@dataclass
class TrainTransform:
    """The mmseg training pipeline; ``crop_size`` is ``(h, w)``, ``scale`` is ``(long, short)``."""

    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, img: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, label = random_resize(img, label, self.scale, self.ratio_range)
        img, label = random_crop(img, label, self.crop_size, self.cat_max_ratio)
        if random.random() < self.flip_prob:
            img, label = img[:, ::-1], label[:, ::-1]
        if self.photometric:
            img = photometric_distortion(img)
        t = normalize(img, self.mean, self.std)
        lab = torch.from_numpy(np.require(label, requirements=["C", "W"])).long()
        return pad_to(t, lab, self.crop_size)


@dataclass
class TestTransform:
    """Keep-ratio resize to ``scale`` (``None``: original size) and normalization; label untouched."""

    scale: tuple[int, int] | None = (2048, 512)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        if self.scale is not None:
            img = resize_image(img, rescale_size(img.shape[1], img.shape[0], self.scale))
        return normalize(img, self.mean, self.std)
