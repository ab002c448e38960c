"""``focalnet app``: the local web app (Gradio, the optional ``[app]`` extra, imported only here)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]

INSTALL_HINT = "pip install -e '.[app]'"


def _cmd_app(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(f"error: `focalnet app` needs Gradio, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from ..engine.distributed import resolve_device
    from ..weights import PretrainedUnavailableError
    from . import core
    from .guard import Guard, OneLineTracebacks, TempFiles
    from .ui import build_app, launch_kwargs

    if args.allow_load is not None and not Path(args.allow_load).is_dir():
        print(f"error: --allow-load {args.allow_load}: not a folder", file=sys.stderr)
        return 2
    device = resolve_device(args.device)  # no GPU: the one message of every command
    try:
        models = core.load_models(
            args.checkpoint or [],
            model_name=args.model or ("focalnet_tiny_srf" if args.pretrained else None),
            pretrained=args.pretrained,
            train_demo=not args.no_train,
            device=device,
        )
    except PretrainedUnavailableError as e:  # asked for the released weights: never fall back to random
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind in core.KINDS:
        loaded = models.get(kind)
        print(f"{core.tab_name(kind)}: {loaded.source if loaded else 'no model (load one in the page)'}")
    scratch = Path(tempfile.mkdtemp(prefix="focalnet-app-"))  # examples, raw maps and (by default) uploads
    uploads = os.environ.get("GRADIO_TEMP_DIR") or str(scratch / "uploads")
    os.environ["GRADIO_TEMP_DIR"] = uploads  # this app's own upload folder, not one shared with other apps
    examples = core.write_examples(scratch / "examples")
    guard = Guard([uploads, scratch / "examples"], int(args.max_upload_mb * 2**20), args.allow_load)
    temp = TempFiles(scratch / "maps")
    temp.folder.mkdir()
    app, theme = build_app(models, examples, device, guard=guard, temp=temp)
    kwargs = launch_kwargs(args.host, args.port, theme)
    kwargs["max_file_size"] = f"{args.max_upload_mb:g}mb"
    try:
        app.queue().launch(prevent_thread_lock=True, **kwargs)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if not getattr(args, "debug", False):  # a hostile request is one line in the terminal, not a traceback
        sys.stderr = OneLineTracebacks(sys.stderr)
    url = f"http://{args.host}:{app.server_port}/"
    print(f"FocalNet app ready in {time.perf_counter() - t0:.1f} s: open {url}  (Ctrl+C to stop)", flush=True)
    try:  # not app.block_thread(): it swallows Ctrl-C, which ends this command as every other (exit 130)
        while app.is_running:
            time.sleep(0.1)
    finally:
        app.close()
        temp.clear()
        shutil.rmtree(scratch, ignore_errors=True)  # the uploads of a user-given GRADIO_TEMP_DIR are left
    return 0


def _positive_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be a number of megabytes from 0 to 10000, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    """Add ``focalnet app`` to the CLI (Gradio is imported only when the command runs)."""
    from ..engine.options import add_device_arg

    p = subparsers.add_parser(
        "app",
        help="local web app: the modulation maps, classification, detection and segmentation of your images",
        description="A local web app (Gradio, the optional extra: " + INSTALL_HINT + "): upload an image and see "
        "the top-5 classes, the gating maps of every focal level and of the global level, the modulator over "
        "the image and the learned kernels for a chosen block; detections with a score threshold; a "
        "segmentation overlay. Offline by default: without arguments it uses the newest model `focalnet demo` "
        "trained in runs/ (training one first when there is none).",
    )
    p.add_argument(
        "--checkpoint",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="checkpoints to serve, each in the tab of its kind: classifiers, detectors, segmentation models",
    )
    p.add_argument("--model", default=None, help="a registered classifier (see `focalnet models`), with --pretrained")
    p.add_argument(
        "--pretrained", nargs="?", const=True, default=None, metavar="TAG", help="the released weights of --model"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_device_arg(p, default="auto")
    p.add_argument(
        "--allow-load",
        metavar="DIR",
        default=None,
        help="let the page load checkpoints by path, only from under DIR (default: off; --checkpoint is the way)",
    )
    p.add_argument(
        "--max-upload-mb", type=_positive_mb, default=50.0, metavar="MB", help="largest upload accepted (default 50)"
    )
    p.add_argument("--no-train", action="store_true", help="without a demo model in runs/, start without a classifier")
    p.set_defaults(func=_cmd_app)
