"""ATSS: original-layout checkpoints, the assignment and losses against hand computations, learning, CLI."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
import yaml

from detection_synth import make_shapes, tiny_run_config, train_on_shapes
from focalnet.detection import ATSS, atss, build_detector, load_detector
from focalnet.detection.atss import atss_assign, atss_loss_terms, convert_mmdet_atss_state_dict, grid_anchors
from focalnet.detection.config import ModelConfig
from focalnet.detection.model import detector_kwargs_from_config
from focalnet.weights.infer import CheckpointMismatchError

from conftest import REFERENCE, need, run_cli

TINY = dict(
    backbone_overrides={"embed_dim": 16, "depths": (1, 1, 1, 1)},
    focal_windows=(3, 3, 3, 3),
    fpn_channels=32,
    stacked_convs=2,
    gn_groups=8,
    min_size=128,
    max_size=160,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------- original weights
def _reference() -> dict:
    return json.loads(need(REFERENCE / "detection/atss_focalnet_tiny_lrf_3x.json").read_text())


def _seeded_state_dict(ref: dict) -> dict[str, torch.Tensor]:
    """Every key and shape of the reference, seeded values (norm weights / scales near 1)."""
    rs = np.random.RandomState(0)
    sd = {}
    for k, shape in ref["state_dict"]:
        z = torch.from_numpy(np.asarray(rs.standard_normal(shape), dtype=np.float32))
        if len(shape) <= 1:
            sd[k] = 1 + 0.1 * z if k.endswith(("weight", "scale")) else 0.02 * z
        else:
            sd[k] = z / math.sqrt(math.prod(shape[1:]))
    return sd


def test_original_checkpoint_loads_strictly_with_the_reference_size(tmp_path):
    ref = _reference()
    sd = _seeded_state_dict(ref)
    assert not any(k.startswith("backbone.norm0") for k in sd)
    path = tmp_path / "atss_focalnet_tiny_lrf_3x.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": sd}, path)
    model, meta = load_detector(path, min_size=256, max_size=320)
    assert isinstance(model, ATSS) and meta["source"] == "mmdetection"
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 37_209_066
    for top, n in ref["num_params_by_top_module"].items():
        mine = {"backbone": model.backbone.body, "neck": model.backbone.fpn, "bbox_head": model.head}[top]
        assert sum(p.numel() for p in mine.parameters()) == n, top
    assert model.backbone.body.out_indices == (1, 2, 3) and model.backbone.body.cfg.focal_windows == (11, 9, 9, 7)
    assert len(meta["class_names"]) == 80 and meta["category_ids"][-1] == 90 and model.num_classes == 81
    assert model.nms_thresh == 0.6 and model.pre_nms_top_n == 1000 and model.topk == 9
    # every tensor arrived where it belongs (the extra convs are P6/P7, scales per level)
    ours = model.state_dict()
    for k, v in convert_mmdet_atss_state_dict(sd).items():
        torch.testing.assert_close(ours[k], v, msg=k)
    torch.testing.assert_close(ours["backbone.fpn.extra_blocks.p7.weight"], sd["neck.fpn_convs.4.conv.weight"])
    torch.testing.assert_close(ours["head.scales.3.scale"], sd["bbox_head.scales.3.scale"])
    # feature shapes of the original on a 256x320 input
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 256, 320))
        assert [list(f.shape) for f in feats.values()] == ref["feature_shapes_1x3x256x320"]["neck"]
        out = model([torch.rand(3, 200, 300)])[0]
    assert set(out) == {"boxes", "labels", "scores"} and 0 < len(out["boxes"]) <= 100
    assert out["labels"].min() >= 1 and out["labels"].max() <= 80
    assert out["boxes"][:, 2].max() <= 300 and out["boxes"][:, 3].max() <= 200 and out["scores"].min() > 0
    # convert to a focalnet model.pt, which reloads to the same detections
    rc, stdout, stderr = run_cli("detection", "convert", str(path), str(tmp_path / "model.pt"))
    assert rc == 0 and "atss" in stdout, stderr
    again, meta2 = load_detector(tmp_path / "model.pt", min_size=256, max_size=320)
    assert meta2["source"] == "focalnet" and isinstance(again, ATSS)
    torch.manual_seed(0)
    img = torch.rand(3, 200, 300)
    with torch.no_grad():
        a, b = model([img])[0], again([img])[0]
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(a[k], b[k])


def test_misfitting_original_file_names_the_keys(tmp_path):
    sd = _seeded_state_dict(_reference())
    sd.pop("bbox_head.atss_centerness.bias")
    sd["bbox_head.extra.weight"] = torch.zeros(3)
    sd["bbox_head.cls_convs.1.gn.weight"] = torch.ones(128)
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_detector(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "bbox_head.atss_centerness.bias" in msg and "bbox_head.extra.weight" in msg
    assert "bbox_head.cls_convs.1.gn.weight: checkpoint (128,) vs model (256,)" in msg


# ------------------------------------------------------------------------------------- hand-checked parts
def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_atss_assignment_by_hand():
    gt = [0.0, 0.0, 20.0, 20.0]  # centre (10, 10)
    level0 = [
        [-6, -6, 26, 26],  # 0: centre (10, 10), IoU 400/1024 = 0.390625 -> positive
        [10, 0, 30, 20],  # 1: centre (20, 10) on the right edge, IoU 200/600 = 1/3: above the threshold, outside
        [30, 30, 46, 46],  # 2: candidate (3rd closest), IoU 0
        [-40, -40, -24, -24],  # 3: candidate (4th closest), IoU 0
        [100, 100, 116, 116],  # 4: 5th closest: not a candidate
    ]
    level1 = [
        [40, 0, 72, 32],  # 5: candidate, IoU 0
        [0, 40, 32, 72],  # 6: candidate, IoU 0
        [-30, -30, 50, 50],  # 7: candidate, centre (10, 10) inside but IoU 400/6400 = 0.0625 < threshold
        [200, 200, 232, 232],  # 8: candidate (4th closest), IoU 0
        [300, 300, 332, 332],  # 9: not a candidate
    ]
    anchors = torch.tensor(level0 + level1, dtype=torch.float32)
    assigned, cands, thr = atss_assign(anchors, [5, 5], torch.tensor([gt]), topk=4, return_details=True)
    assert sorted(cands[:, 0].tolist()) == [0, 1, 2, 3, 5, 6, 7, 8]
    cand_ious = [0.390625, 1 / 3, 0, 0, 0, 0, 0.0625, 0]
    assert [_iou(a, gt) for a in level0[:4] + level1[:4]] == pytest.approx(cand_ious)
    expected_thr = statistics.mean(cand_ious) + statistics.stdev(cand_ious)  # 0.0983 + 0.1649 = 0.2632
    assert thr.item() == pytest.approx(expected_thr, rel=1e-6) and 1 / 3 > expected_thr > 0.0625
    assert assigned.tolist() == [0] + [-1] * 9
    # an anchor positive for two boxes goes to the one it overlaps more
    anchors = torch.tensor([[3, 0, 23, 20], [100, 100, 120, 120], [200, 200, 240, 240], [-100, -100, -60, -60]])
    gts = torch.tensor([[0, 0, 20, 20], [4, 0, 24, 20]], dtype=torch.float32)  # IoU 340/460 and 380/420
    assigned = atss_assign(anchors.float(), [2, 2], gts, topk=2)
    assert assigned.tolist() == [1, -1, -1, -1]
    assigned = atss_assign(anchors.float(), [2, 2], gts[:1], topk=2)
    assert assigned.tolist() == [0, -1, -1, -1]
    assert atss_assign(anchors.float(), [2, 2], gts[:0]).tolist() == [-1] * 4


def test_loss_terms_by_hand():
    # anchors: 0 and 1 positive, 2 negative, 3 outside the image's padded area (ignored)
    anchors = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [50, 50, 60, 60], [90, 90, 100, 100]], dtype=torch.float32)
    gts = torch.tensor([[0, 0, 10, 20], [10, 0, 40, 10], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    labels = torch.tensor([[1, 0, -1, -1]])
    valid = torch.tensor([[True, True, True, False]])
    logits = torch.tensor([[[0.3, -0.2], [1.0, 0.5], [-1.5, 2.0], [9.0, 9.0]]])
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 0, 0] = 1.0  # dx = 1 / 10 of the width: the box moves right by 1 -> [1, 0, 11, 10]
    ctr_logits = torch.tensor([[0.5, -1.0, 3.0, 3.0]])
    losses = atss_loss_terms(logits, deltas, ctr_logits, anchors, labels, gts[None], valid)

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    def focal(x: float, t: int) -> float:
        p = sig(x)
        return -0.25 * (1 - p) ** 2 * math.log(p) if t else -0.75 * p**2 * math.log(1 - p)

    onehot = [[0, 1], [1, 0], [0, 0]]
    n_pos = 2
    focal_sum = sum(focal(logits[0, i, c].item(), onehot[i][c]) for i in range(3) for c in range(2))
    assert losses["loss_cls"].item() == pytest.approx(focal_sum / n_pos, rel=1e-5)
    # centerness targets: anchor centres (5, 5) in [0, 0, 10, 20]; (15, 5) in [10, 0, 40, 10]
    c0 = math.sqrt(5 / 5 * (5 / 15))
    c1 = math.sqrt(5 / 25 * (5 / 5))
    # GIoU: [1, 0, 11, 10] vs [0, 0, 10, 20]: IoU 90/210, hull 220; [10, 0, 20, 10] vs [10, 0, 40, 10]: IoU 1/3
    giou0 = 1 - (90 / 210 - (220 - 210) / 220)
    giou1 = 1 - 1 / 3
    assert losses["loss_bbox"].item() == pytest.approx(2 * (giou0 * c0 + giou1 * c1) / (c0 + c1), rel=1e-5)

    def bce(x: float, t: float) -> float:
        return -(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))

    assert losses["loss_centerness"].item() == pytest.approx((bce(0.5, c0) + bce(-1.0, c1)) / n_pos, rel=1e-5)
    # no positives: the normaliser is 1 per image and the box losses are zero (with gradients)
    none = atss_loss_terms(logits, deltas, ctr_logits, anchors, torch.full((1, 4), -1), gts[None], valid)
    assert none["loss_bbox"].item() == 0 and none["loss_centerness"].item() == 0
    neg_sum = sum(focal(logits[0, i, c].item(), 0) for i in range(3) for c in range(2))
    assert none["loss_cls"].item() == pytest.approx(neg_sum, rel=1e-5)


def test_anchors_and_valid_flags_follow_mmdet():
    a = grid_anchors([(2, 3)], [16])[0]
    # row-major, centred on (x, y) * stride, side 8 * stride
    assert a.tolist()[:2] == [[-64, -64, 64, 64], [-48, -64, 80, 64]] and a.tolist()[3] == [-64, -48, 64, 80]
    model = atss("focalnet_tiny_srf", 3, **TINY)
    # a 70x100 image in a batch padded to 128x160: its own padded size is 96x128
    flags = model.valid_flags([(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)], (70, 100))
    lvl0 = flags[:320].reshape(16, 20)
    assert lvl0[:12, :16].all() and not lvl0[12:].any() and not lvl0[:, 16:].any()
    assert flags[-2:].tolist() == [True, False]  # stride 128: ceil(128 / 128) = 1 column


# ---------------------------------------------------------------------------------------------- API / CLI
def test_builders_and_config_dispatch():
    model = build_detector("atss", "focalnet_tiny_srf", 5, **TINY)
    assert isinstance(model, ATSS) and model.head.atss_cls.out_channels == 4 and model.num_classes == 5
    assert len(model.head.cls_convs) == 2 and model.backbone.strides == [8, 16, 32, 64, 128]
    big = atss("focalnet_tiny_lrf", 81)
    assert big.backbone.body.cfg.focal_windows == (11, 9, 9, 7) and big.backbone.body.cfg.drop_path_rate == 0.3
    assert big.nms_thresh == 0.6 and big.score_thresh == 0.05 and big.detections_per_img == 100
    assert sum(p.numel() for p in big.parameters()) == 37_209_066
    mc = ModelConfig(detector="atss", backbone="focalnet_tiny_srf", score_thresh=0.1, detections_per_img=7)
    kw = detector_kwargs_from_config(mc, 3)
    kw["backbone_overrides"] = {"embed_dim": 16, "depths": (1, 1, 1, 1)}
    m = build_detector(**kw)
    assert m.score_thresh == 0.1 and m.detections_per_img == 7 and m.nms_thresh == 0.6
    with pytest.raises(TypeError, match="unknown ATSS option"):
        atss("focalnet_tiny_srf", 3, **TINY, nope=1)
    # training mode: a loss dict, finite, with gradients into every head branch
    model.train()
    torch.manual_seed(0)
    imgs = [torch.rand(3, 128, 150), torch.rand(3, 100, 128)]
    tgts = [
        {"boxes": torch.tensor([[10.0, 20, 60, 80], [70, 10, 120, 50]]), "labels": torch.tensor([1, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model(imgs, tgts)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_bbox"] > 0
    sum(losses.values()).backward()
    assert model.head.atss_centerness.weight.grad.abs().sum() > 0 and model.head.scales[0].scale.grad is not None
    for bad in ([1, 5], [0, 1], [1]):
        with pytest.raises(ValueError, match="labels"):
            model(imgs[:1], [{"boxes": tgts[0]["boxes"], "labels": torch.tensor(bad)}])
    with pytest.raises(ValueError, match="positive width"):
        model(imgs[:1], [{"boxes": torch.tensor([[10.0, 10, 5, 30]]), "labels": torch.tensor([1])}])


TINY_CONFIG = tiny_run_config({"detector": "atss", "detector_overrides": {"stacked_convs": 2, "gn_groups": 8}})
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


def test_learns_generated_shapes_and_evaluates_predicts(trained):
    root, out, stdout = trained
    m = json.loads((out / "metrics.json").read_text())
    assert m["bbox_mAP_50"] >= 0.9 and m["bbox_mAP"] >= 0.6, m
    assert "segm_mAP" not in m and "bbox_mAP=" in stdout
    results = json.loads((out / "results.json").read_text())
    assert {r["category_id"] for r in results} <= {3, 7} and "segmentation" not in results[0]
    rc, stdout, stderr = run_cli(
        "detection", "evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(root), "--workers", "0", "--json"
    )
    assert rc == 0, stderr
    assert json.loads(stdout)["bbox_mAP"] == pytest.approx(m["bbox_mAP"], abs=1e-9)
    pred = out / "pred"
    rc, _, stderr = run_cli(
        "detection",
        "predict",
        str(root / "val2017/0000.png"),
        "--checkpoint",
        str(out / "model.pt"),
        "--out",
        str(pred),
    )
    assert rc == 0, stderr
    dets = json.loads((pred / "detections.json").read_text())[0]["detections"]
    assert len(dets) >= 2 and {d["label"] for d in dets} <= {"square", "disc"} and (pred / "0000.png").exists()


def test_cli_train_with_every_option(tmp_path):
    """One step of `focalnet detection train --detector atss` with each training flag, then the run's model."""
    import focalnet

    root = tmp_path / "data"
    make_shapes(root, 2, 96, split="train")
    cls = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1))
    focalnet.save_model(cls, tmp_path / "in1k.safetensors")
    rc, stdout, stderr = run_cli(
        "detection",
        "train",
        "--detector",
        "atss",
        "--config",
        "atss_focalnet_cpu_tiny",
        "--backbone",
        "focalnet_tiny_srf",
        "--backbone-checkpoint",
        str(tmp_path / "in1k.safetensors"),
        "--data",
        str(root),
        "--output",
        str(tmp_path / "run"),
        "--min-size",
        "96",
        "--max-size",
        "128",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--set",
        "model.backbone_overrides.embed_dim=16",
        "model.fpn_channels=32",
        "model.detector_overrides.gn_groups=8",
        "model.detections_per_img=5",
    )
    assert rc == 0, stderr
    cfg = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert cfg["model"]["detector"] == "atss" and cfg["model"]["min_size"] == 96 and cfg["epochs"] == 1
    assert max(cfg["data"]["scales"]) == 96 and cfg["model"]["nms_thresh"] == 0.6
    model, meta = load_detector(tmp_path / "run/model.pt")
    assert isinstance(model, ATSS) and model.detections_per_img == 5 and model.transform.min_size == (96,)
    assert meta["class_names"] == ["square", "disc"] and model.head.atss_cls.out_channels == 2
    w, w0 = model.backbone.body.layers[1].blocks[0].mlp.fc1.weight, cls.layers[1].blocks[0].mlp.fc1.weight
    assert torch.allclose(w, w0, atol=1e-3) and not torch.equal(w, w0)  # initialised from the file, one step taken
    log = (tmp_path / "run/train.log").read_text()
    assert "atss with focalnet_tiny_srf" in log


