"""Every registered segmentor (focalnet.segmentation.registry.SEGMENTORS), tested from its spec: recipe
defaults, strict loading of each checkpoint layout, refusal of a file two layouts claim, the convert round
trip, and for the universal segmentors the command line of each task (train, evaluate, predict, pq).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from focalnet.engine import packaged_configs
from focalnet.segmentation import load_segmentation_config, load_segmentor, save_segmentor
from focalnet.segmentation.registry import SEGMENTORS, get_segmentor
from focalnet.segmentation.train import config_path
from panoptic_synth import CATEGORIES, write_synthetic_panoptic

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONE = {"embed_dim": 16, "depths": (1, 1, 1, 1), "focal_windows": (3, 3, 3, 3), "drop_path_rate": 0.0}
# the smallest head of each segmentor (a new segmentor adds one line)
TINY_HEAD = {
    "upernet": {"channels": 16, "aux_channels": 8},
    "mask2former": {
        "hidden_dim": 32,
        "num_queries": 6,
        "dec_layers": 2,
        "nheads": 4,
        "dim_feedforward": 32,
        "mask_dim": 32,
        "conv_dim": 32,
        "enc_layers": 1,
        "enc_heads": 4,
        "enc_dim_feedforward": 32,
    },
}
NAMES = ["sky", "ground", "disc"]


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = get_segmentor(name)
    model = spec.build("focalnet_tiny_lrf", len(NAMES), class_names=NAMES, head=TINY_HEAD[name], **BACKBONE)
    for p in model.parameters():  # away from the initialisation: a load that misses a tensor shows
        p.data.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.forward_logits(x) if hasattr(model, "forward_logits") else model(x)
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name", list(SEGMENTORS))
def test_recipe_defaults_are_the_builders_defaults(name):
    """The packaged recipe of each segmentor builds the model its builder builds by default."""
    spec = get_segmentor(name)
    cfg = load_segmentation_config(spec.recipe)
    assert cfg.model.segmentor == name
    assert cfg.task in spec.tasks
    head = getattr(cfg.model, spec.config_field)
    head = head if isinstance(head, dict) else {k: getattr(head, k) for k in spec.head_defaults}
    with torch.device("meta"):
        from_recipe = spec.build(cfg.model.backbone, 5, head=head, **cfg.model.backbone_overrides)
        default = spec.build(cfg.model.backbone, 5)
    assert from_recipe.meta["head"] == default.meta["head"]
    assert from_recipe.meta["backbone_config"] == default.meta["backbone_config"]
    assert {k: from_recipe.meta["backbone_overrides"][k] for k in spec.backbone_defaults} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in spec.backbone_defaults.items()
    }


@pytest.mark.parametrize(
    "recipe", [c for c in packaged_configs("segmentation") if re.match(r"mask2former_.*_coco_panoptic$", c)]
)
def test_mask2former_coco_recipes_are_the_reference_schedule(recipe):
    """AdamW 1e-4, weight decay 0.05, backbone lr x0.1, clip 0.01 on the whole model, poly, 16 images (2 per
    process on the 8 processes the recipe's usage line starts), 50 epochs; the builder's queries for the
    backbone (200 for L)."""
    from focalnet.segmentation.mask2former import default_num_queries

    cfg = load_segmentation_config(recipe)
    o, r = cfg.optim, cfg.train
    assert (o.lr, o.weight_decay, o.backbone_lr_mult, r.grad_clip, r.batch_size, r.epochs) == (
        1e-4,
        0.05,
        0.1,
        0.01,
        2,
        50,
    )
    assert "torchrun --nproc_per_node 8 " in config_path(recipe).read_text()  # 8 x 2 = 16 images an update
    assert o.power == 0.9 and cfg.task == "panoptic" and tuple(cfg.aug.crop_size) == (1024, 1024)
    assert cfg.model.mask2former["num_queries"] == default_num_queries(cfg.model.backbone)


def _layout_files(name: str, model: torch.nn.Module, tmp_path: Path) -> dict[str, Path]:
    """The model in our layout and in each of its spec's original layouts (a .pkl too for Mask2Former)."""
    spec = get_segmentor(name)
    ours = tmp_path / f"{name}.pt"
    save_segmentor(model, ours)
    files = {"focalnet": ours}
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for layout in spec.layouts:
        obj = spec.write(dict(model.meta), sd, {})
        assert layout.recognise(obj)
        files[layout.name] = tmp_path / f"{name}-{layout.name}.pth"
        torch.save(obj, files[layout.name])
        if name == "mask2former":  # the official model zoo's container: numpy arrays in a pickle
            files["model zoo .pkl"] = tmp_path / f"{name}.pkl"
            arrays = {k: v.numpy() for k, v in obj["model"].items()}
            with open(files["model zoo .pkl"], "wb") as f:
                pickle.dump({"model": arrays, "__author__": "test", "matching_heuristics": True}, f)
    return files


@pytest.mark.parametrize("name", list(SEGMENTORS))
def test_every_layout_loads_strictly_to_the_same_outputs(tmp_path, name):
    model = tiny(name)
    x = torch.randn(1, 3, 64, 48)
    ref = outputs(model, x)
    files = _layout_files(name, model, tmp_path)
    for layout, path in files.items():
        loaded, _ = load_segmentor(path)
        assert type(loaded) is type(model), layout
        for a, b in zip(outputs(loaded, x), ref):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=layout)
        if layout != "model zoo .pkl":  # the .pkl carries the weights only
            assert loaded.class_names == NAMES, layout
    for layout, path in files.items():  # one tensor missing: the strict load names it (the CLI sets threads)
        if path.suffix == ".pkl":
            continue
        obj = torch.load(path, weights_only=True)
        sd_key = next(k for k in ("state_dict", "model") if k in obj)
        victim = next(k for k in obj[sd_key] if "backbone.layers.0" in k)
        del obj[sd_key][victim]
        torch.save(obj, tmp_path / "broken.pt")
        rc, _, err = run_cli("segmentation", "convert", str(tmp_path / "broken.pt"), str(tmp_path / "x.pt"))
        assert rc == 2 and victim.split(".")[-1] in err and err.startswith("error:"), (layout, err)


