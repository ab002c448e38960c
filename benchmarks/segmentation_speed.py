"""Speed of a FocalNet UPerNet: training iterations/s and inference images/s at 512x512.

    python benchmarks/segmentation_speed.py                       # FocalNet-T (SRF) UPerNet, CPU
    python benchmarks/segmentation_speed.py --device cuda --batch-size 8 --amp bf16
    python benchmarks/segmentation_speed.py --json speed.json

Training = one full optimizer step (forward with both heads, losses, backward, AdamW) on random
512x512 crops; inference = whole-image forward (decode head only) under ``torch.no_grad``. The model
has 150 classes as on ADE20K. Prints a table and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from focalnet.segmentation import upernet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = upernet(args.backbone, 150).to(device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    size = args.size
    opt = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    y = torch.randint(0, 150, (args.batch_size, size, size), device=device)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = model(x, y)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for _ in range(args.warmup):
        train_step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(args.iters):
        train_step()
    _sync(device)
    train_s = (time.perf_counter() - t) / args.iters

    model.eval()
    xi = torch.randn(args.infer_batch, 3, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for _ in range(args.warmup):
            model(xi)
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.iters):
            model(xi)
        _sync(device)
    infer_s = (time.perf_counter() - t) / args.iters
    return {
        "model": f"UPerNet {args.backbone}",
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "size": size,
        "amp": args.amp,
        "train_batch": args.batch_size,
        "train_iters_per_s": round(1 / train_s, 4),
        "train_images_per_s": round(args.batch_size / train_s, 3),
        "infer_batch": args.infer_batch,
        "infer_images_per_s": round(args.infer_batch / infer_s, 3),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="focalnet_tiny_srf")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2, help="training images per step")
    p.add_argument("--infer-batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    res = bench(args)
    for k, v in res.items():
        print(f"{k:>20}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
