"""Sparse R-CNN: original-layout files, the loss parts on a hand-computed case, learning, CLI/API paths."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math

import numpy as np
import pytest
import torch
import yaml

from detection_synth import make_shapes, tiny_run_config, train_on_shapes
from focalnet.cli import main
from focalnet.detection import DetectionConfig, SparseRCNN, build_detector, config_path, load_detector, sparse_rcnn
from focalnet.detection.matcher import HungarianMatcher
from focalnet.detection.model import detector_kwargs_from_config
from focalnet.detection.sparse_rcnn import (
    _TO_MMDET,
    load_mmdet_sparse_rcnn,
    set_prediction_losses,
)
from focalnet.engine import load_config
from focalnet.weights.convert import rename_key

from conftest import REFERENCE, need, run_cli

REF_JSON = "detection/sparse_rcnn_focalnet_tiny_lrf_3x.json"
TINY_BACKBONE = dict(embed_dim=16, depths=(1, 1, 1, 1), focal_windows=(3, 3, 3, 3), drop_path_rate=0.0)
TINY_HEAD = dict(num_proposals=16, num_stages=2, num_heads=4, feedforward_channels=64, dynamic_channels=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(num_classes: int = 3, **kw) -> SparseRCNN:
    return sparse_rcnn(
        "focalnet_tiny_srf",
        num_classes,
        backbone_overrides=TINY_BACKBONE,
        fpn_channels=32,
        min_size=128,
        max_size=160,
        **{**TINY_HEAD, **kw},
    )


def seeded_state_dict(keys: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Values for a key list (the DINO reference recipe: sorted keys, one RandomState(0); 1-D weights
    1 + 0.1 z, biases 0.02 z, others z / sqrt(fan_in)); the proposal boxes are made valid cx, cy, w, h."""
    rs = np.random.RandomState(0)
    sd = {}
    for k, shape in sorted(keys):
        z = rs.standard_normal(shape).astype(np.float32)
        if k.endswith("bias"):
            v = 0.02 * z
        elif len(shape) == 1:
            v = 1 + 0.1 * z
        else:
            v = z / np.sqrt(np.prod(shape[1:]))
        sd[k] = torch.from_numpy(np.asarray(v, dtype=np.float32))
    shapes = dict(keys)
    if "rpn_head.init_proposal_bboxes.weight" in shapes:
        q = shapes["rpn_head.init_proposal_bboxes.weight"][0]
        cxcy, wh = rs.uniform(0.2, 0.8, (q, 2)), rs.uniform(0.05, 0.6, (q, 2))
        sd["rpn_head.init_proposal_bboxes.weight"] = torch.from_numpy(np.concatenate([cxcy, wh], 1).astype(np.float32))
    return {k: sd[k] for k, _ in keys}  # the file's own order


# ---------------------------------------------------------------------------------------------- original files
def test_reference_sparse_rcnn_file_loads_strictly_and_runs(tmp_path):
    ref = json.loads(need(REFERENCE / REF_JSON).read_text())
    sd = seeded_state_dict(ref["state_dict"])
    path = tmp_path / "sparse_rcnn_focalnet_tiny_lrf_3x.pth"
    torch.save({"meta": {"epoch": 36, "CLASSES": None}, "state_dict": sd}, path)
    del sd
    model, meta = load_detector(path, min_size=128, max_size=160)
    assert isinstance(model, SparseRCNN) and meta["source"] == "mmdetection"
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 111_215_864
    assert len(meta["class_names"]) == 80 and meta["category_ids"][-1] == 90
    body = model.backbone.body.cfg
    assert body.focal_windows == (11, 9, 9, 7) and body.focal_levels == (3, 3, 3, 3)
    rh = model.roi_heads
    assert len(rh.stages) == 6 and model.rpn.init_proposal_bboxes.num_embeddings == 300
    assert rh.box_roi_pool.aligned and rh.box_roi_pool.sampling_ratio == 2 and rh.box_roi_pool.output_size == (7, 7)
    assert rh.box_coder.weights == (2.0, 2.0, 1.0, 1.0) and rh.detections_per_img == 300
    # the file's tensors are where the names say (same layout inside a stage)
    file_sd = torch.load(path, weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, file_sd[rename_key(k, _TO_MMDET)]), k
    # neck shapes of the original code on a 1x3x256x320 input
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 256, 320))
        assert [list(f.shape) for f in feats.values()] == ref["feature_shapes_1x3x256x320"]["neck"]
        out = model([torch.rand(3, 120, 150)])[0]
    assert out["boxes"].shape == (300, 4) and torch.isfinite(out["boxes"]).all()
    assert out["labels"].min() >= 1 and out["labels"].max() <= 80
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


