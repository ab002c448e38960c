"""Readable pictures: a font sized to the image, per-class colours, legends and a "random weights" mark.

Shared by detection and segmentation predictions and the figures of untrained models.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .bounds import MAX_DRAW_SIDE, MAX_LEGEND_FONT

__all__ = [
    "fit_to_side",
    "font_path",
    "font_size_for",
    "text_color_on",
    "legend_strip",
    "banner",
    "watermark",
    "UNTRAINED_MARK",
]

UNTRAINED_MARK = "random weights (untrained): not meaningful"


@lru_cache(maxsize=1)
def font_path() -> str | None:
    """A TrueType font file (matplotlib's DejaVu Sans, always installed with matplotlib), or None."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:
        return None


def font_size_for(width: int, height: int) -> int:
    """Label text height for an image: ~1/40 of its short side, at least 11 px and at most
    :data:`~focalnet.bounds.MAX_LEGEND_FONT` (a 1 x 60000 image once asked for a 1500-px font)."""
    return min(MAX_LEGEND_FONT, max(11, round(min(width, height) / 40)))


def fit_to_side(image: np.ndarray | Image.Image, max_side: int = MAX_DRAW_SIDE) -> tuple[np.ndarray, float]:
    """``image`` (H x W x C uint8 array or PIL image) as an array reduced so that its long side is at most
    ``max_side`` (area resampling), and the scale applied (1.0: unchanged). Predictions and drawings of larger
    images are made at that size, so that a 258 KB PNG of 9400 x 9400 black pixels costs what a 4096-px
    image does."""
    pil = image if isinstance(image, Image.Image) else None
    w, h = pil.size if pil is not None else (image.shape[1], image.shape[0])
    if max(h, w) <= max_side:
        return np.asarray(image), 1.0
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray((pil or Image.fromarray(image)).resize(size, Image.Resampling.BOX)), scale


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    path = font_path()
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default()


def text_color_on(rgb: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on the colour ``rgb``."""
    r, g, b = (float(c) for c in rgb[:3])
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def legend_strip(height: int, entries: Sequence[tuple[str, Sequence[int]]], font_size: int | None = None) -> np.ndarray:
    """An ``height x W x 3`` uint8 panel listing ``(text, colour)`` entries as colour swatches + text."""
    size = font_size or font_size_for(height * 2, height)
    font = _font(size)
    line = round(size * 1.5)
    rows = max(1, (height - size) // line)
    shown = list(entries[:rows])
    if len(entries) > rows and rows > 0:
        shown[-1] = (f"... {len(entries) - rows + 1} more", (128, 128, 128))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(t, font=font) for t, _ in shown), default=0)
    width = int(size * 2.2 + text_w + size)
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (text, color) in enumerate(shown):
        y = size // 2 + i * line
        draw.rectangle(
            [size // 2, y, size // 2 + size, y + size], fill=tuple(int(c) for c in color[:3]), outline=(0, 0, 0)
        )
        draw.text((round(size * 1.9), y - size // 10), text, fill=(0, 0, 0), font=font)
    return np.asarray(panel)


def banner(image: np.ndarray, text: str, fill: Sequence[int] = (200, 0, 0, 190), *, above: bool = False) -> np.ndarray:
    """``image`` (H x W x 3 uint8) with ``text`` in white on a band of colour ``fill`` (RGBA) across its
    top; ``above``: the band is added above the image (taller result) instead of covering its top."""
    img = Image.fromarray(image).convert("RGB")
    size = font_size_for(*img.size)
    font = _font(size)
    band = round(size * 1.6)
    if above:
        grown = Image.new("RGB", (img.width, img.height + band), (255, 255, 255))
        grown.paste(img, (0, band))
        img = grown
    draw = ImageDraw.Draw(img, "RGBA")
    draw.rectangle([0, 0, img.width, band], fill=tuple(int(c) for c in fill))
    draw.text((size // 2, round(size * 0.25)), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def watermark(image: np.ndarray, text: str = UNTRAINED_MARK, *, above: bool = False) -> np.ndarray:
    """``image`` (H x W x 3 uint8) with ``text`` on a red banner across its top (``above``: over the
    image rather than on it, so that a figure's title stays readable)."""
    return banner(image, text, above=above)
