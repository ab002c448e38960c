"""Mask2Former speed and memory: FocalNet-T Mask2Former against transformers' Mask2Former (Swin-T).

    python benchmarks/mask2former_speed.py --threads 2 --json benchmarks/results_mask2former_speed_cpu.json
    python benchmarks/mask2former_speed.py --cases infer,head --reps 5

Both models have the released COCO panoptic head sizes (hidden 256, 100 queries, 8 heads, 6 deformable
encoder layers with FFN 1024, 9 masked-attention decoder layers with FFN 2048, i.e. 10 predictions, 133
classes) and random weights (seed 0); ours has FocalNet-T (LRF) as backbone, transformers'
``Mask2FormerForUniversalSegmentation`` a Swin-T (``SwinConfig``: embed 96, depths 2-2-6-2, heads 3-6-12-24,
window 7; 4.5 GFLOPs at 224x224, as FocalNet-T). Float32, eval, random pixels, one image at 800x1216.

Cases (``--cases``, comma-separated; default all):

- ``infer``: the whole model. ``focalnet_fast`` is the path ``segmentation evaluate|predict`` take
  (:func:`focalnet.models.inference.inference_path`: fused backbone blocks, then ``forward_logits``, the
  last prediction); ``focalnet_regular`` is the model as built (``forward_logits``); ``transformers`` is
  ``Mask2FormerForUniversalSegmentation(pixel_values)`` (its own inference path: every prediction).
- ``head``: pixel decoder + transformer decoder (+ class predictor) alone, both fed the SAME multi-scale
  features (those our FocalNet-T gives for the image; both backbones give 96/192/384/768 channels at
  strides 4-32). ``focalnet_head`` runs as ``forward_logits`` runs it (``sem_seg_head.forward_last``: the
  intermediate predictions, which only decide the attention masks, at the attended scales);
  ``focalnet_head_all`` computes every prediction at full size (``forward``'s path, ``forward_logits``'s
  before that optimisation).
- ``memory``: peak memory of one inference of the rows above (but ``focalnet_regular``), each in a fresh
  subprocess: ``VmHWM`` of
  ``/proc/self/status`` (the process's peak resident memory) and its rise over the resident memory just
  before the forward (the weights and, for the head rows, the features already in place).
- ``train_memory``: peak memory of one training step at batch 2, 1024x1024 (forward, the criterion with
  its default 12,544 points and deep supervision, backward), 5 random box-shaped objects per image, each
  model in a fresh subprocess (same measures).

Timed rows take turns in every repetition (interleaved), so that load on a shared machine slows all
alike; figures are medians [min-max] of ``--reps`` repetitions after one warm-up each, ratios are of
medians (and of the fastest runs). All rows run under ``torch.inference_mode``. glibc's malloc keeps freed
memory (:func:`focalnet.engine.keep_freed_memory`, what the ``focalnet`` commands do) unless
``--system-malloc``; it applies to every row and subprocess alike. ``max|diff|`` compares a row's outputs
with ``focalnet_regular``'s. Prints a table per case and writes every figure to ``--json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

H, W = 800, 1216
TRAIN_SIZE, TRAIN_BATCH, TRAIN_OBJECTS = 1024, 2, 5
NUM_CLASSES = 133
ALL_CASES = ("infer", "head", "memory", "train_memory")
MEMORY_ROWS = ("focalnet_fast", "transformers", "focalnet_head", "focalnet_head_all", "transformers_head")
TRAIN_ROWS = ("focalnet_train", "transformers_train")


# ---------------------------------------------------------------- the models


def ours(fast: bool) -> nn.Module:
    """FocalNet-T Mask2Former (133 classes, released head sizes), eval; ``fast``: the commands' path."""
    from focalnet.models.inference import inference_path
    from focalnet.segmentation.mask2former import mask2former

    torch.manual_seed(0)
    model = mask2former("focalnet_tiny_lrf", NUM_CLASSES).eval()
    return inference_path(model) if fast else model


