"""Inference (whole image / sliding window, single or multi-scale with flip) and mIoU evaluation.

Semantics follow mmsegmentation: the image is resized (keep ratio) to the test scale times each ratio;
``whole`` runs the model on the full image, ``slide`` on ``crop x crop`` windows every ``stride``
pixels (the last row/column of windows aligned to the border) and averages the logits where windows
overlap; the logits are resized to the original image size and turned into probabilities; multi-scale
and flipped passes average those probabilities. Metrics come from a confusion matrix accumulated with
``torch.bincount`` (summed over ranks under torchrun): per-class IoU and accuracy, mIoU, mAcc, aAcc,
in percent, ``NaN``-free means over the classes present (mmseg's ``nanmean``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bounds import MAX_IMAGE_SIDE, Bound, check_bounds
from ..engine.distributed import all_reduce
from ..engine.resources import fit_workers
from .model import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from .transforms import TestTransform

__all__ = [
    "TestConfig",
    "confusion_matrix",
    "metrics_from_confusion",
    "whole_inference",
    "slide_inference",
    "inference",
    "predict_probs",
    "evaluate",
    "MS_RATIOS",
]

log = logging.getLogger("focalnet")

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass
class TestConfig:
    """How to run the model on a full image (defaults: the ADE20K UPerNet test setting)."""

    __test__ = False  # not a pytest class

    mode: str = "whole"  # whole | slide
    scale: tuple[int, int] | None = (2048, 512)  # keep-ratio test resize (long, short); None: original size
    crop_size: tuple[int, int] = (512, 512)  # slide window (h, w)
    stride: tuple[int, int] = (341, 341)  # slide step (h, w)
    multi_scale: bool = False
    ratios: tuple[float, ...] = MS_RATIOS  # used with multi_scale
    flip: bool = False

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> TestConfig:
        """The test settings a model file carries (``extra["test"]`` of :func:`load_segmentor`), single
        scale without flip, with the defaults above for what it leaves out (as ``segmentation predict``)."""
        t = dict(stored or {})
        scale = (tuple(t["scale"]) if t["scale"] else None) if "scale" in t else (2048, 512)
        cfg = cls(
            mode=t.get("mode", "whole"),
            scale=scale,
            crop_size=tuple(t.get("crop_size", (512, 512))),
            stride=tuple(t.get("stride", (341, 341))),
            ratios=tuple(t.get("ratios") or MS_RATIOS),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode: must be 'whole' or 'slide', got {self.mode!r}")
        # sizes from a file (extra.test) or a flag within their bounds before any image is touched
        # (a scale of 100000 px took the whole memory; crop [1, 1] / stride [1, 1], hours per image)
        check_bounds(
            {"scale": self.scale or [], "crop_size": self.crop_size, "stride": self.stride, "ratios": self.ratios},
            TEST_BOUNDS,
        )
        if self.mode == "slide" and self.scale:
            r = max(self.ratios if self.multi_scale else (1.0,))  # the image fits (long, short) x r
            crop, step = min(self.crop_size), min(self.stride)
            windows = math.prod(max(math.ceil((side * r - crop) / step), 0) + 1 for side in self.scale)
            if windows > MAX_WINDOWS:
                raise ValueError(
                    f"stride {self.stride} over crop_size {self.crop_size} gives about {windows} windows per image "
                    f"at scale {self.scale} (at most {MAX_WINDOWS}); choose a larger stride or crop"
                )
        if self.stride[0] > self.crop_size[0] or self.stride[1] > self.crop_size[1]:
            raise ValueError(f"stride {self.stride} larger than crop_size {self.crop_size} leaves pixels unpredicted")
        if not self.ratios or min(self.ratios) <= 0:
            raise ValueError("ratios must be positive")


# the test sizes' bounds (a scale's sides, slide windows); see docs/reliability.md
TEST_BOUNDS = {
    "scale": Bound(16, MAX_IMAGE_SIDE, max_len=2),
    "crop_size": Bound(32, MAX_IMAGE_SIDE, max_len=2),
    "stride": Bound(16, MAX_IMAGE_SIDE, max_len=2),
    "ratios": Bound(0.125, 4.0, max_len=16),
}
MAX_WINDOWS = 1024  # slide windows per image at the largest test scale


# ----------------------------------------------------------------------------------------- metrics
def confusion_matrix(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``num_classes x num_classes`` int64 counts, rows = ground truth, columns = prediction;
    pixels labelled ``ignore_index`` are left out."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    label = label.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = label != ignore_index
    label, pred = label[keep], pred[keep]
    if label.numel() and (int(label.max()) >= num_classes or int(label.min()) < 0):
        raise ValueError(f"label values outside 0..{num_classes - 1} (and not {ignore_index})")
    return torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def metrics_from_confusion(cm: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """``mIoU``, ``mAcc``, ``aAcc`` and ``per_class`` ``{name: {"IoU", "Acc"}}`` in percent.

    IoU = TP / (TP + FP + FN) and Acc = TP / (TP + FN) per class; classes with no ground truth and no
    prediction have IoU ``None`` (NaN), classes without ground truth have Acc ``None``; the means skip them.
    """
    cm = torch.as_tensor(cm, dtype=torch.float64).cpu()
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    tp = cm.diag()
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    iou = tp / union  # nan where union == 0
    acc = tp / gt
    total = cm.sum()

    def mean(v: torch.Tensor) -> float | None:
        v = v[~torch.isnan(v)]
        return float(v.mean() * 100) if v.numel() else None

    def pct(x: float) -> float | None:
        return None if math.isnan(x) else float(x) * 100

    return {
        "mIoU": mean(iou),
        "mAcc": mean(acc),
        "aAcc": float(tp.sum() / total * 100) if total > 0 else None,
        "per_class": {name: {"IoU": pct(float(iou[i])), "Acc": pct(float(acc[i]))} for i, name in enumerate(names)},
        "num_pixels": int(total),
    }


# ---------------------------------------------------------------------------------------- inference
def _align_corners(model: nn.Module) -> bool:
    """The model's ``align_corners`` (mmseg resizes logits back to the image with the head's setting)."""
    head = getattr(getattr(model, "module", model), "head_cfg", None)
    return bool(getattr(head, "align_corners", False))


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    enc = getattr(model, "encode_decode", None)
    out = enc(x) if enc is not None else model(x)
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=_align_corners(model))
    return out


def whole_inference(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Logits of the whole ``N x 3 x H x W`` image at its own size."""
    return _forward(model, img)


