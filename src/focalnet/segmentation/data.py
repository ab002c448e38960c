"""Segmentation datasets: the ADE20K layout and a generic image-folder + label-PNG-folder layout.

Labels inside the library always use ``0 .. num_classes-1`` for classes and 255 (:data:`IGNORE_INDEX`)
for "ignore". The loaders map the files' conventions onto that: ``reduce_zero_label`` (ADE20K: 0 is
"other" and becomes 255, ``k`` becomes ``k-1``) or a dataset ignore value (CamVid: 11 becomes 255).

Layouts (paths relative to ``root`` unless absolute):

* ``ade20k``: ``images/{training,validation}/*.jpg`` + ``annotations/{training,validation}/*.png``;
  ``reduce_zero_label`` on, 150 classes, names from ``objectInfo150.csv`` when present. Other folders
  via ``train_img_dir``/``train_ann_dir``/``val_img_dir``/``val_ann_dir`` (e.g. the MIT sample's
  ``sampleData/images`` and ``sampleData/annotations``, which are also picked up automatically).
* ``folder``: ``{train,val}/`` images + ``{train,val}annot/`` label PNGs with the same stems, class
  names from ``class_names``, ``classes_file``, ``root/classes.txt``, else numbered names
  (``class_0`` ...) with the count from ``num_classes`` or the largest label found.

Bad samples (unreadable files, image/label size mismatch, label values outside the class range that
are not the ignore value, missing label files) are found by a verification pass and either skipped and
reported (``on_error="skip"``: logged, kept in :attr:`SegmentationDataset.problems`, written by the
trainer to ``metrics.json``) or raised as one ``ValueError`` naming the files (``on_error="raise"``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..engine.images import check_regular_file, open_image
from .model import IGNORE_INDEX

__all__ = [
    "ADE20K_CLASSES",
    "IMG_EXTENSIONS",
    "DataConfig",
    "SegmentationDataset",
    "build_dataset",
    "find_pairs",
    "load_class_names",
    "map_label",
    "read_image",
    "read_label",
    "split_dirs",
]

log = logging.getLogger("focalnet")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# mmsegmentation's names for the 150 SceneParsing classes (label k+1 in the files -> class k)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip


@dataclass
class DataConfig:
    """Where the data is and how its labels are encoded (see the module docstring)."""

    root: str = ""
    layout: str = "ade20k"  # ade20k | folder
    train_img_dir: str | None = None
    train_ann_dir: str | None = None
    val_img_dir: str | None = None
    val_ann_dir: str | None = None
    class_names: list[str] | None = None
    classes_file: str | None = None
    num_classes: int | None = None
    ignore_index: int = IGNORE_INDEX  # value in the label files meaning "ignore" (255 always is too)
    reduce_zero_label: bool | None = None  # None: True for ade20k, False for folder
    verify: bool = True  # check every pair before training/evaluation
    on_error: str = "skip"  # skip | raise
    num_workers: int = 4

    def validate(self) -> None:
        if self.layout not in ("ade20k", "folder"):
            raise ValueError(f"layout: must be 'ade20k' or 'folder', got {self.layout!r}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error: must be 'skip' or 'raise', got {self.on_error!r}")
        if self.ignore_index < 0:
            raise ValueError(f"ignore_index: must be >= 0, got {self.ignore_index}")
        if self.num_classes is not None and not 1 <= self.num_classes <= 255:
            raise ValueError(f"num_classes: must be in 1..255 (label PNGs hold 8-bit ids), got {self.num_classes}")
        if self.class_names is not None and self.num_classes is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names: {len(self.class_names)} names but num_classes is {self.num_classes}")

    @property
    def zero_label_reduced(self) -> bool:
        return self.layout == "ade20k" if self.reduce_zero_label is None else self.reduce_zero_label


def _under(root: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def split_dirs(cfg: DataConfig, split: str) -> tuple[Path, Path]:
    """Image and label folders of ``split`` ("train" or "val") for ``cfg``'s layout."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(cfg.root).expanduser()
    img_o = cfg.train_img_dir if split == "train" else cfg.val_img_dir
    ann_o = cfg.train_ann_dir if split == "train" else cfg.val_ann_dir
    if cfg.layout == "ade20k":
        sub = "training" if split == "train" else "validation"
        img, ann = root / "images" / sub, root / "annotations" / sub
        if img_o is None and ann_o is None and not img.exists() and (root / "sampleData" / "images").is_dir():
            # the MIT SceneParsing sample: one folder of images and one of labels, used for both splits
            img, ann = root / "sampleData" / "images", root / "sampleData" / "annotations"
    else:
        img, ann = root / split, root / f"{split}annot"
    img = _under(root, img_o) if img_o else img
    ann = _under(root, ann_o) if ann_o else ann
    return img, ann