def test_tiny_mmdet_file_converts_round_trip_and_misfits_are_named(tmp_path):
    model = tiny_model(num_classes=81, num_heads=8)  # the head count is not in a file: 8 as released
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sd = {rename_key(k, _TO_MMDET): v for k, v in model.state_dict().items()}
    assert any(k.startswith("roi_head.bbox_head.1.instance_interactive_conv.") for k in sd)
    path = tmp_path / "sparse.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    loaded, meta = load_detector(path, min_size=128, max_size=160)
    assert meta["detection_config"]["model"]["detector_overrides"]["num_stages"] == 2
    assert loaded.roi_heads.stages[0].ffn.layers[0][0].out_features == 64
    model.eval()
    images = [torch.rand(3, 100, 140)]
    with torch.no_grad():
        a, b = model(images)[0], loaded(images)[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["detection", "convert", str(path), str(tmp_path / "converted.pt")]) == 0
    again, meta2 = load_detector(tmp_path / "converted.pt")
    assert meta2["source"] == "focalnet" and isinstance(again, SparseRCNN)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k

    bad = dict(sd)
    del bad["roi_head.bbox_head.1.ffn_norm.weight"]
    bad["roi_head.bbox_head.0.extra.weight"] = torch.zeros(2)
    bad["roi_head.bbox_head.1.fc_reg.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as e:
        load_mmdet_sparse_rcnn(bad, "bad.pth")
    msg = str(e.value)
    assert msg.startswith("bad.pth: mmdetection Sparse R-CNN weights")
    assert "missing keys (1): roi_head.bbox_head.1.ffn_norm.weight" in msg
    assert "unexpected keys (1): roi_head.bbox_head.0.extra.weight" in msg
    assert "roi_head.bbox_head.1.fc_reg.bias: checkpoint (5,) vs model (4,)" in msg


# ---------------------------------------------------------------------------------------------- losses
def _focal(p: float, positive: bool, alpha: float = 0.25, gamma: float = 2.0) -> float:
    return -alpha * (1 - p) ** gamma * math.log(p) if positive else -(1 - alpha) * p**gamma * math.log(1 - p)


def _giou(a: list[float], b: list[float]) -> float:
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_matching_and_losses_on_a_hand_computed_case():
    w, h = 200.0, 100.0
    logits = [[2.0, -1.0], [-0.5, 0.3], [0.1, 0.0]]  # 3 proposals, 2 classes
    boxes = [[10.0, 10.0, 60.0, 50.0], [100.0, 20.0, 180.0, 90.0], [20.0, 5.0, 70.0, 45.0]]
    gt_boxes = [[110.0, 30.0, 170.0, 95.0], [15.0, 10.0, 65.0, 60.0]]
    gt_labels = [2, 1]  # labels 1..K
    whwh = [w, h, w, h]
    p = [[1 / (1 + math.exp(-v)) for v in row] for row in logits]

    def cost(q: int, t: int) -> float:
        c = gt_labels[t] - 1
        cls = _focal(p[q][c], True) - _focal(p[q][c], False)
        l1 = sum(abs(boxes[q][i] / whwh[i] - gt_boxes[t][i] / whwh[i]) for i in range(4))
        return 2 * cls + 5 * l1 - 2 * _giou(boxes[q], gt_boxes[t])

    best = min(itertools.permutations(range(3), 2), key=lambda qs: sum(cost(q, t) for t, q in enumerate(qs)))
    assigned = {q: t for t, q in enumerate(best)}
    assert assigned == {1: 0, 0: 1}  # a clear case: proposal 1 -> gt 0, proposal 0 -> gt 1

    num_gt = 2
    loss_cls = 0.0
    for q in range(3):
        for c in range(2):
            pos = q in assigned and gt_labels[assigned[q]] - 1 == c
            loss_cls += _focal(p[q][c], pos)
    loss_l1 = sum(abs(boxes[q][i] / whwh[i] - gt_boxes[t][i] / whwh[i]) for q, t in assigned.items() for i in range(4))
    loss_giou = sum(1 - _giou(boxes[q], gt_boxes[t]) for q, t in assigned.items())

    targets = [{"boxes": torch.tensor(gt_boxes), "labels": torch.tensor(gt_labels)}]
    matcher = HungarianMatcher(2.0, 5.0, 2.0, box_format="xyxy")
    got = set_prediction_losses(
        torch.tensor([logits], requires_grad=True),
        torch.tensor([boxes], requires_grad=True),
        targets,
        torch.tensor([whwh]),
        matcher,
    )
    assert got["loss_cls"].item() == pytest.approx(2 * loss_cls / num_gt, rel=1e-5)
    assert got["loss_bbox"].item() == pytest.approx(5 * loss_l1 / num_gt, rel=1e-5)
    assert got["loss_iou"].item() == pytest.approx(2 * loss_giou / num_gt, rel=1e-5)
    # an image without objects: only the classification loss (all negatives), over at least 1
    empty = set_prediction_losses(
        torch.tensor([logits]),
        torch.tensor([boxes]),
        [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
        torch.tensor([whwh]),
        matcher,
    )
    neg = sum(_focal(p[q][c], False) for q in range(3) for c in range(2))
    assert empty["loss_cls"].item() == pytest.approx(2 * neg, rel=1e-5) and empty["loss_bbox"].item() == 0


def test_box_decoding_and_proposals_follow_mmdet():
    model = tiny_model()
    rh = model.roi_heads
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # w 40, h 80, centre (30, 60)
    deltas = torch.tensor([[0.2, -0.4, math.log(2.0), -10.0]])  # stds 0.5, 0.5, 1, 1
    out = rh.decode(deltas, boxes)[0]
    cx, cy, bw = 30 + 0.1 * 40, 60 - 0.2 * 80, 80.0
    bh = 80 * 16 / 1000  # log-scale clamped at -log(1000 / 16), as mmdet (both sides)
    torch.testing.assert_close(out, torch.tensor([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
    big = torch.tensor([[1000.0, 700.0, 1201.0, 901.0]])  # AMP deltas: pixel boxes still decoded in fp32
    assert rh.decode(torch.zeros(1, 4, dtype=torch.bfloat16), big).dtype == torch.float32
    torch.testing.assert_close(rh.decode(torch.zeros(1, 4, dtype=torch.bfloat16), big), big)
    # learned proposals start as the whole image, in each image's own size
    b, f = model.rpn(torch.tensor([[160.0, 128.0, 160.0, 128.0], [96.0, 64.0, 96.0, 64.0]]))
    assert b.shape == (2, 16, 4) and f.shape == (2, 16, 32)
    torch.testing.assert_close(b[1, 3], torch.tensor([0.0, 0.0, 96.0, 64.0]))
    assert rh.stages[0].fc_cls.bias[0].item() == pytest.approx(-math.log(99))
    # training returns the 3 losses of every stage
    model.train()
    losses = model(
        [torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 60.0]]), "labels": torch.tensor([2])}]
    )
    assert sorted(losses) == sorted(f"stage{s}_loss_{k}" for s in range(2) for k in ("cls", "bbox", "iou"))
    sum(losses.values()).backward()
    assert model.rpn.init_proposal_bboxes.weight.grad is not None  # the first stage's boxes come from them
    with pytest.raises(ValueError, match="target labels must be in 1..2"):
        model(
            [torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 60.0]]), "labels": torch.tensor([0])}]
        )
    with pytest.raises(TypeError, match="unknown Sparse R-CNN option"):
        tiny_model(box_nms_thresh=0.5)


