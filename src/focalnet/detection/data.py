"""COCO-format instance datasets: validated annotations, contiguous labels, masks from polygons or RLE.

Category ids (any integers) map to contiguous labels ``1..K`` in increasing id order (0 is background).
Crowd regions are left out of training targets (COCOeval handles them at evaluation). The file is read
through :func:`focalnet.detection.annotations.read_coco`: broken entries (a box of non-positive size or
outside the image, unusable polygons or RLE, an unknown category, a wrong type anywhere) are skipped and
reported, and only checked entries reach pycocotools (training targets and COCOeval alike); an
unreadable image is reported and the sample skipped (``__getitem__`` returns ``None``, which the collate
function drops).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..engine.images import open_image
from .annotations import DataProblem, read_coco

__all__ = ["CocoInstances", "DataProblem", "detection_collate", "coco_paths", "decode_segmentation"]

log = logging.getLogger("focalnet")


def coco_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``annotations/instances_{split}2017.json`` and ``{split}2017/`` under a COCO 2017 ``root``."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Binary mask (H, W) uint8 of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict):
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation type {type(seg).__name__}")
    import warnings

    with warnings.catch_warnings():
        # pycocotools' compiled mask class predates numpy 2's __array__(copy=...) and numpy warns on every
        # decode (hundreds per test run); the decoded mask is the same
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
        return mask_utils.decode(rle)


class CocoInstances(Dataset):
    """A COCO instance-annotation json + image folder.

    ``__getitem__`` returns ``(image, target)`` after ``transforms(image, target)`` where ``image`` is a
    ``tv_tensors.Image`` (uint8, CHW) and ``target`` holds ``boxes`` (``BoundingBoxes`` XYXY), ``labels``
    (contiguous 1..K), ``masks`` (``Mask`` N x H x W, if ``with_masks`` and ``train``) and ``image_id``; or ``None`` if
    the image cannot be read. ``train=True`` drops crowd annotations from the targets and, with
    ``filter_empty``, images without any usable annotation.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        *,
        with_masks: bool = True,
        train: bool = True,
        filter_empty: bool = False,
        max_problems_logged: int = 10,
    ) -> None:
        from pycocotools.coco import COCO

        ann_file, image_dir = Path(ann_file), Path(image_dir)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {ann_file}")
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        dataset, self.problems = read_coco(ann_file, image_dir, with_masks)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools sees checked entries only
            self.coco = COCO()
            self.coco.dataset = dataset
            self.coco.createIndex()
        self.ann_file, self.image_dir = ann_file, image_dir
        self.transforms = transforms
        self.with_masks = with_masks
        self.train = train
        self.category_ids: list[int] = sorted(self.coco.getCatIds())
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.class_names: list[str] = [self.coco.cats[c]["name"] for c in self.category_ids]
        ids = sorted(self.coco.imgs)
        self._anns: dict[int, list[dict[str, Any]]] = {i: list(self.coco.imgToAnns.get(i, [])) for i in ids}
        if train and filter_empty:
            ids = [i for i in ids if any(not a["iscrowd"] for a in self._anns[i])]
        self.ids = ids
        if not self.ids:
            raise ValueError(f"{ann_file}: no images to use (after skipping images without annotations)")
        self._report(max_problems_logged)

    def _report(self, limit: int) -> None:
        if not self.problems:
            return
        log.warning("%s: %d broken entries skipped or repaired", self.ann_file, len(self.problems))
        for p in self.problems[:limit]:
            log.warning("  %s (image %s, annotation %s): %s", p.kind, p.image_id, p.annotation_id, p.reason)
        if len(self.problems) > limit:
            log.warning("  ... and %d more (see data_problems.json)", len(self.problems) - limit)

    def problems_report(self) -> list[dict[str, Any]]:
        """Every skipped or repaired entry (and unreadable image, in this process) as JSON-ready dicts."""
        return [p.to_dict() for p in self.problems]

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        """Number of classes including the background."""
        return len(self.category_ids) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def load_target(self, img_id: int, height: int, width: int) -> dict[str, Any]:
        """Targets of one image (crowd annotations dropped in training) in original coordinates."""
        anns = [a for a in self._anns[img_id] if not (self.train and a["iscrowd"])]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": img_id,
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
        }
        if self.with_masks and self.train:  # evaluation needs no target masks (COCOeval reads the json)
            masks = np.zeros((len(anns), height, width), dtype=np.uint8)
            for i, a in enumerate(anns):
                m = decode_segmentation(a["segmentation"], height, width)
                masks[i] = m if m.ndim == 2 else m.max(axis=-1)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        return target

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]] | None:
        img_id = self.ids[index]
        path = self.image_path(index)
        try:
            img = open_image(path)
        except (OSError, ValueError) as e:
            self.problems.append(DataProblem("image", f"cannot read image: {e}", img_id, file=str(path)))
            log.warning("skipping unreadable image %s: %s", path, e)
            return None
        info = self.coco.imgs[img_id]
        if (info.get("height"), info.get("width")) not in ((img.height, img.width), (None, None)):
            log.warning(
                "%s is %dx%d but the annotations say %sx%s: using the file's size",
                path,
                img.width,
                img.height,
                info.get("width"),
                info.get("height"),
            )
            info = {**info, "height": img.height, "width": img.width}
        image = tv_tensors.Image(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        try:
            target = self.load_target(img_id, image.shape[-2], image.shape[-1])
        except (ValueError, TypeError, KeyError) as e:
            self.problems.append(DataProblem("image", f"cannot build targets: {e}", img_id, file=str(path)))
            log.warning("skipping image %s: cannot build its targets: %s", path, e)
            return None
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def detection_collate(batch: Sequence[Any]) -> tuple[list[Any], list[dict[str, Any]]] | None:
    """Lists of images and targets of mixed sizes; samples that failed to load (``None``) are dropped."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    images, targets = zip(*batch)
    return list(images), list(targets)


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``n`` samples (evaluation split over processes)."""
    return list(range(rank, n, world))
