"""Panoptic quality (PQ, SQ, RQ), computed as panopticapi's ``pq_compute`` does, streamed image by image.

Per image (:meth:`PQStat.update`), with the segment ids of the ground truth and the prediction:

* a ground-truth segment and a predicted one match when they have the same category and
  ``IoU > 0.5``, with ``IoU = inter / (area_pred + area_gt - inter - (pred ∩ void))``: void pixels
  (ground-truth id 0) leave the union; at most one match each, since segments do not overlap;
* ground-truth crowd segments never match and are no false negatives; every other unmatched
  ground-truth segment is one false negative of its category;
* an unmatched prediction is a false positive unless more than half of it lies in void or in the
  ground-truth crowd region of its own category (panopticapi keeps one crowd segment per category and
  image: the last one listed, as here);
* per category: the sum of the matches' IoUs, tp, fp, fn. ``PQ = sum IoU / (tp + fp/2 + fn/2)``,
  ``SQ = sum IoU / tp``, ``RQ = tp / (tp + fp/2 + fn/2)``; All, Things and Stuff average the categories
  with ``tp + fp + fn > 0`` (``n`` of them); numbers are fractions, as panopticapi returns them.

Differences from panopticapi, on inputs it does not define: the ground-truth area is counted in the PNG
(panopticapi reads the JSON's ``area``; COCO's equal the PNG's), a set where no category occurs gives 0
with ``n = 0`` (panopticapi divides by zero), and every file problem is one ``ValueError`` line naming
the image and file (panopticapi's ``KeyError``s and crashes). Memory is flat in the number of images:
one image pair at a time per thread. The per-image work is vectorised: pixels become dense segment
indices (``np.searchsorted`` on the few listed ids) and one ``np.bincount`` gives every intersection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .panoptic import PanopticCategory, Segment, load_panoptic_json, parse_segments, read_id_png, valid_image_id

__all__ = ["PQStat", "add_pq_parser", "cmd_pq", "format_pq_table", "pq_compute"]


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Position of each ``query`` value in ``keys`` (any order, unique), ``-1`` where absent."""
    if keys.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.clip(np.searchsorted(keys[order], query), 0, keys.size - 1)
    return np.where(keys[order][pos] == query, order[pos], -1)


