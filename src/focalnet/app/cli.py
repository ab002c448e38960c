"""``focalnet app``: the local web app (Gradio, the optional ``[app]`` extra, imported only here)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
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
    import torch

    from ..weights import PretrainedUnavailableError
    from . import core
    from .ui import build_app, launch_kwargs

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
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
    examples = core.write_examples(tempfile.mkdtemp(prefix="focalnet-app-examples-"))
    app, theme = build_app(models, examples, device)
    app.queue().launch(prevent_thread_lock=True, **launch_kwargs(args.host, args.port, theme))
    url = f"http://{args.host}:{app.server_port}/"
    print(f"FocalNet app ready in {time.perf_counter() - t0:.1f} s: open {url}  (Ctrl+C to stop)", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


def register(subparsers: Any) -> None:
    """Add ``focalnet app`` to the CLI (Gradio is imported only when the command runs)."""
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-train", action="store_true", help="without a demo model in runs/, start without a classifier")
    p.set_defaults(func=_cmd_app)
