"""FocalNet-DINO training: contrastive denoising queries, the set criterion, learning, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn

from detection_synth import make_shapes
from focalnet.detection.config import DetectionConfig, ModelConfig, OptimConfig, config_path
from focalnet.detection.dino.criterion import DINOCriterion, dn_match_indices
from focalnet.detection.dino.denoising import (
    dn_attention_mask,
    dn_post_process,
    inverse_sigmoid,
    num_dn_groups,
    prepare_for_cdn,
)
from focalnet.detection.train import build_model, build_optimizer, build_scheduler, train
from focalnet.engine.config import build_config

from conftest import REFERENCE, need, run_cli


def _targets(counts: list[int], seed: int = 0, num_classes: int = 5) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        cxcy = torch.rand(n, 2, generator=g) * 0.4 + 0.3  # well inside the image: no clamping
        wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
        out.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return out


def _xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


# ---------------------------------------------------------------------------------------------- denoising
@pytest.mark.parametrize(
    "dn_number,max_boxes,groups",
    [(100, 5, 20), (100, 3, 33), (100, 1, 100), (100, 0, 1), (100, 101, 1), (20, 4, 40), (0, 3, 1)],
)
def test_num_dn_groups(dn_number, max_boxes, groups):
    assert num_dn_groups(dn_number, max_boxes) == groups


def test_cdn_shapes_and_meta():
    emb = nn.Embedding(6, 16)
    targets = _targets([3, 5, 0])
    ql, qb, mask, meta = prepare_for_cdn((targets, 100, 0.5, 0.4), True, 7, 5, 16, emb)
    assert meta == {"pad_size": 200, "num_dn_group": 20}  # 200 // (2 * 5) groups of 2 * 5 slots
    assert ql.shape == (3, 200, 16) and qb.shape == (3, 200, 4) and mask.shape == (207, 207)
    assert mask.dtype == torch.bool
    assert prepare_for_cdn((targets, 100, 0.5, 0.4), False, 7, 5, 16, emb) == (None, None, None, None)
    # a batch without boxes: no denoising queries, nothing blocked
    ql, qb, mask, meta = prepare_for_cdn((_targets([0, 0]), 100, 0.5, 0.4), True, 4, 5, 16, emb)
    assert meta == {"pad_size": 0, "num_dn_group": 1} and ql.shape == (2, 0, 16) and not mask.any()


def test_cdn_attention_mask_tiny():
    # 1 box per image -> groups of 2 slots (positive, negative); 2 groups; 2 matching queries
    expected = torch.tensor(
        [
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(dn_attention_mask(1, 2, 2), expected)
    emb = nn.Embedding(6, 4)
    _, _, mask, meta = prepare_for_cdn((_targets([1, 1]), 1, 0.0, 0.4), True, 2, 5, 4, emb)  # 2 * 1 groups
    assert meta == {"pad_size": 4, "num_dn_group": 2} and torch.equal(mask, expected)


def test_cdn_query_layout_and_box_noise_ranges():
    lam = 0.4
    counts = [6, 4]
    targets = _targets(counts, seed=1)
    emb = nn.Embedding(6, 8)
    g = torch.Generator().manual_seed(0)
    ql, qb, _, meta = prepare_for_cdn((targets, 100, 0.0, lam), True, 3, 5, 8, emb, generator=g)
    groups, single = meta["num_dn_group"], max(counts)
    assert groups == 200 // (2 * single)
    boxes = qb.sigmoid()
    pos_r, neg_r = [], []
    for b, t in enumerate(targets):
        gt = _xyxy(t["boxes"])
        half = t["boxes"][:, 2:].repeat(1, 2) / 2
        for grp in range(groups):
            base = grp * 2 * single
            n = counts[b]
            for start, store in ((base, pos_r), (base + single, neg_r)):
                shift = (_xyxy(boxes[b, start : start + n]) - gt).abs() / half
                store.append(shift)
                # labels without label noise are the ground truth's embedding
                assert torch.allclose(ql[b, start : start + n], emb(t["labels"]))
            # padding slots of the image with fewer boxes stay empty
            assert not ql[b, base + n : base + single].any() and not ql[b, base + single + n : base + 2 * single].any()
    pos, neg = torch.cat(pos_r), torch.cat(neg_r)
    tol = 1e-4
    assert pos.max() < lam + tol and pos.min() >= 0  # positives: within lambda/2 of the side (shift / (side/2))
    assert neg.min() > lam - tol and neg.max() < 2 * lam + tol  # negatives: between lambda/2 and lambda
    assert pos.mean() < 0.6 * lam and neg.mean() > 1.4 * lam  # uniform draws, not piled at the bounds


def test_cdn_label_noise_seeded():
    num_classes = 10
    emb = nn.Embedding(num_classes, num_classes)
    with torch.no_grad():
        emb.weight.copy_(torch.eye(num_classes))  # label read back by argmax
    targets = _targets([40] * 8, seed=2, num_classes=num_classes)

    def labels(seed: int, ratio: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        ql, _, _, meta = prepare_for_cdn((targets, 100, ratio, 0.4), True, 3, num_classes, num_classes, emb, g)
        assert meta["num_dn_group"] == 2
        return ql.argmax(-1)

    gt = torch.stack([t["labels"] for t in targets]).repeat(1, 4)  # 2 groups x (positive, negative)
    assert torch.equal(labels(0, 0.0), gt)
    a, b, c = labels(0, 0.5), labels(0, 0.5), labels(1, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # each label is redrawn with probability ratio / 2, uniformly over the classes (may land on itself)
    changed = (a != gt).float().mean().item()
    expected = 0.25 * (num_classes - 1) / num_classes
    n = gt.numel()
    assert abs(changed - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    assert (labels(3, 1.0) != gt).float().mean().item() > 0.35  # ratio 1: half redrawn


def test_cdn_label_range_checked():
    t = [{"labels": torch.tensor([5]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}]
    with pytest.raises(ValueError, match="labels must lie in 0..4"):
        prepare_for_cdn((t, 100, 0.5, 0.4), True, 3, 5, 4, nn.Embedding(6, 4))


def test_inverse_sigmoid_and_post_process():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    y = inverse_sigmoid(x)
    assert torch.allclose(y[1:3], torch.logit(x[1:3])) and y[0] == math.log(1e-3) and y[3] == -math.log(1e-3)
    cls, coord = torch.randn(3, 2, 4 + 5, 7), torch.rand(3, 2, 4 + 5, 4)
    meta = {"pad_size": 4, "num_dn_group": 2}

    def set_aux(a, b):
        return [{"pred_logits": u, "pred_boxes": v} for u, v in zip(a[:-1], b[:-1])]

    c2, b2 = dn_post_process(cls, coord, meta, True, set_aux)
    assert torch.equal(c2, cls[:, :, 4:]) and torch.equal(b2, coord[:, :, 4:])
    known = meta["output_known_lbs_bboxes"]
    assert torch.equal(known["pred_logits"], cls[-1, :, :4]) and len(known["aux_outputs"]) == 2
    assert torch.equal(known["aux_outputs"][0]["pred_boxes"], coord[0, :, :4])
    c3, _ = dn_post_process(cls, coord, None, True, set_aux)
    assert c3 is cls


# ---------------------------------------------------------------------------------------------- criterion
def _focal(logit: float, target: float, alpha: float = 0.25) -> float:
    p = 1 / (1 + math.exp(-logit))
    if target:
        return alpha * (1 - p) ** 2 * -math.log(p)
    return (1 - alpha) * p**2 * -math.log(1 - p)


GT = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
# query 1 is the good one: box shifted by 0.05 in x -> L1 0.05, IoU 0.6, enclosing box = union -> GIoU 0.6
GOOD, FAR = [0.55, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]
LOGITS = [[-2.0, -3.0], [2.0, -1.0]]


def _pred(logits=LOGITS, boxes=(FAR, GOOD)):
    return {"pred_logits": torch.tensor([logits]), "pred_boxes": torch.tensor([list(boxes)])}


def _hand(logits, matched: int | None, l1: float, giou: float, norm: float = 1.0) -> dict[str, float]:
    ce = sum(
        _focal(v, 1.0 if (q == matched and c == 0) else 0.0) for q, row in enumerate(logits) for c, v in enumerate(row)
    )
    return {"loss_ce": ce / norm, "loss_bbox": 5 * l1 / norm, "loss_giou": 2 * (1 - giou) / norm}


def _close(losses: dict[str, torch.Tensor], expected: dict[str, float], suffix: str) -> None:
    for k, v in expected.items():
        assert float(losses[k + suffix]) == pytest.approx(v, rel=1e-5, abs=1e-6), k + suffix


def test_criterion_hand_computed():
    crit = DINOCriterion(num_classes=2).train()
    expected = _hand(LOGITS, matched=1, l1=0.05, giou=0.6)  # L1: |0.55 - 0.5| on one coordinate
    # aux layer with the queries swapped (matching must follow), encoder proposals as the last layer
    aux_logits = [LOGITS[1], LOGITS[0]]
    outputs = {
        **_pred(),
        "aux_outputs": [_pred(aux_logits, (GOOD, FAR))],
        "interm_outputs": _pred(),
        # denoising: 2 groups of (positive, negative) slots for one box per image
        "dn_meta": {
            "pad_size": 4,
            "num_dn_group": 2,
            "output_known_lbs_bboxes": {
                "pred_logits": torch.tensor([[[1.0, 0.0], [0.5, -0.5], [3.0, -2.0], [-1.0, 1.0]]]),
                "pred_boxes": torch.tensor([[GOOD, FAR, [0.5, 0.5, 0.2, 0.2], GOOD]]),
                "aux_outputs": [_pred([[0.0, 0.0]] * 4, (GT["boxes"][0].tolist(),) * 4)],
            },
        },
    }
    losses = crit(outputs, [GT])
    names = {f"loss_{k}{s}" for k in ("ce", "bbox", "giou") for s in ("", "_0", "_interm", "_dn", "_dn_0")}
    assert set(losses) == names
    _close(losses, expected, "")
    _close(losses, _hand(aux_logits, matched=0, l1=0.05, giou=0.6), "_0")
    _close(losses, expected, "_interm")
    # dn: positives 0 and 2 reconstruct the box, negatives 1 and 3 are "no object"; / (num_boxes * groups)
    dn_logits = outputs["dn_meta"]["output_known_lbs_bboxes"]["pred_logits"][0].tolist()
    ce = sum(
        _focal(v, 1.0 if (q in (0, 2) and c == 0) else 0.0)
        for q, row in enumerate(dn_logits)
        for c, v in enumerate(row)
    )
    _close(losses, {"loss_ce": ce / 2, "loss_bbox": 5 * 0.05 / 2, "loss_giou": 2 * 0.4 / 2}, "_dn")
    ce0 = sum(_focal(0.0, 1.0 if (q in (0, 2) and c == 0) else 0.0) for q in range(4) for c in range(2))
    _close(losses, {"loss_ce": ce0 / 2, "loss_bbox": 0.0, "loss_giou": 0.0}, "_dn_0")
    # the total loss is the sum of the dict and reaches the logits
    logits = outputs["pred_logits"].requires_grad_()
    total = sum(crit(outputs, [GT]).values())
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_criterion_weights_eval_and_empty():
    crit = DINOCriterion(num_classes=2, weight_dict={"loss_bbox": 1.0, "loss_giou_interm": 0.0})
    outputs = {**_pred(), "interm_outputs": _pred(), "aux_outputs": [_pred()], "dn_meta": None}
    losses = crit(outputs, [GT])
    assert float(losses["loss_bbox"]) == pytest.approx(0.05) and float(losses["loss_giou_interm"]) == 0.0
    assert float(losses["loss_giou"]) == pytest.approx(0.8)
    assert float(losses["loss_giou_0"]) == pytest.approx(0.8)
    # no denoising output (eval, or dn off): the dn terms are zeros, for every layer
    assert {k for k in losses if "_dn" in k} == {f"loss_{k}_dn{s}" for k in ("ce", "bbox", "giou") for s in ("", "_0")}
    assert all(float(v) == 0.0 for k, v in losses.items() if "_dn" in k)
    # an image without ground truth: every query pushed to "no object", normalised by max(num_boxes, 1)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    losses = DINOCriterion(num_classes=2)(_pred(), [empty])
    _close(losses, _hand(LOGITS, matched=None, l1=0.0, giou=1.0), "")
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        crit(_pred(), [{"labels": torch.tensor([2]), "boxes": GT["boxes"]}])


def test_dn_match_indices():
    targets = _targets([2, 0, 1])
    idx = dn_match_indices(targets, {"pad_size": 12, "num_dn_group": 3})  # groups of 4 slots
    assert idx[0][0].tolist() == [0, 1, 4, 5, 8, 9] and idx[0][1].tolist() == [0, 1, 0, 1, 0, 1]
    assert idx[1][0].numel() == 0 and idx[2][0].tolist() == [0, 4, 8] and idx[2][1].tolist() == [0, 0, 0]


# ---------------------------------------------------------------------------------------------- configs, optimizer
@pytest.mark.parametrize(
    "name,levels,windows",
    [("dino_focalnet_large_fl3_4scale", 4, [5, 5, 5, 5]), ("dino_focalnet_large_fl4_5scale", 5, [3, 3, 3, 3])],
)
def test_packaged_configs_build_the_released_models(name, levels, windows):
    ref = json.loads(need(REFERENCE / "detection" / f"{name}.json").read_text())
    cfg = build_config(DetectionConfig, yaml.safe_load(config_path(name).read_text()))
    assert cfg.model.detector == "dino" and cfg.model.dino["num_feature_levels"] == levels
    assert cfg.model.focal_windows == windows
    o = ref["hyperparameters"]["optim"]
    assert cfg.optim.lr == o["lr"] and cfg.optim.lr * cfg.optim.backbone_lr_mult == pytest.approx(o["lr_backbone"])
    assert cfg.optim.weight_decay == o["weight_decay"] and cfg.optim.decay_all and cfg.grad_clip == o["clip_max_norm"]
    assert cfg.epochs == o["epochs"] and cfg.optim.lr_steps == [o["lr_drop"]] and cfg.optim.warmup_steps == 0
    aug = ref["hyperparameters"]["data_aug"]
    assert cfg.data.scales == aug["scales"] and cfg.data.max_size == aug["max_size"]
    assert cfg.data.crop_resize_scales == aug["scales2_resize"] and cfg.data.crop_range == aug["scales2_crop"]
    with torch.device("meta"):  # no memory, no init: only the structure
        model = build_model(cfg, 91)
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    assert len(model.state_dict()) == ref["num_state_dict_entries"]


TINY_DINO = {
    "num_feature_levels": 4,
    "hidden_dim": 32,
    "nheads": 4,
    "dim_feedforward": 128,
    "enc_layers": 1,
    "dec_layers": 2,
    "num_queries": 30,
    "num_select": 30,
    "dn_number": 20,
}
TINY_BACKBONE = {"embed_dim": 16, "depths": [1, 1, 1, 1], "drop_path_rate": 0.0}


def test_backbone_lr_multiplier_groups():
    model_cfg = ModelConfig(
        detector="dino", backbone="focalnet_tiny_srf", backbone_overrides=TINY_BACKBONE, dino=TINY_DINO
    )
    cfg = DetectionConfig(model=model_cfg, optim=OptimConfig(lr=1e-4, backbone_lr_mult=0.1, weight_decay=1e-4))
    model = build_model(cfg, 3)
    opt = build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    backbone = {id(p) for p in model.backbone[0].parameters()}
    assert backbone and len(lr_of) == len(list(model.parameters()))  # every parameter once (shared heads too)
    assert all(lr_of[i] == pytest.approx(1e-5) for i in backbone)
    assert all(v == pytest.approx(1e-4) for i, v in lr_of.items() if i not in backbone)
    # the scheduler keeps the ratio (no lr_scale applied twice)
    cfg.optim.warmup_steps = 0
    build_scheduler(cfg, opt, 10, 100)
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == [1e-5, 1e-4]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 1e-4}  # no decay on norms and biases
    cfg.optim.decay_all = True  # the original DINO: weight decay on every parameter
    opt = build_optimizer(cfg, model)
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4} and len(opt.param_groups) == 2
    assert {id(p): g["lr"] for g in opt.param_groups for p in g["params"]} == lr_of


def test_dino_config_keys_checked():
    with pytest.raises(ValueError, match=r"model.dino: unknown key\(s\) \['num_querys'\]"):
        build_config(DetectionConfig, {"model": {"detector": "dino", "dino": {"num_querys": 300}}})


# ---------------------------------------------------------------------------------------------- end to end


def test_cli_train_evaluate_predict_tiny_config(tmp_path):
    make_shapes(tmp_path, 2, 128, split="train")
    make_shapes(tmp_path, 2, 128, split="val")
    out = tmp_path / "run"
    rc, stdout, stderr = run_cli(
        *("detection", "train", "--detector", "dino", "--config", "dino_focalnet_cpu_tiny", "--data", str(tmp_path)),
        *("--output", str(out), "--max-steps", "1", "--batch-size", "2", "--min-size", "128", "--max-size", "160"),
        *("--workers", "0", "--no-progress", "--set", "log_every=1", "model.dino.num_queries=50"),
    )
    assert rc == 0, stderr
    m = json.loads((out / "metrics.json").read_text())
    assert isinstance(m["bbox_mAP"], float) and "segm_mAP" not in m and m["history"][-1]["step"] == 1
    log = (out / "train.log").read_text()
    assert "dino with focalnet_tiny_srf" in log
    results = json.loads((out / "results.json").read_text())
    # the top num_select (query, class) pairs per image, less those of the background slot 0
    assert 0 < len(results) <= 2 * 100 and {r["category_id"] for r in results} <= {3, 7}
    # our model.pt loads back as the same DINO: evaluation reproduces the training-time metrics
    rc, _, stderr = run_cli(
        *("detection", "evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(tmp_path)),
        *("--output", str(tmp_path / "eval"), "--workers", "0", "--device", "cpu"),
    )
    assert rc == 0, stderr
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["bbox_mAP"] == pytest.approx(m["bbox_mAP"], abs=1e-9) and ev["num_detections"] == m["num_detections"]
    rc, _, stderr = run_cli(
        *("detection", "predict", str(tmp_path / "val2017" / "0000.png"), "--checkpoint", str(out / "model.pt")),
        *("--out", str(tmp_path / "pred"), "--score-thr", "0", "--device", "cpu"),
    )
    assert rc == 0, stderr
    recs = json.loads((tmp_path / "pred" / "detections.json").read_text())
    dets = recs[0]["detections"]
    assert (tmp_path / "pred" / "0000.png").exists() and 0 < len(dets) <= 100
    assert {d["label"] for d in dets} <= {"square", "disc"}
    # the run resumes from its checkpoint (DINO's parameter groups and shared heads restored)
    rc, _, stderr = run_cli(
        *("detection", "train", "--config", str(out / "config.yaml"), "--output", str(out), "--resume", "auto"),
        *("--max-steps", "2", "--no-progress"),
    )
    assert rc == 0, stderr
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in hist] == [1, 2] and "resum" in (out / "train.log").read_text().lower()


@pytest.mark.slow
def test_dino_learns_generated_shapes(tmp_path):
    """DINO on a tiny FocalNet overfits 4 generated images through the whole training path (data
    pipeline, denoising, criterion, engine, COCO evaluation)."""
    make_shapes(tmp_path, 4, 128, split="train")
    make_shapes(tmp_path, 4, 128, split="val")  # the same images: overfitting is the point
    cfg = build_config(
        DetectionConfig,
        {
            "model": {
                "detector": "dino",
                "backbone": "focalnet_tiny_srf",
                "backbone_overrides": TINY_BACKBONE,
                "focal_windows": [3, 3, 3, 3],
                "min_size": 128,
                "max_size": 160,
                "dino": {**TINY_DINO, "hidden_dim": 64, "dim_feedforward": 256},
            },
            "data": {
                "root": str(tmp_path),
                "scales": [128],
                "max_size": 160,
                "crop_branch": False,
                "flip_prob": 0.0,
                "num_workers": 0,
            },
            "optim": {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 0, "lr_steps": [0.9]},
            "grad_clip": 0.1,
            "max_steps": 200,
            "epochs": 1,
            "batch_size": 4,
            "log_every": 50,
            "progress": False,
        },
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = train(cfg, tmp_path / "run")
    finally:
        torch.set_num_threads(n)
    assert final["bbox_mAP"] >= 0.8 and final["bbox_mAP_50"] >= 0.95, final
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["category_id"] for r in results} == {3, 7}


def test_original_layout_file_predicts_and_evaluates_with_coco_ids(tmp_path):
    """A file in the original layout (91 label slots = COCO category ids): predictions and COCO results
    carry the right names and ids (label l -> meta entry l - 1)."""
    from focalnet.detection.dino import dino

    model = dino(
        "focalnet_tiny_srf",
        num_classes=91,
        backbone_overrides=TINY_BACKBONE,
        **{**TINY_DINO, "num_select": 20, "min_size": 128, "max_size": 160},
    )
    with torch.no_grad():  # every query says label 3 (COCO: car), far above the others
        model.class_embed[0].bias.fill_(-8.0)
        model.class_embed[0].bias[3] = 5.0
    path = tmp_path / "original.pth"
    torch.save({"model": model.state_dict()}, path)
    make_shapes(tmp_path, 2, 128, split="val")  # categories 3 and 7: a subset of the 90 COCO ids
    rc, stdout, stderr = run_cli(
        *("detection", "predict", str(tmp_path / "val2017" / "0000.png"), "--checkpoint", str(path)),
        *("--out", str(tmp_path / "pred"), "--score-thr", "0.5", "--device", "cpu"),
    )
    assert rc == 0, stderr
    dets = json.loads((tmp_path / "pred" / "detections.json").read_text())[0]["detections"]
    assert dets and {(d["label"], d["category_id"]) for d in dets} == {("car", 3)}
    rc, _, stderr = run_cli(
        *("detection", "evaluate", "--checkpoint", str(path), "--data", str(tmp_path)),
        *("--output", str(tmp_path / "eval"), "--workers", "0", "--device", "cpu"),
    )
    assert rc == 0, stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    top = max(results, key=lambda r: r["score"])
    assert top["category_id"] == 3 and all(1 <= r["category_id"] <= 90 for r in results)
