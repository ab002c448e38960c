"""Mask2Former's criterion: against transformers' ``Mask2FormerLoss`` on the same predictions, targets and
points, and on hand-made cases (dice and BCE by hand, point sampling, perfect vs shuffled predictions,
images without targets, repeatability from a ``torch.Generator``)."""

import math

import pytest
import torch

from focalnet.segmentation.mask2former.criterion import (
    Mask2FormerCriterion,
    Mask2FormerMatcher,
    batch_dice_cost,
    batch_sigmoid_ce_cost,
    dice_loss,
    point_sample,
    sample_points_by_uncertainty,
    sigmoid_ce_loss,
)

K = 5


def _predictions(gen: torch.Generator, batch: int = 2, queries: int = 7, layers: int = 3, size=(12, 10)):
    """``layers`` prediction sets (the last one first in the output dict, the others in aux_outputs)."""
    sets = [
        {
            "pred_logits": (torch.randn(batch, queries, K + 1, generator=gen) * 2).requires_grad_(),
            "pred_masks": (torch.randn(batch, queries, *size, generator=gen) * 3).requires_grad_(),
        }
        for _ in range(layers)
    ]
    return {**sets[-1], "aux_outputs": sets[:-1]}


def _targets(gen: torch.Generator, counts=(3, 0), size=(48, 40)):
    return [
        {"labels": torch.randint(0, K, (n,), generator=gen), "masks": torch.rand(n, *size, generator=gen) > 0.6}
        for n in counts
    ]


