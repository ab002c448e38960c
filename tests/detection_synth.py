"""Generated COCO-format shape datasets for the detection tests (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]  # non-contiguous ids on purpose


def polygon_of(kind: str, x: float, y: float, s: float) -> list[float]:
    if kind == "square":
        return [x, y, x + s, y, x + s, y + s, x, y + s]
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    cx, cy, r = x + s / 2, y + s / 2, s / 2
    return [float(v) for p in zip(cx + r * np.cos(t), cy + r * np.sin(t)) for v in p]


def make_shapes(
    root: Path,
    n_images: int = 4,
    size: int = 128,
    seed: int = 0,
    split: str = "train",
    extra_annotations: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """Images of coloured squares and discs with polygon masks; returns (json, image folder)."""
    rng = np.random.default_rng(seed)
    img_dir = root / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n_images):
        h, w = size, size + 16 * (i % 2)  # mixed sizes
        im = Image.new("RGB", (w, h), (90, 90, 90))
        arr = np.asarray(im).astype(np.int16) + rng.integers(-12, 12, (h, w, 3))
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        placed: list[tuple[float, float, float]] = []
        for j in range(2):
            kind = ["square", "disc"][(i + j) % 2]
            for _ in range(50):
                s = float(rng.integers(36, 56))
                x, y = float(rng.integers(2, w - s - 2)), float(rng.integers(2, h - s - 2))
                if all(x + s < px or px + ps < x or y + s < py or py + ps < y for px, py, ps in placed):
                    break
            placed.append((x, y, s))
            poly = polygon_of(kind, x, y, s)
            draw.polygon(poly, fill=(230, 60, 40) if kind == "square" else (40, 200, 230))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 3 if kind == "square" else 7,
                    "bbox": [x, y, s, s],
                    "area": s * s,
                    "iscrowd": 0,
                    "segmentation": [poly],
                }
            )
        name = f"{i:04d}.png"
        im.save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    for a in extra_annotations or []:
        anns.append({"id": len(anns) + 1, "iscrowd": 0, "area": 1.0, **a})
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    ann_file = ann_dir / f"instances_{split}2017.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return ann_file, img_dir


def train_on_shapes(
    root: Path, config: dict[str, Any], steps: int, batch_size: int = 4, n_images: int = 4
) -> tuple[Path, int, str, str]:
    """Generate ``n_images`` shapes as both train and val split (fitting the training set is the point),
    then ``focalnet detection train`` on them with ``config`` for ``steps`` steps (seed 0).
    Returns ``(run folder, exit code, stdout, stderr)``."""
    import yaml

    from conftest import run_cli

    make_shapes(root, n_images, 128, split="train")
    make_shapes(root, n_images, 128, split="val")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = root / "run"
    rc, stdout, stderr = run_cli(
        "detection", "train", "--config", str(cfg), "--data", str(root), "--output", str(out),
        "--max-steps", str(steps), "--batch-size", str(batch_size), "--set", "seed=0",
    )  # fmt: skip
    return out, rc, stdout, stderr


def tiny_run_config(model: dict[str, Any], optim: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A detection run config for the tests' tiny models: a 4-block FocalNet (embed_dim 16, windows 3),
    FPN with 32 channels, 128-160 px images without the crop branch, lr 2e-3 after 10 warm-up steps;
    ``model``, ``optim`` and ``top`` (run-level keys) add or override fields."""
    return {
        "model": {
            "backbone": "focalnet_tiny_srf",
            "backbone_overrides": {"embed_dim": 16, "depths": [1, 1, 1, 1]},
            "focal_windows": [3, 3, 3, 3],
            "drop_path_rate": 0.0,
            "fpn_channels": 32,
            "min_size": 128,
            "max_size": 160,
            **model,
        },
        "data": {"scales": [128], "max_size": 160, "crop_branch": False, "num_workers": 0},
        "optim": {"lr": 2e-3, "warmup_steps": 10, "lr_steps": [0.8, 0.95], **(optim or {})},
        "epochs": 1,
        "log_every": 1000,
        "progress": False,
        **top,
    }


# the head of a tiny version of each detector (ModelConfig fields on top of tiny_run_config's backbone);
# what no file shows (DINO's and Sparse R-CNN's head counts) is at the released value, so that original
# layouts written from these models read back as the same model
_TINY_RPN = {
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 64,
}
TINY_HEADS: dict[str, dict[str, Any]] = {
    "mask_rcnn": {"representation_size": 128, "mask_head_channels": 32, "detector_overrides": _TINY_RPN},
    "faster_rcnn": {"representation_size": 128, "detector_overrides": _TINY_RPN},
    "cascade_mask_rcnn": {
        "representation_size": 128,
        "mask_head_channels": 16,
        "detections_per_img": 20,
        "detector_overrides": {**_TINY_RPN, "box_num_convs": 1},
    },
    "atss": {"detector_overrides": {"stacked_convs": 2, "gn_groups": 8}},
    "sparse_rcnn": {
        "score_thresh": 0.0,
        "detector_overrides": {
            "num_proposals": 16,
            "num_stages": 2,
            "num_heads": 8,
            "feedforward_channels": 64,
            "dynamic_channels": 8,
        },
    },
    "dino": {
        "dino": {
            "num_feature_levels": 4,
            "hidden_dim": 64,
            "nheads": 8,
            "dim_feedforward": 128,
            "enc_layers": 1,
            "dec_layers": 2,
            "num_queries": 30,
            "num_select": 30,
            "dn_number": 20,
        }
    },
}


def tiny_config(detector: str, optim: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """:func:`tiny_run_config` for a tiny ``detector`` (the heads of :data:`TINY_HEADS`)."""
    return tiny_run_config({"detector": detector, **TINY_HEADS[detector]}, optim, **top)
