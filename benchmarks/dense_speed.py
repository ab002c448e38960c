"""Dense prediction at full resolution: FocalNet-T against torchvision's ResNet-50 on the same image.

    python benchmarks/dense_speed.py --threads 2 --json benchmarks/results_dense_speed_cpu.json
    python benchmarks/dense_speed.py --cases backbone --compile        # adds the torch.compile path
    python benchmarks/dense_speed.py --cases detectors,upernet --reps 2

Cases (``--cases``, comma-separated; default all but ``detectors``):

- ``backbone``: the FocalNet-T (LRF, focal kernels 9/11/13, the detectors' backbone) at 800x1344,
  ``regular`` (eager blocks) and ``fast`` (:func:`focalnet.models.fuse_blocks`, the path
  ``detection/segmentation predict|evaluate`` take), against the ResNet-50 body (layers 1-4 of
  ``torchvision.models.resnet50``, eval) and the body of torchvision's Mask R-CNN (frozen BN).
- ``maskrcnn_infer``: FocalNet-T Mask R-CNN (released settings) against ``maskrcnn_resnet50_fpn`` at
  800x1216, one image, score threshold 0 so that both keep 100 detections and run the mask head on them.
- ``maskrcnn_train``: one training step (forward, losses, backward, AdamW step) on that image with 3
  objects, both detectors.
- ``upernet``: UPerNet FocalNet-T (SRF) at 512x512, inference, regular against fast.
- ``detectors``: Cascade Mask R-CNN, ATSS, Sparse R-CNN and DINO (5 scales, 900 queries) with a FocalNet-T backbone at
  800x1216, inference, regular against fast.

Every repetition runs each path of a case once, in turn (interleaved), so that load on a shared machine
slows all alike; figures are medians [min-max] of ``--reps`` repetitions after one warm-up, ratios are of
medians (and, in brackets, of the fastest runs: the least disturbed on a shared machine). glibc's malloc
keeps freed memory (:func:`focalnet.engine.keep_freed_memory`, what the ``focalnet`` commands do) unless
``--system-malloc``; it applies to every path alike. ``max|diff|`` compares a path's output with the
regular path's (backbone features, UPerNet logits, the Mask R-CNN's boxes, the other detectors' backbone
features). Random weights (seed 0), random pixels. Prints a table per case and writes every figure to
``--json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from focalnet.models import fuse_blocks

DEFAULT_CASES = ("backbone", "maskrcnn_infer", "maskrcnn_train", "upernet")
ALL_CASES = (*DEFAULT_CASES, "detectors")
OTHER_DETECTORS = ("cascade_mask_rcnn", "atss", "sparse_rcnn", "dino")


def interleave(paths: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds of each path per repetition, the paths taking turns; one untimed warm-up each."""
    for fn in paths.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(reps):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def summarise(case: str, times: dict[str, list[float]], base: str, diffs: dict[str, float | None]) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        {
            "path": k,
            "seconds": round(med[k], 4),
            "min": round(min(v), 4),
            "max": round(max(v), 4),
            f"ratio_to_{base}": round(med[k] / med[base], 3),
            f"ratio_of_min_to_{base}": round(min(v) / min(times[base]), 3),
            "max_abs_diff": diffs.get(k),
        }
        for k, v in times.items()
    ]
    print(f"\n{case} (ratio to {base})")
    for r in rows:
        d = "" if r["max_abs_diff"] is None else f"  max|diff| {r['max_abs_diff']:.1e}"
        print(
            f"  {r['path']:<24} {r['seconds']:8.3f} s [{r['min']:.3f}-{r['max']:.3f}]  {r[f'ratio_to_{base}']:.3f}x"
            f" (fastest runs: {r[f'ratio_of_min_to_{base}']:.3f}x){d}"
        )
    return {"case": case, "baseline": base, "rows": rows}


def _max_diff(a: Any, b: Any) -> float:
    if isinstance(a, torch.Tensor):
        if a.shape != b.shape:
            return float("nan")
        return (a - b).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        return max(_max_diff(a[k], b[k]) for k in a)
    return max(_max_diff(x, y) for x, y in zip(a, b, strict=True))


def _trunks(model: nn.Module) -> list[nn.Module]:
    from focalnet.models import FocalNetBackbone

    return [m for m in model.modules() if isinstance(m, FocalNetBackbone)]


def _fast_twin(model: nn.Module, compile_: bool) -> dict[str, nn.Module]:
    """``regular`` (as built), ``fast`` (fused blocks) and optionally ``compiled`` copies of ``model``."""
    out = {"regular": model, "fast": fuse_blocks(copy.deepcopy(model))}
    if compile_:
        t = time.perf_counter()
        out["compiled"] = torch.compile(copy.deepcopy(out["fast"]), dynamic=True)
        out["compiled"].compile_seconds = time.perf_counter() - t  # type: ignore[attr-defined]
    return out


def _detector(name: str, backbone: str, h: int, w: int, score_thresh: float | None = None) -> nn.Module:
    """A FocalNet detector with its released settings (the packaged recipe), ``backbone`` swapped in."""
    from focalnet.detection import DetectionConfig, build_from_config, config_path, get_detector
    from focalnet.engine import load_config

    mc = load_config(DetectionConfig, config_path(get_detector(name).recipe)).model
    mc.backbone, mc.backbone_checkpoint = backbone, ""
    mc.min_size, mc.max_size = h, w
    if score_thresh is not None:
        mc.score_thresh = score_thresh
    return build_from_config(mc, 81)


def _torchvision_maskrcnn(h: int, w: int, **kw: Any) -> nn.Module:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=h, max_size=w, **kw)


