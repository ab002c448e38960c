"""Running a detector on image files: drawn PNGs (boxes, masks, labels) and detections as JSON."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..drawing import fit_to_side
from ..engine import write_json
from ..engine.images import open_image
from .evaluate import masks_to_rle

if TYPE_CHECKING:
    from ..engine.outputs import OutputRule

__all__ = [
    "predict_images",
    "detect",
    "detection_records",
    "draw_detections",
    "no_detections_note",
    "prediction_files",
]

log = logging.getLogger("focalnet")


def _palette(n: int) -> list[tuple[int, int, int]]:
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)) for i in range(n)]


def draw_detections(
    image: torch.Tensor,
    detections: dict[str, torch.Tensor],
    class_names: Sequence[str],
    mask_thresh: float = 0.5,
    *,
    empty_note: str | None = None,
) -> torch.Tensor:
    """uint8 CHW image with the masks (alpha 0.5), boxes and ``"name score"`` labels drawn on it: one
    colour per class, labels on a filled tag of the box's colour, text and lines sized to the image.
    ``empty_note``: said on a banner across the top when there is no detection."""
    from ..drawing import banner, font_path, font_size_for, text_color_on

    if empty_note and not len(detections["labels"]):
        drawn = banner(image.permute(1, 2, 0).numpy(), empty_note, fill=(40, 40, 40, 200))
        return torch.from_numpy(drawn.copy()).permute(2, 0, 1)

    colors = _palette(max(len(class_names), 1) + 1)
    labels = detections["labels"].tolist()
    cols = [colors[lab % len(colors)] for lab in labels]
    out = image
    if "masks" in detections and len(labels):
        masks = detections["masks"][:, 0] > mask_thresh
        out = draw_segmentation_masks(out, masks, alpha=0.5, colors=cols)
    if len(labels):
        text = [
            f"{class_names[lab - 1] if 0 < lab <= len(class_names) else lab} {s:.2f}"
            for lab, s in zip(labels, detections["scores"].tolist())
        ]
        h, w = image.shape[-2:]
        font = font_path()
        out = draw_bounding_boxes(
            out,
            detections["boxes"],
            labels=text,
            colors=cols,
            width=max(2, round(min(h, w) / 250)),
            font=font,
            font_size=font_size_for(w, h) if font else None,
            label_colors=[text_color_on(c) for c in cols],
            fill_labels=True,
        )
    return out


@torch.no_grad()
def detect(
    model: nn.Module, image: torch.Tensor, score_thr: float = 0.0, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The detections of ``model`` (in eval mode) on one uint8 CHW image scoring at least ``score_thr``
    (the background slot of DINO dropped), as CPU tensors: ``boxes`` (x1, y1, x2, y2), ``labels``
    (1-based class indices), ``scores`` and, for detectors with masks, ``masks`` (N, 1, H, W)."""
    det = model([F.to_dtype(image, torch.float32, scale=True).to(device)])[0]
    keep = (det["scores"] >= score_thr) & (det["labels"] >= 1)  # label 0: background slot (DINO)
    return {k: v[keep].cpu() for k, v in det.items()}


def detection_records(
    det: dict[str, torch.Tensor],
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    with_masks: bool = True,
) -> list[dict[str, Any]]:
    """JSON records of :func:`detect`'s output: ``[{"label", "category_id", "score", "box" (x1, y1, x2, y2),
    "segmentation" (RLE, with masks)}]``."""
    rles = masks_to_rle((det["masks"][:, 0] > 0.5).numpy()) if "masks" in det and with_masks else None
    dets = []
    for i, (b, s, lab) in enumerate(zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())):
        d: dict[str, Any] = {
            "label": class_names[lab - 1] if 0 < lab <= len(class_names) else str(lab),
            "category_id": int(category_ids[lab - 1]) if category_ids is not None else int(lab),
            "score": round(float(s), 4),
            "box": [round(v, 2) for v in b],
        }
        if rles is not None:
            d["segmentation"] = rles[i]
        dets.append(d)
    return dets


def no_detections_note(score_thr: float) -> str:
    """What a drawing with no detection says."""
    return f"no detections above the score threshold {score_thr:g}"


