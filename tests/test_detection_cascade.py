"""Cascade Mask R-CNN: original-layout files, stage targets and losses by hand, training, CLI, configs."""

from __future__ import annotations

import math

import torch
from torchvision.ops import MultiScaleRoIAlign, box_iou

from detection_synth import make_shapes, tiny_run_config
from focalnet.detection.cascade import CascadeRoIHeads, ConvFCBoxHead

from conftest import REFERENCE

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


# ---------------------------------------------------------------------------------------------- configs
