"""Decoding image files for every task: clear errors, high bit-depth images rescaled to 8 bits.

Only decoding problems are file problems (:class:`ImageDecodeError`: truncated or corrupt files, unknown
formats, decompression bombs); the loaders skip and count them. Anything that fails *after* decoding
(an augmentation) is a bug and is never reported as a bad file.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "check_regular_file",
    "collect_images",
    "open_image",
    "patch_posterize",
    "safe_posterize",
    "to_uint8_array",
]

# the files a folder given as input contributes (named directly, a file of any name is tried)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class ImageDecodeError(ValueError):
    """An image file cannot be decoded (corrupt, truncated, not an image, decompression bomb)."""


def _rescale(a: np.ndarray, mode: str) -> np.ndarray:
    """8-bit version of an integer (16/32-bit) or float image array (properly scaled, not clipped)."""
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:  # the usual [0, 1] float convention
            a = a * 255.0
        elif lo < 0.0 or hi > 255.0:  # anything else: stretch the value range
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    hi = int(a.max(initial=0))
    lo = int(a.min(initial=0))
    if lo < 0:
        a, hi = a - lo, hi - lo
    if mode.startswith("I;16") or hi <= 65535:
        full = 65535 if hi > 255 or mode.startswith("I;16") else 255
    else:
        full = hi
    return np.clip(np.rint(a * (255.0 / max(full, 1))), 0, 255).astype(np.uint8)


def to_uint8_array(im: Image.Image, mode: str = "RGB") -> np.ndarray:
    """``H x W x 3`` (``mode="RGB"``) or ``H x W`` (``mode="L"``) uint8 array of a decoded image; 16-bit
    and 32-bit integer images are scaled by their bit depth, float images from [0, 1] (or their range)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _rescale(np.asarray(im), im.mode)
        if gray.ndim == 3:
            gray = gray[..., 0]
        return gray if mode == "L" else np.repeat(gray[..., None], 3, axis=-1)
    if im.mode in ("RGB", "L") and im.mode == mode:
        return np.asarray(im)
    return np.asarray(im.convert(mode))


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode ``path`` completely into an 8-bit ``mode`` (RGB or L) PIL image.

    Raises :class:`ImageDecodeError` (one line naming the file) for anything that is not a decodable
    image, including decompression bombs (more than ``Image.MAX_IMAGE_PIXELS`` pixels) and truncated files.
    A path that is no regular file (a folder, FIFO, socket or device) is refused before it is opened
    (reading a FIFO would block until a writer comes, ``/dev/zero`` never ends).
    """
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGB", "L") and im.mode == mode:
                    return im.copy()
                return Image.fromarray(to_uint8_array(im, mode))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(
            f"{path}: refusing a decompression bomb ({e}); raise PIL.Image.MAX_IMAGE_PIXELS to read it"
        ) from None
    except FileNotFoundError:
        raise
    except MemoryError as e:
        raise ImageDecodeError(f"{path}: image too large to decode ({e})") from None
    except Exception as e:  # decoding only: every failure here is a problem of the file
        first = str(e).splitlines()[0] if str(e) else ""
        raise ImageDecodeError(f"cannot decode image {path}: {type(e).__name__}: {first}") from None


def check_regular_file(path: str | os.PathLike, what: str = "image") -> None:
    """Nothing if ``path`` is a regular file (after links); :class:`ImageDecodeError` naming what it is
    otherwise, without opening it; ``FileNotFoundError`` if it does not exist."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path)) from None
    except OSError as e:
        raise ImageDecodeError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISREG(mode):
        return
    kind = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise ImageDecodeError(f"{what} {path} is {kind}, not a file; give an image file")


def safe_posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """Posterize keeping ``bits_to_keep`` in [0, 8] bits (0 gives black, as Pillow < 13 and TensorFlow did;
    Pillow 13 refuses 0, which timm's RandAugment asks for at high magnitudes)."""
    bits = int(min(max(bits_to_keep, 0), 8))
    if bits >= 8:
        return img
    if bits >= 1:
        return ImageOps.posterize(img, bits)
    return img.point([0] * 256 * len(img.getbands()))


def patch_posterize(transform: object) -> int:
    """Replace the posterize op of every timm auto-augment policy inside ``transform`` by
    :func:`safe_posterize`; returns how many ops were patched."""
    try:
        from timm.data import auto_augment as aa
    except ImportError:  # pragma: no cover
        return 0
    n = 0
    seen: set[int] = set()
    stack = [transform]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, (list, tuple)):  # AutoAugment policies are lists of sub-policies
            stack.extend(t)
            continue
        if isinstance(t, aa.AugmentOp):
            if t.aug_fn is aa.posterize:
                t.aug_fn = safe_posterize
                n += 1
            continue
        for attr in ("transforms", "ops", "policy"):
            v = getattr(t, attr, None)
            if isinstance(v, (list, tuple)):
                stack.extend(v)
    return n


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The images of every predict command's inputs: files named directly (whatever their name), and the
    image files (:data:`IMAGE_EXTENSIONS`) found recursively in folders, sorted, hidden ones skipped.
    ``FileNotFoundError`` for an input that does not exist, ``ValueError`` when there is no image at all."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = (
                f
                for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and f.is_file()
            )
            out += sorted(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not out:
        names = ", ".join(str(i) for i in inputs)
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {names or 'the inputs'}")
    return out
