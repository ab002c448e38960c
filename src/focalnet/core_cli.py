"""The core commands of ``focalnet``: ``models``, ``info``, ``convert``, ``classify`` (a thin layer over the
Python API; the other commands live in their packages, see :data:`focalnet.cli.COMMANDS`)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

__all__ = ["cmd_classify", "cmd_convert", "cmd_info", "cmd_models", "register"]


def _original_layout(ckpt: Any) -> dict[str, Any]:
    """The state dict of a read checkpoint in the original FocalNet layout."""
    from .weights import convert_state_dict

    return convert_state_dict(ckpt.state_dict, to="original", source=ckpt.layout)


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def cmd_models(args: argparse.Namespace) -> int:
    from .models import VARIANTS, count_flops

    rows, records = [], []
    for name, v in VARIANTS.items():
        if args.filter and args.filter not in name:
            continue
        params = _count_params(v.cfg)
        flops = count_flops(v.cfg, v.input_size)
        rec = {
            "name": name,
            "params_m": round(params / 1e6, 2),
            "gflops": round(flops / 1e9, 2),
            "resolution": v.input_size,
            "num_classes": v.cfg.num_classes,
            "top1": v.top1,
            "pretrained": list(v.tags),
        }
        records.append(rec)
        rows.append(
            [
                name,
                f"{params / 1e6:.1f}",  # from the count, not from params_m (88.148 -> 88.15 -> 88.2)
                f"{flops / 1e9:.1f}",
                str(v.input_size),
                str(v.cfg.num_classes),
                "-" if v.top1 is None else f"{v.top1:.1f}",
                ",".join(v.tags),
            ]
        )
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        _print_table(rows, ["model", "params(M)", "GFLOPs", "res", "classes", "top1", "pretrained tags"])
    return 0


def _count_params(cfg) -> int:
    import torch

    from .models import FocalNet, num_params

    with torch.device("meta"):
        return num_params(FocalNet(cfg))


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from .factory import checkpoint_config
    from .models import FocalNet, FocalNetBackbone, match_variant
    from .weights import read_checkpoint
    from .weights.infer import check_finite, check_state_dict

    ckpt = read_checkpoint(args.checkpoint, allow_nonfinite=True)  # info reports broken weights
    try:
        check_finite(ckpt.state_dict, ckpt.path, allow=False)
        finite = "all weights finite"
    except ValueError as e:
        finite = str(e)
    sd = _original_layout(ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg, out_indices = checkpoint_config(ckpt, sd)
    variant = match_variant(cfg)
    with torch.device("meta"):
        model = FocalNet(cfg) if out_indices is None else FocalNetBackbone(cfg, out_indices=out_indices)
    try:
        check_state_dict(model.state_dict(), sd)
        fit = "all keys match"
    except ValueError as e:
        fit = str(e)
    info = {
        "path": ckpt.path,
        "container": ckpt.file_format,
        "layout": ckpt.layout,
        "detection_or_segmentation_file": ckpt.backbone_prefix,
        "num_tensors": len(ckpt.state_dict),
        "num_params": int(sum(v.numel() for v in ckpt.state_dict.values())),
        "variant": variant.name if variant else None,
        "config": cfg.to_dict(),
        "fit": fit,
        "finite": finite,
        "notes": [str(w.message) for w in caught],
        "ignored_prefixes": ckpt.extra.get("ignored_prefixes", []),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if k == "config":
                print("config:")
                for ck, cv in v.items():
                    print(f"    {ck}: {cv}")
            else:
                print(f"{k}: {v}")
    return 0


_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a checkpoint; timm/transformers outputs are model folders those libraries load."""
    from .engine.outputs import OutputRule
    from .factory import checkpoint_config, model_from_checkpoint, save_model
    from .weights import convert_state_dict, read_checkpoint
    from .weights.io import atomic_save, save_safetensors

    out = Path(args.output)
    folder = args.to in ("timm", "transformers") and out.suffix not in _FILE_SUFFIXES  # a model folder
    rule = OutputRule("convert", [args.input], overwrite=args.overwrite)
    # before any work: `convert IN IN` keeps IN; nor is a run's or another command's file replaced
    rule.claim([out / "model.safetensors", out / "config.json"] if folder else [out], out if folder else None)
    if args.to == "safetensors":
        model = model_from_checkpoint(args.input)
        save_model(model, out)
        rule.finish()
        print(f"wrote {out} (safetensors with the model config)")
        return 0
    ckpt = read_checkpoint(args.input)
    sd = _original_layout(ckpt)
    cfg, out_indices = checkpoint_config(ckpt, sd)
    names = ckpt.extra.get("class_names")
    if args.to == "original":
        meta: dict = {"focalnet_config": cfg.to_dict()}  # read back by focalnet info / model_from_checkpoint
        if names:
            meta["class_names"] = list(names)
        if out.suffix == ".safetensors":
            save_safetensors(sd, out, {"format": "focalnet", **meta})
        else:
            atomic_save({"model": sd, **meta}, out)
        rule.finish()
        print(f"wrote {out} (original layout, with the model config)")
        return 0
    if out_indices is not None:
        raise ValueError(
            f"{args.input} is a detection/segmentation backbone: {args.to} has no such model (use --to original)"
        )
    converted = convert_state_dict(sd, to=args.to, source="original", use_postln=cfg.use_postln)
    if out.suffix in _FILE_SUFFIXES:  # a bare state dict, as before; a folder keeps the configuration
        if out.suffix == ".safetensors":
            save_safetensors(converted, out, {"format": "pt"})
        else:
            atomic_save(converted, out)
        rule.finish()
        print(f"wrote {out} ({args.to} layout, bare state dict; give a folder name for a loadable model folder)")
        return 0
    from .weights.export import timm_config, transformers_config

    config = transformers_config(cfg, names) if args.to == "transformers" else timm_config(cfg, names)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(converted, out / "model.safetensors", {"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    rule.finish()
    how = (
        f"transformers.FocalNetForImageClassification.from_pretrained({str(out)!r})"
        if args.to == "transformers"
        else f"timm.create_model('local-dir:{out}', pretrained=True)"
    )
    print(f"wrote {out}/ (config.json + model.safetensors, {args.to} layout): load with {how}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """Classify images with a FocalNet (default: a sample photo shipped with scikit-image)."""
    import torch
    from PIL import Image

    from .classification.evaluate import fit_channels, image_mode
    from .classification.predict import class_labels
    from .engine.images import collect_images
    from .engine.options import json_file
    from .engine.outputs import OutputRule
    from .factory import create_model, model_from_checkpoint
    from .models import FocalNet

    if args.checkpoint and args.pretrained:  # as `classification train` refuses the pair
        raise ValueError("give --checkpoint FILE or --pretrained (the released weights of --model), not both")
    paths = [str(p) for p in collect_images(args.images)] if args.images else []  # folders: their images
    rule = OutputRule("classify", [*paths, args.checkpoint], overwrite=args.overwrite)
    legacy = json_file(args)  # before anything is read
    if legacy:
        rule.claim([legacy], what="--json")
    if args.output:
        rule.claim([Path(args.output) / "predictions.json"], args.output, what="--output")
    if args.checkpoint:
        model = model_from_checkpoint(args.checkpoint)
        if not isinstance(model, FocalNet):  # a detection/segmentation file gives a backbone: no classes
            from .weights.kind import wrong_kind

            raise ValueError(wrong_kind(args.checkpoint, "classification") or f"{args.checkpoint} has no classifier")
        weights = f"checkpoint {args.checkpoint}"
    else:
        from .models import get_variant

        get_variant(args.model)  # an unknown name fails here, before anything else is said
        # asked for the released weights and they cannot be had: an error, never a fall back to random ones
        model = create_model(args.model, pretrained=args.pretrained or False)
        if args.pretrained:
            weights = f"released {args.model} weights"
        else:
            weights = f"RANDOMLY INITIALISED {args.model} (no pretrained weights: predictions are meaningless)"
    model.eval()
    mode = image_mode(model)
    images: list[tuple[str, Image.Image]] = []
    if paths:
        from .engine.images import open_image

        for p in paths:
            try:
                images.append((p, open_image(p, mode)))
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read image {p}: {e}") from e
    else:
        from skimage import data

        images.append(("skimage.data.chelsea (a cat)", Image.fromarray(data.chelsea()).convert(mode)))
    from timm.data import create_transform

    pc = model.pretrained_cfg
    tf = create_transform(
        input_size=pc.input_size,
        interpolation=pc.interpolation,
        crop_pct=pc.crop_pct,
        mean=fit_channels(pc.mean, model),
        std=fit_channels(pc.std, model),
    )
    # the labels `classification predict` prints: stored names (wnids with their description), else ImageNet's
    names = class_labels(getattr(model, "class_names", None), model.num_classes)
    text = args.json is False
    if text:
        print(f"weights: {weights}")
    results = []
    with torch.no_grad():
        for label, img in images:
            probs = model(tf(img).unsqueeze(0)).softmax(-1)[0]
            top = probs.topk(min(args.topk, probs.numel()))
            preds = [
                {"class": names[i], "index": int(i), "prob": float(p)}
                for p, i in zip(top.values.tolist(), top.indices.tolist())
            ]
            results.append({"image": label, "top": preds})
            if text:
                print(f"\n{label}")
                for r in preds:
                    print(f"  {r['prob']:6.2%}  {r['class']}")
    payload = {"weights": weights, "results": results}
    if args.json is True:
        print(json.dumps(payload, indent=2))
    from .engine.files import write_json

    for target in [legacy, Path(args.output) / "predictions.json" if args.output else None]:
        if target:
            write_json(target, payload)
    rule.finish()
    json_file(args, note=True)  # the old --json FILE: a note that it goes
    return 0


def register(subparsers: Any) -> None:
    """Add ``models``, ``info``, ``convert`` and ``classify`` to the ``focalnet`` parser (their one-line help
    is in :data:`focalnet.cli.COMMANDS`)."""
    from .engine.options import add_json_arg, add_overwrite_arg

    p = subparsers.add_parser(
        "models",
        description="The 15 released FocalNet variants: parameters, FLOPs, resolution, classes, ImageNet top-1 "
        "and the tags of their released weights (for --pretrained TAG).",
    )
    p.add_argument("--filter", default="", help="only the names containing this substring, e.g. tiny")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser(
        "info",
        description="Read a checkpoint (original .pth, timm/transformers files or folders, our .safetensors, "
        "detection/segmentation files) without building anything: its container and key layout, the "
        "architecture read off its weights, the registered variant it matches and whether all keys fit.",
    )
    p.add_argument("checkpoint", help="a checkpoint file or model folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser(
        "convert",
        description="Convert a FocalNet checkpoint. --to transformers|timm with an OUTPUT folder writes "
        "config.json + model.safetensors that transformers' from_pretrained(OUTPUT) and "
        "timm.create_model('local-dir:OUTPUT', pretrained=True) load (an OUTPUT ending in .pth/.bin/.safetensors "
        "gets a bare state dict); --to original writes the original layout with the model config; "
        "--to safetensors writes our safetensors file (weights + config).",
    )
    p.add_argument("input", help="any checkpoint `focalnet info` reads")
    p.add_argument("output", help="output folder (timm, transformers) or file")
    p.add_argument(
        "--to",
        required=True,
        choices=["original", "timm", "transformers", "safetensors"],
        help="target layout",
    )
    add_overwrite_arg(p)
    p.set_defaults(func=cmd_convert)

    p = subparsers.add_parser(
        "classify",
        description="Top-k classes of images with a FocalNet: released weights (--pretrained; fails with exit "
        "code 2 when they cannot be had), any checkpoint (--checkpoint, e.g. the demo's), or random weights "
        "(said so). Without images: a sample photo of a cat shipped with scikit-image.",
    )
    p.add_argument("images", nargs="*", help="image files or folders (default: a scikit-image sample photo)")
    p.add_argument("--model", default="focalnet_tiny_srf", help="registered variant (see `focalnet models`)")
    p.add_argument(
        "--pretrained", nargs="?", const=True, default=None, metavar="TAG", help="use released weights (optional tag)"
    )
    p.add_argument("--checkpoint", help="any checkpoint that model_from_checkpoint reads")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image")
    add_json_arg(p, "DIR/predictions.json")
    p.add_argument("--output", "--out", dest="output", metavar="DIR", help="folder for predictions.json")
    add_overwrite_arg(p)
    p.set_defaults(func=cmd_classify)