@torch.no_grad()
def predict_images(
    model: nn.Module,
    images: Sequence[str | os.PathLike],
    *,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    score_thr: float = 0.5,
    device: str | torch.device = "cpu",
    with_masks_json: bool = True,
    progress: bool = True,
    rule: OutputRule | None = None,
) -> list[dict[str, Any]]:
    """Detect objects in each image file; with ``out_dir``, write ``<stem>.png`` (drawn) per image and
    ``detections.json`` (names from :func:`focalnet.engine.output_paths`: same-named inputs of different
    folders keep their relative folders, no output replaces an input or another output). Returns, per image, ``{"image", "width", "height", "detections": [{"label",
    "category_id", "score", "box" (x1, y1, x2, y2), "segmentation" (RLE)}]}`` or ``{"image", "error"}``
    for an unreadable file. The files are claimed through ``rule`` (:class:`focalnet.engine.outputs.OutputRule`;
    default: one whose inputs are the images) before the first image is read."""
    device = torch.device(device)
    model.eval().to(device)
    from ..engine.outputs import OutputRule

    out = Path(out_dir) if out_dir is not None else None
    drawn_paths: list[Path] = []
    if out is not None:
        drawn_paths, json_path = prediction_files(images, out)
        rule = rule or OutputRule("detection predict", images)
        rule.claim([*drawn_paths, json_path], out)
        rule.make_folders()
    records: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    for n, path in enumerate(
        tqdm(list(images), desc="predicting", unit="image", disable=not progress or len(images) < 2)
    ):
        path = Path(path)
        try:
            pil = open_image(path)
        except (OSError, ValueError) as e:  # decoding problems (incl. decompression bombs), 16-bit rescaled
            log.warning("skipping unreadable image %s: %s", path, e)
            records.append({"image": str(path), "error": f"cannot read image: {e}"})
            continue
        full_w, full_h = pil.size
        arr, scale = fit_to_side(pil, working_side(model, full_h, full_w))  # reduced before any copy
        del pil
        img = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        det = detect(model, img, score_thr, device)
        dets = detection_records({**det, "boxes": det["boxes"] / scale}, class_names, category_ids, with_masks_json)
        rec = {"image": str(path), "width": full_w, "height": full_h, "detections": dets}
        if scale != 1.0:  # boxes are in the image's own pixels; masks (RLE) at the reduced size
            rec["reduced"] = {"from": [full_w, full_h], "to": [int(img.shape[-1]), int(img.shape[-2])]}
        if out is not None:
            drawn = draw_detections(img, det, class_names, empty_note=no_detections_note(score_thr))
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(drawn_paths[n])
            rec["drawn"] = str(drawn_paths[n])
        records.append(rec)
    if out is not None:
        write_json(json_path, records)
        rule.finish()
    return records


def working_side(model: nn.Module, height: int, width: int) -> int:
    """The longest side an image of ``height x width`` larger than :data:`~focalnet.bounds.MAX_DRAW_SIDE` is
    reduced to before detection and drawing: the side the detector itself would resize it to (its test
    ``min_size``/``max_size``), so that masks are pasted and drawn at that size rather than at a size of
    gigapixels (a 9400 x 9400 PNG took 5-13 GB). Smaller images are left as they are (the detector's own
    resize, same results as before)."""
    from ..bounds import MAX_DRAW_SIDE

    if max(height, width) <= MAX_DRAW_SIDE:
        return MAX_DRAW_SIDE
    t = getattr(model, "transform", None)
    cfg = getattr(model, "cfg", None)
    min_size = getattr(t, "min_size", None) or getattr(cfg, "min_size", None) or 800
    min_size = min_size[-1] if isinstance(min_size, (list, tuple)) else min_size
    max_size = getattr(t, "max_size", None) or getattr(cfg, "max_size", None) or 1333
    scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
    return max(1, min(MAX_DRAW_SIDE, round(max(height, width) * scale)))


def prediction_files(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> tuple[list[Path], Path]:
    """The files :func:`predict_images` writes into ``out_dir``: one drawn PNG per image and the JSON."""
    from ..engine.outputs import avoid_inputs, output_paths

    out = Path(out_dir)
    return output_paths(images, out, "", ".png", create=False), avoid_inputs(out / "detections.json", images)