def test_a_file_two_layouts_claim_is_refused(tmp_path):
    """An mmseg UPerNet's state dict next to an official Mask2Former's: both layouts claim it."""
    files = {n: _layout_files(n, tiny(n), tmp_path / n) for n in SEGMENTORS if (tmp_path / n).mkdir() is None}
    mmseg = torch.load(files["upernet"]["mmsegmentation"], weights_only=True)
    official = torch.load(files["mask2former"]["mask2former"], weights_only=True)
    torch.save({**mmseg, **official}, tmp_path / "both.pt")
    rc, _, err = run_cli("segmentation", "convert", str(tmp_path / "both.pt"), str(tmp_path / "out.pt"))
    assert rc == 2 and "several" in err and "mmsegmentation" in err and "mask2former" in err, err
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("name", list(SEGMENTORS))
def test_convert_round_trip_is_exact(tmp_path, name):
    model = tiny(name)
    save_segmentor(model, tmp_path / "model.pt")
    rc, out, err = run_cli(
        "segmentation", "convert", str(tmp_path / "model.pt"), str(tmp_path / "orig.pth"), "--to", "original"
    )
    assert rc == 0, err
    assert get_segmentor(name).title in out
    rc, _, err = run_cli("segmentation", "convert", str(tmp_path / "orig.pth"), str(tmp_path / "back.pt"))
    assert rc == 0, err
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    sd = model.state_dict()
    assert set(back["state_dict"]) == set(sd)
    assert all(torch.equal(back["state_dict"][k], v) for k, v in sd.items())
    assert back["meta"]["class_names"] == NAMES and back["meta"].get("segmentor", "upernet") == name


# ------------------------------------------------------------------------------ the universal segmentors
UNIVERSAL = [n for n, s in SEGMENTORS.items() if len(s.tasks) > 1]


def _head_sets(name: str) -> list[str]:
    return [f"model.{get_segmentor(name).config_field}.{k}={v}" for k, v in TINY_HEAD[name].items()]


def _trivial_pq(root: Path) -> float:
    """PQ of the best trivial prediction: the whole image one segment of the most frequent class."""
    from focalnet.segmentation.panoptic import build_panoptic_dataset
    from focalnet.segmentation.pq import PQStat

    ds = build_panoptic_dataset(root, "val")
    best = 0.0
    for cat in CATEGORIES:
        stat = PQStat(ds.categories)
        for i in range(len(ds)):
            item = ds[i]
            stat.update(item["ids"], item["segments"], np.ones_like(item["ids"]), [{"id": 1, "category_id": cat["id"]}])
        best = max(best, stat.summary()["All"]["pq"])
    return best


def _train(root: Path, out: Path, name: str, task: str, *extra: str) -> dict:
    rc, stdout, err = run_cli(
        "segmentation", "train", "--segmentor", name, "--task", task, "--config", "mask2former_focalnet_cpu_tiny",
        "--data", str(root), "--output", str(out), "--no-progress", "--threads", "1", "--json", *extra,
    )  # fmt: skip
    assert rc == 0, err[-3000:]
    return json.loads(stdout[stdout.index("{") :])


