"""Multi-scale deformable attention: ours (``focalnet.detection.dino.ms_deform_attn``) against the
pure-PyTorch implementation in transformers' Deformable DETR, forward and backward, same inputs, same run.

    python benchmarks/ms_deform_attn.py                    # encoder and decoder shapes of DINO-L, CPU
    python benchmarks/ms_deform_attn.py --reps 5 --image 800x1333
    python benchmarks/ms_deform_attn.py --dino-l           # also DINO-L (fl4, 5 scales) inference at 800x1333

Shapes: 8 heads of 32 channels, 4 points per level, levels at strides 8-64 (4-scale) of ``--image``;
"encoder" queries every token, "decoder" 900 + 200 queries. The two implementations alternate; each
figure is the fastest of ``--reps`` runs after one warm-up (the machine may be shared); outputs and the
three gradients are compared (max abs difference).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from focalnet.ops import ms_deform_attn


def _reference() -> Any:
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    attn = MultiScaleDeformableAttention()

    def run(value, shapes, loc, weights):
        st = torch.tensor(shapes, dtype=torch.long, device=value.device)
        start = torch.cat([st.new_zeros(1), st.prod(1).cumsum(0)[:-1]])
        # ``forward`` directly: the pure-PyTorch path, never a hub kernel
        return MultiScaleDeformableAttention.forward(attn, value, st, list(shapes), start, loc, weights, 64)

    return run


def _once(fn, inputs: list[torch.Tensor]) -> tuple[float, float, torch.Tensor, list[torch.Tensor], float]:
    with torch.no_grad():
        t0 = time.perf_counter()
        fn(*inputs)
        t_inf = time.perf_counter() - t0
    xs = [t.detach().clone().requires_grad_() for t in inputs]
    t0 = time.perf_counter()
    out = fn(*xs)
    t1 = time.perf_counter()
    out.backward(torch.ones_like(out) / out.numel() ** 0.5)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, out.detach(), [x.grad for x in xs], t_inf


def _time_pair(fns: list, inputs: list[torch.Tensor], reps: int) -> list[tuple[float, float, Any, Any, float]]:
    """Alternate the implementations (so load changes on a shared machine hit both alike); per
    implementation the fastest forward and backward of ``reps`` runs after one warm-up each."""
    results: list[list[tuple]] = [[] for _ in fns]
    for i in range(reps + 1):
        for j, fn in enumerate(fns):
            r = _once(fn, inputs)
            if i:
                results[j].append(r)
    out = []
    for rs in results:
        out.append((min(r[0] for r in rs), min(r[1] for r in rs), rs[-1][2], rs[-1][3], min(r[4] for r in rs)))
    return out


def bench_attention(image: tuple[int, int], reps: int, device: str) -> list[dict[str, Any]]:
    H, W = image
    shapes = [(-(-H // s), -(-W // s)) for s in (8, 16, 32, 64)]
    S = sum(h * w for h, w in shapes)
    M, D, L, P = 8, 32, len(shapes), 4
    reference = _reference()
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, Lq in (("encoder", S), ("decoder", 1100)):
        value = torch.randn(1, S, M, D, generator=g).to(device)
        loc = (torch.rand(1, Lq, M, L, P, 2, generator=g) * 1.1 - 0.05).to(device)
        weights = torch.softmax(torch.randn(1, Lq, M, L * P, generator=g), -1).view(1, Lq, M, L, P).to(device)
        ours, theirs = _time_pair(
            [lambda v, lo, w: ms_deform_attn(v, shapes, lo, w), lambda v, lo, w: reference(v, shapes, lo, w)],
            [value, loc, weights],
            reps,
        )
        out_diff = (ours[2] - theirs[2]).abs().max().item()
        grad_diff = max((a - b).abs().max().item() for a, b in zip(ours[3], theirs[3]))
        rows.append(
            {
                "shape": name,
                "queries": Lq,
                "tokens": S,
                "ours_fwd_ms": ours[0] * 1e3,
                "ours_bwd_ms": ours[1] * 1e3,
                "transformers_fwd_ms": theirs[0] * 1e3,
                "transformers_bwd_ms": theirs[1] * 1e3,
                "ours_inference_ms": ours[4] * 1e3,
                "transformers_inference_ms": theirs[4] * 1e3,
                "speedup_inference": theirs[4] / ours[4],
                "speedup_fwd": theirs[0] / ours[0],
                "speedup_fwd_bwd": (theirs[0] + theirs[1]) / (ours[0] + ours[1]),
                "max_abs_diff_out": out_diff,
                "max_abs_diff_grad": grad_diff,
            }
        )
    return rows


def bench_dino_l(image: tuple[int, int], reps: int, device: str) -> dict[str, Any]:
    from focalnet.detection.dino import dino

    model = dino("focalnet_large_fl4", num_feature_levels=5).eval().to(device)
    x = torch.randn(1, 3, *image, device=device)
    times = []
    with torch.inference_mode():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return {"model": "DINO FocalNet-L fl4 5-scale", "image": list(image), "seconds_per_image": statistics.median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="512x640", help="HxW whose stride 8-64 levels set the shapes")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--dino-l", action="store_true", help="also time DINO-L inference")
    p.add_argument("--dino-image", default="800x1333")
    p.add_argument("--dino-reps", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = tuple(int(v) for v in args.image.lower().split("x"))
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": args.device,
        "attention": bench_attention(image, args.reps, args.device),
    }
    print(f"multi-scale deformable attention, image {args.image}, {result['threads']} threads, {args.device}")
    print(
        f"{'shape':8} {'queries':>8} {'ours fwd / bwd ms':>18} {'transformers fwd / bwd ms':>24} {'speed-up':>9} "
        f"{'no-grad ms ours / theirs':>25} {'speed-up':>9} {'max|diff|':>10}"
    )
    for r in result["attention"]:
        print(
            f"{r['shape']:8} {r['queries']:8d} {r['ours_fwd_ms']:8.1f} / {r['ours_bwd_ms']:7.1f} "
            f"{r['transformers_fwd_ms']:12.1f} / {r['transformers_bwd_ms']:9.1f} {r['speedup_fwd_bwd']:8.2f}x "
            f"{r['ours_inference_ms']:12.1f} / {r['transformers_inference_ms']:8.1f} {r['speedup_inference']:8.2f}x "
            f"{max(r['max_abs_diff_out'], r['max_abs_diff_grad']):10.1e}"
        )
    if args.dino_l:
        dino_image = tuple(int(v) for v in args.dino_image.lower().split("x"))
        result["dino_l"] = bench_dino_l(dino_image, args.dino_reps, args.device)
        print(
            f"DINO-L (FocalNet-L fl4, 5 scales) at {args.dino_image}: {result['dino_l']['seconds_per_image']:.1f} s/image"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
