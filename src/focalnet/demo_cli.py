"""``focalnet demo`` on the command line: its parser, built without torch (``focalnet demo --help``
answers at once), and the command, which imports :mod:`focalnet.demo` when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .lazy import module_constants

__all__ = ["register"]

(DEFAULT_EPOCHS,) = module_constants("focalnet.demo", "DEFAULT_EPOCHS")


def _dry_run(args: argparse.Namespace) -> int:
    """``demo --dry-run``: the settings, the model on the meta device and the schedule; nothing written."""
    from .demo import DEMO_CONFIG, IMAGE_SIZE, build_demo_model, demo_warmup, load_digits_tensors
    from .engine.dryrun import DryRun, dry_run_report

    n = len(load_digits_tensors(IMAGE_SIZE)[0])
    n = min(n, args.max_train) if args.max_train else n
    settings = {
        "output": str(args.out or Path("runs") / "demo-<timestamp>"),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "image_size": IMAGE_SIZE,
        "max_train": args.max_train,
        "pretrained": args.pretrained,
        "model": DEMO_CONFIG.to_dict(),
    }
    return dry_run_report(
        DryRun(
            settings,
            "the demo's FocalNet on the digits, 10 classes",
            build_demo_model,
            n,
            args.batch_size,
            args.epochs,
            schedule=lambda per_epoch, total: (demo_warmup(per_epoch, total, args.epochs), []),
            drop_last=False,
        )
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    from .demo import run_demo
    from .engine.resources import set_threads

    set_threads(args.threads)
    result = run_demo(
        args.out,
        args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        stage=args.stage,
        block=args.block,
        max_train=args.max_train,
        num_samples=args.samples,
        pretrained=args.pretrained,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    if args.no_progress:  # otherwise run_demo has reported the held-out accuracy already
        print(f"test accuracy: {result['test_accuracy']:.2f}%  (total {result['total_time_s']:.0f} s)")
    print(f"wrote {result['out']}  (open {Path(result['out']) / 'index.html'})")
    return 0


def register(subparsers: Any) -> None:
    """Add ``focalnet demo`` to the CLI."""
    from .engine.options import add_dry_run_arg, add_overwrite_arg, add_progress_arg, add_threads_arg, positive_int

    p = subparsers.add_parser(
        "demo",
        description="Train a small FocalNet on handwritten digits and show what it learned, offline.",
    )
    p.add_argument(
        "--output", "--out", dest="out", type=Path, default=None, help="output folder (default: runs/demo-<timestamp>)"
    )
    p.add_argument(
        "--epochs", type=positive_int, default=DEFAULT_EPOCHS, help=f"training epochs (default {DEFAULT_EPOCHS})"
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage", type=int, default=1, help="stage whose modulation is shown (0-based; default 1)")
    p.add_argument("--block", type=int, default=-1, help="block within the stage (default: the last)")
    p.add_argument("--samples", type=positive_int, default=10, help="held-out digits shown in the figures (default 10)")
    p.add_argument("--max-train", type=positive_int, default=None, help="use only the first N training images")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="also classify scikit-image photos with the released ImageNet FocalNet-T (needs the hub)",
    )
    add_threads_arg(p)
    add_dry_run_arg(p)
    add_progress_arg(p)  # --no-progress (old name: --quiet)
    add_overwrite_arg(p)
    p.set_defaults(func=_cmd_demo)
