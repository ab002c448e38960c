"""``focalnet visualize``: gating maps, modulator and focal kernels of a FocalNet on some images.

Writes to ``--out``: ``NN_<name>_gates.png`` and ``NN_<name>_modulator.png`` per image, ``grid.png``
(all images), ``kernels.png`` (stages x levels), ``maps.npz`` (raw arrays) and ``index.html``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads when the command runs: `focalnet visualize --help` needs none
    import torch

__all__ = ["register", "visualize_images", "prepare_images", "top_classes"]


def _safe_stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)[:40] or "image"


def _load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str, list[str]]:
    from .factory import create_model, model_from_checkpoint

    notes: list[str] = []
    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint), f"checkpoint {args.checkpoint}", notes
    from .models import get_variant

    get_variant(args.model)  # an unknown name fails here, before any note about the weights
    if args.pretrained:  # released weights asked for: never fall back to random ones (exit 2, like classify)
        return create_model(args.model, pretrained=args.pretrained), f"released {args.model} weights", notes
    msg = f"RANDOMLY INITIALISED {args.model}: these maps show an untrained network (use --pretrained or --checkpoint)"
    notes.append(msg)
    print(f"warning: {msg}", file=sys.stderr)
    return create_model(args.model), f"randomly initialised {args.model}", notes


def prepare_images(
    model: torch.nn.Module, images: Sequence[Any], size: int | None = None
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """The evaluation input of PIL ``images`` as the model's ``pretrained_cfg`` says (resize, centre crop
    to ``size`` or the model's input size, mean/std): ``(batch NCHW, the crops as arrays)``."""
    from . import visualize as viz
    from .classification.evaluate import fit_channels
    from .models.focalnet import PretrainedCfg

    pc = getattr(model, "pretrained_cfg", None) or PretrainedCfg()
    crop = size or pc.input_size[-1]
    crops = [viz.center_crop(img, crop, pc.crop_pct, pc.interpolation) for img in images]
    mean, std = fit_channels(pc.mean, model), fit_channels(pc.std, model)
    import torch

    return torch.stack([viz.image_to_tensor(c, mean, std) for c in crops]), [np.asarray(c) for c in crops]


def top_classes(model: torch.nn.Module, output: Any, topk: int = 5) -> list[list[dict[str, Any]]]:
    """Per image, the ``topk`` classes of a classifier's ``output`` logits: ``[{"class", "index", "prob"}]``
    (class names stored with the model, else ImageNet's); empty for a model without a head."""
    from .classification.predict import class_labels
    from .models.focalnet import FocalNet

    if not isinstance(model, FocalNet) or model.num_classes <= 0:
        return []
    names = class_labels(getattr(model, "class_names", None), model.num_classes)
    top = output.softmax(-1).topk(min(topk, output.shape[-1]))
    return [
        [{"class": names[j], "index": int(j), "prob": float(v)} for v, j in zip(vals, idx)]
        for vals, idx in zip(top.values.tolist(), top.indices.tolist())
    ]


