"""Evaluating and predicting with the universal segmentors (Mask2Former): per image, the test resize,
the model's last prediction and the reference post-processing of the task, then

* ``panoptic``: PQ / SQ / RQ for All, Things and Stuff (:class:`~focalnet.segmentation.pq.PQStat`,
  panopticapi's numbers, streamed: memory flat in the number of images);
* ``semantic``: mIoU / mAcc / aAcc through the UPerNet evaluator (:func:`~focalnet.segmentation.evaluate`:
  whole or sliding-window, multi-scale, flip), the model seen through :class:`SemanticView`;
* ``instance``: mask AP with pycocotools' ``COCOeval``.

:func:`predict_universal` writes COCO panoptic PNGs and their JSON (what ``focalnet segmentation pq`` and
panopticapi read), label PNGs (class index per pixel, 255 void), and overlays with a legend naming the
things and stuff present and the instances outlined.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..engine import all_reduce, fit_workers, write_json
from .evaluate import TestConfig
from .evaluate import evaluate as evaluate_semantic
from .model import IMAGENET_MEAN, IMAGENET_STD
from .transforms import TestTransform

__all__ = [
    "SemanticView",
    "infer_logits",
    "panoptic_of",
    "evaluate_universal",
    "predict_universal",
    "panoptic_overlay",
    "pq_metrics",
]

log = logging.getLogger("focalnet")
SIZE_DIVISIBILITY = 32  # detectron2 pads the batch to a multiple of 32


def _pad(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % SIZE_DIVISIBILITY, (-w) % SIZE_DIVISIBILITY
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class SemanticView(nn.Module):
    """A mask-classification model seen as a per-pixel classifier: ``encode_decode(x)`` gives the log of
    the semantic scores (``sum_q softmax(class)[q, k] * sigmoid(mask)[q]``) at the input size, so that the
    semantic evaluator's softmax returns the normalised scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(model.num_classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xp = _pad(x)
        cls, masks = self.model.forward_logits(xp)
        masks = F.interpolate(masks.float(), size=xp.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]
        scores = torch.einsum("bqc,bqhw->bchw", cls.float().softmax(-1)[..., :-1], masks.sigmoid())
        return scores.clamp_min(1e-8).log()


@torch.no_grad()
def infer_logits(
    model: nn.Module,
    image: np.ndarray,
    cfg: TestConfig | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class_logits [Q, K+1], mask_logits [Q, H, W])`` of one RGB uint8 image: keep-ratio resize to
    ``cfg.scale``, padding to a multiple of 32, the last prediction, mask logits brought back to the
    image's own size (:func:`~focalnet.segmentation.mask2former.resize_mask_logits`)."""
    from .mask2former.postprocess import resize_mask_logits

    cfg = cfg or TestConfig()
    h0, w0 = image.shape[:2]
    x = TestTransform(cfg.scale, tuple(mean), tuple(std))(image).unsqueeze(0).to(device)  # type: ignore[arg-type]
    xp = _pad(x)
    cls, masks = model.forward_logits(xp)
    masks = resize_mask_logits(masks[0].float(), tuple(xp.shape[-2:]), tuple(x.shape[-2:]), (h0, w0))
    return cls[0].float(), masks


def _thing_ids(model: nn.Module) -> list[int]:
    things = model.meta.get("thing_classes") or []
    return [i for i, t in enumerate(things) if t]