# ---------------------------------------------------------------------------------------------- configs
def test_packaged_sparse_rcnn_configs_follow_the_released_recipe():
    zoo = json.loads(need(REFERENCE / "model-zoo.json").read_text())["coco_other"]
    row = next(r for r in zoo if r["method"] == "Sparse R-CNN")
    cfg = load_config(DetectionConfig, config_path("sparse_rcnn_focalnet_tiny_lrf_3x"))
    m, o = cfg.model, cfg.optim
    assert (m.detector, m.backbone, m.focal_windows, m.drop_path_rate) == (
        "sparse_rcnn",
        "focalnet_tiny_lrf",
        row["kernels"],
        0.3,
    )
    assert (o.lr, o.weight_decay, o.decay_all, o.lr_steps, cfg.epochs, cfg.grad_clip) == (
        2.5e-5,
        1e-4,
        True,
        [27, 33],
        36,
        1.0,
    )
    assert cfg.data.scales == list(range(480, 801, 32)) and cfg.data.crop_branch
    assert (m.min_size, m.max_size, m.detections_per_img, m.score_thresh) == (800, 1333, 300, 0.0)
    with torch.device("meta"):
        model = build_detector(**detector_kwargs_from_config(m, 81))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == row["params_m"]
    cpu = load_config(DetectionConfig, config_path("sparse_rcnn_focalnet_cpu_tiny"))
    assert cpu.model.detector == "sparse_rcnn" and cpu.model.detector_overrides["num_proposals"] < 300