def find_pairs(img_dir: Path, ann_dir: Path) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """``(image, label)`` pairs matched by file stem; images without a label PNG are returned as problems."""
    if not img_dir.is_dir():
        hint = ""
        root = img_dir.parent.parent if img_dir.parent.name == "images" else img_dir.parent
        if img_dir.parent.name == "images" and any(
            (root / s).is_dir() and (root / f"{s}annot").is_dir() for s in ("train", "val")
        ):
            hint = f" ({root} looks like the folder layout, ROOT/train + ROOT/trainannot: add --layout folder)"
        raise FileNotFoundError(f"image folder not found: {img_dir}{hint}")
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"label folder not found: {ann_dir}")
    labels = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
    pairs, problems = [], []
    for p in sorted(img_dir.iterdir()):
        if p.suffix.lower() not in IMG_EXTENSIONS or p.name.startswith("."):
            continue
        if p.stem in labels:
            pairs.append((p, labels[p.stem]))
        else:
            problems.append({"file": str(p), "problem": f"no label file {p.stem}.png in {ann_dir}"})
    if not pairs and not problems:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {img_dir}")
    return pairs, problems


def _ade_csv_names(path: Path) -> list[str]:
    """Class names from ADE20K's ``objectInfo150.csv`` (``Name`` column; ';' separates words and synonyms)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "Name" not in rows[0]:
        raise ValueError(f"{path} has no 'Name' column")
    names = []
    for i, r in enumerate(rows):
        raw = r["Name"].strip()
        known = ADE20K_CLASSES[i] if len(rows) == len(ADE20K_CLASSES) else None
        if known and raw.startswith(known.replace(" ", ";")):
            names.append(known)  # disambiguate "coffee;table;cocktail;table" -> "coffee table"
        else:
            names.append(raw.split(";")[0])
    return names


def load_class_names(cfg: DataConfig) -> list[str] | None:
    """Class names from the config, a class file, ``classes.txt`` or ``objectInfo150.csv``; ``None``
    where the data names none (the caller then numbers the classes)."""
    root = Path(cfg.root).expanduser()
    if cfg.class_names:
        return list(cfg.class_names)
    candidates = [_under(root, cfg.classes_file)] if cfg.classes_file else []
    if cfg.classes_file and not candidates[0].exists():
        raise FileNotFoundError(f"classes file not found: {candidates[0]}")
    candidates += [root / "classes.txt", root / "objectInfo150.csv"]
    for path in candidates:
        if path.exists():
            if path.suffix == ".csv":
                return _ade_csv_names(path)
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not names:
                raise ValueError(f"{path} lists no class names")
            return names
    if cfg.layout == "ade20k":
        return list(ADE20K_CLASSES)
    return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` (16-bit and float images rescaled to 8 bits; decompression bombs refused)."""
    return np.asarray(open_image(path))


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Raw class ids of a single-channel (L / P / I;16) label PNG."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _read_label(path)


LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")  # one channel of integers


def _read_label(path: str | os.PathLike) -> np.ndarray:
    check_regular_file(path, "label")  # a FIFO or device would block or never end
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            raise ValueError(f"label {path} is a {im.mode} colour image; expected one channel of class ids")
        if im.mode not in LABEL_MODES:  # float (F), two-channel (LA), CMYK, ...: not class ids
            raise ValueError(f"label {path} is a mode {im.mode} image; expected one channel of integer class ids")
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"label {path} has shape {arr.shape}; expected (H, W)")
    return arr


