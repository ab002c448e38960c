"""Predicting label maps for images and writing them as label PNGs, colour masks and overlays."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..drawing import fit_to_side
from ..engine.images import ImageDecodeError, open_image
from .data import read_image
from .evaluate import TestConfig, predict_probs
from .model import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from ..engine.outputs import OutputRule

__all__ = [
    "palette",
    "colorize",
    "overlay",
    "overlay_with_legend",
    "predict_image",
    "predict_images",
    "prediction_files",
]

log = logging.getLogger("focalnet")


def palette(n: int) -> np.ndarray:
    """``n x 3`` uint8 colours (the PASCAL VOC bit-interleaving scheme: distinct, deterministic)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0  # start at 1 so that class 0 is not black
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def colorize(label: np.ndarray, num_classes: int) -> np.ndarray:
    """``H x W`` class ids -> ``H x W x 3`` colours (ids outside the classes: black)."""
    pal = (
        np.concatenate([palette(num_classes), np.zeros((256 - num_classes, 3), np.uint8)])
        if num_classes < 256
        else palette(num_classes)
    )
    return pal[label.astype(np.int64)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over the image."""
    return (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).round().astype(np.uint8)


def overlay_with_legend(
    image: np.ndarray, label: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, dict[str, float]]:
    """The colour mask of ``label`` (class ids) blended over ``image`` with, on its right, a legend of the
    classes present by pixel share; and those shares in percent (largest first, rounded to 3 decimals)."""
    from ..drawing import legend_strip

    nc = len(class_names)
    counts = np.bincount(label.reshape(-1), minlength=nc)
    pal = palette(nc)
    present = sorted((i for i in range(nc) if counts[i] > 0), key=lambda i: -counts[i])
    legend = legend_strip(
        image.shape[0], [(f"{class_names[i]} {100 * counts[i] / label.size:.1f}%", pal[i]) for i in present]
    )
    shares = {class_names[i]: round(float(counts[i]) / label.size * 100, 3) for i in present}
    return np.concatenate([overlay(image, colorize(label, nc)), legend], axis=1), shares


@torch.no_grad()
def predict_image(
    model: nn.Module,
    image: np.ndarray | str | os.PathLike,
    cfg: TestConfig | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """``H x W`` uint8 class ids of one image (array or path) at its original size (an ONNX export,
    :class:`~focalnet.segmentation.export.OnnxSegmentor`, runs its own graph: ``cfg`` is the file's)."""
    img = read_image(image) if not isinstance(image, np.ndarray) else image
    if hasattr(model, "label_map"):
        return model.label_map(img)
    model.eval()
    return predict_probs(model, img, cfg, device, mean, std).argmax(0).to(torch.uint8).cpu().numpy()


def predict_images(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: TestConfig | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
    rule: OutputRule | None = None,
) -> list[dict[str, Any]]:
    """For each image write ``<stem>_label.png`` (class ids), ``<stem>_color.png`` and
    ``<stem>_overlay.png`` (with a legend of the classes present, by pixel share, on its right) into
    ``out_dir``; returns one record per image (files, class pixel shares). Names come from
    :func:`focalnet.engine.output_paths`: same-named inputs of different folders keep their relative
    folders, and no output replaces an input or another output. An unreadable image is reported
    (``{"image", "error"}``, and a logged warning) and the others are predicted."""
    from ..engine.outputs import OutputRule

    out = Path(out_dir)
    nc = int(model.num_classes)
    names = list(class_names or getattr(model, "class_names", None) or [])
    names += [str(i) for i in range(len(names), nc)]
    kinds = ("label", "color", "overlay")
    named = prediction_files(paths, out)
    rule = rule or OutputRule("segmentation predict", paths)
    rule.claim([f for k in kinds for f in named[k]], out)  # before any image is read (the class doc's rule)
    rule.make_folders()
    records: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    for n, p in enumerate(tqdm(list(paths), desc="predicting", unit="img", disable=not progress or len(paths) < 2)):
        try:
            pil = open_image(p)
        except (ImageDecodeError, OSError) as e:  # decoding problems, missing files
            log.warning("skipping unreadable image %s: %s", p, e)
            records.append({"image": str(p), "error": f"cannot read image: {e}"})
            continue
        full = pil.size[::-1]
        img, scale = fit_to_side(pil, working_side(cfg, *full))  # larger images: predicted and drawn reduced
        del pil
        label = predict_image(model, img, cfg, device, mean, std)
        color = colorize(label, nc)
        files = {k: named[k][n] for k in kinds}
        Image.fromarray(label).save(files["label"])
        Image.fromarray(color).save(files["color"])
        drawn, shares = overlay_with_legend(img, label, names)
        Image.fromarray(drawn).save(files["overlay"])
        records.append({"image": str(p), **{k: str(v) for k, v in files.items()}, "class_percent": shares})
        if scale != 1.0:
            records[-1]["reduced"] = {"from": [full[1], full[0]], "to": [img.shape[1], img.shape[0]]}
    rule.finish()
    return records


def working_side(cfg: TestConfig | None, height: int, width: int) -> int:
    """The longest side an image of ``height x width`` larger than :data:`~focalnet.bounds.MAX_DRAW_SIDE` is
    reduced to before prediction and drawing: the side the test ``scale`` resizes it to (the model never sees
    more), else ``MAX_DRAW_SIDE``; smaller images keep their size (the label map at the original size)."""
    from ..bounds import MAX_DRAW_SIDE

    scale = (cfg or TestConfig()).scale
    if max(height, width) <= MAX_DRAW_SIDE or not scale:
        return MAX_DRAW_SIDE
    ratio = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, min(MAX_DRAW_SIDE, round(max(height, width) * ratio)))


def prediction_files(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """The files :func:`predict_images` writes into ``out_dir``: ``{"label" | "color" | "overlay": one PNG
    per image}`` (named by :func:`focalnet.engine.output_paths`)."""
    from ..engine.outputs import output_paths

    return {k: output_paths(paths, Path(out_dir), f"_{k}", ".png", create=False) for k in ("label", "color", "overlay")}