# ---------------------------------------------------------------------------------------------- CLI / training
TINY_CONFIG = tiny_run_config(
    {"detector": "sparse_rcnn", "score_thresh": 0.0, "detector_overrides": TINY_HEAD},
    {"weight_decay": 1e-4, "decay_all": True},
    grad_clip=1.0,
)


def test_cli_train_evaluate_predict_with_every_train_option(tmp_path):
    import focalnet

    root = tmp_path / "shapes"
    make_shapes(root, 2, 96, split="train")
    make_shapes(root, 2, 96, split="val")
    cls = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1))
    focalnet.save_model(cls, tmp_path / "in1k.safetensors")
    out = tmp_path / "run"
    rc, stdout, stderr = run_cli(
        "detection",
        "train",
        "--detector",
        "sparse_rcnn",
        "--config",
        "sparse_rcnn_focalnet_cpu_tiny",
        "--backbone",
        "focalnet_tiny_srf",
        "--backbone-checkpoint",
        str(tmp_path / "in1k.safetensors"),
        "--data",
        str(root),
        "--output",
        str(out),
        "--min-size",
        "96",
        "--max-size",
        "128",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--lr",
        "1e-4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--amp",
        "none",
        "--no-progress",
        "--set",
        "model.backbone_overrides.embed_dim=16",
        "model.detector_overrides.num_proposals=8",
        "model.detector_overrides.num_stages=1",
        "model.detector_overrides.feedforward_channels=32",
        "data.crop_branch=false",
    )
    assert rc == 0, stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["detector"] == "sparse_rcnn" and saved["model"]["min_size"] == 96
    assert saved["data"]["scales"] == [77, 86, 96] and saved["model"]["max_size"] == 128
    assert saved["optim"]["lr"] == 1e-4 and saved["optim"]["decay_all"] and saved["grad_clip"] == 1.0
    m = json.loads((out / "metrics.json").read_text())
    assert "bbox_mAP" in m and "segm_mAP" not in m and m["history"][-1]["step"] == 1
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["model"]["rpn.init_proposal_features.weight"].shape == (8, 64)
    rc, stdout, stderr = run_cli(
        "detection", "evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(root), "--workers", "0", "--json"
    )
    assert rc == 0, stderr
    assert json.loads(stdout)["bbox_mAP"] == pytest.approx(m["bbox_mAP"], abs=1e-9)
    rc, stdout, stderr = run_cli(
        "detection",
        "predict",
        str(root / "val2017" / "0000.png"),
        "--checkpoint",
        str(out / "model.pt"),
        "--out",
        str(tmp_path / "pred"),
        "--score-thr",
        "0",
    )
    assert rc == 0, stderr
    recs = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(recs[0]["detections"]) == 8 * 2 and "segmentation" not in recs[0]["detections"][0]  # all pairs


@pytest.mark.slow
def test_sparse_rcnn_learns_generated_shapes(tmp_path):
    root = tmp_path / "shapes"
    out, rc, stdout, stderr = train_on_shapes(root, TINY_CONFIG, 250)
    assert rc == 0, stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["bbox_mAP_50"] >= 0.9 and m["bbox_mAP"] >= 0.5, m
    assert set(m["bbox_AP_per_category"]) == {"square", "disc"}