def case_backbone(args: argparse.Namespace) -> dict[str, Any]:
    from torchvision.models import resnet50
    from torchvision.models._utils import IntermediateLayerGetter

    from focalnet.factory import create_backbone

    x = torch.randn(1, 3, 800, 1344)
    models = _fast_twin(create_backbone("focalnet_tiny_lrf", focal_windows=[9, 9, 9, 9]).eval(), args.compile)
    layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
    models["resnet50_body"] = IntermediateLayerGetter(resnet50(), layers).eval()
    models["resnet50_maskrcnn_body"] = _torchvision_maskrcnn(800, 1344).backbone.body.eval()
    with torch.inference_mode():
        ref = models["regular"](x)
        diffs = {k: _max_diff(models[k](x), ref) for k in ("fast", "compiled") if k in models}
        times = interleave({k: (lambda m=m: m(x)) for k, m in models.items()}, args.reps)
    out = summarise("FocalNet-T backbone vs ResNet-50 body, 800x1344", times, "resnet50_body", diffs)
    if "compiled" in models:
        out["compile_seconds"] = round(models["compiled"].compile_seconds, 1)
    return out


def _image_and_targets(h: int, w: int, k: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, h, w, generator=g)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
    boxes = torch.cat([xy, xy + torch.rand(k, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 32], 1)
    masks = torch.zeros(k, h, w, dtype=torch.uint8)
    for i, b in enumerate(boxes.round().long().tolist()):
        masks[i, b[1] : b[3], b[0] : b[2]] = 1
    return [image], [{"boxes": boxes, "labels": torch.randint(1, 81, (k,), generator=g), "masks": masks}]


def case_maskrcnn_infer(args: argparse.Namespace) -> dict[str, Any]:
    h, w = 800, 1216
    images, _ = _image_and_targets(h, w, 3)
    torch.manual_seed(0)
    models = _fast_twin(_detector("mask_rcnn", "focalnet_tiny_lrf", h, w, score_thresh=0.0).eval(), args.compile)
    models["torchvision_r50"] = _torchvision_maskrcnn(h, w, box_score_thresh=0.0).eval()
    with torch.inference_mode():
        counts = {k: len(m(images)[0]["boxes"]) for k, m in models.items()}
        ref = models["regular"](images)[0]["boxes"]
        diffs = {k: _max_diff(models[k](images)[0]["boxes"], ref) for k in ("fast", "compiled") if k in models}
        times = interleave({k: (lambda m=m: m(images)) for k, m in models.items()}, args.reps)
    out = summarise(f"Mask R-CNN inference, {h}x{w}, detections {counts}", times, "torchvision_r50", diffs)
    out["detections"] = counts
    return out


def case_maskrcnn_train(args: argparse.Namespace) -> dict[str, Any]:
    h, w = 800, 1216
    images, targets = _image_and_targets(h, w, 3)
    torch.manual_seed(0)
    models = {
        "focalnet_t": _detector("mask_rcnn", "focalnet_tiny_lrf", h, w).train(),
        "torchvision_r50": _torchvision_maskrcnn(h, w).train(),
    }
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}

    def step(name: str) -> None:
        loss = sum(models[name](images, targets).values())
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    times = interleave({k: (lambda k=k: step(k)) for k in models}, args.reps)
    return summarise(f"Mask R-CNN training step, {h}x{w}, 3 objects", times, "torchvision_r50", {})


def case_upernet(args: argparse.Namespace) -> dict[str, Any]:
    from focalnet.segmentation import upernet

    torch.manual_seed(0)
    models = _fast_twin(upernet("focalnet_tiny_srf", 150).eval(), args.compile)
    x = torch.randn(1, 3, 512, 512)
    with torch.inference_mode():
        ref = models["regular"](x)
        diffs = {k: _max_diff(models[k](x), ref) for k in ("fast", "compiled") if k in models}
        times = interleave({k: (lambda m=m: m(x)) for k, m in models.items()}, args.reps)
    return summarise("UPerNet FocalNet-T (SRF) inference, 512x512", times, "regular", diffs)


def case_detectors(args: argparse.Namespace) -> list[dict[str, Any]]:
    h, w = 800, 1216
    images, _ = _image_and_targets(h, w, 3)
    out = []
    for name in OTHER_DETECTORS:
        torch.manual_seed(0)
        models = _fast_twin(_detector(name, "focalnet_tiny_lrf", h, w, score_thresh=0.0).eval(), False)
        x = torch.randn(1, 3, h, w)
        with torch.inference_mode():  # the fused path changes the backbone only: compare its features
            (body,), (fast_body,) = (_trunks(models[k]) for k in ("regular", "fast"))
            diffs = {"fast": _max_diff(fast_body(x), body(x))}
            times = interleave({k: (lambda m=m: m(images)) for k, m in models.items()}, args.reps)
        out.append(summarise(f"{name} (FocalNet-T LRF) inference, {h}x{w}", times, "regular", diffs))
    return out


CASES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "backbone": case_backbone,
    "maskrcnn_infer": case_maskrcnn_infer,
    "maskrcnn_train": case_maskrcnn_train,
    "upernet": case_upernet,
    "detectors": case_detectors,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated, from {', '.join(ALL_CASES)}")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(dynamic=True) of the fast path")
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep freed memory, as the focalnet commands do)",
    )
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = False
    if not args.system_malloc:
        from focalnet.engine.resources import keep_freed_memory

        kept = keep_freed_memory()
    info: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "malloc_keeps_freed_memory": kept,
        "reps": args.reps,
        "results": [],
    }
    for c in cases:
        r = CASES[c](args)
        info["results"].extend(r if isinstance(r, list) else [r])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