def map_label(
    raw: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX, reduce_zero_label: bool = False
) -> tuple[np.ndarray, list[int]]:
    """Map file ids to ``0..num_classes-1`` / 255; returns ``(uint8 label, sorted bad values)``.

    ``reduce_zero_label``: 0 -> 255, k -> k-1 (255 stays 255). Otherwise ``ignore_index`` -> 255.
    Bad values are ids that are neither a class nor ignored (they are set to 255 in the output).
    """
    lab = raw.astype(np.int64)
    if reduce_zero_label:
        ignore = (lab == 0) | (lab == 255)
        lab = lab - 1
    else:
        ignore = (lab == ignore_index) | (lab == 255)
    bad_mask = ~ignore & ((lab < 0) | (lab >= num_classes))
    bad: list[int] = []
    if bad_mask.any():
        bad = sorted({int(v) for v in np.unique(raw[bad_mask])})
    lab[ignore | bad_mask] = IGNORE_INDEX
    return lab.astype(np.uint8), bad


class SegmentationDataset(Dataset):
    """Pairs of (image, label PNG). With ``transform`` (training: ``(img, label) -> (tensor, tensor)``)
    items are ``{"img", "gt"}`` tensors; without, ``{"image": uint8 HxWx3, "label": uint8 HxW, "path"}``
    for evaluation. Unreadable items found at load time are logged and returned as ``None``."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        num_classes: int,
        class_names: Sequence[str] | None = None,
        *,
        ignore_index: int = IGNORE_INDEX,
        reduce_zero_label: bool = False,
        transform: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]] | None = None,
        verify: bool = True,
        on_error: str = "skip",
        problems: Sequence[dict[str, str]] = (),
        split: str = "train",
        num_threads: int = 4,
    ) -> None:
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform
        self.split = split
        self.problems: list[dict[str, str]] = [dict(p, split=split) for p in problems]
        pairs = list(pairs)
        self._labelled = False  # whether a verified label holds a pixel of a class (not ignored)
        if verify:
            pairs = self._verify(pairs, num_threads)
        if self.problems:
            msg = "; ".join(f"{Path(p['file']).name}: {p['problem']}" for p in self.problems[:5])
            more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            if on_error == "raise":
                raise ValueError(f"{len(self.problems)} bad sample(s) in the {split} set: {msg}{more}")
            log.warning("skipping %d bad sample(s) in the %s set: %s%s", len(self.problems), split, msg, more)
        if not pairs:
            raise ValueError(f"the {split} set has no usable samples" + (f" ({msg})" if self.problems else ""))
        if verify and not self._labelled:  # the loss would be NaN from the first step ("lower the lr": wrong)
            zero = "; 0 is ignored too (reduce_zero_label)" if reduce_zero_label else ""
            raise ValueError(
                f"no pixel is labelled in the {split} set: every label pixel is the ignore value "
                f"{ignore_index} or 255{zero}; check the label files, data.ignore_index and data.reduce_zero_label"
            )
        self.pairs = pairs

    def _check(self, pair: tuple[Path, Path]) -> str | None:
        img_p, lab_p = pair
        try:
            check_regular_file(img_p)
            with Image.open(img_p) as im:
                size = im.size
                im.verify() if img_p.suffix.lower() == ".png" else None
        except Exception as e:
            return f"unreadable image ({type(e).__name__}: {e})"
        try:
            raw = read_label(lab_p)
        except Exception as e:
            return f"unreadable label {lab_p.name} ({type(e).__name__}: {e})"
        if (raw.shape[1], raw.shape[0]) != size:
            return f"image is {size[0]}x{size[1]} but label {lab_p.name} is {raw.shape[1]}x{raw.shape[0]}"
        lab, bad = map_label(raw, self.num_classes, self.ignore_index, self.reduce_zero_label)
        if not self._labelled and (lab != IGNORE_INDEX).any():
            self._labelled = True
        if bad:
            shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
            rng = f"1..{self.num_classes}" if self.reduce_zero_label else f"0..{self.num_classes - 1}"
            return f"label {lab_p.name} holds value(s) {shown} outside the classes {rng} (ignore: {self.ignore_index})"
        return None

    def _verify(self, pairs: list[tuple[Path, Path]], num_threads: int) -> list[tuple[Path, Path]]:
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max(1, num_threads)) as ex:
            results = list(
                tqdm(
                    ex.map(self._check, pairs),
                    total=len(pairs),
                    desc=f"checking {self.split} data",
                    disable=len(pairs) < 200,
                    leave=False,
                )
            )
        good = []
        for pair, problem in zip(pairs, results):
            if problem is None:
                good.append(pair)
            else:
                self.problems.append({"split": self.split, "file": str(pair[0]), "problem": problem})
        return good

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (RGB uint8) and its mapped label (uint8, 255 = ignore); errors raise ``ValueError``."""
        img_p, lab_p = self.pairs[i]
        img = read_image(img_p)
        raw = read_label(lab_p)
        if raw.shape != img.shape[:2]:
            raise ValueError(
                f"{img_p.name}: image is {img.shape[1]}x{img.shape[0]} but label is {raw.shape[1]}x{raw.shape[0]}"
            )
        label, bad = map_label(raw, self.num_classes, self.ignore_index, self.reduce_zero_label)
        if bad:
            raise ValueError(f"{lab_p.name}: label values {bad[:8]} outside the class range")
        return img, label

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        try:
            img, label = self.load(i)
        except Exception as e:  # reported skip (collate drops None)
            log.warning("skipping %s: %s: %s", self.pairs[i][0], type(e).__name__, e)
            return None
        if self.transform is None:
            return {"image": img, "label": label, "path": str(self.pairs[i][0])}
        t, lab = self.transform(img, label)
        return {"img": t, "gt": lab}