def test_losses_and_matches_equal_transformers(one_thread):
    """Every term (last layer and each auxiliary layer) within 1e-5 of transformers' ``Mask2FormerLoss`` and
    the matcher's assignment equal to ``Mask2FormerHungarianMatcher``'s, with the default 12,544 points.

    Both sides sample their points with ``torch.rand`` in the same order (per prediction set: one uniform
    point set per image for the matcher, then the oversampled and the uniform points of the matched masks),
    ours from a ``torch.Generator``, theirs from the global generator; seeding both with the same number
    makes every point the same tensor, so the comparison is exact rather than statistical (a change in
    the order or number of draws fails it). One image has no targets (only the class loss)."""
    tf = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    from transformers import Mask2FormerConfig

    gen = torch.Generator().manual_seed(0)
    outputs, targets = _predictions(gen, batch=3), _targets(gen, counts=(3, 2, 0))
    config = Mask2FormerConfig(num_labels=K, class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1)
    theirs_loss = tf.Mask2FormerLoss(config, weight_dict={})
    masks_as_float = [t["masks"].float() for t in targets]
    labels = [t["labels"] for t in targets]
    layers = [*outputs["aux_outputs"], outputs]

    torch.manual_seed(11)
    theirs = theirs_loss(
        outputs["pred_masks"],
        outputs["pred_logits"],
        masks_as_float,
        labels,
        [{"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]} for a in layers[:-1]],
    )
    ours = Mask2FormerCriterion(K)(outputs, targets, generator=torch.Generator().manual_seed(11))
    renamed = {k.replace("loss_cross_entropy", "loss_ce"): v for k, v in theirs.items()}
    assert set(renamed) == set(ours) - {"loss"} and len(renamed) == 9
    for k, v in renamed.items():
        assert abs(float(v.detach()) - float(ours[k].detach())) <= 1e-5, k
    total = sum(Mask2FormerCriterion(K).weight(k) * float(v.detach()) for k, v in renamed.items())
    assert float(ours["loss"].detach()) == pytest.approx(total, rel=1e-6)

    theirs_matcher = tf.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0)
    for layer in layers:
        torch.manual_seed(5)
        expected = theirs_matcher(layer["pred_masks"], layer["pred_logits"], masks_as_float, labels)
        got = Mask2FormerMatcher()(layer, targets, generator=torch.Generator().manual_seed(5))
        assert [(r.tolist(), c.tolist()) for r, c in got] == [(r.tolist(), c.tolist()) for r, c in expected]
        assert [len(r) for r, _ in got] == [3, 2, 0]


def test_dice_and_bce_by_hand():
    logits, targets = torch.tensor([[0.0, 2.0], [-1.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = [(math.log(2) + math.log(1 + math.exp(2))) / 2, (math.log(1 + math.e) + math.log(1 + math.exp(-1))) / 2]
    dice = [1 - (2 * 0.5 + 1) / (0.5 + s(2) + 1 + 1), 1 - (2 * (s(-1) + s(1)) + 1) / (s(-1) + s(1) + 2 + 1)]
    assert float(sigmoid_ce_loss(logits, targets, 2.0)) == pytest.approx(sum(bce) / 2, abs=1e-6)
    assert float(dice_loss(logits, targets, 2.0)) == pytest.approx(sum(dice) / 2, abs=1e-6)
    # the matcher's pairwise costs hold the same numbers for every (prediction, target) pair
    ce_cost, dice_cost = batch_sigmoid_ce_cost(logits, targets), batch_dice_cost(logits, targets)
    for i in range(2):
        for j in range(2):
            assert float(ce_cost[i, j]) == pytest.approx(
                float(sigmoid_ce_loss(logits[i : i + 1], targets[j : j + 1], 1)), abs=1e-6
            )
            assert float(dice_cost[i, j]) == pytest.approx(float(dice_loss(logits[i : i + 1], targets[j : j + 1], 1)), abs=1e-6)  # fmt: skip


def test_point_sample_reads_pixel_centres_and_uncertain_points_come_first():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    coords = torch.tensor([[[(j + 0.5) / 4, (i + 0.5) / 3] for i in range(3) for j in range(4)]])
    assert torch.allclose(point_sample(x, coords).flatten(), x.flatten(), atol=1e-5)

    # logits 0 (most uncertain) in the left half, +-10 elsewhere: the 75 % importance-sampled points all
    # lie in the left half (it holds half of the 3x oversampled points, more than the 25 % needed)
    logits = torch.full((2, 16, 16), 10.0)
    logits[1] = -10.0
    logits[:, :, :8] = 0.0
    pts = sample_points_by_uncertainty(logits, 400, 3.0, 0.75, torch.Generator().manual_seed(0))
    assert pts.shape == (2, 400, 2) and pts.min() >= 0 and pts.max() <= 1
    assert (pts[:, :300, 0] < 0.5).all()
    assert 0.2 < (pts[:, 300:, 0] < 0.5).float().mean() < 0.8  # the rest uniform
    with pytest.raises(ValueError, match="oversample_ratio"):
        sample_points_by_uncertainty(logits, 10, oversample_ratio=0.5)


def _from_targets(targets, queries: int, order: list[int], strength: float = 8.0):
    """Predictions whose query ``order[j]`` predicts target ``j`` (class and mask, here at the targets' size);
    the other queries predict "no object" with empty masks."""
    b = len(targets)
    logits = torch.full((b, queries, K + 1), -strength)
    logits[..., K] = strength
    masks = torch.full((b, queries, *targets[0]["masks"].shape[1:]), -strength)
    for i, t in enumerate(targets):
        for j, q in enumerate(order[: len(t["labels"])]):
            logits[i, q] = -strength
            logits[i, q, t["labels"][j]] = strength
            masks[i, q] = (t["masks"][j].float() * 2 - 1) * strength
    return {"pred_logits": logits, "pred_masks": masks}


def test_a_perfect_prediction_scores_lower_than_shuffled_ones(one_thread):
    gen = torch.Generator().manual_seed(1)
    targets = []
    for n in (3, 2):
        masks = (torch.rand(n, 12, 10, generator=gen) > 0.5).repeat_interleave(4, 1).repeat_interleave(4, 2)
        targets.append({"labels": torch.tensor([0, 3, 1][:n]), "masks": masks})
    crit = Mask2FormerCriterion(K, num_points=500)
    perfect = crit(_from_targets(targets, 6, [4, 0, 2]), targets, torch.Generator().manual_seed(0))
    wrong_class = [{"labels": (t["labels"] + 1) % K, "masks": t["masks"]} for t in targets]
    # masks handed to the wrong targets: the matcher follows the masks, so the classes come out wrong
    swapped_masks = [{"labels": t["labels"], "masks": t["masks"].roll(1, 0)} for t in targets]
    shifted_masks = [{"labels": t["labels"], "masks": t["masks"].roll(8, 2)} for t in targets]
    for shuffled, term in ((wrong_class, "loss_ce"), (swapped_masks, "loss_ce"), (shifted_masks, "loss_dice")):
        bad = crit(_from_targets(shuffled, 6, [4, 0, 2]), targets, torch.Generator().manual_seed(0))
        assert float(bad["loss"]) > 2 * float(perfect["loss"])
        assert float(bad[term]) > 2 * float(perfect[term])
    assert float(perfect["loss_ce"]) < 0.01


def test_images_without_targets_give_only_the_class_loss():
    gen = torch.Generator().manual_seed(2)
    outputs, empty = _predictions(gen, batch=2, layers=2), _targets(gen, counts=(0, 0))
    losses = Mask2FormerCriterion(K, num_points=100)(outputs, empty, torch.Generator().manual_seed(0))
    for suffix in ("", "_0"):
        assert losses["loss_mask" + suffix].item() == 0.0 and losses["loss_dice" + suffix].item() == 0.0
    # every query towards "no object": a weighted mean with one weight is the plain mean of -log p(no object)
    expected = -outputs["pred_logits"].log_softmax(-1)[..., K].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), abs=1e-6)
    losses["loss"].backward()
    assert outputs["pred_masks"].grad is not None and outputs["pred_logits"].grad.abs().sum() > 0

    # a mixed batch: the empty image adds no mask term, and the number of masks (2) normalises
    crit, mixed = Mask2FormerCriterion(K, num_points=100), _targets(gen, counts=(2, 0))
    assert crit.num_masks(mixed, torch.device("cpu")) == 2.0 and crit.num_masks(empty, torch.device("cpu")) == 1.0
    indices = crit.matcher(outputs, mixed)
    assert [len(r) for r, _ in indices] == [2, 0]
    both = crit.loss_masks(outputs["pred_masks"], mixed, indices, 2.0, torch.Generator().manual_seed(0))
    alone = crit.loss_masks(outputs["pred_masks"][:1], mixed[:1], indices[:1], 1.0, torch.Generator().manual_seed(0))
    for x, y in zip(both, alone):
        assert float(x.detach()) * 2 == pytest.approx(float(y.detach()), rel=1e-6) and float(x.detach()) > 0


def test_autocast_leaves_costs_and_losses_in_float32(one_thread):
    """Mixed precision (here CPU bfloat16 autocast) must not round the matching costs (detectron2 turns
    autocast off there) nor the losses."""
    gen = torch.Generator().manual_seed(6)
    outputs, targets = _predictions(gen, layers=1), _targets(gen, counts=(4, 3))
    crit = Mask2FormerCriterion(K, num_points=400)
    coords = torch.rand(1, 400, 2, generator=gen)
    args = (outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"], targets[0]["masks"], coords)
    plain = crit.matcher.cost_matrix(*args)
    plain_losses = crit(outputs, targets, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(crit.matcher.cost_matrix(*args), plain)
        mixed = crit(outputs, targets, torch.Generator().manual_seed(0))
    assert all(mixed[k].dtype == torch.float32 and torch.equal(mixed[k], plain_losses[k]) for k in plain_losses)


def test_seeded_generator_repeats_and_seeds_differ(one_thread):
    gen = torch.Generator().manual_seed(3)
    outputs, targets = _predictions(gen, layers=2), _targets(gen, counts=(3, 2))
    crit = Mask2FormerCriterion(K, num_points=300)
    a, b = (crit(outputs, targets, torch.Generator().manual_seed(7)) for _ in range(2))
    c = crit(outputs, targets, torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["loss_mask"].item() != c["loss_mask"].item()
    assert not crit.state_dict()  # the class weights are a buffer outside the checkpoint
    off = Mask2FormerCriterion(K, num_points=300, deep_supervision=False)(outputs, targets)
    assert set(off) == {"loss", "loss_ce", "loss_mask", "loss_dice"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": torch.tensor([0, K])}, "labels must lie in"),
        ({"masks": torch.zeros(2, 30, 40, dtype=torch.bool)}, "padded input size"),
        ({"masks": torch.zeros(3, 48, 40, dtype=torch.bool)}, r"masks \[N, H, W\]"),
    ],
)
def test_bad_targets_are_named(change, message):
    gen = torch.Generator().manual_seed(4)
    outputs, targets = _predictions(gen, layers=1), _targets(gen, counts=(2, 2))
    targets[1] = {**targets[1], **change}
    with pytest.raises(ValueError, match=message):
        Mask2FormerCriterion(K, num_points=50)(outputs, targets)
    with pytest.raises(ValueError, match="classes"):
        Mask2FormerCriterion(K + 1, num_points=50)(outputs, targets[:1] * 2)