@pytest.mark.parametrize("name", UNIVERSAL)
def test_panoptic_train_evaluate_predict_and_pq_agree(tmp_path, name):
    """A 4-step run through the command line: evaluate's PQ equals `segmentation pq` on predict's files."""
    root = write_synthetic_panoptic(tmp_path / "data", n_train=4, n_val=3, size=64)
    sets = [
        *_head_sets(name),
        "universal.object_mask_threshold=0.0",
        "aug.crop_size=[64,64]",
        "universal.num_points=256",
    ]
    _train(root, tmp_path / "run", name, "panoptic", "--iters", "4", "--batch-size", "2", "--set", *sets)
    model_file = tmp_path / "run" / "model.pt"
    rc, out, err = run_cli(
        "segmentation", "evaluate", "--checkpoint", str(model_file), "--data", str(root), "--json", "--no-progress",
        "--output", str(tmp_path / "eval"),
    )  # fmt: skip
    assert rc == 0, err[-3000:]
    metrics = json.loads(out)
    assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} <= set(metrics) and metrics["num_images"] == 3
    images = sorted(str(p) for p in (root / "val2017").glob("*.jpg"))
    pred = tmp_path / "pred"
    rc, out, err = run_cli(
        "segmentation", "predict", *images, "--checkpoint", str(model_file), "--output", str(pred), "--no-progress"
    )
    assert rc == 0, err[-3000:]
    stems = [Path(p).stem for p in images]
    assert all((pred / "panoptic" / f"{s}.png").is_file() and (pred / f"{s}_overlay.png").is_file() for s in stems)
    assert all((pred / f"{s}_label.png").is_file() for s in stems)
    segments = [s for a in json.loads((pred / "panoptic.json").read_text())["annotations"] for s in a["segments_info"]]
    assert segments, "the untrained model at threshold 0 predicts segments"
    rc, out, err = run_cli(
        "segmentation", "pq", "--gt-json", str(root / "annotations" / "panoptic_val2017.json"),
        "--pred-json", str(pred / "panoptic.json"), "--pred-folder", str(pred / "panoptic"), "--json", str(tmp_path / "pq.json"),
    )  # fmt: skip
    assert rc == 0, err
    scored = json.loads((tmp_path / "pq.json").read_text())
    for part, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        assert scored[part]["pq"] * 100 == pytest.approx(metrics["PQ" + suffix], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", UNIVERSAL)
def test_panoptic_run_learns_things_and_stuff_far_above_chance(tmp_path, name):
    """The CPU recipe on the synthetic panoptic set (discs and boxes on sky and ground) reaches a PQ far
    above the best trivial prediction's, for things and for stuff."""
    root = write_synthetic_panoptic(tmp_path / "data", n_train=24, n_val=8, size=96)
    chance = _trivial_pq(root)
    metrics = _train(root, tmp_path / "run", name, "panoptic")
    pq = metrics["PQ"] / 100
    assert pq > max(3 * chance, chance + 0.3), f"PQ {pq:.3f}, a trivial prediction {chance:.3f}"
    assert metrics["PQ_th"] > 30 and metrics["PQ_st"] > 30, metrics


@pytest.mark.parametrize("name", UNIVERSAL)
def test_semantic_task_runs_and_gives_miou(tmp_path, name):
    from test_segmentation import make_folder_dataset

    root = make_folder_dataset(tmp_path / "data", n_train=4, n_val=2, size=(64, 64), num_classes=3)
    sets = [
        *_head_sets(name),
        "aug.crop_size=[64,64]",
        "aug.scale=[64,64]",
        "eval.scale=[64,64]",
        "universal.num_points=256",
    ]
    metrics = _train(
        root,
        tmp_path / "run",
        name,
        "semantic",
        "--layout",
        "folder",
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--set",
        *sets,
    )
    assert 0 <= metrics["mIoU"] <= 100
    rc, out, err = run_cli(
        "segmentation", "evaluate", "--checkpoint", str(tmp_path / "run" / "model.pt"), "--data", str(root), "--json",
        "--no-progress", "--output", str(tmp_path / "eval"),
    )  # fmt: skip
    assert rc == 0, err[-3000:]
    again = json.loads(out)
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6) and len(again["per_class"]) == 3


