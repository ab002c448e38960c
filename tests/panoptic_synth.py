"""A small synthetic COCO-panoptic folder for tests: things and stuff, crowd regions and void, deterministic.

Each image has two stuff regions split by a random horizontal line (``sky`` above, ``ground`` below,
each one segment), one to three things drawn on top (red discs ``disc``, yellow squares ``box``; each one
segment), on every third image a crowd region of ``disc`` (a blob of small discs, ``iscrowd`` 1), and a
void band (id 0) along the left edge of width 0-3 px. Category ids are not contiguous (1, 3, 17, 21),
segment ids are random 24-bit numbers (the blue channel used too). Images are JPEGs with mild noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [
    {"id": 1, "name": "disc", "isthing": 1, "color": [220, 20, 60]},
    {"id": 3, "name": "box", "isthing": 1, "color": [230, 200, 20]},
    {"id": 17, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 21, "name": "ground", "isthing": 0, "color": [60, 160, 60]},
]
THINGS = {1: (200, 30, 40), 3: (235, 210, 30)}
STUFF = {17: (90, 140, 210), 21: (70, 150, 60)}


def _id_png(ids: np.ndarray) -> Image.Image:
    ids = ids.astype(np.int64)
    return Image.fromarray(np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8))


def synthetic_image(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One ``(RGB uint8, segment-id map int64, segments_info)`` sample."""
    img = np.zeros((h, w, 3), dtype=np.float64)
    ids = np.zeros((h, w), dtype=np.int64)
    used: set[int] = {0}

    def new_id() -> int:
        while True:
            v = int(rng.integers(1, 256**3))
            if v not in used:
                used.add(v)
                return v

    segs: list[dict] = []
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(rng.integers(h // 3, 2 * h // 3))
    for cat, region in ((17, yy < horizon), (21, yy >= horizon)):
        sid = new_id()
        ids[region] = sid
        img[region] = STUFF[cat]
        segs.append({"id": sid, "category_id": cat, "iscrowd": 0})
    for _ in range(int(rng.integers(1, 4))):
        cat = int(rng.choice([1, 3]))
        r = int(rng.integers(max(4, min(w, h) // 10), max(5, min(w, h) // 4)))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if cat == 1 else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        sid = new_id()
        ids[region] = sid
        img[region] = THINGS[cat]
        segs.append({"id": sid, "category_id": cat, "iscrowd": 0})
    if rng.random() < 1 / 3:  # a crowd of small discs
        sid = new_id()
        region = np.zeros((h, w), dtype=bool)
        cy, cx = int(rng.integers(6, h - 6)), int(rng.integers(6, w - 6))
        for _ in range(4):
            dy, dx = rng.integers(-5, 6, size=2)
            region |= (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= 4
        ids[region] = sid
        img[region] = THINGS[1]
        segs.append({"id": sid, "category_id": 1, "iscrowd": 1})
    band = int(rng.integers(0, 4))
    ids[:, :band] = 0
    img[:, :band] = 40
    present = set(np.unique(ids).tolist())
    segs = [s for s in segs if s["id"] in present]  # a thing may be fully covered by a later one
    for s in segs:
        m = ids == s["id"]
        ys, xs = np.nonzero(m)
        s["area"] = int(m.sum())
        s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return img, ids, segs


def write_synthetic_panoptic(
    root: str | Path, n_train: int = 24, n_val: int = 8, size: int = 96, seed: int = 0
) -> Path:
    """Write ``annotations/panoptic_{train,val}2017.json``, ``annotations/panoptic_{train,val}2017/*.png`` and
    ``{train,val}2017/*.jpg`` under ``root`` (images ``size`` px on the long side, the short side 3/4-1 of
    it); returns ``root``. The same arguments give the same files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    image_id = 1
    for split, n in (("train", n_train), ("val", n_val)):
        png_dir = root / "annotations" / f"panoptic_{split}2017"
        img_dir = root / f"{split}2017"
        png_dir.mkdir(parents=True, exist_ok=True)
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for _ in range(n):
            w = size
            h = int(rng.integers(3 * size // 4, size + 1))
            if rng.random() < 0.5:
                w, h = h, w
            img, ids, segs = synthetic_image(rng, w, h)
            stem = f"{image_id:012d}"
            Image.fromarray(img).save(img_dir / f"{stem}.jpg", quality=95)
            _id_png(ids).save(png_dir / f"{stem}.png")
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": w, "height": h})
            annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segs})
            image_id += 1
        data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(data))
    return root


CORRUPTIONS = ("keep", "palette", "grey", "truncated", "random", "bomb", "resized", "jpeg", "gone")


def giant_png_header(width: int, height: int) -> bytes:
    """A valid 1x1 RGB PNG whose header claims ``width x height`` (the CRC fixed): a decompression bomb."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


def corrupt_png(path: Path, how: str, seed: int = 0) -> None:
    """Damage a panoptic PNG in one of :data:`CORRUPTIONS` ways (``keep``: leave it)."""
    path = Path(path)
    if how == "keep" or not path.exists():
        return
    if how == "gone":
        path.unlink()
    elif how in ("palette", "grey"):
        Image.open(path).convert("P" if how == "palette" else "L").save(path)
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif how == "bomb":
        path.write_bytes(giant_png_header(200_000, 200_000))
    elif how == "resized":
        im = Image.open(path)
        im.resize((im.width + 3, im.height), Image.NEAREST).save(path)
    elif how == "jpeg":
        Image.open(path).convert("RGB").save(path, format="JPEG")
    else:
        raise ValueError(f"unknown corruption {how!r}")
