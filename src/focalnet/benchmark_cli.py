"""``focalnet benchmark`` on the command line: its parser, built without torch (``focalnet benchmark
--help`` answers at once), and the command, which imports :mod:`focalnet.benchmark` when it runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .lazy import module_constants

__all__ = ["register"]

ALL_PATHS, DEFAULT_PATHS, COMPILE_NOTE, KINDS = module_constants(
    "focalnet.benchmark", "ALL_PATHS", "DEFAULT_PATHS", "COMPILE_NOTE", "KINDS"
)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from . import benchmark as bench
    from .engine.distributed import resolve_device
    from .engine.files import write_json
    from .engine.options import json_file
    from .engine.outputs import OutputRule

    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        bad = sorted(set(kinds) - set(KINDS))
        if bad or not kinds:
            raise ValueError(f"unknown kinds {bad}; choose from {','.join(KINDS)}")
        log = (lambda s: None) if args.no_progress else print
        res = bench.run_kinds_benchmark(
            kinds, tiny=args.tiny, threads=args.threads, reps=args.reps, min_time=args.min_time, log=log
        )
        print(bench.format_kinds_table(res))
        return 0
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = set(paths) - set(ALL_PATHS)
    if bad:
        raise ValueError(f"unknown paths {sorted(bad)}; choose from {','.join(ALL_PATHS)}")
    if args.reps < 1:
        raise ValueError(f"--reps must be at least 1, got {args.reps}")
    device = resolve_device(args.device)  # no GPU: the one message of every command
    legacy = json_file(args)
    targets = [t for t in (legacy, Path(args.output) / "benchmark.json" if args.output else None) if t]
    rule = OutputRule("benchmark", [], overwrite=False)
    if targets:
        rule.claim(targets, what="--output")  # before hours of timing
    res = bench.run_benchmark(
        args.model,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        train_batch=args.train_batch,
        img_size=args.img_size,
        threads=args.threads,
        reps=args.reps,
        warmup=args.warmup,
        min_time=args.min_time,
        paths=paths,
        train=not args.no_train,
        compile_train=args.compile_train,
        device=device,
        log=(lambda s: None) if args.no_progress or args.json is True else print,
    )
    print(json.dumps(res, indent=2) if args.json is True else bench.format_table(res))
    for target in targets:
        write_json(target, res)
        if args.json is not True:
            print(f"wrote {target}")
    rule.finish()
    json_file(args, note=True)  # the old --json FILE: a note that it goes
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``focalnet benchmark``."""
    from .engine.options import add_device_arg, add_json_arg, add_progress_arg, add_threads_arg

    p = subparsers.add_parser("benchmark")
    p.add_argument("--model", default="focalnet_tiny_srf")
    p.add_argument("--batch-sizes", default="1,32", help="comma-separated inference batch sizes")
    p.add_argument("--train-batch", type=int, default=16, help="batch of the timed training step")
    p.add_argument("--img-size", type=int, default=224)
    add_threads_arg(p)
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions of every measurement (default 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per repetition and path (at least)")
    p.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help=f"subset of {','.join(ALL_PATHS)} (default {','.join(DEFAULT_PATHS)}; {COMPILE_NOTE})",
    )
    p.add_argument(
        "--kinds",
        default=None,
        help=f"comma-separated subset of {','.join(KINDS)}: ONNX Runtime vs eager vs fused per model kind instead",
    )
    p.add_argument("--tiny", action="store_true", help="with --kinds: tiny models and 96x128 images (a quick check)")
    p.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    p.add_argument("--compile-train", action="store_true", help="also time a compiled training step")
    add_device_arg(p)
    add_json_arg(p, "DIR/benchmark.json")
    p.add_argument("--output", "--out", dest="output", metavar="DIR", help="folder for benchmark.json")
    add_progress_arg(p)  # --no-progress (old name: --quiet)
    p.set_defaults(func=_cmd_benchmark)
