"""Speed of the FocalNet detectors on this machine, side by side with Mask R-CNN and torchvision's ResNet-50
Mask R-CNN: seconds per training iteration and per inference image, and their ratios.

    python benchmarks/detection_speed.py --threads 2            # the paper's 4 detectors, 800x1333 and 512x853
    python benchmarks/detection_speed.py --detectors mask_rcnn,cascade_mask_rcnn --json speed.json
    python benchmarks/detection_speed.py --device cuda --batch 2 --iters 20 --amp

``--detectors`` takes any names :func:`focalnet.detection.build_detector` knows (default: the paper's four
FocalNet-T detectors; unknown names are skipped with a message); FocalNet Mask R-CNN and torchvision's ``maskrcnn_resnet50_fpn(weights=None,
weights_backbone=None)`` are always timed in the same run as the baselines of the ratios. Each FocalNet
detector is built from the packaged recipe its spec names (``DETECTORS[name].recipe``: the released
settings: focal windows, proposals, heads), with ``--backbone`` swapped in. Synthetic images (random pixels) with 4 random boxes/masks per image; the first
iteration of each measurement is a warm-up and is not timed. Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch
from torch import nn

TORCHVISION = "torchvision_maskrcnn_r50"
PAPER_DETECTORS = ("mask_rcnn", "cascade_mask_rcnn", "atss", "sparse_rcnn")  # the paper's FocalNet-T detectors


def known_detectors() -> list[str]:
    """The detector names ``build_detector`` accepts."""
    from focalnet.detection import DETECTORS

    return list(DETECTORS)


def build(name: str, backbone: str, h: int, w: int) -> nn.Module:
    """A detector at test size ``h`` x ``w`` (short x long side) with its released settings."""
    if name == TORCHVISION:
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=h, max_size=w)
    from focalnet.detection import DetectionConfig, build_from_config, config_path, get_detector
    from focalnet.engine import load_config

    mc = load_config(DetectionConfig, config_path(get_detector(name).recipe)).model  # the released settings
    mc.backbone, mc.backbone_checkpoint = backbone, ""
    mc.min_size, mc.max_size = h, w
    return build_from_config(mc, 81)


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


def bench(
    name: str, backbone: str, size: tuple[int, int], batch: int, iters: int, device: torch.device, amp: bool
) -> dict[str, Any]:
    h, w = size
    model = build(name, backbone, h, w).to(device)
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
        "detector": name,
        "backbone": "resnet50" if name == TORCHVISION else backbone,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "size": f"{h}x{w}",
        "batch": batch,
        "iters": iters,
        "train_s_per_iter": round(train_s, 3),
        "train_images_per_s": round(batch / train_s, 3),
        "infer_images_per_s": round(batch / infer_s, 3),
        "infer_s_per_image": round(infer_s / batch, 3),
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per size: each row's training and inference times over Mask R-CNN's and torchvision's."""
    for r in rows:
        for base, key in (("mask_rcnn", "mask_rcnn"), (TORCHVISION, "torchvision")):
            ref = next((b for b in rows if b["detector"] == base and b["size"] == r["size"]), None)
            if ref is not None:
                r[f"train_ratio_to_{key}"] = round(r["train_s_per_iter"] / ref["train_s_per_iter"], 3)
                r[f"infer_ratio_to_{key}"] = round(r["infer_s_per_image"] / ref["infer_s_per_image"], 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--detectors",
        default="",
        help="comma-separated focalnet detectors (default: the paper's four, " + ",".join(PAPER_DETECTORS) + "); "
        "mask_rcnn and torchvision's R50 Mask R-CNN are always added as baselines",
    )
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
    known = known_detectors()
    asked = [d.strip() for d in args.detectors.split(",") if d.strip()] or list(PAPER_DETECTORS)
    names = ["mask_rcnn"]
    for d in asked:
        if d not in known:
            print(f"skipping unknown detector {d!r} (build_detector knows: {', '.join(known)})", flush=True)
        elif d not in names:
            names.append(d)
    names.append(TORCHVISION)
    rows = []
    for s in args.sizes:
        h, w = (int(v) for v in s.lower().split("x"))
        for name in names:
            rows.append(bench(name, args.backbone, (h, w), args.batch, args.iters, device, args.amp))
            r = rows[-1]
            print(
                f"{r['detector']} ({r['backbone']}, {r['params_m']}M) {r['size']} batch {r['batch']}: "
                f"train {r['train_s_per_iter']:.2f} s/iter, inference {r['infer_s_per_image']:.3f} s/image",
                flush=True,
            )
    add_ratios(rows)
    print(f"\n{'detector':<26} {'size':<9} {'train s/it':>10} {'x MRCNN':>8} {'x TV R50':>8} "
          f"{'infer s/img':>11} {'x MRCNN':>8} {'x TV R50':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['detector']:<26} {r['size']:<9} {r['train_s_per_iter']:>10.2f} {r['train_ratio_to_mask_rcnn']:>8.2f} "
            f"{r['train_ratio_to_torchvision']:>8.2f} {r['infer_s_per_image']:>11.3f} "
            f"{r['infer_ratio_to_mask_rcnn']:>8.2f} {r['infer_ratio_to_torchvision']:>8.2f}"
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
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
