"""Cascade Mask R-CNN: original-layout files, stage targets and losses by hand, training, CLI, configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torchvision.ops import MultiScaleRoIAlign, box_iou

from detection_synth import make_shapes, tiny_run_config
from focalnet.detection import DetectionConfig, cascade_mask_rcnn, list_configs, load_detector
from focalnet.detection.cascade import CascadeRoIHeads, ConvFCBoxHead
from focalnet.detection.config import config_path
from focalnet.detection.convert import load_strict
from focalnet.engine import load_config

from conftest import REFERENCE, need, run_cli

CASCADE_REF = REFERENCE / "detection" / "cascade_mask_rcnn_focalnet_tiny_lrf_3x.json"


# ---------------------------------------------------------------------------------------------- original files
def _seeded_state_dict(ref: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in ref["state_dict"]:
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1 and k.endswith("weight"):
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[k] = 0.02 * torch.randn(shape, generator=g)
    return sd


def test_original_file_loads_strictly_with_the_reference_parameter_count(tmp_path):
    ref = json.loads(need(CASCADE_REF).read_text())
    sd = _seeded_state_dict(ref)
    path = tmp_path / "cascade_mask_rcnn_focalnet_tiny_lrf_3x.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": sd}, path)
    few = {"rpn_pre_nms_top_n_test": 20, "rpn_post_nms_top_n_test": 10}
    model, meta = load_detector(path, detector_overrides=few, detections_per_img=5, min_size=160, max_size=224)
    assert type(model).__name__ == "CascadeMaskRCNN" and meta["source"] == "mmdetection"
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 87104514
    assert model.backbone.body.cfg.focal_windows == (11, 9, 9, 7)
    assert len(model.state_dict()) == ref["num_state_dict_entries"]
    rh = model.roi_heads
    assert rh.num_stages == 3 and rh.box_roi_pool.aligned  # mmdet RoIAlign for mmdet files
    # background moves from last to first, regression rows and mask logits stay; BN statistics travel
    for i in range(3):
        w = sd[f"roi_head.bbox_head.{i}.fc_cls.weight"]
        torch.testing.assert_close(rh.box_heads[i].cls_score.weight, torch.cat([w[-1:], w[:-1]]))
        torch.testing.assert_close(rh.box_heads[i].bbox_pred.bias, sd[f"roi_head.bbox_head.{i}.fc_reg.bias"])
        bn = rh.box_heads[i].shared_convs[3][1]
        torch.testing.assert_close(bn.running_var, sd[f"roi_head.bbox_head.{i}.shared_convs.3.bn.running_var"])
        torch.testing.assert_close(
            rh.mask_predictors[i].mask_fcn_logits.weight, sd[f"roi_head.mask_head.{i}.conv_logits.weight"]
        )
    # the released settings and the parameter breakdown of the reference
    hp = ref["hyperparameters"]
    assert rh.stage_iou_thresholds == tuple(c["assigner"]["pos_iou_thr"] for c in hp["train_cfg"]["rcnn"])
    assert rh.stage_loss_weights == tuple(hp["roi_head"]["stage_loss_weights"])
    assert rh.stage_box_stds == tuple(tuple(h["bbox_coder"]["target_stds"]) for h in hp["roi_head"]["bbox_head"])
    assert rh.sampler.batch_size_per_image == 512 and rh.sampler.positive_fraction == 0.25
    assert (rh.score_thresh, rh.nms_thresh) == (0.05, 0.5)
    assert model.rpn._post_nms_top_n["training"] == 2000
    counts = ref["num_params_by_top_module"]
    assert sum(p.numel() for p in model.backbone.body.parameters()) == counts["backbone"]
    assert sum(p.numel() for p in model.backbone.fpn.parameters()) == counts["neck"]
    assert sum(p.numel() for p in model.rpn.parameters()) == counts["rpn_head"]
    assert sum(p.numel() for p in rh.parameters()) == counts["roi_head"]
    rh.score_thresh = 0.0
    with torch.no_grad():
        outs = model([torch.rand(3, 150, 200), torch.rand(3, 120, 180)])
    for out, (h, w) in zip(outs, [(150, 200), (120, 180)]):
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        n = len(out["boxes"])
        assert 0 < n <= 5 and out["boxes"].shape == (n, 4) and out["masks"].shape == (n, 1, h, w)
        assert out["labels"].min() >= 1 and out["labels"].max() <= 80
        assert (out["boxes"][:, 2] <= w).all() and (out["boxes"][:, 3] <= h).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all() and out["masks"].max() <= 1
    # a file that does not fit names what is missing, unexpected and mis-shaped
    from focalnet.detection import convert_mmdet_cascade_state_dict

    bad = convert_mmdet_cascade_state_dict(sd)
    del bad["roi_heads.box_heads.1.shared_fc.bias"]
    bad["roi_heads.box_heads.3.cls_score.bias"] = torch.zeros(81)
    bad["roi_heads.mask_predictors.2.mask_fcn_logits.bias"] = torch.zeros(81)
    with pytest.raises(ValueError) as e:
        load_strict(model, bad, "file")
    msg = str(e.value)
    assert "missing ['roi_heads.box_heads.1.shared_fc.bias']" in msg
    assert "unexpected ['roi_heads.box_heads.3.cls_score.bias']" in msg
    assert "roi_heads.mask_predictors.2.mask_fcn_logits.bias (81,) (model (80,))" in msg
    with pytest.raises(ValueError, match="unknown mmdetection keys"):
        convert_mmdet_cascade_state_dict({**sd, "roi_head.bbox_head.0.extra.weight": torch.zeros(1)})


@pytest.mark.slow
def test_convert_cli_writes_a_checkpoint_that_reloads_identically(tmp_path):
    ref = json.loads(need(CASCADE_REF).read_text())
    path = tmp_path / "cascade.pth"
    torch.save({"meta": {}, "state_dict": _seeded_state_dict(ref)}, path)
    rc, stdout, stderr = run_cli("detection", "convert", str(path), str(tmp_path / "converted.pt"))
    assert rc == 0 and "cascade_mask_rcnn" in stdout, stderr
    model, _ = load_detector(path)
    again, meta = load_detector(tmp_path / "converted.pt")
    assert meta["source"] == "focalnet" and type(again).__name__ == "CascadeMaskRCNN"
    assert again.roi_heads.box_roi_pool.aligned and again.backbone.body.cfg.focal_windows == (11, 9, 9, 7)
    other = again.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, other[k]), k


# ---------------------------------------------------------------------------------------------- targets by hand
def _tiny_heads(**kw) -> CascadeRoIHeads:
    torch.manual_seed(0)
    heads = [ConvFCBoxHead(8, 3, 8, 1, 16) for _ in range(3)]
    return CascadeRoIHeads(MultiScaleRoIAlign(["0"], 7, 2), heads, **kw)


GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
# IoU with GT: 0.55, 0.65, 0.8, 0.3, 0
PROPS = torch.tensor(
    [[0, 0, 100, 55], [0, 0, 100, 65], [0, 0, 100, 80], [0, 0, 100, 30], [200, 200, 250, 250]], dtype=torch.float
)


def test_stage_targets_positives_and_regression_targets_by_hand():
    rh = _tiny_heads()
    torch.testing.assert_close(box_iou(GT, PROPS)[0], torch.tensor([0.55, 0.65, 0.8, 0.3, 0.0]))
    expected_pos = [{0, 1, 2, 5}, {1, 2, 5}, {2, 5}]  # index 5: the ground truth added as a proposal
    for s in range(3):
        rois, labels, idx, is_gt = rh.stage_targets(s, [PROPS], [GT], [torch.tensor([2])])
        cand = torch.cat([PROPS, GT])
        order = [int(torch.where((cand == r).all(1))[0][0]) for r in rois[0]]
        assert sorted(order) == list(range(6))  # 512 RoIs asked for: everything is sampled
        pos = {o for o, lab in zip(order, labels[0].tolist()) if lab > 0}
        assert pos == expected_pos[s], s
        assert set(labels[0].tolist()) <= {0, 2} and (idx[0][labels[0] > 0] == 0).all()
        assert (idx[0][labels[0] == 0] == -1).all() and is_gt[0].tolist() == [o == 5 for o in order]
    # an image without objects: every RoI is a background sample
    rois, labels, idx, is_gt = rh.stage_targets(0, [PROPS], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)])
    assert len(rois[0]) == 5 and (labels[0] == 0).all() and (idx[0] == -1).all() and not is_gt[0].any()
    # regression targets with each stage's stds: (dx/w, dy/h, log dw, log dh) / std
    px, py, pw, ph = 50.0, 32.5, 100.0, 65.0  # centre/size of PROPS[1]
    for s, std in enumerate([(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]):
        hand = torch.tensor(
            [(50 - px) / pw / std[0], (50 - py) / ph / std[1], math.log(100 / pw) / std[2], math.log(100 / ph) / std[3]]
        )
        t = rh.box_coders[s].encode_single(GT, PROPS[1:2])[0]
        torch.testing.assert_close(t, hand)
        torch.testing.assert_close(rh.box_coders[s].decode_single(t[None], PROPS[1:2]), GT)


def test_stage_losses_weights_and_giou_by_hand():
    rh = _tiny_heads()
    for h in rh.box_heads:  # all-zero predictors: logits 0 (CE = log 3), deltas 0 (decoded box = RoI)
        for lin in (h.cls_score, h.bbox_pred):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
    rh.train()
    feats = {"0": torch.randn(1, 8, 64, 64)}
    targets = [{"boxes": GT, "labels": torch.tensor([2])}]
    losses = rh(feats, [PROPS], [(256, 256)], targets)[1]
    iou = [0.55, 0.65, 0.8, 0.3, 0.0]
    pos = [[0, 1, 2], [1, 2], [2]]
    for s, w in enumerate((1.0, 0.5, 0.25)):
        # 6 RoIs per stage (5 proposals + the ground truth); GIoU = IoU here (the GT encloses every positive)
        giou = 10 * sum(1 - iou[i] for i in pos[s]) / 6
        torch.testing.assert_close(losses[f"loss_box_giou_s{s}"], torch.tensor(w * giou))
        torch.testing.assert_close(losses[f"loss_classifier_s{s}"], torch.tensor(w * math.log(3)))
    # a stage's GIoU term selects the deltas of the labelled class and divides by all sampled RoIs
    deltas = torch.zeros(3, 8)
    deltas[0, 4:] = torch.tensor([0.0, 0.0, math.log(2) / 0.2, 0.0])  # class 2: twice as wide
    rois = torch.tensor([[0.0, 0, 50, 100], [0, 0, 100, 100], [300, 300, 310, 310]])
    labels = torch.tensor([2, 1, 0])
    gt = torch.tensor([[0.0, 0, 100, 100], [0, 0, 50, 50], [0, 0, 1, 1]])
    cls, box = rh.stage_box_loss(0, torch.zeros(3, 3), deltas, rois, labels, gt)
    # roi 0 widened about its centre to [-25, 0, 75, 100]: IoU 75/125 = 0.6, enclosing 125x100 = union -> GIoU 0.6
    # roi 1 (class 1, zero deltas) vs [0,0,50,50]: IoU 0.25, enclosing = roi -> GIoU 0.25
    torch.testing.assert_close(box, torch.tensor(10 * ((1 - 0.6) + (1 - 0.25)) / 3))
    torch.testing.assert_close(cls, torch.tensor(math.log(3)))


def test_refinement_between_stages_drops_added_ground_truths():
    rh = _tiny_heads(batch_size_per_image=4, positive_fraction=0.5)
    rois, labels, idx, is_gt = rh.stage_targets(0, [PROPS], [GT], [torch.tensor([1])])
    assert len(rois[0]) == 4 and (labels[0] > 0).sum() == 2  # 2 of 4 positives, 2 of 2 negatives
    logits = torch.tensor([[0.0, 5.0, 1.0]]).repeat(4, 1)  # best foreground class: 1
    deltas = torch.zeros(4, 8)
    deltas[:, 4:6] = 1.0  # class 2 shifts by (0.1 w, 0.1 h); class 1 keeps the box
    lab = labels[0].clone()
    lab[lab > 0] = 2  # positives regress with their ground-truth class, negatives with the best class
    refined = rh.refine(0, rois, logits, deltas, lab, [(90, 300)])[0]
    for r, new, lb in zip(rois[0], refined, lab):
        w, h = r[2] - r[0], r[3] - r[1]
        shift = torch.stack([w, h, w, h]) * 0.1 if lb == 2 else torch.zeros(4)
        torch.testing.assert_close(new, torch.minimum(r + shift, torch.tensor([300.0, 90, 300, 90])))
    assert len(refined[~is_gt[0]]) == 4 - int(is_gt[0].sum())


# ---------------------------------------------------------------------------------------------- training, CLI
TINY = tiny_run_config(
    {
        "detector": "cascade_mask_rcnn",
        "representation_size": 128,
        "mask_head_channels": 16,
        "detections_per_img": 20,
        "detector_overrides": {
            "rpn_pre_nms_top_n_train": 300,
            "rpn_post_nms_top_n_train": 100,
            "rpn_pre_nms_top_n_test": 200,
            "rpn_post_nms_top_n_test": 100,
            "box_batch_size_per_image": 64,
            "box_num_convs": 1,
        },
    }
)


def _shapes(root, n: int) -> None:
    make_shapes(root, n, 128, split="train")
    make_shapes(root, n, 128, split="val")  # the same images


def test_cli_train_evaluate_predict_with_cascade(tmp_path):
    _shapes(tmp_path, 2)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "detector": "mask_rcnn"}}))
    out = tmp_path / "run"
    rc, stdout, stderr = run_cli(
        "detection", "train", "--config", str(cfg), "--detector", "cascade_mask_rcnn", "--data", str(tmp_path),
        "--output", str(out), "--max-steps", "1", "--batch-size", "2", "--min-size", "128", "--max-size", "160",
    )  # fmt: skip
    assert rc == 0, stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["detector"] == "cascade_mask_rcnn"
    m = json.loads((out / "metrics.json").read_text())
    assert "segm_mAP" in m and m["history"][-1]["step"] == 1
    model, meta = load_detector(out / "model.pt")
    assert type(model).__name__ == "CascadeMaskRCNN" and meta["class_names"] == ["square", "disc"]
    rc, stdout, stderr = run_cli(
        "detection", "evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(tmp_path),
        "--workers", "0", "--json",
    )  # fmt: skip
    assert rc == 0, stderr
    assert json.loads(stdout)["segm_mAP"] == pytest.approx(m["segm_mAP"], abs=1e-9)
    rc, stdout, stderr = run_cli(
        "detection", "predict", str(tmp_path / "val2017" / "0000.png"), "--checkpoint", str(out / "model.pt"),
        "--out", str(tmp_path / "pred"), "--score-thr", "0.0",
    )  # fmt: skip
    assert rc == 0, stderr
    assert (tmp_path / "pred" / "detections.json").exists()


def test_learns_generated_shapes(tmp_path):
    # 60 steps of batch 4 on 4 generated 128 px images: 18 s on the shared 2-core machine (load ~6)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _shapes(tmp_path, 4)
        cfg = tmp_path / "tiny.yaml"
        cfg.write_text(yaml.safe_dump(TINY))
        out = tmp_path / "run"
        rc, stdout, stderr = run_cli(
            "detection", "train", "--config", str(cfg), "--data", str(tmp_path), "--output", str(out),
            "--max-steps", "60", "--batch-size", "4", "--set", "seed=0",
        )  # fmt: skip
        assert rc == 0, stderr
    finally:
        torch.set_num_threads(n)
    m = json.loads((out / "metrics.json").read_text())
    assert m["bbox_mAP_50"] >= 0.9 and m["bbox_mAP"] >= 0.5, m
    assert m["segm_mAP_50"] >= 0.9 and m["segm_mAP"] >= 0.5, m


# ---------------------------------------------------------------------------------------------- configs
def test_packaged_configs_follow_the_released_recipe():
    zoo = json.loads(need(REFERENCE / "model-zoo.json").read_text())["coco_other"]
    row = next(r for r in zoo if r["method"] == "Cascade Mask R-CNN")
    cfg = load_config(DetectionConfig, config_path("cascade_mask_rcnn_focalnet_tiny_lrf_3x"))
    assert cfg.model.detector == "cascade_mask_rcnn" and cfg.model.backbone == "focalnet_tiny_lrf"
    assert cfg.model.focal_windows == row["kernels"] == [11, 9, 9, 7] and cfg.model.drop_path_rate == 0.3
    assert (cfg.epochs, cfg.optim.lr_steps, cfg.optim.lr, cfg.optim.weight_decay) == (36, [27, 33], 1e-4, 0.05)
    assert cfg.data.scales == list(range(480, 801, 32)) and cfg.data.crop_branch
    assert (cfg.model.min_size, cfg.model.max_size) == (800, 1333)
    tiny = load_config(DetectionConfig, config_path("cascade_mask_rcnn_focalnet_cpu_tiny"))
    assert tiny.model.detector == "cascade_mask_rcnn" and "cascade_mask_rcnn_focalnet_cpu_tiny" in list_configs()
    with pytest.raises(TypeError, match="unknown Cascade Mask R-CNN option"):
        cascade_mask_rcnn(box_fg_iou_thresh=0.5)
    with pytest.raises(ValueError, match="one entry per stage"):
        cascade_mask_rcnn(embed_dim=16, depths=(1, 1, 1, 1), stage_loss_weights=(1.0, 0.5))
