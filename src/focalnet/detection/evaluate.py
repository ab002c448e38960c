"""COCO evaluation (pycocotools): inference over a dataset, COCO-format results, bbox/segm metrics.

Metric names (fractions in [0, 1], as pycocotools and mmdetection report them, in ``metrics.json``; the
commands print the headline ones in percent, :func:`map_percent`, as the other tasks print theirs):
``{bbox,segm}_mAP``, ``_mAP_50``, ``_mAP_75``, ``_mAP_s``, ``_mAP_m``, ``_mAP_l``, ``_AR_1``, ``_AR_10``,
``_AR_100``, ``_AR_s``, ``_AR_m``, ``_AR_l`` (the 12 ``COCOeval.stats`` in order) and
``{bbox,segm}_AP_per_category`` (category name -> AP@[.5:.95], ``None`` where the category has no
ground truth).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..engine import fit_workers, write_json
from .data import CocoInstances, detection_collate

__all__ = [
    "STAT_NAMES",
    "coco_evaluate",
    "evaluate_detector",
    "map_percent",
    "masks_to_rle",
    "outputs_to_coco",
    "run_inference",
]

log = logging.getLogger("focalnet")

STAT_NAMES = ["mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "AR_1", "AR_10", "AR_100", "AR_s", "AR_m", "AR_l"]


def map_percent(metrics: dict[str, Any]) -> str:
    """The headline numbers in percent, as the other tasks report theirs (``bbox_mAP=74.50%
    bbox_mAP_50=97.50% ...``); ``metrics.json`` keeps pycocotools' fractions under the same names."""
    keys = [k for k in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50") if k in metrics]
    return " ".join(f"{k}={100 * metrics[k]:.2f}%" for k in keys)


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLEs (``counts`` as str, JSON-ready) of binary masks ``(N, H, W)``."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def outputs_to_coco(
    output: dict[str, torch.Tensor], image_id: int, category_ids: Sequence[int], mask_thresh: float = 0.5
) -> list[dict[str, Any]]:
    """COCO results (``bbox`` as xywh, original ``category_id``, ``score``, ``segmentation`` RLE) of one image."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    rles: list[dict[str, Any]] | None = None
    if "masks" in output:
        m = (output["masks"].detach().cpu()[:, 0] > mask_thresh).numpy()
        rles = masks_to_rle(m)
    res = []
    for i, (b, s, lab) in enumerate(zip(xywh, scores, labels)):
        if lab < 1:  # label 0 is the background slot (a DINO logit that no ground truth trains)
            continue
        r = {
            "image_id": int(image_id),
            "category_id": int(category_ids[lab - 1]),
            "bbox": [round(v, 3) for v in b],
            "score": round(float(s), 5),
        }
        if rles is not None:
            r["segmentation"] = rles[i]
        res.append(r)
    return res


def _usable_results(coco_gt: Any, results: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The results pycocotools can score (an image of ``coco_gt``, a finite score, a finite box or a mask), and how many
    others there were (a model with non-finite weights, loaded for debugging, gives NaN boxes)."""
    keep = []
    for r in results:
        box, score = r.get("bbox"), r.get("score")
        if (
            r.get("image_id") in coco_gt.imgs
            and isinstance(score, (int, float))
            and math.isfinite(score)
            and (box is None and "segmentation" in r or isinstance(box, (list, tuple)) and len(box) == 4)
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box or ())
        ):
            keep.append(r)
    return keep, len(results) - len(keep)


