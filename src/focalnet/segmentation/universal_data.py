"""What feeds Mask2Former training for its three tasks: targets ``{"labels": int64 (N,), "masks": bool (N, H, W)}``.

* panoptic: :class:`~focalnet.segmentation.panoptic.CocoPanoptic` (one mask per non-crowd segment, things
  and stuff) with :class:`LargeScaleJitter`;
* semantic: :class:`SemanticMasks` over a :class:`~focalnet.segmentation.data.SegmentationDataset` (ADE20K
  or folder label maps read as for UPerNet, with its ADE20K-recipe
  :class:`~focalnet.segmentation.transforms.TrainTransform`): one mask per class present, the ignore
  value in none;
* instance: :class:`CocoInstanceMasks` (a COCO instances JSON read through
  :func:`focalnet.engine.coco.read_coco`, masks decoded by pycocotools; things only, crowd left out) with
  :class:`LargeScaleJitter`.

Large-scale jitter (Ghiasi et al., "Simple Copy-Paste", CVPR 2021; Mask2Former's COCO recipe): a random
keep-ratio resize to ``U(0.1, 2.0)`` times the ``1024 x 1024`` target, a random crop of at most
``1024 x 1024``, a horizontal flip with probability 0.5. The image is resampled bilinearly, the masks by
nearest neighbour directly into the crop (no full-size mask is ever allocated). :func:`universal_collate`
pads a batch to a common size (a multiple of 32) with masks kept aligned (padding: image 0 after
normalisation, masks ``False``).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..engine.coco import read_coco
from ..engine.images import open_image
from .model import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from .transforms import normalize

__all__ = [
    "CocoInstanceMasks",
    "LargeScaleJitter",
    "SemanticMasks",
    "semantic_target",
    "universal_collate",
]

log = logging.getLogger("focalnet")


@dataclass
class LargeScaleJitter:
    """Random resize (``scale_range`` x ``size``, keep ratio), random crop (at most ``size`` square), flip;
    ``size`` and ``scale_range`` are configurable (e.g. 256 and (0.5, 1.5) on a CPU)."""

    size: int = 1024
    scale_range: tuple[float, float] = (0.1, 2.0)
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"LargeScaleJitter: size {self.size} and scale_range {self.scale_range} must be positive")

    def __call__(self, img: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """``img``: ``H x W x 3`` uint8; ``masks``: an ``H x W`` index map or ``N x H x W`` masks. Returns the
        normalised ``3 x h x w`` crop and the masks of the same crop (``h, w <= size``)."""
        h, w = img.shape[:2]
        if masks.shape[-2:] != (h, w):
            raise ValueError(f"masks are {masks.shape[-1]}x{masks.shape[-2]} but the image is {w}x{h}")
        s = random.uniform(*self.scale_range)
        factor = min(s * self.size / h, s * self.size / w)
        nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
        ch, cw = min(nh, self.size), min(nw, self.size)
        y0, x0 = round((nh - ch) * random.random()), round((nw - cw) * random.random())
        fy, fx = h / nh, w / nw  # source pixels per output pixel
        box = (x0 * fx, y0 * fy, (x0 + cw) * fx, (y0 + ch) * fy)  # the crop, in source coordinates
        crop = np.asarray(Image.fromarray(img).resize((cw, ch), Image.BILINEAR, box=box))
        rows = np.minimum(((np.arange(y0, y0 + ch) + 0.5) * fy).astype(np.int64), h - 1)
        cols = np.minimum(((np.arange(x0, x0 + cw) + 0.5) * fx).astype(np.int64), w - 1)
        if random.random() < self.flip_prob:
            crop, cols = crop[:, ::-1], cols[::-1]
        return normalize(crop, self.mean, self.std), masks[..., rows[:, None], cols[None, :]]


def semantic_target(label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """One mask per class present in a label map (``H x W``, ``ignore_index`` in no mask)."""
    classes = torch.unique(label)
    classes = classes[classes != ignore_index]
    return {"labels": classes.long(), "masks": label[None] == classes[:, None, None]}


class SemanticMasks:
    """A :class:`~focalnet.segmentation.data.SegmentationDataset` (built with a training transform) as
    ``(image, {"labels", "masks"})`` items; its bad samples stay ``None`` and its ``problems`` are shared."""

    def __init__(self, dataset: Any) -> None:
        if dataset.transform is None:
            raise ValueError("SemanticMasks needs a dataset with a training transform (TrainTransform)")
        self.dataset = dataset
        self.problems = dataset.problems
        self.class_names = dataset.class_names
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        item = self.dataset[i]
        if item is None:
            return None
        return item["img"], semantic_target(item["gt"])


def _decode(seg: Any, h: int, w: int) -> np.ndarray:
    """A checked COCO segmentation (polygons or RLE) as an ``H x W`` bool mask (pycocotools)."""
    import warnings

    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    with warnings.catch_warnings():  # pycocotools' mask class and numpy 2's __array__(copy=...)
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(rle)
    return (m if m.ndim == 2 else m.max(axis=-1)).astype(bool)


class CocoInstanceMasks:
    """COCO instances for Mask2Former's instance task: ``(image tensor, {"labels", "masks"})``.

    The JSON is read through :func:`focalnet.engine.coco.read_coco` (broken entries skipped and counted
    in :attr:`problems`); classes are the categories in increasing id order; crowd annotations are left
    out; an image whose file is unreadable or of another size than the JSON's is ``None`` (and counted).
    ``transform(image uint8 HxWx3, masks bool NxHxW) -> (tensor, masks)``, e.g. :class:`LargeScaleJitter`
    (default: normalisation only); masks emptied by a crop are dropped."""

    def __init__(
        self,
        json_file: str | os.PathLike,
        img_dir: str | os.PathLike,
        transform: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, np.ndarray]] | None = None,
        *,
        split: str = "train",
    ) -> None:
        self.json_file, self.img_dir = Path(json_file), Path(img_dir)
        if not self.json_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.json_file}")
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.img_dir}")
        data, problems = read_coco(self.json_file, self.img_dir, with_masks=True)
        self.problems: list[dict[str, Any]] = [dict(p.to_dict(), split=split) for p in problems]
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        self.cat_to_index = {c: i for i, c in enumerate(self.category_ids)}
        anns: dict[Any, list[dict[str, Any]]] = {}
        for a in data["annotations"]:
            if not a.get("iscrowd", 0):
                anns.setdefault(a["image_id"], []).append(a)
        self.images = [im for im in data["images"] if im["id"] in anns]
        self.anns = anns
        self.transform, self.split = transform, split
        if not self.images:
            raise ValueError(f"{self.json_file}: no image with a usable non-crowd annotation")
        if self.problems:
            log.warning("%s: %d broken entries skipped", self.json_file, len(self.problems))

    @property
    def num_classes(self) -> int:
        """Number of categories (no background class)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image (RGB uint8), its masks (bool ``N x H x W``) and class indices (int64 ``N``)."""
        info = self.images[i]
        img = np.asarray(open_image(self.img_dir / info["file_name"]))
        h, w = img.shape[:2]
        if (info["height"], info["width"]) != (h, w):
            raise ValueError(f"image is {w}x{h} but the JSON says {info['width']}x{info['height']}")
        anns = self.anns[info["id"]]
        masks = np.zeros((len(anns), h, w), dtype=bool)
        for k, a in enumerate(anns):
            masks[k] = _decode(a["segmentation"], h, w)
        labels = np.array([self.cat_to_index[a["category_id"]] for a in anns], dtype=np.int64)
        return img, masks, labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        path = self.img_dir / str(self.images[i]["file_name"])
        try:
            img, masks, labels = self.load(i)
        except (OSError, ValueError) as e:  # reported skip (the collate drops None)
            self.problems.append({"split": self.split, "file": str(path), "problem": str(e)})
            log.warning("skipping %s: %s", path, e)
            return None
        if self.transform is None:
            tensor = normalize(img)
        else:
            tensor, masks = self.transform(img, masks)
        keep = masks.reshape(len(masks), -1).any(axis=1)
        return tensor, {
            "labels": torch.from_numpy(labels[keep]),
            "masks": torch.from_numpy(np.ascontiguousarray(masks[keep])),
        }


def universal_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]] | None], size_divisibility: int = 32
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]] | None:
    """``(images B x 3 x H x W, targets)`` padded bottom/right to a common size (a multiple of
    ``size_divisibility``): images with 0, masks with ``False``; samples that failed (``None``) dropped."""
    items = [b for b in batch if b is not None]
    if not items:
        return None
    d = max(1, int(size_divisibility))
    h = -(-max(t.shape[-2] for t, _ in items) // d) * d
    w = -(-max(t.shape[-1] for t, _ in items) // d) * d
    images = items[0][0].new_zeros((len(items), 3, h, w))
    targets = []
    for k, (img, target) in enumerate(items):
        images[k, :, : img.shape[-2], : img.shape[-1]] = img
        m = target["masks"]
        padded = m.new_zeros((m.shape[0], h, w))
        padded[:, : m.shape[-2], : m.shape[-1]] = m
        targets.append({**target, "masks": padded})
    return images, targets
