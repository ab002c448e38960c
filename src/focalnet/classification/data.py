"""ImageFolder data for classification: robust decoding, the recipe's transforms, ImageNet label maps.

A sample is ``(image, label, index, ok)``; an unreadable or corrupt file gives ``ok=False`` with a zero
image, so that batches keep their shape across worker processes and the training/evaluation loops can
skip it and report its name (never a crash).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..engine.images import ImageDecodeError, open_image, patch_posterize

__all__ = [
    "IMG_EXTENSIONS",
    "ImageFolder",
    "find_classes",
    "build_transform",
    "build_mixup",
    "imagenet_indices",
    "describe_wnid",
    "resolve_split",
]

log = logging.getLogger("focalnet")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` (one per class)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected the ImageFolder layout <root>/<class>/<image>)")
    return classes


def resolve_split(data: str | os.PathLike, split: str) -> Path:
    """``data/split`` when it exists, else ``data`` itself when it directly holds class folders."""
    if not data:
        raise ValueError("no dataset: give --data DIR (an ImageFolder root) or data.path in the config")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"dataset folder not found: {data}")
    if (data / split).is_dir():
        return data / split
    subdirs = [d for d in data.iterdir() if d.is_dir()]
    if subdirs and any(_is_image(f) for d in subdirs[:5] for f in d.iterdir()):
        return data
    raise FileNotFoundError(f"{data} has no '{split}' folder (expected {data}/{split}/<class>/<image>)")


class ImageFolder(Dataset):
    """``root/<class>/<image>`` images decoded with PIL and converted to RGB.

    ``class_names`` fixes the label order (e.g. the training set's, for the validation set); a folder
    not among them is an error. Unreadable files are returned with ``ok=False`` (see module docstring).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        class_names: Sequence[str] | None = None,
        max_per_class: int = 0,
        img_size: int = 224,
    ) -> None:
        self.root = Path(root)
        found = find_classes(self.root)
        if class_names is None:
            self.class_names = found
        else:
            self.class_names = list(class_names)
            unknown = sorted(set(found) - set(self.class_names))
            if unknown:
                raise ValueError(
                    f"{self.root} has class folder(s) {unknown[:10]} that the model does not know "
                    f"(its {len(self.class_names)} classes: {self.class_names[:10]}...)"
                )
        self.transform = transform
        self.img_size = img_size
        self.samples: list[tuple[str, int]] = []
        empty = []
        for c in found:
            files = sorted(f for f in (self.root / c).iterdir() if _is_image(f))
            if not files:
                empty.append(c)
            if max_per_class > 0:
                files = files[:max_per_class]
            idx = self.class_names.index(c)
            self.samples += [(str(f), idx) for f in files]
        if not self.samples:
            raise ValueError(f"{self.root} holds no images with extensions {', '.join(IMG_EXTENSIONS)}")
        if empty and class_names is None:
            raise ValueError(
                f"{self.root}: class folder(s) {empty[:10]} hold no images; a class without images cannot be "
                "learned (remove the folder or add images)"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def keep_spread(self, n: int) -> None:
        """Keep ``n`` samples spread evenly over the (class-sorted) list, so that every class keeps its share
        (``n`` <= 0 or >= the size: keep all)."""
        if 0 < n < len(self.samples):
            self.samples = [self.samples[i * len(self.samples) // n] for i in range(n)]

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def load(self, index: int) -> Image.Image:
        """The decoded RGB image (:class:`~focalnet.engine.images.ImageDecodeError` if it cannot be)."""
        return open_image(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, bool]:
        path, target = self.samples[index]
        try:
            img = self.load(index)
        except (ImageDecodeError, OSError) as e:  # only decoding problems are file problems
            log.warning("skipping unreadable image %s: %s", path, e)
            return torch.zeros(3, self.img_size, self.img_size), target, index, False
        # an augmentation error is a bug: it propagates instead of being counted as a bad file
        x = self.transform(img) if self.transform is not None else _to_tensor(img)
        return x, target, index, True


def _to_tensor(img: Image.Image) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img).float().div_(255)


def build_transform(cfg: Any, is_training: bool, img_size: int | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """The recipe's transforms (timm ``create_transform``).

    Training (``cfg.aug.enabled``): bicubic random-resized crop, flip, RandAugment (or colour jitter),
    random erasing. Evaluation (and training with ``aug.enabled=false``): short side to
    ``size / crop_pct``, centre crop. ``cfg`` is a :class:`ClassificationConfig`.
    """
    from timm.data import create_transform

    d, a = cfg.data, cfg.aug
    size = img_size or d.img_size
    if is_training and a.enabled:
        tf = create_transform(
            input_size=size,
            is_training=True,
            scale=tuple(a.scale),
            ratio=tuple(a.ratio),
            hflip=a.hflip,
            color_jitter=a.color_jitter if a.color_jitter > 0 else None,
            auto_augment=a.auto_augment if a.auto_augment not in (None, "", "none") else None,
            interpolation=d.interpolation,
            mean=tuple(d.mean),
            std=tuple(d.std),
            re_prob=a.reprob,
            re_mode=a.remode,
            re_count=a.recount,
        )
        patch_posterize(tf)  # timm asks Pillow 13 for 0-bit posterize at high magnitudes: fixed at the source
        return tf
    return create_transform(
        input_size=size,
        is_training=False,
        interpolation="bicubic" if d.interpolation == "random" else d.interpolation,
        crop_pct=d.crop_pct,
        mean=tuple(d.mean),
        std=tuple(d.std),
    )


def build_mixup(cfg: Any, num_classes: int) -> Any:
    """timm ``Mixup`` (mixup 0.8 / cutmix 1.0, switch 0.5, label smoothing) or ``None`` when off."""
    a = cfg.aug
    if not a.enabled or (a.mixup <= 0 and a.cutmix <= 0 and a.cutmix_minmax is None) or a.mixup_prob <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=a.mixup,
        cutmix_alpha=a.cutmix,
        cutmix_minmax=tuple(a.cutmix_minmax) if a.cutmix_minmax else None,
        prob=a.mixup_prob,
        switch_prob=a.mixup_switch_prob,
        mode=a.mixup_mode,
        label_smoothing=a.label_smoothing,
        num_classes=num_classes,
    )


def imagenet_indices(class_names: Sequence[str], num_outputs: int) -> list[int] | None:
    """Output indices of ImageNet wnid folder names for a 1,000-way (ImageNet-1K order) or a
    21,842-way (ImageNet-22K, timm's ``imagenet-22k-ms`` order) head; ``None`` if they are not all wnids."""
    if num_outputs == 1000:
        lookup = _label_lookup("imagenet-1k")
    elif num_outputs == 21842:
        lookup = _label_lookup("imagenet-22k-ms")
    else:
        return None
    if not all(c in lookup for c in class_names):
        return None
    return [lookup[c] for c in class_names]


def describe_wnid(name: str) -> str | None:
    """Human-readable description of an ImageNet wnid (``n01440764`` -> ``tench, Tinca tinca``)."""
    if not (len(name) == 9 and name[0] == "n" and name[1:].isdigit()):
        return None
    for subset in ("imagenet-1k", "imagenet-22k-ms"):
        if name in _label_lookup(subset):
            return _info(subset).label_name_to_description(name)
    return None


@functools.cache
def _info(subset: str) -> Any:
    from timm.data import ImageNetInfo

    return ImageNetInfo(subset)


@functools.cache
def _label_lookup(subset: str) -> dict[str, int]:
    return {n: i for i, n in enumerate(_info(subset).label_names())}