def visualize_images(
    model: torch.nn.Module,
    image_paths: list[str],
    out: Path,
    *,
    stage: int = -1,
    block: int = -1,
    size: int | None = None,
    topk: int = 5,
    weights: str = "",
    notes: list[str] | None = None,
    untrained: bool = False,
) -> dict[str, Any]:
    """Preprocess ``image_paths`` as the model's ``pretrained_cfg`` says (``size`` overrides the crop
    size), run the model with hooks on ``(stage, block)`` and write the figures, ``maps.npz`` and
    ``index.html`` to ``out``. Returns ``{"predictions", "files"}``. ``untrained``: the weights are random,
    and every figure says so in a banner across its top."""
    from PIL import Image

    from . import visualize as viz
    from . import visualize_page as page
    from .engine.images import open_image
    from .models.focalnet import PretrainedCfg

    model.eval()
    in_chans = model.cfg.in_chans
    pil, stems = [], []
    for p in image_paths:
        try:
            pil.append(open_image(p, "L" if in_chans == 1 else "RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {p}: {e}") from e
        stems.append(_safe_stem(p))
    x, images = prepare_images(model, pil, size)
    pc = getattr(model, "pretrained_cfg", None) or PretrainedCfg()
    crop = x.shape[-1]
    s, b = viz.resolve_block(model, stage, block)
    maps, output = viz.modulation_maps(model, x, s, b)
    predictions = [{"image": p, "top": top} for p, top in zip(image_paths, top_classes(model, output, topk))]

    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []
    where = viz.maps_location(maps)
    for i, (img, stem) in enumerate(zip(images, stems)):
        label = Path(image_paths[i]).name
        if predictions:
            t = predictions[i]["top"][0]
            label += f" -> {t['class']} ({100 * t['prob']:.1f}%)"
        g, m = f"{i:02d}_{stem}_gates.png", f"{i:02d}_{stem}_modulator.png"
        viz.plot_gates(img, maps, i, out / g, title=f"{label}\nGating maps - {where}")
        viz.plot_modulator(img, maps, i, out / m, title=f"{label}\nModulator - {where}")
        figures += [
            (g, f"{label}: raw gating maps per focal level and the global gate."),
            (m, f"{label}: modulator norm, upsampled to the image and min-max normalised."),
        ]
    labels = [Path(p).name for p in image_paths]
    viz.plot_grid(images, maps, labels, out / "grid.png")
    viz.plot_kernels(model, path=out / "kernels.png")
    figures = [("grid.png", "All images: modulator norm and gating maps.")] + figures
    figures.append(("kernels.png", "Channel-mean focal kernels of the last block of each stage (stages x levels)."))
    extra = {f"image{i}": a for i, a in enumerate(images)}
    if predictions:
        extra["probs"] = output.softmax(-1).numpy()
    if untrained:
        from .drawing import watermark

        for name in dict.fromkeys(f for f, _ in figures):  # each figure once
            png = out / name
            if png.exists():
                Image.fromarray(watermark(np.asarray(Image.open(png).convert("RGB")), above=True)).save(png)
    page.save_maps(out / "maps.npz", [maps], extra=extra)
    page.write_index(
        out,
        "FocalNet modulation maps",
        figures,
        predictions=predictions,
        info={
            "weights": weights,
            "block": f"{maps.name} ({where})",
            "input": f"{crop}x{crop}, crop_pct {pc.crop_pct}",
            "raw arrays": "maps.npz",
        },
        notes=notes or [],
    )
    return {"predictions": predictions, "files": sorted(p.name for p in out.iterdir())}


def _cmd_visualize(args: argparse.Namespace) -> int:
    from .engine.images import collect_images
    from .engine.outputs import OutputRule
    from .weights import PretrainedUnavailableError

    args.images = [str(p) for p in collect_images(args.images)]  # folders: their images, recursively, sorted
    # every file it writes, claimed before anything is read (focalnet.engine.outputs.OutputRule)
    rule = OutputRule("visualize", [*args.images, args.checkpoint], overwrite=args.overwrite)
    names = [f"{i:02d}_{_safe_stem(p)}_{k}.png" for i, p in enumerate(args.images) for k in ("gates", "modulator")]
    rule.claim([args.out / n for n in [*names, "grid.png", "kernels.png", "maps.npz", "index.html"]], args.out)
    try:
        model, weights, notes = _load_model(args)
    except PretrainedUnavailableError as e:  # asked for the released weights: never fall back to random
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = visualize_images(
        model,
        args.images,
        args.out,
        stage=args.stage,
        block=args.block,
        size=args.size,
        topk=args.topk,
        weights=weights,
        notes=notes,
        untrained=weights.startswith("randomly"),
    )
    rule.finish()
    for p in result["predictions"]:
        t = p["top"][0]
        print(f"{p['image']}: {t['class']} ({t['prob']:.1%})")
    print(f"wrote {len(result['files'])} files to {args.out} (open {args.out / 'index.html'})")
    return 0


def register(subparsers: Any) -> None:
    """Add ``focalnet visualize`` to the CLI."""
    from .engine.options import add_overwrite_arg

    p = subparsers.add_parser(
        "visualize",
        description="Gating maps, modulator and focal kernels of a FocalNet on images.",
    )
    p.add_argument("images", nargs="+", help="image files or folders (their images, recursively)")
    add_overwrite_arg(p)
    p.add_argument("--model", default="focalnet_tiny_srf", help="registered variant (default focalnet_tiny_srf)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", nargs="?", const=True, default=None, help="use released weights (optional tag)")
    src.add_argument("--checkpoint", help="any checkpoint that model_from_checkpoint reads (e.g. the demo's)")
    p.add_argument("--output", "--out", dest="out", type=Path, required=True, help="output folder")
    p.add_argument("--stage", type=int, default=-1, help="stage to show (0-based, negative from the end; default last)")
    p.add_argument("--block", type=int, default=-1, help="block within the stage (default last)")
    p.add_argument("--size", type=int, default=None, help="crop size (default: the model's input size)")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=_cmd_visualize)