def panoptic_of(
    model: nn.Module, cls: torch.Tensor, masks: torch.Tensor, ucfg: Any = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(segment id map int32 HxW, segments_info)`` of one image's logits (the reference thresholds, or
    ``ucfg``'s ``object_mask_threshold`` / ``overlap_threshold``)."""
    from .mask2former.postprocess import panoptic_inference

    seg, info = panoptic_inference(
        cls,
        masks,
        thing_ids=_thing_ids(model),
        object_mask_threshold=getattr(ucfg, "object_mask_threshold", 0.8),
        overlap_threshold=getattr(ucfg, "overlap_threshold", 0.8),
    )
    return seg.cpu().numpy(), info


def _category_ids(model: nn.Module) -> list[int]:
    return list(model.meta.get("category_ids") or range(1, int(model.num_classes) + 1))


def pq_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """PQ/SQ/RQ in percent (All, and ``_th`` / ``_st`` for things and stuff) plus the fractions of
    :meth:`~focalnet.segmentation.pq.PQStat.summary` under ``"panoptic"``."""
    out: dict[str, Any] = {}
    for part, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for k in ("pq", "sq", "rq"):
            out[k.upper() + suffix] = 100.0 * summary[part][k]
    out["panoptic"] = {k: summary[k] for k in ("All", "Things", "Stuff")}
    out["per_class_pq"] = summary["per_class"]
    return out


def _first(batch: list[Any]) -> Any:
    return batch[0]


@torch.no_grad()
def evaluate_universal(
    model: nn.Module,
    dataset: Any,
    task: str,
    cfg: TestConfig | None = None,
    ucfg: Any = None,
    *,
    device: torch.device | str = "cpu",
    max_images: int = 0,
    num_workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Any]:
    """The metrics of ``task`` for ``model`` on ``dataset`` (the raw items of
    :func:`~focalnet.segmentation.universal.task_dataset`): ``PQ`` ... for panoptic, ``mIoU`` ... for
    semantic, ``AP`` ... for instance; ``num_images`` and ``skipped_images``. Ranks split the images;
    all ranks must call this."""
    cfg = cfg or TestConfig()
    cfg.validate()
    device = torch.device(device)
    base = getattr(model, "module", model)
    if task == "semantic":
        out = evaluate_semantic(
            SemanticView(base),
            dataset,
            cfg,
            device=device,
            max_images=max_images,
            num_workers=num_workers,
            rank=rank,
            world_size=world_size,
            progress=progress,
            mean=mean,
            std=std,
        )
        return out
    from torch.utils.data import DataLoader, Subset

    total_n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    indices = list(range(rank, total_n, world_size))
    loader = DataLoader(
        Subset(dataset, indices), batch_size=1, shuffle=False, num_workers=fit_workers(num_workers), collate_fn=_first
    )
    was_training = base.training
    base.eval()
    skipped = 0
    stat = results = None
    if task == "panoptic":
        from .pq import PQStat

        stat = PQStat(dataset.categories)
        cat_ids = [c.id for c in dataset.categories]
    else:
        results = []
    from tqdm.auto import tqdm

    for item in tqdm(loader, total=len(indices), desc="evaluating", unit="img", disable=not progress or rank != 0):
        if item is None:
            skipped += 1
            continue
        cls, masks = infer_logits(base, item["image"], cfg, device, mean, std)
        if stat is not None:
            seg, info = panoptic_of(base, cls, masks, ucfg)
            segs = [{"id": s["id"], "category_id": cat_ids[s["category_id"]], "iscrowd": 0} for s in info]
            stat.update(item["ids"], item["segments"], seg, segs, image=item["image_id"])
        else:
            results += _instance_results(base, cls, masks, item["image_id"], dataset.category_ids, ucfg)
    base.train(was_training)
    if world_size > 1:  # every rank saw its share of the images: sum the PQ counts, gather the detections
        if stat is not None:
            for arr in (stat.iou, stat.tp, stat.fp, stat.fn):
                arr[:] = all_reduce(torch.from_numpy(arr).to(device)).cpu().numpy()
        else:
            import torch.distributed as tdist

            parts: list[Any] = [None] * world_size
            tdist.all_gather_object(parts, results)
            results = [r for part in parts for r in part]
    n_skipped = all_reduce(torch.tensor([skipped], device=device))
    if stat is not None:
        out = pq_metrics(stat.summary())
    else:
        out = _mask_ap(dataset, results, [dataset.ids[i] for i in range(total_n)])
    out["num_images"] = total_n - int(n_skipped.item())
    out["skipped_images"] = int(n_skipped.item())
    out["test"] = {"scale": list(cfg.scale) if cfg.scale else None}
    return out


def _instance_results(
    model: nn.Module, cls: torch.Tensor, masks: torch.Tensor, image_id: Any, category_ids: Sequence[int], ucfg: Any
) -> list[dict[str, Any]]:
    """COCO results (RLE masks) of one image's instance inference."""
    from pycocotools import mask as mask_util

    from .mask2former.postprocess import instance_inference

    inst = instance_inference(cls, masks, topk=getattr(ucfg, "max_instances", 100))
    out = []
    m = inst["masks"].cpu().numpy()
    for j, (score, label) in enumerate(zip(inst["scores"].tolist(), inst["labels"].tolist())):
        rle = mask_util.encode(np.asfortranarray(m[j].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": image_id, "category_id": int(category_ids[label]), "segmentation": rle, "score": score})
    return out


def _mask_ap(dataset: Any, results: list[dict[str, Any]], image_ids: list[Any]) -> dict[str, Any]:
    """COCOeval ``segm`` over ``image_ids``: AP, AP50, AP75, APs, APm, APl in percent."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if not results:
        return {k: 0.0 for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = dataset.coco.loadRes(results)
        ev = COCOeval(dataset.coco, dt, "segm")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(100.0 * max(v, 0.0)) for k, v in zip(keys, ev.stats[:6])}


# -------------------------------------------------------------------------------------------- predict
def _boundaries(seg: np.ndarray) -> np.ndarray:
    """Pixels where the segment id changes (to the right or below), as a bool map."""
    edge = np.zeros(seg.shape, dtype=bool)
    edge[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    edge[:-1, :] |= seg[:-1, :] != seg[1:, :]
    return edge


def panoptic_overlay(
    image: np.ndarray, seg: np.ndarray, info: Sequence[Mapping[str, Any]], class_names: Sequence[str]
) -> tuple[np.ndarray, dict[str, float]]:
    """The classes' colours blended over ``image``, every segment outlined (instances of one class stay
    apart), and on the right a legend naming each class present as thing or stuff with its pixel share;
    returns the drawing and the shares (percent, largest first)."""
    from ..drawing import legend_strip
    from .predict import overlay, palette

    nc = len(class_names)
    pal = np.concatenate([palette(nc), np.zeros((1, 3), np.uint8)])
    label = np.full(seg.shape, nc, dtype=np.int64)
    for s in info:
        label[seg == s["id"]] = s["category_id"]
    drawn = overlay(image, pal[label])
    drawn[_boundaries(seg)] = (255, 255, 255)
    counts = np.bincount(label.reshape(-1), minlength=nc + 1)[:nc]
    kinds: dict[int, str] = {int(s["category_id"]): "thing" if s.get("isthing") else "stuff" for s in info}
    present = sorted((k for k in range(nc) if counts[k] > 0), key=lambda k: -counts[k])
    n_inst = {k: sum(1 for s in info if s["category_id"] == k) for k in present}
    entries = [
        (
            f"{class_names[k]} ({kinds.get(k, 'stuff')}"
            + (f", {n_inst[k]} instances" if kinds.get(k) == "thing" and n_inst[k] > 1 else "")
            + f") {100 * counts[k] / seg.size:.1f}%",
            pal[k],
        )
        for k in present
    ]
    shares = {class_names[k]: round(float(counts[k]) / seg.size * 100, 3) for k in present}
    return np.concatenate([drawn, legend_strip(image.shape[0], entries)], axis=1), shares


def _image_id(path: str | os.PathLike) -> Any:
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else stem


def predict_universal(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    cfg: TestConfig | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ucfg: Any = None,
    progress: bool = True,
    rule: Any = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Panoptic predictions of images: ``OUT/panoptic/<stem>.png`` (COCO panoptic ids) and one
    ``OUT/panoptic.json`` (``annotations`` with ``segments_info``, ``categories``; image ids are the file
    stems, numbers where they are digits, as COCO's), ``OUT/<stem>_label.png`` (class index, 255 void) and
    ``OUT/<stem>_overlay.png``. Returns one record per image and the JSON's path; an unreadable image is
    reported (``{"image", "error"}``) and the others are predicted."""
    from ..engine.images import ImageDecodeError
    from ..engine.outputs import OutputRule, output_paths
    from .data import read_image

    out = Path(out_dir)
    names = list(model.class_names)
    cat_ids = _category_ids(model)
    things = list(model.meta.get("thing_classes") or [False] * len(names))
    pngs = output_paths(paths, out / "panoptic", "", ".png", create=False)
    labels = output_paths(paths, out, "_label", ".png", create=False)
    overlays = output_paths(paths, out, "_overlay", ".png", create=False)
    json_path = out / "panoptic.json"
    own_rule = rule is None  # a caller's rule is finished by the caller, after its own files
    rule = rule or OutputRule("segmentation predict", paths)
    rule.claim([*pngs, *labels, *overlays, json_path], out)
    records: list[dict[str, Any]] = []
    annotations = []
    from tqdm.auto import tqdm

    for n, p in enumerate(tqdm(list(paths), desc="predicting", unit="img", disable=not progress or len(paths) < 2)):
        try:
            img = read_image(p)
        except (ImageDecodeError, OSError) as e:
            log.warning("skipping unreadable image %s: %s", p, e)
            records.append({"image": str(p), "error": f"cannot read image: {e}"})
            continue
        if hasattr(model, "panoptic"):  # an ONNX export (export.OnnxUniversal) runs its own graph
            seg, info = model.panoptic(img)
        else:
            cls, masks = infer_logits(model, img, cfg, device, mean, std)
            seg, info = panoptic_of(model, cls, masks, ucfg)
        from .panoptic import write_panoptic_prediction

        entry = write_panoptic_prediction(seg, info, pngs[n], _image_id(p), cat_ids)
        entry["file_name"] = str(pngs[n].relative_to(out / "panoptic"))
        annotations.append(entry)
        label = np.full(seg.shape, 255, dtype=np.uint8 if len(names) < 255 else np.int32)
        for s in info:
            label[seg == s["id"]] = s["category_id"]
        Image.fromarray(label.astype(np.uint8) if label.dtype == np.uint8 else label).save(labels[n])
        drawn, shares = panoptic_overlay(img, seg, info, names)
        Image.fromarray(drawn).save(overlays[n])
        records.append(
            {
                "image": str(p),
                "panoptic_png": str(pngs[n]),
                "label": str(labels[n]),
                "overlay": str(overlays[n]),
                "segments": [
                    {"id": s["id"], "class": names[s["category_id"]], "isthing": s["isthing"], "score": s["score"]}
                    for s in info
                ],
                "class_percent": shares,
            }
        )
    categories = [{"id": int(c), "name": n, "isthing": int(t)} for c, n, t in zip(cat_ids, names, things)]
    write_json(json_path, {"annotations": annotations, "categories": categories})
    if own_rule:
        rule.finish()
    return records, json_path
