"""Benchmark (not a test): train a FocalNet-T from scratch on Imagenette at low resolution for a fixed
time budget on this machine's CPU, then record validation accuracy and training/evaluation images/s.

    python benchmarks/train_imagenette.py --minutes 6 --img-size 64

The number of optimizer steps is fixed up front from a short timing of the model so that the cosine
schedule completes within (about) the budget. Results go to OUTPUT/benchmark.json (and the run's metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FOCALNET_DATA", REPO.parent / "shared" / "data")) / "imagenette"


def _step_seconds(model: torch.nn.Module, batch: int, size: int, n: int = 4) -> float:
    """Median wall time of a forward/backward/AdamW step on random data (data loading excluded)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="focalnet_tiny_srf")
    p.add_argument("--minutes", type=float, default=6.0, help="training budget (evaluation comes on top)")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--output", default=str(REPO / "runs" / "bench_imagenette"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", help="extra config overrides")
    args = p.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data} not found (set --data or FOCALNET_DATA)")

    if args.threads:
        torch.set_num_threads(args.threads)
    from focalnet.classification import ImageFolder, TrainingRun, build_model, load_classification_config

    def find_images(root: Path) -> list:
        return ImageFolder(root, max_per_class=cfg.data.max_per_class).samples

    overrides = [
        f"model.name={args.model}",
        f"data.path={args.data}",
        f"output_dir={args.output}",
        f"data.img_size={args.img_size}",
        f"train.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        "train.progress=true",
        *args.overrides,
    ]
    cfg = load_classification_config("imagenette_cpu", overrides)
    step_s = _step_seconds(build_model(cfg, 10), args.batch_size, args.img_size)
    per_epoch = len(find_images(Path(args.data) / "train")) // args.batch_size
    steps = max(10, int(args.minutes * 60 / (step_s * 1.1)))  # ~10% for data loading
    cfg.train.max_steps = steps
    cfg.train.warmup_epochs = 0.05 * steps / per_epoch  # 5% linear warm-up, then cosine to the last step
    run = TrainingRun(cfg)
    losses: list[float] = []
    step_fn = run.trainer.step_fn

    def recording_step(model, batch, device):  # type: ignore[no-untyped-def]
        loss, logs, n = step_fn(model, batch, device)
        losses.append(float(loss.detach()))
        return loss, logs, n

    run.trainer.step_fn = recording_step
    t0 = time.perf_counter()
    final = run.fit()
    wall = time.perf_counter() - t0
    result = {
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "train_images": len(run.train_set),
        "val_images": len(run.val_set) if run.val_set is not None else 0,
        "steps": steps,
        "epochs": steps * args.batch_size / len(run.train_set),
        "seconds_per_step_estimate": step_s,
        "budget_minutes": args.minutes,
        "wall_seconds_train_and_eval": wall,
        "train_images_per_second": final.get("images_per_second"),
        "val_images_per_second": final.get("val_images_per_second"),
        "top1": final.get("top1"),
        "top5": final.get("top5"),
        "val_loss": final.get("loss"),
        "train_loss_first_10_steps": sum(losses[:10]) / max(len(losses[:10]), 1),
        "train_loss_last_10_steps": sum(losses[-10:]) / max(len(losses[-10:]), 1),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__,
    }
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "benchmark.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