def _infer_num_classes(pairs: Sequence[tuple[Path, Path]], cfg: DataConfig) -> int:
    top = -1
    for _, lab_p in pairs:
        try:
            raw = read_label(lab_p)
        except Exception:
            continue
        vals = np.unique(raw).astype(np.int64)
        vals = vals[(vals != cfg.ignore_index) & (vals < 255)]  # larger values are no 8-bit class ids: bad samples
        if cfg.zero_label_reduced:
            vals = vals[vals != 0] - 1
        if vals.size:
            top = max(top, int(vals.max()))
    if top < 0:
        raise ValueError("cannot infer the number of classes: no labelled pixels found; set num_classes")
    return top + 1


def build_dataset(
    cfg: DataConfig,
    split: str,
    transform: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]] | None = None,
    class_names: Sequence[str] | None = None,
) -> SegmentationDataset:
    """The ``split`` dataset of ``cfg``. ``class_names`` (e.g. from a checkpoint) fix the classes;
    otherwise they come from :func:`load_class_names`, ``num_classes`` or the labels themselves."""
    img_dir, ann_dir = split_dirs(cfg, split)
    pairs, problems = find_pairs(img_dir, ann_dir)
    names = list(class_names) if class_names is not None else load_class_names(cfg)
    if names is None:
        n = cfg.num_classes or _infer_num_classes(pairs, cfg)
        if cfg.num_classes is None:
            log.warning(
                "no class names found (set data.class_names or data.classes_file, or add %s): "
                "using %d numbered classes inferred from the %s labels",
                Path(cfg.root) / "classes.txt",
                n,
                split,
            )
        names = [f"class_{i}" for i in range(n)]
    if cfg.num_classes is not None and len(names) != cfg.num_classes:
        raise ValueError(f"{len(names)} class names but num_classes is {cfg.num_classes}")
    return SegmentationDataset(
        pairs,
        len(names),
        names,
        ignore_index=cfg.ignore_index,
        reduce_zero_label=cfg.zero_label_reduced,
        transform=transform,
        verify=cfg.verify,
        on_error=cfg.on_error,
        problems=problems,
        split=split,
        num_threads=max(cfg.num_workers, 1),
    )