def slide_inference(
    model: nn.Module,
    img: torch.Tensor,
    crop_size: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    num_classes: int | None = None,
) -> torch.Tensor:
    """mmseg sliding-window logits: windows every ``stride`` (last ones flush with the border),
    logits summed into place and divided by the number of windows covering each pixel."""
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    n, _, h, w = img.shape
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    preds: torch.Tensor | None = None
    count = img.new_zeros((n, 1, h, w))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logit = _forward(model, img[:, :, y1:y2, x1:x2])
            if preds is None:
                preds = img.new_zeros((n, num_classes or logit.shape[1], h, w))
            preds[:, :, y1:y2, x1:x2] += logit
            count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None and bool((count > 0).all())
    return preds / count


def inference(model: nn.Module, img: torch.Tensor, cfg: TestConfig) -> torch.Tensor:
    """Logits of a normalized ``N x 3 x H x W`` batch at its own size, by ``cfg.mode``."""
    if cfg.mode == "slide":
        return slide_inference(model, img, cfg.crop_size, cfg.stride)
    return whole_inference(model, img)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: np.ndarray,
    cfg: TestConfig | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Class probabilities ``C x H x W`` (on ``device``) of one RGB uint8 image at its original size,
    averaged over the scales (``cfg.ratios`` x ``cfg.scale`` with ``multi_scale``) and flips."""
    cfg = cfg or TestConfig()
    h0, w0 = image.shape[:2]
    ratios = cfg.ratios if cfg.multi_scale else (1.0,)
    total: torch.Tensor | None = None
    n = 0
    for r in ratios:
        if cfg.scale is not None:
            scale: tuple[float, float] | None = (cfg.scale[0] * r, cfg.scale[1] * r)
        else:
            scale = None if r == 1.0 else (max(h0, w0) * r, min(h0, w0) * r)
        x = TestTransform(scale, tuple(mean), tuple(std))(image).unsqueeze(0).to(device)  # type: ignore[arg-type]
        for flip in (False, True) if cfg.flip else (False,):
            xi = x.flip(-1) if flip else x
            with torch.autocast(
                torch.device(device).type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                logit = inference(model, xi, cfg)
            logit = F.interpolate(logit.float(), size=(h0, w0), mode="bilinear", align_corners=_align_corners(model))
            prob = logit.softmax(1)
            if flip:
                prob = prob.flip(-1)
            total = prob if total is None else total + prob
            n += 1
    assert total is not None
    return (total / n)[0]


def _first(batch: list[Any]) -> Any:
    return batch[0]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    cfg: TestConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    max_images: int = 0,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc / per-class metrics of ``model`` on ``dataset`` (items ``{"image", "label"}``,
    labels in ``0..C-1`` / 255). Each rank takes every ``world_size``-th image; the confusion matrix
    is summed over ranks, so all ranks must call this. Unreadable items are skipped and counted."""
    from torch.utils.data import DataLoader, Subset

    cfg = cfg or TestConfig()
    cfg.validate()
    device = torch.device(device)
    nc = num_classes or getattr(dataset, "num_classes", None) or model.num_classes
    names = class_names or getattr(dataset, "class_names", None) or [str(i) for i in range(nc)]
    total_n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    indices = list(range(rank, total_n, world_size))
    loader = DataLoader(
        Subset(dataset, indices), batch_size=1, shuffle=False, num_workers=fit_workers(num_workers), collate_fn=_first
    )
    was_training = model.training
    model.eval()
    cm = torch.zeros(nc, nc, dtype=torch.int64, device=device)
    skipped = torch.zeros(1, dtype=torch.int64, device=device)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc="evaluating", unit="img", leave=False, dynamic_ncols=True)
    for item in loader:
        if bar is not None:
            bar.update(1)
        if item is None:
            skipped += 1
            continue
        prob = predict_probs(model, item["image"], cfg, device, mean, std, amp_dtype)
        pred = prob.argmax(0)
        label = torch.from_numpy(np.require(item["label"], requirements=["C", "W"])).to(device)
        cm += confusion_matrix(pred, label, nc)
    if bar is not None:
        bar.close()
    all_reduce(cm)
    all_reduce(skipped)
    model.train(was_training)
    out = metrics_from_confusion(cm, names)
    out["num_images"] = total_n - int(skipped.item())
    out["skipped_images"] = int(skipped.item())
    out["test"] = {
        "mode": cfg.mode,
        "scale": list(cfg.scale) if cfg.scale else None,
        "crop_size": list(cfg.crop_size),
        "stride": list(cfg.stride),
        "multi_scale": cfg.multi_scale,
        "ratios": list(cfg.ratios) if cfg.multi_scale else [1.0],
        "flip": cfg.flip,
    }
    return out
