"""Detection end to end: CLI train (overfitting generated shapes), evaluate, predict, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detection_synth import tiny_run_config, train_on_shapes

from conftest import run_cli

TINY_CONFIG = tiny_run_config(
    {
        "representation_size": 128,
        "mask_head_channels": 32,
        "detector_overrides": {
            "rpn_pre_nms_top_n_train": 300,
            "rpn_post_nms_top_n_train": 100,
            "rpn_pre_nms_top_n_test": 200,
            "rpn_post_nms_top_n_test": 100,
            "box_batch_size_per_image": 64,
        },
    }
)
STEPS = 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shapes")
    out, rc, stdout, stderr = train_on_shapes(root, TINY_CONFIG, STEPS)
    assert rc == 0, stderr
    yield root, out, stdout
    torch.set_num_threads(n)


def test_overfits_generated_shapes(trained):
    root, out, stdout = trained
    m = json.loads((out / "metrics.json").read_text())
    assert m["bbox_mAP_50"] >= 0.9 and m["bbox_mAP"] >= 0.5, m
    assert m["segm_mAP_50"] >= 0.9 and m["segm_mAP"] >= 0.5, m
    for iou in ("bbox", "segm"):
        for k in (
            "mAP",
            "mAP_50",
            "mAP_75",
            "mAP_s",
            "mAP_m",
            "mAP_l",
            "AR_1",
            "AR_10",
            "AR_100",
            "AR_s",
            "AR_m",
            "AR_l",
        ):
            assert isinstance(m[f"{iou}_{k}"], float)
        assert set(m[f"{iou}_AP_per_category"]) == {"square", "disc"}
    assert m["history"][-1]["step"] == STEPS and "bbox_mAP=" in stdout
    results = json.loads((out / "results.json").read_text())
    assert {r["category_id"] for r in results} <= {3, 7} and results
    assert isinstance(results[0]["segmentation"]["counts"], str) and len(results[0]["bbox"]) == 4
    assert json.loads((out / "data_problems.json").read_text()) == []
    assert (out / "model.pt").exists() and (out / "config.yaml").exists() and (out / "curves.png").exists()


def test_evaluate_cli_reproduces_training_metrics(trained):
    root, out, _ = trained
    ev = out / "eval"
    rc, stdout, stderr = run_cli(
        "detection",
        "evaluate",
        "--checkpoint",
        str(out / "model.pt"),
        "--data",
        str(root),
        "--output",
        str(ev),
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert rc == 0, stderr
    m = json.loads((ev / "metrics.json").read_text())
    train_m = json.loads((out / "metrics.json").read_text())
    assert m["bbox_mAP"] == pytest.approx(train_m["bbox_mAP"], abs=1e-9)
    assert m["segm_mAP"] == pytest.approx(train_m["segm_mAP"], abs=1e-9)
    assert "Average Precision" in stdout and (ev / "results.json").exists()
    # a training checkpoint evaluates the same
    ckpt = sorted((out / "checkpoints").glob("checkpoint-*.pt"))[-1]
    rc, _, stderr = run_cli(
        "detection",
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--val-ann",
        str(root / "annotations/instances_val2017.json"),
        "--val-images",
        str(root / "val2017"),
        "--workers",
        "0",
        "--json",
    )
    assert rc == 0, stderr


def test_predict_cli_draws_and_writes_json(trained):
    root, out, _ = trained
    pred = out / "pred"
    img = root / "val2017" / "0000.png"
    rc, stdout, stderr = run_cli(
        "detection",
        "predict",
        str(img),
        "--checkpoint",
        str(out / "model.pt"),
        "--out",
        str(pred),
        "--score-thr",
        "0.5",
        "--device",
        "cpu",
    )
    assert rc == 0, stderr
    recs = json.loads((pred / "detections.json").read_text())
    assert (pred / "0000.png").exists() and len(recs) == 1
    dets = recs[0]["detections"]
    gt = [
        a
        for a in json.loads((root / "annotations/instances_val2017.json").read_text())["annotations"]
        if a["image_id"] == 1
    ]
    from torchvision.ops import box_iou

    gt_boxes = torch.tensor(
        [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in gt]
    )
    pred_boxes = torch.tensor([d["box"] for d in dets]).reshape(-1, 4)
    assert len(dets) >= 2 and box_iou(gt_boxes, pred_boxes).max(1).values.min() > 0.7
    assert {d["label"] for d in dets} <= {"square", "disc"} and "segmentation" in dets[0]
    rc, _, stderr = run_cli("detection", "predict", str(root / "missing.png"), "--checkpoint", str(out / "model.pt"))
    assert rc == 2 and stderr.strip() == f"error: no such image or folder: {root / 'missing.png'}"


def test_resume_auto_continues_and_bad_flags_are_reported(trained):
    root, out, _ = trained
    cfg = root / "tiny.yaml"
    rc, _, stderr = run_cli(
        "detection",
        "train",
        "--config",
        str(cfg),
        "--data",
        str(root),
        "--output",
        str(out),
        "--max-steps",
        str(STEPS + 2),
        "--batch-size",
        "4",
        "--resume",
        "auto",
    )
    assert rc == 0, stderr
    log = (out / "train.log").read_text()
    assert f"resumed from {out / 'checkpoints'}" in log and f"step {STEPS}" in log
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert hist[-1]["step"] == STEPS + 2
    rc, _, stderr = run_cli(
        "detection",
        "train",
        "--config",
        str(cfg),
        "--data",
        str(root),
        "--output",
        str(root / "x"),
        "--set",
        "optim.nope=1",
    )
    assert rc == 2 and "optim.nope" in stderr
    rc, _, stderr = run_cli("detection", "train", "--output", str(root / "x"))
    assert rc == 2 and "--data" in stderr
    rc, _, stderr = run_cli("detection", "evaluate", "--checkpoint", str(Path(root / "nope.pt")), "--data", str(root))
    assert rc == 2 and stderr.strip() == f"error: checkpoint not found: {root / 'nope.pt'}"
