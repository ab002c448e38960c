"""Sparse R-CNN: original-layout files, the loss parts on a hand-computed case, learning, CLI/API paths."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from detection_synth import tiny_run_config
from focalnet.detection import SparseRCNN, sparse_rcnn
from focalnet.detection.sparse_rcnn import (
    set_prediction_losses,
)
from focalnet.ops.matching import HungarianMatcher

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


# ---------------------------------------------------------------------------------------------- CLI / training
TINY_CONFIG = tiny_run_config(
    {"detector": "sparse_rcnn", "score_thresh": 0.0, "detector_overrides": TINY_HEAD},
    {"weight_decay": 1e-4, "decay_all": True},
    grad_clip=1.0,
)
