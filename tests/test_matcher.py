"""The Hungarian matcher shared by Sparse R-CNN and DINO, on hand-made cases."""

import itertools
import math

import pytest
import torch

from focalnet.ops.matching import HungarianMatcher, focal_cost


def test_focal_cost_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    p0, p1 = 0.5, 1 / (1 + math.exp(-2.0))
    expected = [
        0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)  # positive minus negative focal loss
        for p in (p1, p0)
    ]
    got = focal_cost(logits, torch.tensor([1, 0]))
    assert got.shape == (1, 2)
    assert torch.allclose(got[0], torch.tensor(expected), atol=1e-6)


def _brute_force(cost: torch.Tensor) -> float:
    q, n = cost.shape
    c = cost.tolist()
    return min(sum(c[r][j] for j, r in enumerate(rows)) for rows in itertools.permutations(range(q), n))


@pytest.mark.parametrize("fmt", ["cxcywh", "xyxy"])
def test_matching_is_the_minimum_cost_assignment(fmt):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=g)
    xy = torch.rand(2, 5, 2, generator=g) * 0.5
    wh = torch.rand(2, 5, 2, generator=g) * 0.4 + 0.05
    boxes = torch.cat([xy + wh / 2, wh], -1) if fmt == "cxcywh" else torch.cat([xy, xy + wh], -1)
    targets = [
        {"labels": torch.tensor([2, 0, 1]), "boxes": boxes[0, [4, 1, 0]] + 0.01},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]
    matcher = HungarianMatcher(box_format=fmt)
    (rows, cols), (rows1, cols1) = matcher(logits, boxes, targets)
    cost = matcher.cost_matrix(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"])
    assert len(rows) == 3 and sorted(cols.tolist()) == [0, 1, 2]
    assert rows.tolist() == sorted(rows.tolist())
    assert cost[rows, cols].sum().item() == pytest.approx(_brute_force(cost), abs=1e-5)
    assert rows1.numel() == 0 and cols1.numel() == 0


def test_box_costs_dominate_when_class_cost_is_off():
    # each target is a slightly moved copy of one prediction: with only box costs the copies are found
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.2, 0.3, 0.1]]])
    targets = [{"labels": torch.tensor([0, 0]), "boxes": boxes[0, [2, 0]] + 0.005}]
    rows, cols = HungarianMatcher(cost_class=0.0)(torch.zeros(1, 3, 1), boxes, targets)[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="box_format"):
        HungarianMatcher(box_format="xywh")
    with pytest.raises(ValueError, match=r"logits \[B, Q, C\]"):
        HungarianMatcher()(torch.zeros(3, 2), torch.zeros(3, 4), [])
    bad = torch.full((1, 2, 1), float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        HungarianMatcher()(bad, torch.rand(1, 2, 4), [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}])