def _instances_from_panoptic(root: Path) -> None:
    """COCO instances files (RLE masks of the things) next to the synthetic panoptic ones."""
    from pycocotools import mask as mask_util

    from focalnet.segmentation.panoptic import read_id_png

    for split in ("train", "val"):
        pan = json.loads((root / "annotations" / f"panoptic_{split}2017.json").read_text())
        anns = []
        for a in pan["annotations"]:
            ids = read_id_png(root / "annotations" / f"panoptic_{split}2017" / a["file_name"])
            for s in a["segments_info"]:
                if s["category_id"] in (1, 3):
                    rle = mask_util.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    x, y, w, h = mask_util.toBbox(rle).tolist()
                    anns.append(
                        {"id": len(anns) + 1, "image_id": a["image_id"], "category_id": s["category_id"],
                         "segmentation": rle, "area": float(mask_util.area(rle)), "bbox": [x, y, w, h],
                         "iscrowd": s["iscrowd"]}
                    )  # fmt: skip
        cats = [c for c in pan["categories"] if c["isthing"]]
        data = {"images": pan["images"], "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


@pytest.mark.parametrize("name", UNIVERSAL)
def test_instance_task_runs_and_gives_mask_ap(tmp_path, name):
    root = write_synthetic_panoptic(tmp_path / "data", n_train=4, n_val=2, size=64)
    _instances_from_panoptic(root)
    sets = [*_head_sets(name), "aug.crop_size=[64,64]", "universal.num_points=256"]
    metrics = _train(root, tmp_path / "run", name, "instance", "--iters", "2", "--batch-size", "2", "--set", *sets)
    assert {"AP", "AP50", "AP75"} <= set(metrics) and 0 <= metrics["AP"] <= 100


@pytest.mark.parametrize("name", UNIVERSAL)
def test_app_shows_the_panoptic_result_predict_writes(tmp_path, name):
    """The app's segmentation tab on a Mask2Former: the label map of `segmentation predict`, the segments
    listed as things and stuff, the legend beside the image."""
    pytest.importorskip("gradio")
    from PIL import Image

    from focalnet.app import core

    model = tiny(name)
    model.meta["thing_classes"] = [False, False, True]
    save_segmentor(model, tmp_path / "model.pt", {"test": {"mode": "whole", "scale": [64, 48]}})
    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    rc, _, err = run_cli("segmentation", "predict", str(tmp_path / "img.png"), "--checkpoint", str(tmp_path / "model.pt"),
                         "--output", str(tmp_path / "pred"), "--no-progress", "--threads", "1")  # fmt: skip
    assert rc == 0, err
    r = core.segment_image(core.load_checkpoint(tmp_path / "model.pt"), Image.fromarray(img))
    label = np.asarray(Image.open(tmp_path / "pred" / "img_label.png"))
    np.testing.assert_array_equal(r["label"], label)
    assert r["image"].shape[0] == 40 and r["image"].shape[1] > 56  # the legend on the right
    assert {s["class"] for s in r["segments"]} <= set(NAMES)
    assert all(s["isthing"] == (s["class"] == "disc") for s in r["segments"])


def test_a_task_the_segmentor_does_not_predict_is_one_line_and_writes_nothing(tmp_path):
    root = write_synthetic_panoptic(tmp_path / "data", n_train=2, n_val=1, size=32)
    rc, _, err = run_cli(
        "segmentation", "train", "--task", "panoptic", "--data", str(root), "--output", str(tmp_path / "run")
    )
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: UPerNet is trained for semantic"), err
    assert not (tmp_path / "run").exists()


def test_segmentor_choices_and_help_come_from_the_registry():
    import argparse

    from focalnet.segmentation import cli

    sub = argparse.ArgumentParser().add_subparsers()
    cli.register(sub)
    train = sub.choices["segmentation"]._subparsers._group_actions[0].choices["train"]
    action = train._option_string_actions["--segmentor"]
    assert list(action.choices) == list(SEGMENTORS) and "nope" not in action.choices
    text = train.format_help()
    assert all(s.title in text and s.summary.split()[0] in text for s in SEGMENTORS.values())


def test_docs_and_configs_name_every_segmentor():
    """A segmentor added to the registry without its docs or recipe fails here."""
    docs = {
        p: (Path(__file__).parent.parent / p).read_text()
        for p in ("docs/segmentation.md", "docs/architecture.md", "README.md")
    }
    rc, out, _ = run_cli("segmentation", "configs")
    for spec in SEGMENTORS.values():
        assert all(spec.title in text for text in docs.values()), spec.name
        assert rc == 0 and spec.recipe in out, spec.name
        assert f"--segmentor {spec.name}" in docs["docs/segmentation.md"] or spec.name == "upernet", spec.name
