"""``focalnet classification train|evaluate|predict|throughput|configs``: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..engine.options import (
    FlagTable,
    add_device_arg,
    add_json_arg,
    add_shared_options,
    config_from_args,
    json_file,
    off,
    raise_if_interrupted,
)

__all__ = ["register"]


def _pretrained_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--pretrained", nargs="?", const="default", default=None, metavar="TAG", help=help_text)


# training flags -> config keys (the shared options of engine.options included)
TRAIN_FLAGS: FlagTable = {
    "data": "data.path",
    "output": "output_dir",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "accum_steps": "train.accum_steps",
    "img_size": "data.img_size",
    "lr": "train.base_lr",
    "checkpoint": "model.checkpoint",
    "pretrained": "model.pretrained",
    "workers": "data.num_workers",
    "amp": "train.amp",
    "device": "train.device",
    "no_progress": off("train.progress"),
    "max_images": "eval.max_images",
    "eval_every": ("train.eval_every_epochs", "train.eval_every_steps"),
    "no_eval": off("eval.enabled"),
}


def register(subparsers: Any) -> None:
    """Add the ``classification`` subcommand to the ``focalnet`` parser."""
    p = subparsers.add_parser("classification")
    sub = p.add_subparsers(dest="cls_command", required=True)

    t = sub.add_parser("train", help="train or fine-tune with the paper's recipe (works under torchrun)")
    t.add_argument("--model", help="registered model name; its bundled recipe is used unless --config is given")
    t.add_argument("--config", help="bundled recipe name (see `focalnet classification configs`) or YAML file")
    t.add_argument("--data", help="ImageFolder root with train/<class>/* and val/<class>/*")
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int, help="iteration-based run: number of optimizer updates")
    t.add_argument("--batch-size", type=int, help="per process")
    t.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    t.add_argument("--img-size", type=int)
    t.add_argument("--lr", type=float, help="base lr for a total batch of 512 (scaled by total batch / 512)")
    t.add_argument("--checkpoint", help="fine-tune from this checkpoint (any layout; new head if classes differ)")
    _pretrained_arg(t, "fine-tune from the released weights (optional tag: ms_in1k, ms_in22k)")
    t.add_argument("--workers", type=int, help="data loader workers per process")
    t.add_argument("--amp", choices=["auto", "none", "bf16", "fp16"])
    add_shared_options(t, "train")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="top-1/top-5, loss, per-class accuracy, confusion matrix")
    e.add_argument("--checkpoint", help="model.safetensors, checkpoint-*.pt, or any file model_from_checkpoint reads")
    e.add_argument("--model", help="registered model name (with --pretrained)")
    _pretrained_arg(e, "use the released weights of --model (optional tag)")
    e.add_argument("--data", required=True, help="ImageFolder root (uses DATA/<split> when it exists)")
    e.add_argument("--split", default="val")
    e.add_argument("--img-size", type=int, help="evaluation size (default: the model's)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=2, help="data loader workers (at most the cores)")
    e.add_argument(
        "--head-subset",
        choices=["none", "in1k"],
        default="none",
        help="in1k: score a 22K model on ImageNet-1K classes through its first 1,000 outputs",
    )
    e.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    e.add_argument("--max-per-class", type=int, default=0, help="only the first N images of each class")
    e.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_shared_options(e, "evaluate")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="top-k classes of images or folders of images")
    r.add_argument("images", nargs="+", help="image files or folders")
    r.add_argument("--checkpoint")
    r.add_argument("--model")
    _pretrained_arg(r, "use the released weights of --model (optional tag)")
    r.add_argument("--topk", type=int, default=5)
    r.add_argument("--img-size", type=int)
    r.add_argument("--head-subset", choices=["none", "in1k"], default="none")
    r.add_argument("--ema", action="store_true")
    r.add_argument("--batch-size", type=int, default=16)
    add_json_arg(r, "DIR/predictions.json")
    add_shared_options(r, "predict")
    r.set_defaults(func=cmd_predict)

    h = sub.add_parser("throughput", help="inference images/s like the paper's table (warm-up, median of runs)")
    h.add_argument("--model", required=True)
    h.add_argument("--batch-size", type=int, default=128)
    h.add_argument("--img-size", type=int, default=224)
    h.add_argument("--warmup", type=int, default=3)
    h.add_argument("--runs", type=int, default=10)
    add_device_arg(h, default="auto")
    h.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    h.add_argument("--channels-last", action="store_true")
    add_json_arg(h, "DIR/throughput.json")
    h.add_argument("--output", "--out", dest="output", metavar="DIR", help="folder for throughput.json")
    h.set_defaults(func=cmd_throughput)

    c = sub.add_parser("configs", help="list the bundled recipes, or print one resolved")
    c.add_argument("name", nargs="?")
    c.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="overrides")
    c.set_defaults(func=cmd_configs)


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine import cleanup_distributed, fit_workers, set_threads
    from .config import load_classification_config
    from .train import train

    config = args.config
    if config is None and args.model is None:
        saved = Path(args.output) / "config.yaml"
        if args.resume and saved.exists():
            config = str(saved)  # resuming a run: its resolved config
        elif args.resume == "auto":
            raise ValueError(
                f"no checkpoint in {args.output} (no {saved.name} of an earlier run there) to resume; "
                "to start a run give --model NAME or --config FILE"
            )
        else:
            raise ValueError("give --model NAME (its bundled recipe) or --config FILE")
    cfg = config_from_args(
        args,
        TRAIN_FLAGS,
        lambda c, overrides, values: load_classification_config(c, overrides, model=args.model, values=values),
        config=config,
    )
    if args.dry_run:
        from .train import dry_run

        return dry_run(cfg)
    set_threads(args.threads, workers=fit_workers(cfg.data.num_workers))
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    finally:
        cleanup_distributed()
    raise_if_interrupted(result, cfg.output_dir)  # exit 130 on every rank, as every interrupted command
    if os.environ.get("RANK", "0") != "0":
        return 0
    if "top1" in result:
        print(
            f"final: top1 {result['top1']:.2f}%  top5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
            f"-> {Path(str(cfg.output_dir)) / 'metrics.json'}"
        )
    return 0


def _pretrained(args: argparse.Namespace) -> bool | str | None:
    """The weights an evaluate/predict command asked for: ``--checkpoint C`` or ``--model NAME [--pretrained]``."""
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give either --checkpoint C or --model NAME --pretrained")
    if args.model is not None and args.pretrained is None:
        print(f"warning: {args.model} without --pretrained is RANDOMLY INITIALISED", file=sys.stderr)
    return True if args.pretrained == "default" else args.pretrained


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine import cleanup_distributed
    from ..engine.outputs import OutputRule
    from .evaluate import evaluate

    pre = _pretrained(args)
    rule = OutputRule("classification evaluate", [args.checkpoint, args.data], overwrite=args.overwrite)
    if args.output and os.environ.get("RANK", "0") == "0":  # before anything runs (rank 0 writes)
        out = Path(args.output)
        rule.claim([out / "metrics.json", out / "confusion_matrix.json"], out, what="--output")
    try:
        m = evaluate(
            args.checkpoint,
            data=args.data,
            model_name=args.model,
            pretrained=pre,
            split=args.split,
            img_size=args.img_size,
            batch_size=args.batch_size,
            num_workers=args.workers,
            head_subset=args.head_subset,
            use_ema=args.ema,
            max_per_class=args.max_per_class,
            max_images=args.max_images or 0,
            output_dir=args.output,
            device=args.device or "auto",
            amp=args.amp,
            progress=not args.no_progress,
        )
    finally:
        cleanup_distributed()
    if os.environ.get("RANK", "0") != "0":
        return 0
    rule.finish()
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "confusion_matrix"}, indent=2))
        return 0
    print(f"{m['checkpoint']} on {m['data']} ({m['num_images']} images, {m['img_size']} px)")
    print(f"top1 {m['top1']:.2f}%  top5 {m['top5']:.2f}%  loss {m['loss']:.4f}  {m['images_per_second']:.1f} img/s")
    if len(m["per_class_accuracy"]) <= 50:
        for name, acc in m["per_class_accuracy"].items():
            print(f"  {name:<30} {'-' if acc is None else f'{acc:6.2f}%'}")
    if m["skipped_images"]:
        print(f"skipped {m['skipped_images']} unreadable image(s): {', '.join(m['skipped_files'])}")
    if args.output:
        print(f"wrote {Path(args.output) / 'metrics.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..engine import resolve_device, write_json
    from ..engine.outputs import OutputRule
    from .evaluate import load_classifier
    from .predict import collect_images, predict

    pre = _pretrained(args)
    device = resolve_device(args.device)  # no GPU: the one message, before anything is read
    images = collect_images(args.images)
    # before anything is read: no output replaces an input (images, checkpoint), a run's files, or a file
    # this command did not write (--overwrite)
    rule = OutputRule("classification predict", [*images, args.checkpoint], overwrite=args.overwrite)
    legacy = json_file(args)
    if legacy:
        rule.claim([legacy], what="--json")
    if args.output:
        rule.claim([Path(args.output) / "predictions.json"], args.output, what="--output")
    if args.checkpoint and str(args.checkpoint).endswith(".onnx"):  # a `focalnet export` file, on ONNX Runtime
        from .export import load_onnx_classifier

        loaded = load_onnx_classifier(args.checkpoint)
    else:
        loaded = load_classifier(args.checkpoint, model_name=args.model, pretrained=pre, use_ema=args.ema)
    results = predict(
        loaded,
        images,
        topk=args.topk,
        img_size=args.img_size,
        head_subset=args.head_subset,
        batch_size=args.batch_size,
        device=device,
    )
    payload = {"weights": loaded.source, "results": results}
    if args.json is True:
        print(json.dumps(payload, indent=2))
    for r in results if args.json is not True else []:  # the table, also with the old --json FILE
        print(f"\n{r['image']}")
        if "error" in r:
            print(f"  error: {r['error']}")
            continue
        for p in r["top"]:
            print(f"  {p['prob']:7.2%}  {p['class']}")
    if legacy:
        write_json(legacy, payload)
        json_file(args, note=True)  # the old --json FILE: a note that it goes
    if args.output:
        write_json(Path(args.output) / "predictions.json", payload)
    rule.finish()
    failed = sum("error" in r for r in results)
    if failed and failed == len(results):
        print(f"error: none of the {failed} input image(s) could be read", file=sys.stderr)
        return 1
    return 0


def cmd_throughput(args: argparse.Namespace) -> int:
    from ..engine import resolve_device, write_json
    from ..engine.outputs import OutputRule
    from .throughput import measure_throughput

    device = resolve_device(args.device)  # no GPU: the one message, before anything is built
    rule = OutputRule("classification throughput", [], overwrite=False)
    legacy = json_file(args)
    targets = [t for t in (legacy, Path(args.output) / "throughput.json" if args.output else None) if t]
    if targets:
        rule.claim(targets, what="--output")
    r = measure_throughput(
        args.model,
        batch_size=args.batch_size,
        img_size=args.img_size,
        device=device,
        warmup=args.warmup,
        runs=args.runs,
        amp=args.amp,
        channels_last=args.channels_last,
    )
    line = (
        f"{r['model']}: {r['images_per_second']:.1f} images/s (median of {r['runs']}, batch {r['batch_size']}, "
        f"{r['img_size']} px, {r['amp'] if r['amp'] != 'none' else 'fp32'}, {r['device']})"
    )
    if "paper_v100_images_per_second" in r:
        line += f"; paper (V100, batch 128, fp32): {r['paper_v100_images_per_second']}"
    print(json.dumps(r, indent=2) if args.json is True else line)
    for target in targets:
        write_json(target, r)
    rule.finish()
    json_file(args, note=True)  # the old --json FILE: a note that it goes
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    import yaml

    from ..engine import config_to_dict
    from .config import list_configs, load_classification_config

    if args.name is None:
        for n in list_configs():
            print(n)
        return 0
    cfg = load_classification_config(args.name, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0
