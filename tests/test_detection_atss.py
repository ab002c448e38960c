"""ATSS: original-layout checkpoints, the assignment and losses against hand computations, learning, CLI."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch

from detection_synth import tiny_run_config
from focalnet.detection import atss
from focalnet.detection.atss import atss_assign, atss_loss_terms, grid_anchors

from conftest import REFERENCE, need

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


TINY_CONFIG = tiny_run_config({"detector": "atss", "detector_overrides": {"stacked_convs": 2, "gn_groups": 8}})
STEPS = 50