def test_packaged_configs_follow_the_released_recipe():
    from focalnet.detection import DetectionConfig, config_path, list_configs
    from focalnet.engine.config import load_config

    row = next(
        r for r in json.loads(need(REFERENCE / "model-zoo.json").read_text())["coco_other"] if r["method"] == "ATSS"
    )
    assert "atss_focalnet_cpu_tiny" in list_configs()
    cfg = load_config(DetectionConfig, config_path("atss_focalnet_tiny_lrf_3x"))
    hp = _reference()["hyperparameters"]
    assert cfg.model.detector == "atss" and cfg.model.backbone == "focalnet_tiny_lrf"
    assert cfg.model.focal_windows == row["kernels"] == hp["backbone"]["focal_windows"]
    assert cfg.model.drop_path_rate == hp["backbone"]["drop_path_rate"] == 0.3
    assert (cfg.model.nms_thresh, cfg.model.score_thresh) == (0.6, 0.05) and row["schedule"] == "3x"
    assert (cfg.epochs, cfg.optim.lr_steps, cfg.optim.lr, cfg.optim.weight_decay) == (36, [27, 33], 1e-4, 0.05)
    assert cfg.data.scales == list(range(480, 801, 32)) and cfg.data.crop_branch and cfg.data.crop_range == [384, 600]
    assert (cfg.model.min_size, cfg.model.max_size, cfg.batch_size) == (800, 1333, 2)
