"""Speed of a FocalNet Mask R-CNN on this machine: seconds per training iteration and inference images/s.

    python benchmarks/detection_speed.py                       # FocalNet-T (LRF) at 800x1333 and 512x853, CPU
    python benchmarks/detection_speed.py --device cuda --batch 2 --iters 20 --amp

Synthetic images (random pixels) with a few random boxes/masks per image; the model has the original
settings (FPN 256, 1000 proposals, 512 RoIs per image). The first iteration of each measurement is a
warm-up and is not timed. Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from focalnet.detection import mask_rcnn


def _targets(n: int, h: int, w: int, device: torch.device, g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(n):
        k = 4
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 32
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(k, h, w, dtype=torch.uint8)
        for i, b in enumerate(boxes.round().long().tolist()):
            masks[i, b[1] : b[3], b[0] : b[2]] = 1
        out.append(
            {
                "boxes": boxes.to(device),
                "labels": torch.randint(1, 81, (k,), generator=g).to(device),
                "masks": masks.to(device),
            }
        )
    return out


def bench(backbone: str, size: tuple[int, int], batch: int, iters: int, device: torch.device, amp: bool) -> dict:
    h, w = size
    model = mask_rcnn(backbone, num_classes=81, min_size=h, max_size=w).to(device)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(batch)]
    targets = _targets(batch, h, w, device, g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    times = []
    for i in range(iters + 1):
        sync()
        t = time.perf_counter()
        with ctx:
            loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i:
            times.append(time.perf_counter() - t)
    train_s = sum(times) / len(times)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(iters + 1):
            sync()
            t = time.perf_counter()
            with ctx:
                model(images)
            sync()
            if i:
                times.append(time.perf_counter() - t)
    infer_s = sum(times) / len(times)
    return {
        "backbone": backbone,
        "size": f"{h}x{w}",
        "batch": batch,
        "iters": iters,
        "train_s_per_iter": round(train_s, 3),
        "train_images_per_s": round(batch / train_s, 3),
        "infer_images_per_s": round(batch / infer_s, 3),
        "infer_s_per_image": round(infer_s / batch, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="focalnet_tiny_lrf")
    p.add_argument("--sizes", nargs="+", default=["800x1333", "512x853"], help="HxW (short x long side)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=2, help="timed iterations after one warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for s in args.sizes:
        h, w = (int(v) for v in s.lower().split("x"))
        rows.append(bench(args.backbone, (h, w), args.batch, args.iters, device, args.amp))
        r = rows[-1]
        print(
            f"{r['backbone']} {r['size']} batch {r['batch']}: train {r['train_s_per_iter']:.2f} s/iter, "
            f"inference {r['infer_images_per_s']:.3f} images/s",
            flush=True,
        )
    info = {
        "device": str(device)
        if device.type != "cpu"
        else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "results": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
