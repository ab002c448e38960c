"""Prediction: images or folders in, top-k class names and probabilities out."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..engine.images import ImageDecodeError, collect_images, open_image
from .data import describe_wnid
from .evaluate import LoadedClassifier, head_logits

__all__ = ["collect_images", "class_labels", "predict"]

log = logging.getLogger("focalnet")


def class_labels(class_names: Sequence[str] | None, num_outputs: int, head_subset: str = "none") -> list[str]:
    """Readable labels of the outputs: stored names (wnids get their ImageNet description), else ImageNet's."""
    if class_names:
        labels = []
        for n in class_names:
            desc = describe_wnid(n)
            labels.append(f"{n} ({desc.split(',')[0]})" if desc else n)
        return labels
    from timm.data import ImageNetInfo

    n = 1000 if head_subset == "in1k" else num_outputs
    if n == 1000:
        return ImageNetInfo().label_descriptions()
    if n == 21842:
        return ImageNetInfo("imagenet-22k-ms").label_descriptions()
    return [str(i) for i in range(n)]


@torch.no_grad()
def predict(
    loaded: LoadedClassifier,
    images: Iterable[str | os.PathLike],
    *,
    topk: int = 5,
    img_size: int | None = None,
    head_subset: str = "none",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Top-``topk`` predictions for each image: ``[{"image", "top": [{"class", "index", "prob"}]}]``.

    An unreadable file gets ``{"image", "error"}`` instead of predictions (never a crash).
    """

    device = torch.device(device)
    model = loaded.model.to(device).eval()
    tf = loaded.transform(img_size)
    labels = class_labels(loaded.class_names, loaded.num_outputs, head_subset)
    paths = collect_images(images)
    results: list[dict[str, Any]] = []
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([t for _, t in batch]).to(device)
        probs = head_logits(model(x).float(), head_subset).softmax(-1)
        top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        for (slot, _), p, i in zip(batch, top.values.tolist(), top.indices.tolist()):
            results[slot]["top"] = [{"class": labels[j], "index": int(j), "prob": float(q)} for q, j in zip(p, i)]
        batch.clear()

    for path in paths:
        results.append({"image": str(path)})
        try:
            img = open_image(path, loaded.image_mode)
        except (ImageDecodeError, OSError) as e:
            log.warning("skipping unreadable image %s: %s", path, e)
            results[-1]["error"] = f"unreadable image: {e}"
            continue
        t = tf(img)
        batch.append((len(results) - 1, t))
        if len(batch) >= batch_size:
            flush()
    flush()
    return results
