"""COCO panoptic data: reading and checking the files, the training/evaluation dataset, writing predictions.

The COCO panoptic format (Kirillov et al., "Panoptic Segmentation", CVPR 2019): a JSON file with
``categories`` (``id``, ``name``, ``isthing``), ``images`` (``id``, ``file_name``, ``width``, ``height``)
and ``annotations`` (one an image: ``image_id``, ``file_name`` of its PNG, ``segments_info``: ``id``,
``category_id``, ``iscrowd``), and a folder of RGB PNGs whose pixel holds the segment id
``R + 256 G + 256^2 B`` (0 = void: unlabelled).

Layout (:func:`panoptic_paths`): ``annotations/panoptic_{train,val}2017.json``, the PNGs in
``annotations/panoptic_{train,val}2017/`` or ``panoptic_{train,val}2017/`` at the root, the images in
``{train,val}2017/``; each of the three can be pointed elsewhere.

Problems of the whole file (missing or invalid JSON, no categories, duplicate category or image ids)
are one-line :class:`PanopticFormatError` errors naming the file. Problems of one image (unreadable image
or PNG, a PNG that is not RGB, image/PNG size mismatch, segments of the JSON missing from the PNG, PNG
ids missing from the JSON, unknown categories, malformed segment entries) skip that image; they are
counted in :attr:`CocoPanoptic.problems` (``{"split", "file", "problem"}``, as the other segmentation
datasets' ``data_problems``). Images are decoded through :mod:`focalnet.engine.images` and PNGs under the
same decompression-bomb guard, so a hostile file never allocates more than Pillow's pixel limit allows.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..engine.images import ImageDecodeError, open_image

__all__ = [
    "MAX_SEGMENT_ID",
    "CocoPanoptic",
    "PanopticCategory",
    "PanopticEntry",
    "PanopticFormatError",
    "Segment",
    "build_panoptic_dataset",
    "id_to_rgb",
    "load_panoptic_json",
    "masks_from_index",
    "panoptic_paths",
    "parse_segments",
    "read_id_png",
    "rgb_to_id",
    "segment_problem",
    "valid_image_id",
    "write_panoptic_prediction",
]

log = logging.getLogger("focalnet")

MAX_SEGMENT_ID = 256**3 - 1  # three 8-bit channels


class PanopticFormatError(ValueError):
    """A panoptic JSON or PNG cannot be used (one line naming the file)."""


# ------------------------------------------------------------------------------------------ ids and PNGs
def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids ``R + 256 G + 256^2 B`` (int32, ``H x W``) of an ``H x W x 3`` (or 4) uint8 array."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"expected an H x W x 3 array of colours, got shape {a.shape}")
    a = a[..., :3].astype(np.int32)
    return a[..., 0] | (a[..., 1] << 8) | (a[..., 2] << 16)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """The ``H x W x 3`` uint8 colours of segment ids ``0 .. 256^3 - 1`` (inverse of :func:`rgb_to_id`)."""
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"segment ids must be integers, got {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > MAX_SEGMENT_ID):
        raise ValueError(f"segment ids must lie in 0..{MAX_SEGMENT_ID}, got {int(a.min())}..{int(a.max())}")
    a = a.astype(np.int64)
    return np.stack([a & 255, (a >> 8) & 255, (a >> 16) & 255], axis=-1).astype(np.uint8)


def read_id_png(path: str | os.PathLike) -> np.ndarray:
    """The segment-id map (int32, ``H x W``) of a COCO panoptic PNG.

    Refuses (:class:`PanopticFormatError`, one line) anything but an RGB/RGBA PNG (a palette or grey PNG
    holds no segment ids), decompression bombs and truncated files; a missing file is a
    ``FileNotFoundError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.format != "PNG":
                    raise PanopticFormatError(f"{path}: a {im.format} file; panoptic segment ids need a PNG")
                if im.mode not in ("RGB", "RGBA"):
                    raise PanopticFormatError(
                        f"{path}: a mode {im.mode} PNG; panoptic segment ids need an RGB PNG (id = R + 256 G + 256^2 B)"
                    )
                im.load()
                rgba = np.asarray(im if im.mode == "RGBA" else im.convert("RGBA"))
    except (PanopticFormatError, FileNotFoundError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PanopticFormatError(f"{path}: refusing a decompression bomb ({e})") from None
    except MemoryError as e:
        raise PanopticFormatError(f"{path}: PNG too large to decode ({e})") from None
    except Exception as e:  # decoding: every failure here is a problem of the file
        first = str(e).splitlines()[0] if str(e) else ""
        raise PanopticFormatError(f"cannot read panoptic PNG {path}: {type(e).__name__}: {first}") from None
    # R + 256 G + 256^2 B: the little-endian 32-bit word of each RGBA pixel without its alpha byte
    return (rgba.view("<u4")[..., 0] & 0xFFFFFF).astype(np.int32)


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (no decoding); a bomb is an :class:`ImageDecodeError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ImageDecodeError(f"cannot read image {path}: {type(e).__name__}: {str(e)[:200]}") from None


# ------------------------------------------------------------------------------------------ the JSON
@dataclass(frozen=True)
class PanopticCategory:
    """One category of a panoptic dataset (``id`` as in the files)."""

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Segment:
    """One segment of an image: its id in the PNG, its category id (as in the files) and crowd flag."""

    id: int
    category_id: int
    iscrowd: bool = False


@dataclass(frozen=True)
class PanopticEntry:
    """One annotated image: its id, image file, PNG file and segments."""

    image_id: Any
    image_file: Path
    png_file: Path
    segments: tuple[Segment, ...]
    size: tuple[int, int] | None = None  # (width, height) the JSON claims


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def valid_image_id(v: Any) -> bool:
    """Whether ``v`` can be an image id: an integer or a string (COCO's are integers)."""
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _parse_categories(raw: Any, source: str) -> list[PanopticCategory]:
    if not isinstance(raw, list) or not raw:
        raise PanopticFormatError(f"{source}: no categories (expected a non-empty 'categories' list)")
    cats: dict[int, PanopticCategory] = {}
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not 0 <= c["id"] <= 2**31:
            raise PanopticFormatError(f"{source}: categories[{i}] has no integer 'id' in 0..2^31")
        if c["id"] in cats:
            raise PanopticFormatError(f"{source}: duplicate category id {c['id']}")
        isthing = c.get("isthing", 1)
        if isthing not in (0, 1):  # True/False too
            raise PanopticFormatError(f"{source}: category {c['id']} has isthing {isthing!r}; expected 0 or 1")
        color = c.get("color")
        ok_color = isinstance(color, list) and len(color) == 3 and all(_is_int(v) and 0 <= v < 256 for v in color)
        cats[c["id"]] = PanopticCategory(
            c["id"], str(c.get("name", f"category_{c['id']}")), bool(isthing), tuple(color) if ok_color else None
        )
    return [cats[k] for k in sorted(cats)]


def load_panoptic_json(
    path: str | os.PathLike, *, need_categories: bool = True
) -> tuple[dict[str, Any], list[PanopticCategory]]:
    """The parsed JSON and its categories (sorted by id) after the file-level checks: readable JSON
    object, an ``annotations`` list, categories (where ``need_categories``), no duplicate category,
    image or annotation ``image_id``. Each problem is one :class:`PanopticFormatError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"panoptic JSON not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise PanopticFormatError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (UnicodeDecodeError, RecursionError, MemoryError, ValueError) as e:
        raise PanopticFormatError(f"{p}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise PanopticFormatError(f"{p}: expected a JSON object with 'annotations', got a {type(data).__name__}")
    if not isinstance(data.get("annotations"), list):
        raise PanopticFormatError(f"{p}: no 'annotations' list")
    cats = _parse_categories(data.get("categories"), str(p)) if need_categories or "categories" in data else []
    seen: set[Any] = set()
    for key, items in (("images", data.get("images") or []), ("annotations", data["annotations"])):
        if not isinstance(items, list):
            raise PanopticFormatError(f"{p}: '{key}' is not a list")
        seen.clear()
        field = "id" if key == "images" else "image_id"
        for item in items:
            v = item.get(field) if isinstance(item, dict) else None
            if not valid_image_id(v):
                continue  # an entry problem, reported per image
            if v in seen:
                raise PanopticFormatError(f"{p}: duplicate {field} {v!r} in '{key}'")
            seen.add(v)
    return data, cats


def parse_segments(raw: Any, categories: Mapping[int, PanopticCategory] | None = None) -> tuple[Segment, ...]:
    """The segments of one ``segments_info`` list; a ``ValueError`` (one line) for a malformed entry, a
    duplicate or out-of-range id, or (given ``categories``) an unknown category."""
    if not isinstance(raw, list):
        raise ValueError("'segments_info' is not a list")
    out, ids = [], set()
    for s in raw:
        if not isinstance(s, dict) or not _is_int(s.get("id")) or not _is_int(s.get("category_id")):
            raise ValueError(f"segment entry {str(s)[:80]} has no integer 'id' and 'category_id'")
        if not 1 <= s["id"] <= MAX_SEGMENT_ID:
            raise ValueError(f"segment id {s['id']} outside 1..{MAX_SEGMENT_ID} (0 is void)")
        if s["id"] in ids:
            raise ValueError(f"duplicate segment id {s['id']}")
        if categories is not None and s["category_id"] not in categories:
            raise ValueError(f"segment {s['id']} has unknown category_id {s['category_id']}")
        crowd = s.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise ValueError(f"segment {s['id']} has iscrowd {crowd!r}; expected 0 or 1")
        ids.add(s["id"])
        out.append(Segment(s["id"], s["category_id"], bool(crowd)))
    return tuple(out)


def segment_problem(ids: np.ndarray, segments: Sequence[Segment]) -> str | None:
    """Why an id map and its segments disagree (JSON segments absent from the PNG, PNG ids absent from
    the JSON), or ``None``."""
    present = set(np.unique(ids).tolist()) - {0}
    listed = {s.id for s in segments}
    if listed - present:
        missing = sorted(listed - present)
        return f"segment(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} of the JSON are not in the PNG"
    if present - listed:
        extra = sorted(present - listed)
        return f"PNG id(s) {extra[:8]}{' ...' if len(extra) > 8 else ''} are not in the JSON's segments_info"
    return None


def panoptic_paths(
    root: str | os.PathLike,
    split: str,
    json_file: str | os.PathLike | None = None,
    png_dir: str | os.PathLike | None = None,
    img_dir: str | os.PathLike | None = None,
) -> tuple[Path, Path, Path]:
    """``(json, png folder, image folder)`` of a COCO panoptic ``split`` ("train" or "val") under ``root``;
    given paths (relative to ``root`` unless absolute) replace the layout's."""
    root = Path(root).expanduser()

    def under(p: str | os.PathLike) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else root / q

    name = f"panoptic_{split}2017"
    js = under(json_file) if json_file else root / "annotations" / f"{name}.json"
    if png_dir:
        png = under(png_dir)
    else:
        png = next((c for c in (root / "annotations" / name, root / name) if c.is_dir()), root / "annotations" / name)
    img = under(img_dir) if img_dir else root / f"{split}2017"
    return js, png, img


def _entries(
    data: dict[str, Any], cats: Mapping[int, PanopticCategory], png_dir: Path, img_dir: Path
) -> tuple[list[PanopticEntry], list[dict[str, str]]]:
    """The annotations as entries, and the problems of the malformed ones (JSON only: no file is read)."""
    images = {im["id"]: im for im in data.get("images") or [] if isinstance(im, dict) and valid_image_id(im.get("id"))}
    entries, problems = [], []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("file_name"), str) or not ann["file_name"]:
            problems.append({"file": f"annotations[{k}]", "problem": "no PNG 'file_name'"})
            continue
        if not valid_image_id(ann.get("image_id")):
            problems.append({"file": str(png_dir / ann["file_name"]), "problem": "no integer or string 'image_id'"})
            continue
        try:
            segments = parse_segments(ann.get("segments_info"), cats)
        except ValueError as e:
            problems.append({"file": str(png_dir / ann["file_name"]), "problem": str(e)})
            continue
        info = images.get(ann.get("image_id"))
        name = info.get("file_name") if isinstance(info, dict) else None
        if not isinstance(name, str) or not name:
            name = f"{Path(ann['file_name']).stem}.jpg"  # detectron2's convention
        size = None
        if isinstance(info, dict) and _is_int(info.get("width")) and _is_int(info.get("height")):
            size = (info["width"], info["height"])
        entries.append(PanopticEntry(ann.get("image_id"), img_dir / name, png_dir / ann["file_name"], segments, size))
    return entries, problems


def _check_entry(entry: PanopticEntry) -> str | None:
    """Why ``entry`` cannot be used (reads the image header and the PNG), or ``None``."""
    try:
        size = _image_size(entry.image_file)
    except FileNotFoundError:
        return f"image {entry.image_file} not found"
    except ImageDecodeError as e:
        return str(e)
    if entry.size is not None and entry.size != size:
        return f"image is {size[0]}x{size[1]} but the JSON says {entry.size[0]}x{entry.size[1]}"
    try:
        ids = read_id_png(entry.png_file)
    except FileNotFoundError:
        return f"panoptic PNG {entry.png_file} not found"
    except PanopticFormatError as e:
        return str(e)
    if (ids.shape[1], ids.shape[0]) != size:
        return f"image is {size[0]}x{size[1]} but its PNG {entry.png_file.name} is {ids.shape[1]}x{ids.shape[0]}"
    return segment_problem(ids, entry.segments)


# ------------------------------------------------------------------------------------------ the dataset
class CocoPanoptic:
    """A COCO panoptic split: ``(image tensor, {"labels", "masks"})`` for Mask2Former, or raw samples (a
    map-style dataset for ``torch.utils.data.DataLoader``; this module imports no torch).

    Classes are the categories in increasing id order (``labels`` index them: :attr:`category_ids`,
    :attr:`class_names`, :attr:`thing_classes`). Each non-crowd segment is one target mask; crowd regions
    and void are in no mask. ``transform(image uint8 HxWx3, index map int32 HxW) -> (tensor, index map)``
    (e.g. :class:`~focalnet.segmentation.universal_data.LargeScaleJitter`) sees the segments as an index
    map (0: void or crowd, ``k``: the k-th target); masks emptied by a crop are dropped. Without a
    transform, items are ``{"image", "ids", "segments", "image_id", "path"}`` for evaluation. Items that
    fail to load are ``None`` (the collate drops them) and added to :attr:`problems`.
    """

    def __init__(
        self,
        json_file: str | os.PathLike,
        png_dir: str | os.PathLike,
        img_dir: str | os.PathLike,
        *,
        transform: Callable[[np.ndarray, np.ndarray], tuple[Any, np.ndarray]] | None = None,
        verify: bool = True,
        on_error: str = "skip",
        split: str = "train",
        num_threads: int = 4,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error: must be 'skip' or 'raise', got {on_error!r}")
        self.json_file, self.png_dir, self.img_dir = Path(json_file), Path(png_dir), Path(img_dir)
        for what, d in (("panoptic PNG folder", self.png_dir), ("image folder", self.img_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"{what} not found: {d}")
        data, cats = load_panoptic_json(self.json_file)
        self.categories: list[PanopticCategory] = cats
        self.category_ids = [c.id for c in cats]
        self.class_names = [c.name for c in cats]
        self.thing_classes = [c.isthing for c in cats]
        self.cat_to_index = {c.id: i for i, c in enumerate(cats)}
        self.transform, self.split = transform, split
        entries, problems = _entries(data, {c.id: c for c in cats}, self.png_dir, self.img_dir)
        del data
        self.problems: list[dict[str, str]] = [dict(p, split=split) for p in problems]
        if verify and entries:
            with ThreadPoolExecutor(max(1, num_threads)) as ex:
                found = list(ex.map(_check_entry, entries))
            for e, why in zip(entries, found):
                if why is not None:
                    self.problems.append({"split": split, "file": str(e.png_file), "problem": why})
            entries = [e for e, why in zip(entries, found) if why is None]
        if self.problems:
            msg = "; ".join(f"{Path(p['file']).name}: {p['problem']}" for p in self.problems[:5])
            more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            if on_error == "raise":
                raise ValueError(f"{len(self.problems)} bad panoptic entries in the {split} set: {msg}{more}")
            log.warning("skipping %d bad panoptic entries in the %s set: %s%s", len(self.problems), split, msg, more)
        if not entries:
            raise ValueError(f"{self.json_file}: the {split} set has no usable images")
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_classes(self) -> int:
        """Number of categories (things and stuff; no background class)."""
        return len(self.categories)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[Segment, ...]]:
        """The image (RGB uint8), its id map (int32) and segments; a ``ValueError`` where they disagree."""
        e = self.entries[i]
        img = np.asarray(open_image(e.image_file))
        ids = read_id_png(e.png_file)
        if ids.shape != img.shape[:2]:
            raise ValueError(f"image is {img.shape[1]}x{img.shape[0]} but its PNG is {ids.shape[1]}x{ids.shape[0]}")
        why = segment_problem(ids, e.segments)
        if why:
            raise ValueError(why)
        return img, ids, e.segments

    def index_map(self, ids: np.ndarray, segments: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """``(index map int32 HxW, labels int64 (N,))``: pixel ``k`` (1..N) belongs to the k-th non-crowd
        segment, whose class index is ``labels[k-1]``; void and crowd pixels are 0."""
        keep = [s for s in segments if not s.iscrowd]
        lut_ids = np.array([0] + [s.id for s in keep], dtype=np.int64)
        order = np.argsort(lut_ids)
        pos = np.searchsorted(lut_ids[order], ids.ravel())
        pos = np.clip(pos, 0, len(lut_ids) - 1)
        hit = lut_ids[order][pos] == ids.ravel()
        index = np.where(hit, order[pos], 0).astype(np.int32).reshape(ids.shape)
        labels = np.array([self.cat_to_index[s.category_id] for s in keep], dtype=np.int64)
        return index, labels

    def __getitem__(self, i: int) -> Any:
        e = self.entries[i]
        try:
            img, ids, segments = self.load(i)
        except (OSError, ValueError) as err:  # reported skip (the collate drops None)
            self.problems.append({"split": self.split, "file": str(e.png_file), "problem": str(err)})
            log.warning("skipping %s: %s", e.png_file, err)
            return None
        if self.transform is None:
            return {"image": img, "ids": ids, "segments": segments, "image_id": e.image_id, "path": str(e.image_file)}
        index, labels = self.index_map(ids, segments)
        tensor, index = self.transform(img, index)
        return tensor, masks_from_index(index, labels)


def build_panoptic_dataset(
    root: str | os.PathLike,
    split: str,
    transform: Callable[[np.ndarray, np.ndarray], tuple[Any, np.ndarray]] | None = None,
    *,
    json_file: str | os.PathLike | None = None,
    png_dir: str | os.PathLike | None = None,
    img_dir: str | os.PathLike | None = None,
    verify: bool = True,
    on_error: str = "skip",
    num_threads: int = 4,
) -> CocoPanoptic:
    """The ``split`` of the COCO panoptic folder ``root`` (files located by :func:`panoptic_paths`)."""
    js, png, img = panoptic_paths(root, split, json_file, png_dir, img_dir)
    return CocoPanoptic(
        js, png, img, transform=transform, verify=verify, on_error=on_error, split=split, num_threads=num_threads
    )


def masks_from_index(index: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Mask2Former's target ``{"labels": int64 (M,), "masks": bool (M, H, W)}`` of an index map (pixel
    ``k`` in 1..N: target ``k``, class ``labels[k-1]``; 0: no target); targets without pixels are dropped."""
    import torch

    index = np.asarray(index)
    present = np.unique(index)
    present = present[(present > 0) & (present <= len(labels))]
    masks = torch.from_numpy(index[None] == present[:, None, None].astype(index.dtype))
    return {"labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)[present - 1]), "masks": masks}


# ------------------------------------------------------------------------------------------ predictions
def write_panoptic_prediction(
    seg_map: np.ndarray,
    segments_info: Sequence[Mapping[str, Any]],
    png_path: str | os.PathLike,
    image_id: Any,
    category_ids: Sequence[int],
) -> dict[str, Any]:
    """Write one image's panoptic prediction as a COCO panoptic PNG (atomically) and return its JSON entry.

    ``seg_map``: segment ids (``H x W``, 0 = void) and ``segments_info``: ``{"id", "category_id"
    (contiguous class index), "isthing", "score", ...}`` as the Mask2Former post-processing returns them;
    ``category_ids[k]`` is the dataset's id of class ``k``. Map pixels of ids without an entry become void,
    entries without pixels are left out and ``area`` is counted from the map, so that the pair always
    passes :func:`focalnet.segmentation.pq.pq_compute`'s checks."""
    seg = np.asarray(seg_map).astype(np.int64)
    ids, counts = np.unique(seg, return_counts=True)
    area = dict(zip(ids.tolist(), counts.tolist()))
    entries, listed = [], set()
    for s in segments_info:
        sid, k = int(s["id"]), int(s["category_id"])
        if sid == 0 or sid not in area or sid in listed:
            continue
        if not 0 <= k < len(category_ids):
            raise ValueError(f"segment {sid}: class index {k} outside 0..{len(category_ids) - 1}")
        listed.add(sid)
        entry = {"id": sid, "category_id": int(category_ids[k]), "iscrowd": 0, "area": int(area[sid])}
        for key in ("isthing", "score"):
            if key in s:
                entry[key] = bool(s[key]) if key == "isthing" else float(s[key])
        entries.append(entry)
    seg[~np.isin(seg, np.fromiter(listed, dtype=np.int64, count=len(listed)))] = 0
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(id_to_rgb(seg)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return {"image_id": image_id, "file_name": path.name, "segments_info": entries}