def theirs() -> nn.Module:
    """transformers' Mask2Former with the same head sizes and a Swin-T backbone, eval."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(
        backbone_config=swin,
        feature_size=256,
        mask_feature_size=256,
        hidden_dim=256,
        encoder_feedforward_dim=1024,
        encoder_layers=6,
        decoder_layers=10,  # predictions: the queries' + 9 layers'
        num_attention_heads=8,
        dim_feedforward=2048,
        num_queries=100,
        num_labels=NUM_CLASSES,
    )
    torch.manual_seed(0)
    return Mask2FormerForUniversalSegmentation(cfg).eval()


def their_head(model: nn.Module) -> Callable[[list[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    """transformers' pixel decoder + transformer module + class predictor on given backbone features, as
    ``Mask2FormerForUniversalSegmentation.forward`` runs them (class logits of every prediction)."""

    def run(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        px = model.model.pixel_level_module.decoder(features)
        out = model.model.transformer_module(
            multi_scale_features=px.multi_scale_features, mask_features=px.mask_features, output_hidden_states=True
        )
        classes = [model.class_predictor(h.transpose(0, 1)) for h in out.intermediate_hidden_states]
        return classes[-1], out.masks_queries_logits[-1]

    return run


def image(batch: int = 1, h: int | None = None, w: int | None = None) -> torch.Tensor:
    """Random pixels (seed 0), ``--size`` unless given."""
    return torch.randn(batch, 3, h or H, w or W, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- timing


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


def summarise(
    case: str, times: dict[str, list[float]], base: str, notes: dict[str, str], diffs: dict[str, float]
) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        {
            "path": k,
            "what": notes[k],
            "ms": round(1000 * med[k], 1),
            "min_ms": round(1000 * min(v), 1),
            "max_ms": round(1000 * max(v), 1),
            f"speedup_vs_{base}": round(med[base] / med[k], 3),
            f"speedup_of_min_vs_{base}": round(min(times[base]) / min(v), 3),
            "max_abs_diff": diffs.get(k),
        }
        for k, v in times.items()
    ]
    print(f"\n{case} (speed-up against {base})")
    for r in rows:
        d = "" if r["max_abs_diff"] is None else f"  max|diff| {r['max_abs_diff']:.1e}"
        print(
            f"  {r['path']:<18} {r['ms']:9.1f} ms [{r['min_ms']:.1f}-{r['max_ms']:.1f}]"
            f"  {r[f'speedup_vs_{base}']:.3f}x (fastest runs {r[f'speedup_of_min_vs_{base}']:.3f}x){d}"
            f"  {r['what']}"
        )
    return {"case": case, "baseline": base, "rows": rows}


def _diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def case_infer(args: argparse.Namespace) -> dict[str, Any]:
    x = image()
    models = {"focalnet_fast": ours(True), "focalnet_regular": ours(False), "transformers": theirs()}
    hf = models["transformers"]
    notes = {
        "focalnet_fast": "inference_path (fused backbone) + forward_logits: the commands' path",
        "focalnet_regular": "model as built, forward_logits",
        "transformers": "Mask2FormerForUniversalSegmentation(pixel_values), Swin-T",
    }
    with torch.inference_mode():
        ref = models["focalnet_regular"].forward_logits(x)
        diffs = {"focalnet_fast": _diff(models["focalnet_fast"].forward_logits(x), ref)}
        paths = {
            "focalnet_fast": lambda: models["focalnet_fast"].forward_logits(x),
            "focalnet_regular": lambda: models["focalnet_regular"].forward_logits(x),
            "transformers": lambda: hf(pixel_values=x),
        }
        times = interleave(paths, args.reps)
    return summarise(f"whole model, 1 image {H}x{W}", times, "transformers", notes, diffs)


def case_head(args: argparse.Namespace) -> dict[str, Any]:
    x = image()
    model = ours(True)
    head = model.sem_seg_head
    hf_run = their_head(theirs())
    notes = {
        "focalnet_head": "sem_seg_head.forward_last(features), as forward_logits runs it",
        "focalnet_head_all": "sem_seg_head(features, all_classes=False): every prediction at full size",
        "transformers_head": "pixel_level_module.decoder + transformer_module + class_predictor",
    }
    with torch.inference_mode():
        features = [f.contiguous() for f in model.backbone(x)]
        print("features:", [tuple(f.shape) for f in features])
        last = head.forward_last(features)
        classes, masks = head(features, all_classes=False)
        diffs = {"focalnet_head_all": _diff((classes[-1], masks[-1]), last)}
        paths = {
            "focalnet_head": lambda: head.forward_last(features),
            "focalnet_head_all": lambda: head(features, all_classes=False),
            "transformers_head": lambda: hf_run(features),
        }
        times = interleave(paths, args.reps)
    title = f"head alone on FocalNet-T's features of a {H}x{W} image (max|diff| against focalnet_head)"
    return summarise(title, times, "transformers_head", notes, diffs)


# ---------------------------------------------------------------- memory (subprocesses)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _train_targets(g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    targets = []
    for _ in range(TRAIN_BATCH):
        masks = torch.zeros(TRAIN_OBJECTS, TRAIN_SIZE, TRAIN_SIZE)
        for m in masks:
            y0, x0 = torch.randint(0, TRAIN_SIZE // 2, (2,), generator=g).tolist()
            hh, ww = torch.randint(64, TRAIN_SIZE // 2, (2,), generator=g).tolist()
            m[y0 : y0 + hh, x0 : x0 + ww] = 1
        targets.append({"labels": torch.randint(0, NUM_CLASSES, (TRAIN_OBJECTS,), generator=g), "masks": masks})
    return targets


def child(row: str) -> dict[str, Any]:
    """One measured run of ``row`` in this (fresh) process: peak and rise of the resident memory."""
    g = torch.Generator().manual_seed(0)
    if row in TRAIN_ROWS:
        x = image(TRAIN_BATCH, TRAIN_SIZE, TRAIN_SIZE)
        targets = _train_targets(g)
        if row == "focalnet_train":
            from focalnet.segmentation.mask2former import Mask2FormerCriterion

            model = ours(False).train()
            criterion = Mask2FormerCriterion(NUM_CLASSES)

            def run() -> None:
                criterion(model(x), targets)["loss"].backward()

        else:
            model = theirs().train()

            def run() -> None:
                out = model(
                    pixel_values=x,
                    mask_labels=[t["masks"] for t in targets],
                    class_labels=[t["labels"] for t in targets],
                )
                out.loss.backward()

        before = _status_kib("VmRSS")
        t = time.perf_counter()
        run()
    else:
        x = image()
        features = None
        if row in ("focalnet_fast", "focalnet_regular"):
            model = ours(row == "focalnet_fast")

            def run() -> None:
                model.forward_logits(x)

        elif row == "transformers":
            model = theirs()

            def run() -> None:
                model(pixel_values=x)

        else:
            model = ours(True)
            with torch.inference_mode():
                features = [f.contiguous() for f in model.backbone(x)]
            if row == "focalnet_head":

                def run() -> None:
                    model.sem_seg_head.forward_last(features)

            elif row == "focalnet_head_all":

                def run() -> None:
                    model.sem_seg_head(features, all_classes=False)

            else:
                hf_run = their_head(theirs())

                def run() -> None:
                    hf_run(features)

        before = _status_kib("VmRSS")
        t = time.perf_counter()
        with torch.inference_mode():
            run()
    seconds = time.perf_counter() - t
    peak = _status_kib("VmHWM")
    return {
        "row": row,
        "peak_mib": round(peak / 1024, 1),
        "rise_mib": round((peak - before) / 1024, 1),
        "rss_before_mib": round(before / 1024, 1),
        "seconds": round(seconds, 2),
    }


def _run_children(rows: tuple[str, ...], args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", row, "--threads", str(args.threads)]
        cmd += ["--size", f"{H}x{W}", "--train-size", str(TRAIN_SIZE)]
        if args.system_malloc:
            cmd.append("--system-malloc")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            out.append({"row": row, "error": f"exit {proc.returncode}"})
            continue
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def _memory_table(title: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    print(f"\n{title}")
    for r in results:
        if "error" in r:
            print(f"  {r['row']:<20} failed: {r['error']}")
        else:
            print(
                f"  {r['row']:<20} peak {r['peak_mib']:8.1f} MiB  rise {r['rise_mib']:8.1f} MiB"
                f"  (resident before {r['rss_before_mib']:.1f} MiB, {r['seconds']:.1f} s)"
            )
    return {"case": title, "rows": results}


def case_memory(args: argparse.Namespace) -> dict[str, Any]:
    return _memory_table(
        f"peak memory of one inference, {H}x{W} (VmHWM, fresh process each)", _run_children(MEMORY_ROWS, args)
    )


def case_train_memory(args: argparse.Namespace) -> dict[str, Any]:
    title = f"peak memory of one training step, batch {TRAIN_BATCH}, {TRAIN_SIZE}x{TRAIN_SIZE} (forward, criterion, backward)"
    return _memory_table(title, _run_children(TRAIN_ROWS, args))


CASES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "infer": case_infer,
    "head": case_head,
    "memory": case_memory,
    "train_memory": case_train_memory,
}


def write_json_atomic(path: str, data: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    global H, W, TRAIN_SIZE
    if hasattr(sys.stdout, "reconfigure"):  # the tables appear as they are measured, also into a file
        sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated, from {', '.join(ALL_CASES)}")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is")
    p.add_argument("--size", default=f"{H}x{W}", help="inference image size HxW (default %(default)s)")
    p.add_argument("--train-size", type=int, default=TRAIN_SIZE, help="training crop (default %(default)s)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--child", choices=MEMORY_ROWS + TRAIN_ROWS, help=argparse.SUPPRESS)
    args = p.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    if args.reps < 1:
        p.error("--reps must be at least 1")
    try:
        H, W = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be HxW, got {args.size!r}")
    if min(H, W, args.train_size) < 64:
        p.error("sizes must be at least 64")
    TRAIN_SIZE = args.train_size
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = False
    if not args.system_malloc:
        from focalnet.engine.resources import keep_freed_memory

        kept = keep_freed_memory()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    info: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "load_avg_1min_at_start": os.getloadavg()[0],
        "torch": torch.__version__,
        "malloc_keeps_freed_memory": kept,
        "reps": args.reps,
        "size": [H, W],
        "train": {"batch": TRAIN_BATCH, "size": TRAIN_SIZE, "objects_per_image": TRAIN_OBJECTS},
        "results": [],
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        p.error("this benchmark needs transformers (pip install transformers)")
    t0 = time.perf_counter()
    for c in cases:
        info["results"].append(CASES[c](args))
    info["load_avg_1min_at_end"] = os.getloadavg()[0]
    info["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"\nload average (1 min): {info['load_avg_1min_at_start']:.2f} at start, {info['load_avg_1min_at_end']:.2f} at end; {info['wall_seconds']} s"
    )
    if args.json:
        write_json_atomic(args.json, info)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