def coco_evaluate(
    coco_gt: Any,
    results: Sequence[dict[str, Any]],
    iou_types: Iterable[str] = ("bbox", "segm"),
    per_category: bool = True,
    img_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run ``COCOeval`` for each IoU type over ``results`` (COCO result dicts) against ``coco_gt`` (a
    ``pycocotools.coco.COCO``); return the 12 stats per type (and per-category AP) plus the printed summary
    under ``{type}_summary``. Segm results are scored with their mask areas (their ``bbox`` is dropped).
    ``img_ids`` restricts the evaluation to those images (default: all of ``coco_gt``'s)."""
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, Any] = {}
    results, dropped = _usable_results(coco_gt, results)
    if dropped:
        log.warning("left out %d detection(s) with a non-finite box or score, or an unknown image id", dropped)
        metrics["unusable_detections"] = dropped
    for iou in iou_types:
        if iou == "segm":
            dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
        elif iou == "bbox":
            dets = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        else:
            raise ValueError(f"unsupported iou type {iou!r} (bbox or segm)")
        if not dets:
            for name in STAT_NAMES:
                metrics[f"{iou}_{name}"] = 0.0
            if per_category:
                metrics[f"{iou}_AP_per_category"] = {}
            log.warning("no %s detections: %s metrics are 0", iou, iou)
            continue
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
            ev = COCOeval(coco_gt, coco_dt, iou)
            if img_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in img_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for name, v in zip(STAT_NAMES, ev.stats):
            metrics[f"{iou}_{name}"] = float(v)
        metrics[f"{iou}_summary"] = buf.getvalue().split("DONE", 1)[-1].strip().splitlines()[-12:]
        if per_category:
            prec = ev.eval["precision"]  # T x R x K x A x M
            per: dict[str, float | None] = {}
            for k, cat in enumerate(ev.params.catIds):
                p = prec[:, :, k, 0, -1]
                p = p[p > -1]
                name = coco_gt.cats[cat].get("name", str(cat))
                per[name] = float(p.mean()) if p.size else None
            metrics[f"{iou}_AP_per_category"] = per
    return metrics


@torch.no_grad()
def run_inference(
    model: nn.Module,
    dataset: CocoInstances,
    device: torch.device,
    *,
    batch_size: int = 1,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    num_images: int = 0,
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO results of this process's share (every ``world_size``-th image) of ``dataset`` (of its first
    ``num_images`` images when > 0); label ``l`` is category ``category_ids[l - 1]`` (default: the
    dataset's categories)."""
    cat_ids = list(dataset.category_ids if category_ids is None else category_ids)
    model.eval()
    n = min(num_images, len(dataset)) if num_images > 0 else len(dataset)
    shard = Subset(dataset, list(range(rank, n, world_size)))
    loader = DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=fit_workers(num_workers), collate_fn=detection_collate
    )
    results: list[dict[str, Any]] = []
    it: Iterable[Any] = loader
    if progress and rank == 0:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc="evaluating", unit="batch", dynamic_ncols=True, leave=False)
    for batch in it:
        if batch is None:
            continue
        images, targets = batch
        outputs = model([im.to(device) for im in images])
        for out, tgt in zip(outputs, targets):
            results.extend(outputs_to_coco(out, tgt["image_id"], cat_ids))
    return results


def _gather(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not (dist.is_available() and dist.is_initialized()):
        return results
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    return [r for p in parts for r in p]


def evaluate_detector(
    model: nn.Module,
    dataset: CocoInstances,
    device: torch.device | str = "cpu",
    *,
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 1,
    num_workers: int = 2,
    progress: bool = True,
    max_images: int = 0,
    category_ids: Sequence[int] | None = None,
    masks: bool | None = None,
) -> dict[str, Any]:
    """Inference (split over the torchrun processes, if any) and COCO bbox (+ segm for detectors that
    predict masks: ``masks``, its spec's; ``None``: when the results hold masks) metrics. Every process gets the metrics; rank 0 writes ``results.json`` (COCO format, original
    category ids, masks as RLE) into ``output_dir`` if given. ``max_images`` > 0: only the first N images
    (scored against their own ground truth only)."""
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    was_training = model.training
    results = run_inference(
        model,
        dataset,
        device,
        batch_size=batch_size,
        num_workers=num_workers,
        rank=rank,
        world_size=world,
        progress=progress,
        num_images=max_images,
        category_ids=category_ids,
    )
    results = _gather(results)
    metrics: dict[str, Any] = {}
    if rank == 0:
        has_masks = any("segmentation" in r for r in results) if masks is None else masks
        iou_types = ("bbox", "segm") if has_masks else ("bbox",)
        n = min(max_images, len(dataset)) if max_images > 0 else len(dataset)
        img_ids = [dataset.ids[i] for i in range(n)] if n < len(dataset) else None
        metrics = coco_evaluate(dataset.coco, results, iou_types, img_ids=img_ids)
        metrics["num_detections"] = len(results)
        metrics["num_images"] = n
        if output_dir is not None:
            write_json(Path(output_dir) / "results.json", results)
    if distributed:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    if was_training:
        model.train()
    return metrics