def _positions(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value: 0 for void (0), ``1 + r`` for the id of rank ``r`` among ``ids`` (unique, not 0),
    ``len(ids) + 1`` for any other value; and each id's row ``1 + r``."""
    n = ids.size
    if values.dtype not in (np.int32, np.int64):  # ids (< 256^3) are exact in both
        values = values.astype(np.int64)
    order = np.argsort(ids, kind="stable")
    big = np.iinfo(values.dtype).max
    table = np.concatenate([[0], ids[order], [big]]).astype(values.dtype)  # a sentinel no id reaches
    pos = np.searchsorted(table, values)
    if not np.array_equal(table[pos], values):  # values the ids do not list (rare): their own slot
        pos = np.where(table[pos] == values, pos, n + 1)
    rows = np.empty(n, dtype=np.int64)
    rows[order] = np.arange(1, n + 1)
    return pos, rows


def _as_segments(segments: Iterable[Segment | Mapping[str, Any]]) -> tuple[Segment, ...]:
    segs = list(segments)
    if all(isinstance(s, Segment) for s in segs):
        return tuple(segs)  # type: ignore[arg-type]
    return parse_segments([s if isinstance(s, Mapping) else vars(s) for s in segs])


class PQStat:
    """Per-category IoU sums and tp/fp/fn counts over a stream of images (see the module docstring)."""

    def __init__(self, categories: Sequence[PanopticCategory]) -> None:
        self.categories = list(categories)
        if not self.categories:
            raise ValueError("PQ needs at least one category")
        self.cat_ids = np.array([c.id for c in self.categories], dtype=np.int64)
        k = len(self.categories)
        self.iou, self.tp = np.zeros(k, dtype=np.float64), np.zeros(k, dtype=np.int64)
        self.fp, self.fn = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
        self.num_images = 0
        self._lock = threading.Lock()

    def _cat_index(self, cats: np.ndarray, where: str, image: Any) -> np.ndarray:
        idx = _lookup(self.cat_ids, cats)
        if (idx < 0).any():
            bad = sorted(set(cats[idx < 0].tolist()))
            raise ValueError(f"image {image}: {where} segment(s) of unknown category_id {bad[:8]}")
        return idx

    def image_stats(
        self,
        gt_ids: np.ndarray,
        gt_segments: Iterable[Segment | Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Iterable[Segment | Mapping[str, Any]],
        image: Any = "?",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One image's ``(iou, tp, fp, fn)`` per category, without adding them (thread-safe)."""
        gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(
                f"image {image}: prediction is {pred_ids.shape[::-1]} but ground truth {gt_ids.shape[::-1]}"
            )
        gsegs, psegs = _as_segments(gt_segments), _as_segments(pred_segments)
        g_id = np.array([s.id for s in gsegs], dtype=np.int64)
        p_id = np.array([s.id for s in psegs], dtype=np.int64)
        ng, npr = len(gsegs), len(psegs)
        # the confusion of segments: rows ground truth (void, its segments by id, ids the JSON does not
        # list), columns prediction (likewise); one bincount over the pixels
        g_pos, g_rows = _positions(gt_ids.reshape(-1), g_id)
        p_pos, p_rows = _positions(pred_ids.reshape(-1), p_id)
        conf = np.bincount(g_pos * (npr + 2) + p_pos, minlength=(ng + 2) * (npr + 2)).reshape(ng + 2, npr + 2)

        # the prediction's own consistency, as panopticapi checks it
        if conf[:, npr + 1].any():
            extra = np.unique(pred_ids.reshape(-1)[p_pos == npr + 1])
            raise ValueError(f"image {image}: predicted PNG id(s) {extra[:8].tolist()} not in the JSON's segments_info")
        p_cat = self._cat_index(np.array([s.category_id for s in psegs], dtype=np.int64), "predicted", image)
        p_area = conf[:, p_rows].sum(0)
        if (p_area == 0).any():
            missing = p_id[p_area == 0]
            raise ValueError(f"image {image}: predicted segment(s) {missing[:8].tolist()} of the JSON not in the PNG")
        g_cat = self._cat_index(np.array([s.category_id for s in gsegs], dtype=np.int64), "ground-truth", image)
        g_crowd = np.array([s.iscrowd for s in gsegs], dtype=bool)
        g_area = conf[g_rows].sum(1)
        p_void = conf[0, p_rows]  # each prediction's pixels in void
        inter = conf[g_rows][:, p_rows]

        # matches: same category, not crowd, IoU > 0.5
        k = len(self.categories)
        iou, tp = np.zeros(k, dtype=np.float64), np.zeros(k, dtype=np.int64)
        fp, fn = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
        ci, cp = np.nonzero(inter)
        same = ~g_crowd[ci] & (g_cat[ci] == p_cat[cp])
        ci, cp = ci[same], cp[same]
        cin = inter[ci, cp]
        ious = cin / (p_area[cp] + g_area[ci] - cin - p_void[cp])
        hit = ious > 0.5
        np.add.at(tp, g_cat[ci[hit]], 1)
        np.add.at(iou, g_cat[ci[hit]], ious[hit])
        g_matched = np.zeros(ng, dtype=bool)
        g_matched[ci[hit]] = True
        p_matched = np.zeros(npr, dtype=bool)
        p_matched[cp[hit]] = True

        # false negatives: unmatched non-crowd ground truth
        np.add.at(fn, g_cat[~g_matched & ~g_crowd], 1)
        # false positives: unmatched predictions not mostly in void or their category's crowd region
        crowd_row = np.full(k, -1, dtype=np.int64)
        for j in np.flatnonzero(g_crowd):  # one crowd segment per category: the last listed, as panopticapi
            crowd_row[g_cat[j]] = j
        rows = crowd_row[p_cat]
        ignored = p_void.astype(np.float64)
        with_crowd = np.flatnonzero(rows >= 0)
        ignored[with_crowd] += inter[rows[with_crowd], with_crowd]
        counted = ~p_matched & ~(ignored / p_area > 0.5)
        np.add.at(fp, p_cat[counted], 1)
        return iou, tp, fp, fn

    def add(self, stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Add one image's :meth:`image_stats`."""
        with self._lock:
            self.iou += stats[0]
            self.tp += stats[1]
            self.fp += stats[2]
            self.fn += stats[3]
            self.num_images += 1

    def update(
        self,
        gt_ids: np.ndarray,
        gt_segments: Iterable[Segment | Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Iterable[Segment | Mapping[str, Any]],
        image: Any = "?",
    ) -> None:
        """Add one image: id maps (``H x W``, 0 = void) and their segments (:class:`Segment` or JSON
        ``segments_info`` dicts with ``id``, ``category_id``, ``iscrowd``; categories as in the files)."""
        self.add(self.image_stats(gt_ids, gt_segments, pred_ids, pred_segments, image))

    def all_reduce(self) -> None:
        """Sum the statistics over the processes of a ``torch.distributed`` run (each process scored its
        share of the images); a no-op in one process. Sums are exact: counts and IoU sums in float64."""
        import torch

        from ..engine import all_reduce

        state = torch.from_numpy(np.stack([self.iou, self.tp, self.fp, self.fn]).astype(np.float64))
        count = torch.tensor([float(self.num_images)], dtype=torch.float64)
        all_reduce(state)
        all_reduce(count)
        s = state.numpy()
        self.iou = s[0].copy()
        self.tp, self.fp, self.fn = (np.rint(s[i]).astype(np.int64) for i in (1, 2, 3))
        self.num_images = int(count.item())

    def __iadd__(self, other: PQStat) -> PQStat:
        if other.cat_ids.tolist() != self.cat_ids.tolist():
            raise ValueError("PQStat: cannot add statistics of other categories")
        self.add((other.iou, other.tp, other.fp, other.fn))
        self.num_images += other.num_images - 1
        return self

    def summary(self) -> dict[str, Any]:
        """``{"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category id: {...}}}``."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        seen = (self.tp + self.fp + self.fn) > 0
        safe = np.where(seen, denom, 1.0)
        pq = np.where(seen, self.iou / safe, 0.0)
        sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
        rq = np.where(seen, self.tp / safe, 0.0)
        thing = np.array([c.isthing for c in self.categories], dtype=bool)
        out: dict[str, Any] = {}
        for name, sel in (("All", np.ones_like(thing)), ("Things", thing), ("Stuff", ~thing)):
            m = sel & seen
            n = int(m.sum())
            out[name] = {
                "pq": float(pq[m].sum() / n) if n else 0.0,
                "sq": float(sq[m].sum() / n) if n else 0.0,
                "rq": float(rq[m].sum() / n) if n else 0.0,
                "n": n,
            }
        out["per_class"] = {
            c.id: {
                "name": c.name,
                "isthing": c.isthing,
                "pq": float(pq[i]),
                "sq": float(sq[i]),
                "rq": float(rq[i]),
                "tp": int(self.tp[i]),
                "fp": int(self.fp[i]),
                "fn": int(self.fn[i]),
            }
            for i, c in enumerate(self.categories)
        }
        out["num_images"] = self.num_images
        return out


def _categories(given: Any, source: list[PanopticCategory]) -> list[PanopticCategory]:
    if given is None:
        return source
    out = []
    for c in given:
        if isinstance(c, PanopticCategory):
            out.append(c)
        else:
            out.append(PanopticCategory(int(c["id"]), str(c.get("name", c["id"])), bool(c.get("isthing", 1))))
    return out


def pq_compute(
    gt_json: str | os.PathLike,
    gt_folder: str | os.PathLike | None,
    pred_json: str | os.PathLike,
    pred_folder: str | os.PathLike | None,
    categories: Sequence[PanopticCategory | Mapping[str, Any]] | None = None,
    num_threads: int = 1,
) -> dict[str, Any]:
    """PQ/SQ/RQ of COCO panoptic predictions against COCO panoptic ground truth (panopticapi's numbers).

    The folders default to the JSON paths without ``.json`` (as panopticapi's). Every image of the ground
    truth needs a prediction; predictions of other images are ignored. ``categories`` (default: the ground
    truth's) are ``PanopticCategory`` or ``{"id", "name", "isthing"}``. Returns :meth:`PQStat.summary`.
    Problems are one-line ``ValueError``s (``FileNotFoundError`` for missing files) naming the image."""
    gt_json, pred_json = Path(gt_json), Path(pred_json)
    gt_dir = Path(gt_folder) if gt_folder else gt_json.with_suffix("")
    pred_dir = Path(pred_folder) if pred_folder else pred_json.with_suffix("")
    for what, d in (("ground-truth PNG folder", gt_dir), ("prediction PNG folder", pred_dir)):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} not found: {d}")
    gt, gt_cats = load_panoptic_json(gt_json)
    pred, _ = load_panoptic_json(pred_json, need_categories=False)
    stat = PQStat(_categories(categories, gt_cats))
    preds: dict[Any, dict[str, Any]] = {}
    for k, a in enumerate(pred["annotations"]):
        if not isinstance(a, dict) or not valid_image_id(a.get("image_id")):
            raise ValueError(f"{pred_json}: annotations[{k}] has no integer or string 'image_id'")
        preds[a["image_id"]] = a
    del pred

    def pair(k: int, ann: Any) -> tuple[Any, Path, list[Any], Path, list[Any]]:
        if not isinstance(ann, dict) or not isinstance(ann.get("file_name"), str):
            raise ValueError(f"{gt_json}: annotations[{k}] has no PNG 'file_name'")
        image = ann.get("image_id")
        if not valid_image_id(image):
            raise ValueError(f"{gt_json}: annotations[{k}] has no integer or string 'image_id'")
        p = preds.get(image)
        if p is None:
            raise ValueError(f"{pred_json}: no prediction for the image with id {image!r}")
        if not isinstance(p.get("file_name"), str) or not isinstance(p.get("segments_info"), list):
            raise ValueError(f"{pred_json}: the prediction of image {image!r} has no 'file_name' or 'segments_info'")
        return image, gt_dir / ann["file_name"], ann.get("segments_info"), pred_dir / p["file_name"], p["segments_info"]

    def one(job: tuple[Any, Path, list[Any], Path, list[Any]]) -> tuple[np.ndarray, ...]:
        image, gt_png, gt_segs, pred_png, pred_segs = job
        try:
            gsegs = parse_segments(gt_segs)
        except ValueError as e:
            raise ValueError(f"{gt_json}: image {image!r}: {e}") from None
        try:
            psegs = parse_segments(pred_segs)
        except ValueError as e:
            raise ValueError(f"{pred_json}: image {image!r}: {e}") from None
        try:
            return stat.image_stats(read_id_png(gt_png), gsegs, read_id_png(pred_png), psegs, image=repr(image))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image {image!r}: PNG not found: {e.filename or e}") from None

    jobs = (pair(k, a) for k, a in enumerate(gt["annotations"]))
    workers = max(1, int(num_threads))
    if workers == 1:
        for job in jobs:
            stat.add(one(job))
    else:
        with ThreadPoolExecutor(workers) as ex:  # a bounded window of images in flight: flat memory
            window: deque[Any] = deque()
            for job in jobs:
                window.append(ex.submit(one, job))
                if len(window) >= 2 * workers:
                    stat.add(window.popleft().result())
            while window:
                stat.add(window.popleft().result())
    return stat.summary()


def format_pq_table(result: Mapping[str, Any], per_class: bool = False) -> str:
    """panopticapi's table: All, Things and Stuff rows of PQ, SQ, RQ (percent, one decimal) and N."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
    rows = [(name, result[name]) for name in ("All", "Things", "Stuff")]
    if per_class:
        rows += [(str(v.get("name", k))[:10], {**v, "n": ""}) for k, v in result["per_class"].items()]
    for name, r in rows:
        lines.append(f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']!s:>5s}")
    return "\n".join(lines)


def add_pq_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``focalnet segmentation pq``: the standalone scorer of COCO-panoptic predictions."""
    from ..engine.options import add_json_arg, add_overwrite_arg

    p = subparsers.add_parser(
        "pq",
        help="PQ, SQ, RQ of COCO-panoptic predictions (panopticapi's numbers)",
        description="Score COCO-panoptic predictions (a JSON + a folder of PNGs, as `segmentation predict` "
        "or any panoptic model writes them) against COCO-panoptic ground truth: PQ, SQ and RQ for All, "
        "Things and Stuff, computed as panopticapi's pq_compute, image by image (flat memory).",
    )
    p.add_argument("--gt-json", required=True, help="ground truth, e.g. annotations/panoptic_val2017.json")
    p.add_argument("--gt-folder", help="ground-truth PNG folder (default: --gt-json without .json)")
    p.add_argument("--pred-json", required=True, help="predictions JSON (annotations with segments_info)")
    p.add_argument("--pred-folder", help="prediction PNG folder (default: --pred-json without .json)")
    p.add_argument("--per-class", action="store_true", help="print a row per category too")
    add_json_arg(p, "DIR/pq.json (fractions, as panopticapi)")
    p.add_argument("--output", "--out", dest="output", metavar="DIR", help="folder for pq.json")
    add_overwrite_arg(p)
    p.set_defaults(func=cmd_pq)
    return p


def cmd_pq(args: argparse.Namespace) -> int:
    """Run ``focalnet segmentation pq``: print the table (``--json``: the results as JSON), write
    ``--output DIR``/pq.json (and the deprecated ``--json FILE``)."""
    from ..engine import finite_json, write_json
    from ..engine.options import json_file
    from ..engine.outputs import OutputRule

    gt_dir = args.gt_folder or Path(args.gt_json).with_suffix("")
    pred_dir = args.pred_folder or Path(args.pred_json).with_suffix("")
    inputs = [args.gt_json, args.pred_json, gt_dir, pred_dir]  # a folder: itself and its files
    rule = OutputRule("segmentation pq", inputs, overwrite=args.overwrite)
    legacy = json_file(args)
    if legacy:
        rule.claim([legacy], what="--json")
    if args.output:
        rule.claim([Path(args.output) / "pq.json"], args.output, what="--output")
    threads = getattr(args, "threads", None) or min(4, os.cpu_count() or 1)
    result = pq_compute(args.gt_json, gt_dir, args.pred_json, pred_dir, num_threads=threads)
    if args.json is True:
        print(json.dumps(finite_json(result), indent=2))
    else:
        print(format_pq_table(result, per_class=args.per_class))
    for target in (t for t in (legacy, Path(args.output) / "pq.json" if args.output else None) if t):
        write_json(target, result)
        print(f"wrote {target}", file=sys.stderr)
    rule.finish()
    json_file(args, note=True)  # the old --json FILE: a note that it goes
    return 0
