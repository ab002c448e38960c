"""COCO-format instance datasets: validated annotations, contiguous labels, masks from polygons or RLE.

Category ids (any integers) map to contiguous labels ``1..K`` in increasing id order (0 is background).
Crowd regions are left out of training targets (COCOeval handles them at evaluation). Broken
annotations (non-positive width/height, a box outside the image, a polygon with fewer than 3 points,
an RLE of the wrong size, an unknown category) are skipped and reported; an unreadable image is
reported and the sample skipped (``__getitem__`` returns ``None``, which the collate function drops).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..engine.images import open_image

__all__ = ["CocoInstances", "DataProblem", "detection_collate", "coco_paths", "decode_segmentation"]

log = logging.getLogger("focalnet")


@dataclass
class DataProblem:
    """One skipped annotation or image, with the reason."""

    kind: str  # "annotation" | "image"
    reason: str
    image_id: int | None = None
    annotation_id: int | None = None
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def coco_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``annotations/instances_{split}2017.json`` and ``{split}2017/`` under a COCO 2017 ``root``."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"


def _poly_ok(poly: Any) -> bool:
    return (
        isinstance(poly, (list, tuple))
        and len(poly) >= 6
        and len(poly) % 2 == 0
        and all(isinstance(v, (int, float)) and np.isfinite(v) for v in poly)
    )


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
        self.problems: list[DataProblem] = []
        dataset = self._read_annotations(ann_file)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO()
                self.coco.dataset = dataset
                self.coco.createIndex()
        except (KeyError, TypeError, AssertionError) as e:
            raise ValueError(f"{ann_file} is not a COCO instance annotation file: {type(e).__name__}: {e}") from e
        if not self.coco.dataset.get("categories"):
            raise ValueError(f"{ann_file} has no 'categories'")
        self.ann_file, self.image_dir = ann_file, image_dir
        self.transforms = transforms
        self.with_masks = with_masks
        self.train = train
        self.category_ids: list[int] = sorted(self.coco.getCatIds())
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.class_names: list[str] = [str(self.coco.cats[c].get("name", c)) for c in self.category_ids]
        self._anns: dict[int, list[dict[str, Any]]] = {}
        ids = sorted(self.coco.imgs)
        for img_id in ids:
            self._anns[img_id] = self._valid_annotations(img_id)
        if train and filter_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self._anns[i])]
        self.ids = ids
        if not self.ids:
            raise ValueError(f"{ann_file}: no images to use (after skipping images without annotations)")
        self._report(max_problems_logged)

    # ------------------------------------------------------------------ validation
    def _read_annotations(self, ann_file: Path) -> dict[str, Any]:
        """The json with malformed entries dropped (each recorded in ``problems``): images without an
        integer ``id`` or a ``file_name``, categories without an integer ``id``, annotations without an
        ``id``, a known ``image_id`` or a ``category_id`` (that annotation only, not the whole file)."""
        try:
            data = json.loads(ann_file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{ann_file} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{ann_file} is not a COCO instance annotation file (no 'images' list)")
        for key in ("annotations", "categories"):
            if not isinstance(data.get(key, []), list):
                raise ValueError(f"{ann_file}: '{key}' must be a list")

        def _id(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        images, seen = [], set()
        for im in data["images"]:
            ok = isinstance(im, dict) and _id(im.get("id")) and im["id"] not in seen
            if not ok or not isinstance(im.get("file_name"), str) or not im["file_name"]:
                iid = im.get("id") if isinstance(im, dict) and _id(im.get("id")) else None
                self.problems.append(
                    DataProblem(
                        "image",
                        f"malformed image entry (needs a unique integer id and a file_name): {str(im)[:120]}",
                        iid,
                    )
                )
                continue
            for dim in ("width", "height"):
                if dim in im and not (_id(im[dim]) and im[dim] > 0):
                    im = {k: v for k, v in im.items() if k not in ("width", "height")}
            seen.add(im["id"])
            images.append(im)
        cats, cat_ids = [], set()
        for c in data.get("categories", []):
            if isinstance(c, dict) and _id(c.get("id")) and c["id"] not in cat_ids:
                cat_ids.add(c["id"])
                cats.append(c)
            else:
                self.problems.append(DataProblem("annotation", f"malformed category entry: {str(c)[:120]}"))
        anns, ann_ids = [], set()
        for a in data.get("annotations", []):
            a = a if isinstance(a, dict) else {}
            aid = a.get("id") if _id(a.get("id")) else None
            iid = a.get("image_id") if _id(a.get("image_id")) else None
            if aid is None or aid in ann_ids:
                what = "a unique integer id"
            elif iid is None or iid not in seen:
                what = "the integer id of a listed image as image_id"
            elif not _id(a.get("category_id")):
                what = "an integer category_id"
            else:
                ann_ids.add(aid)
                anns.append(a)
                continue
            self.problems.append(DataProblem("annotation", f"malformed annotation (needs {what})", iid, aid))
        return {**data, "images": images, "categories": cats, "annotations": anns}

    def _problem(self, reason: str, img_id: int | None, ann: dict[str, Any] | None = None) -> None:
        self.problems.append(DataProblem("annotation", reason, img_id, ann.get("id") if ann else None))

    def _valid_annotations(self, img_id: int) -> list[dict[str, Any]]:
        info = self.coco.imgs[img_id]
        h, w = info.get("height"), info.get("width")
        out = []
        for ann in self.coco.imgToAnns.get(img_id, []):
            try:
                reason = self._check(ann, w, h)
            except (TypeError, ValueError, KeyError) as e:
                reason = f"malformed annotation ({type(e).__name__}: {e})"
            if reason:
                self._problem(reason, img_id, ann)
                continue
            out.append(ann)
        return out

    def _check(self, ann: dict[str, Any], w: int | None, h: int | None) -> str | None:
        if ann.get("category_id") not in self.cat_to_label:
            return f"unknown category_id {ann.get('category_id')!r}"
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(np.isfinite(float(v)) for v in bbox):
            return f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
        x, y, bw, bh = (float(v) for v in bbox)
        if bw <= 0 or bh <= 0:
            return f"bbox has non-positive width/height {bbox}"
        if w is not None and h is not None:
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                return f"bbox {bbox} lies outside the {w}x{h} image"
        if self.with_masks:
            seg = ann.get("segmentation")
            if isinstance(seg, list):
                good = [p for p in seg if _poly_ok(p)]
                if not good:
                    return "segmentation has no polygon with at least 3 points"
                if len(good) < len(seg):
                    ann["segmentation"] = good
                    self._problem(
                        f"dropped {len(seg) - len(good)} polygon(s) with fewer than 3 points (annotation kept)",
                        ann.get("image_id"),
                        ann,
                    )
            elif isinstance(seg, dict):
                size = seg.get("size")
                if "counts" not in seg or not isinstance(size, (list, tuple)) or len(size) != 2:
                    return "RLE segmentation needs 'counts' and 'size'"
                if h is not None and w is not None and (int(size[0]), int(size[1])) != (int(h), int(w)):
                    return f"RLE size {list(size)} differs from the image size {[h, w]}"
            else:
                return f"missing or unsupported segmentation ({type(seg).__name__})"
        return None

    def _report(self, limit: int) -> None:
        if not self.problems:
            return
        log.warning("%s: skipped %d broken annotation(s)", self.ann_file, len(self.problems))
        for p in self.problems[:limit]:
            log.warning("  image %s annotation %s: %s", p.image_id, p.annotation_id, p.reason)
        if len(self.problems) > limit:
            log.warning("  ... and %d more (see data_problems.json)", len(self.problems) - limit)

    def problems_report(self) -> list[dict[str, Any]]:
        """Every skipped annotation (and image, in this process) as JSON-ready dicts."""
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
        anns = [a for a in self._anns[img_id] if not (self.train and a.get("iscrowd", 0))]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": img_id,
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
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
