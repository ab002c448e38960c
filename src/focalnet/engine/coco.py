"""The validation layer of COCO instance files (detection, and segmentation's instance task): every field
that training, evaluation or pycocotools use is checked when the file is read, so pycocotools never sees an
unchecked value.

Problems of the file as a whole (not JSON, not a mapping, ``images``/``annotations``/``categories`` not
lists, no usable image or category) are a ``ValueError`` of one line naming the file and the key. A
broken entry is skipped and recorded as a :class:`DataProblem` naming the entry and the key (reported in
the log, ``data_problems.json`` and ``metrics.json``); the rest of the file is used. What is checked:

* images: ``id`` a unique integer, ``file_name`` a non-empty string, ``width``/``height`` positive integers
  of at most :func:`max_pixels` pixels together (missing ones are read from the image file's header);
* categories: ``id`` a unique integer, ``name`` a string (missing: the id);
* annotations: ``id`` a unique integer, ``image_id`` a kept image, ``category_id`` a kept category,
  ``bbox`` four finite numbers ``[x, y, w, h]`` with ``w, h > 0`` overlapping the image, ``area`` a finite
  number >= 0 (missing: ``w * h``), ``iscrowd`` 0 or 1 (missing: 0), ``segmentation`` (required with
  masks) polygons of at least 3 finite points within ``[-S, 2S]`` (``S`` the image's longer side) and of
  bounded length, or an RLE whose ``size`` is the image's and whose run lengths (a list, or a compressed
  string decoded here exactly as pycocotools does) sum to height x width. Without masks a broken
  segmentation is removed and the annotation kept for its box.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataProblem", "check_polygons", "check_rle", "max_pixels", "read_coco", "rle_string_counts"]

POLY_LENGTH_FACTOR = 100  # a polygon may go round its image about 50 times; pycocotools allocates per pixel


@dataclass
class DataProblem:
    """One skipped annotation, image or category (or a dropped part of one), with the reason."""

    kind: str  # "annotation" | "image" | "category"
    reason: str
    image_id: int | None = None
    annotation_id: int | None = None
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def max_pixels() -> int:
    """The largest image (height x width) an annotation may describe: Pillow's decompression-bomb limit
    (twice ``Image.MAX_IMAGE_PIXELS``), and at most 2**31 - 1 (pycocotools' run lengths are 32-bit)."""
    from PIL import Image

    lim = Image.MAX_IMAGE_PIXELS
    return min(2 * int(lim), 2**31 - 1) if lim else 2**31 - 1


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(v: Any) -> float | None:
    """``v`` as a finite float; ``None`` for bools, strings, NaN, infinities and integers beyond floats."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _polygon(poly: Any, h: int, w: int) -> np.ndarray | None:
    """``(N, 2)`` points of one polygon, or ``None`` where it is not >= 3 finite points within range."""
    if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
        return None
    if not all(type(v) is float or type(v) is int for v in poly):
        return None
    try:
        a = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    except OverflowError:
        return None
    s = max(h, w)
    if not (np.isfinite(a).all() and (a >= -s).all() and (a <= 2 * s).all()):
        return None
    return a


def check_polygons(seg: list[Any], h: int, w: int) -> tuple[list[Any], int, str | None]:
    """``(usable polygons, number dropped, reason)`` of a polygon segmentation of an ``h x w`` image;
    ``reason`` is set (and nothing is usable) where no polygon is, or where together they are too long
    for pycocotools to rasterise (more than ``POLY_LENGTH_FACTOR x (h + w)`` pixels of outline)."""
    good, length = [], 0.0
    for poly in seg:
        a = _polygon(poly, h, w)
        if a is None:
            continue
        good.append(poly)
        length += float(np.abs(np.diff(a, axis=0, append=a[:1])).max(axis=1).sum())
    if not good:
        return [], len(seg), "segmentation: no polygon of at least 3 finite points within the image's range"
    if length > POLY_LENGTH_FACTOR * (h + w):
        return [], len(seg), f"segmentation: polygons of {length:.3g} px of outline for a {w}x{h} image"
    return good, len(seg) - len(good), None


def rle_string_counts(s: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string, decoded as pycocotools' ``rleFrString`` does; ``None``
    where it is malformed (a character outside ``0``-``o``, a truncated number, a negative or over 32-bit
    run), which pycocotools would read past the string or decode past its buffer."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n or k >= 7:
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if not 0 <= x < 2**32:
            return None
        counts.append(x)
    return counts


def check_rle(seg: dict[str, Any], h: int, w: int) -> str | None:
    """Why an RLE segmentation of an ``h x w`` image is unusable, or ``None``: its ``size`` must be
    ``[h, w]`` and its run lengths (a list of integers, or a compressed string) must sum to ``h * w``."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_int(v) is not None for v in size)):
        return f"segmentation.size: must be [height, width] integers, got {_short(size)}"
    if list(size) != [h, w]:
        return f"segmentation.size {list(size)} differs from the image's [height, width] {[h, w]}"
    if isinstance(counts, list):
        if not all(type(c) is int and 0 <= c < 2**32 for c in counts):
            return "segmentation.counts: run lengths must be integers in 0..2**32-1"
        runs: list[int] | None = counts
    elif isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            return "segmentation.counts: malformed compressed RLE string"
    else:
        return f"segmentation.counts: must be a list of run lengths or a compressed string, got {type(counts).__name__}"
    total = sum(runs)
    if total != h * w:
        return f"segmentation.counts: run lengths sum to {total}, not height x width = {h * w}"
    return None


class _Reader:
    """One pass over a COCO json: the kept entries (normalised copies) and the problems found."""

    def __init__(self, path: Path, image_dir: Path | None, with_masks: bool) -> None:
        self.path, self.image_dir, self.with_masks = path, image_dir, with_masks
        self.problems: list[DataProblem] = []
        self.limit = max_pixels()

    def problem(self, kind: str, reason: str, image_id: Any = None, ann_id: Any = None) -> None:
        self.problems.append(DataProblem(kind, reason, _int(image_id), _int(ann_id)))

    def _size_from_file(self, name: str) -> tuple[int, int] | None:
        if self.image_dir is None:
            return None
        from PIL import Image

        try:
            with Image.open(self.image_dir / name) as im:  # the header only
                return im.size
        except Exception:  # noqa: BLE001 - any unreadable file: the image is skipped and reported
            return None

    def image(self, im: Any, seen: dict[int, Any]) -> dict[str, Any] | None:
        if not isinstance(im, dict):
            self.problem("image", f"image entry: must be a mapping, got {_short(im)}")
            return None
        iid = _int(im.get("id"))
        if iid is None or iid in seen:
            self.problem("image", f"id: must be a unique integer, got {_short(im.get('id'))}", iid)
            return None
        name = im.get("file_name")
        if not isinstance(name, str) or not name or "\0" in name:
            self.problem("image", f"file_name: must be a non-empty string, got {_short(name)}", iid)
            return None
        im = dict(im)
        if "width" not in im and "height" not in im:
            size = self._size_from_file(name)
            if size is None:
                self.problem("image", "width/height: missing, and the image file cannot be read for them", iid)
                return None
            im["width"], im["height"] = size
        for key in ("width", "height"):
            if _int(im.get(key)) is None or im[key] < 1:
                self.problem("image", f"{key}: must be a positive integer, got {_short(im.get(key))}", iid)
                return None
        if im["width"] * im["height"] > self.limit:
            self.problem("image", f"width x height: {im['width']}x{im['height']} is over {self.limit} pixels", iid)
            return None
        return im

    def category(self, c: Any, i: int, seen: dict[int, Any]) -> dict[str, Any] | None:
        cid = _int(c.get("id")) if isinstance(c, dict) else None
        if cid is None or cid in seen:
            got = c.get("id") if isinstance(c, dict) else c
            self.problem("category", f"categories[{i}].id: must be a unique integer, got {_short(got)}")
            return None
        name = c.get("name", str(cid))
        if not isinstance(name, str):
            self.problem("category", f"categories[{i}].name: must be a string, got {_short(name)}")
            return None
        return {**c, "name": name}

    def annotation(
        self, a: Any, images: dict[int, dict], cats: dict[int, Any], seen: set[int]
    ) -> dict[str, Any] | None:
        if not isinstance(a, dict):
            self.problem("annotation", f"annotation entry: must be a mapping, got {_short(a)}")
            return None
        aid, iid = _int(a.get("id")), _int(a.get("image_id"))
        reason = None
        if aid is None or aid in seen:
            reason = f"id: must be a unique integer, got {_short(a.get('id'))}"
        elif iid is None or iid not in images:
            reason = f"image_id: must be the integer id of a kept image, got {_short(a.get('image_id'))}"
        elif _int(a.get("category_id")) is None or a["category_id"] not in cats:
            reason = f"category_id: must be the integer id of a listed category, got {_short(a.get('category_id'))}"
        if reason:
            self.problem("annotation", reason, iid, aid)
            return None
        seen.add(aid)
        im = images[iid]
        a = dict(a)
        reason = self._box_fields(a, im["height"], im["width"]) or self._segmentation(a, im["height"], im["width"])
        if reason:
            self.problem("annotation", reason, iid, aid)
            return None
        return a

    def _box_fields(self, a: dict[str, Any], h: int, w: int) -> str | None:
        bbox = a.get("bbox")
        box = [_num(v) for v in bbox] if isinstance(bbox, (list, tuple)) and len(bbox) == 4 else None
        if box is None or any(v is None for v in box):
            return f"bbox: must be 4 finite numbers [x, y, width, height], got {_short(bbox)}"
        x, y, bw, bh = box
        if bw <= 0 or bh <= 0:
            return f"bbox: width and height must be > 0, got {_short(bbox)}"
        if min(x + bw, w) - max(x, 0.0) < 1e-3 or min(y + bh, h) - max(y, 0.0) < 1e-3:
            return f"bbox: {_short(bbox)} lies outside the {w}x{h} image"
        a["bbox"] = box
        area = _num(a["area"]) if "area" in a else bw * bh
        if area is None or area < 0:
            return f"area: must be a finite number >= 0, got {_short(a.get('area'))}"
        a["area"] = area
        crowd = a.get("iscrowd", 0)
        if not isinstance(crowd, int) or crowd not in (0, 1):
            return f"iscrowd: must be 0 or 1, got {_short(crowd)}"
        a["iscrowd"] = int(crowd)
        return None

    def _segmentation(self, a: dict[str, Any], h: int, w: int) -> str | None:
        if "segmentation" not in a:
            return "segmentation: missing (the model predicts masks)" if self.with_masks else None
        seg = a["segmentation"]
        if isinstance(seg, list):
            good, dropped, reason = check_polygons(seg, h, w)
            if not reason and dropped:
                a["segmentation"] = good
                note = f"segmentation: dropped {dropped} unusable polygon(s), kept the others"
                self.problem("annotation", note, a.get("image_id"), a.get("id"))
        elif isinstance(seg, dict):
            reason = check_rle(seg, h, w)
        else:
            reason = f"segmentation: must be polygons or an RLE, got {type(seg).__name__}"
        if reason and not self.with_masks:  # the box is still good: keep it, without the segmentation
            del a["segmentation"]
            self.problem("annotation", f"{reason} (removed; the box is kept)", a.get("image_id"), a.get("id"))
            return None
        return reason

    def read(self) -> dict[str, Any]:
        path = self.path
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(
                f"{path} is not valid JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{path}: 'images' must be a list (not a COCO instance annotation file)")
        for key in ("annotations", "categories"):
            if not isinstance(data.get(key, []), list):
                raise ValueError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
        images: dict[int, dict[str, Any]] = {}
        for im in data["images"]:
            kept = self.image(im, images)
            if kept is not None:
                images[kept["id"]] = kept
        cats: dict[int, dict[str, Any]] = {}
        for i, c in enumerate(data.get("categories", [])):
            kept = self.category(c, i, cats)
            if kept is not None:
                cats[kept["id"]] = kept
        if not cats:
            raise ValueError(f"{path}: 'categories' holds no usable category (each needs a unique integer id)")
        anns, seen = [], set()
        for a in data.get("annotations", []):
            kept = self.annotation(a, images, cats, seen)
            if kept is not None:
                anns.append(kept)
        return {**data, "images": list(images.values()), "categories": list(cats.values()), "annotations": anns}


def read_coco(
    path: str | Path, image_dir: str | Path | None = None, with_masks: bool = True
) -> tuple[dict[str, Any], list[DataProblem]]:
    """The COCO json at ``path`` with every broken entry left out (see the module docstring), and the
    problems found. ``image_dir`` is where missing image sizes are read from (else such images are
    skipped); ``with_masks`` makes a usable segmentation required."""
    r = _Reader(Path(path), Path(image_dir) if image_dir is not None else None, with_masks)
    return r.read(), r.problems
