"""Segmentation training end to end: overfitting generated images, the CLI (train/resume/evaluate/predict),
shipped configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from focalnet.cli import main
from focalnet.engine import packaged_configs
from focalnet.segmentation import load_segmentation_config, load_segmentor, train
from test_segmentation import make_folder_dataset

TINY_SET = [
    "model.backbone_overrides={embed_dim: 16, depths: [1, 1, 1, 1], focal_windows: [3, 3, 3, 3], drop_path_rate: 0.0}",
    "model.head={channels: 32, aux_channels: 16}",
    "data.num_workers=0",
    "train.progress=false",
]


@pytest.mark.slow
def test_overfit_generated_images_reaches_high_miou(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n_train=4, n_val=0, size=(48, 48), num_classes=4)
    cfg = load_segmentation_config(
        None,
        [
            *TINY_SET,
            f"data.root={root}",
            "data.layout=folder",
            "data.val_img_dir=train",
            "data.val_ann_dir=trainannot",
            "aug.scale=[48, 48]",
            "aug.ratio_range=[0.75, 1.25]",
            "aug.crop_size=[48, 48]",
            "aug.photometric=false",
            "optim.lr=3e-3",
            "optim.warmup_iters=10",
            "train.iters=40",
            "train.batch_size=4",
            "train.ckpt_every=0",
            "eval.every=0",
            "eval.scale=null",
        ],
    )
    metrics = train(cfg, tmp_path / "run")
    assert metrics["mIoU"] > 70, metrics  # ~80 after 40 steps (random init: ~10)
    assert metrics["aAcc"] > 85, metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["mIoU"] == pytest.approx(metrics["mIoU"]) and saved["num_skipped_samples"] == 0
    assert set(saved["per_class"]) == {"c0", "c1", "c2", "c3"}
    # the saved model alone reproduces the run's mIoU
    from focalnet.segmentation import DataConfig, TestConfig, build_dataset, evaluate

    model, extra = load_segmentor(tmp_path / "run" / "model.pt")
    ds = build_dataset(
        DataConfig(root=str(root), layout="folder", val_img_dir="train", val_ann_dir="trainannot"), "val"
    )
    again = evaluate(model, ds, TestConfig(scale=None), num_workers=0, progress=False)
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segcli")
    root = make_folder_dataset(tmp / "data", n_train=4, n_val=2, size=(48, 64), num_classes=3, ignore=9)
    (root / "classes.txt").unlink()  # like CamVid without classes.txt: names from an option
    # one bad validation sample: reported, not fatal
    lab = np.asarray(Image.open(root / "valannot" / "img001.png")).copy()
    lab[5, 5] = 7
    Image.fromarray(lab).save(root / "valannot" / "img001.png")
    out = tmp / "run"
    args = [
        "segmentation",
        "train",
        "--backbone",
        "focalnet_tiny_srf",
        "--data",
        str(root),
        "--layout",
        "folder",
        "--ignore-index",
        "9",
        "--class-names",
        "sky,road,car",
        "--output",
        str(out),
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--crop-size",
        "32",
        "--workers",
        "0",
        "--eval-every",
        "0",
        "--set",
        *TINY_SET,
        "eval.scale=[64, 48]",
        "aug.scale=[64, 48]",
    ]
    assert main(args) == 0
    return root, out, args


def test_cli_train_reports_and_saves(cli_run):
    root, out, _ = cli_run
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["per_class"]) == {"sky", "road", "car"}
    assert {"mIoU", "mAcc", "aAcc"} <= set(m) and m["iters"] == 2
    assert m["num_skipped_samples"] == 1 and "img001.jpg" in m["data_problems"][0]["file"]
    assert "7" in m["data_problems"][0]["problem"]
    assert (out / "model.pt").exists() and (out / "config.yaml").exists()
    assert "# batch 2 per process x 1 process = 2 images per update" in (out / "config.yaml").read_text()
    assert len(list((out / "checkpoints").glob("checkpoint-*.pt"))) >= 1
    model, extra = load_segmentor(out / "model.pt")
    assert model.class_names == ["sky", "road", "car"] and extra["data"]["ignore_index"] == 9


def test_cli_resume_auto_continues(cli_run):
    root, out, args = cli_run
    args = list(args)
    args[args.index("--iters") + 1] = "3"
    assert main([*args[: args.index("--set")], "--resume", "auto", *args[args.index("--set") :]]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["iters"] == 3
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "step 2" in log


def test_cli_evaluate_and_predict(cli_run, tmp_path, capsys):
    root, out, _ = cli_run
    rc = main(
        [
            "segmentation",
            "evaluate",
            "--checkpoint",
            str(out / "model.pt"),
            "--data",
            str(root),
            "--mode",
            "slide",
            "--crop-size",
            "32",
            "--multi-scale",
            "--ratios",
            "0.5",
            "1.0",
            "--flip",
            "--output",
            str(tmp_path / "ev"),
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["test"] == {
        "mode": "slide",
        "scale": [64, 48],
        "crop_size": [32, 32],
        "stride": [22, 22],
        "multi_scale": True,
        "ratios": [0.5, 1.0],
        "flip": True,
    }
    assert m["num_images"] == 1 and m["num_skipped_samples"] == 1  # the bad label is reported
    assert 0 <= m["mIoU"] <= 100 and set(m["per_class"]) == {"sky", "road", "car"}
    assert "mIoU" in capsys.readouterr().out
    img = root / "val" / "img000.jpg"
    rc = main(
        ["segmentation", "predict", str(img), "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "pred")]
    )
    assert rc == 0
    label = np.asarray(Image.open(tmp_path / "pred" / "img000_label.png"))
    assert label.shape == (48, 64) and label.max() < 3
    color = Image.open(tmp_path / "pred" / "img000_color.png")
    assert color.mode == "RGB" and color.size == (64, 48)
    assert (tmp_path / "pred" / "img000_overlay.png").exists()
    rec = json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"][0]
    assert sum(rec["class_percent"].values()) == pytest.approx(100, abs=0.1)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", n_train=2, n_val=0)
    rc = main(
        [
            "segmentation",
            "train",
            "--data",
            str(root),
            "--layout",
            "folder",
            "--output",
            str(tmp_path / "o"),
            "--set",
            "optim.lrr=1",
        ]
    )
    assert rc == 2 and "optim.lrr" in capsys.readouterr().err
    rc = main(["segmentation", "evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(root)])
    assert rc == 2 and "missing.pt" in capsys.readouterr().err


def test_shipped_configs_follow_the_model_zoo():
    names = packaged_configs("segmentation")
    assert len(names) >= 7
    for name in names:
        cfg = load_segmentation_config(name)
        if "ade20k" in name and cfg.model.segmentor == "upernet":  # Mask2Former's: tests/test_segmentors.py
            assert cfg.model.backbone in name and cfg.data.layout == "ade20k" and cfg.train.iters == 160000
            assert cfg.optim.lr == 6e-5 and cfg.optim.weight_decay == 0.01 and cfg.optim.warmup_iters == 1500
            assert cfg.aug.crop_size == (512, 512) and cfg.train.batch_size == 2  # per process: 16 on 8
            assert cfg.model.head.aux_weight == 0.4 and cfg.model.backbone_overrides["focal_windows"] == [9] * 4
