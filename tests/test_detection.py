"""Detection: data validation, transforms, evaluator, mmdetection conversion, configs, a loss step."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from detection_synth import make_shapes
from focalnet.detection import (
    CocoInstances,
    DetectionConfig,
    build_detector,
    coco_evaluate,
    convert_mmdet_state_dict,
    detection_collate,
    detection_step,
    eval_transforms,
    list_configs,
    load_detector,
    train_transforms,
)
from focalnet.detection.config import config_path
from focalnet.detection.train import build_scheduler
from focalnet.engine import load_config

from conftest import DATA, REFERENCE, need

TINY = dict(
    backbone_overrides=dict(embed_dim=16, depths=(1, 1, 1, 1), focal_windows=(3, 3, 3, 3), drop_path_rate=0.0),
    fpn_channels=32,
    representation_size=128,
    mask_head_channels=32,
    min_size=128,
    max_size=160,
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=200,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64,
)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- data
def test_bad_annotations_and_images_are_skipped_and_reported(tmp_path):
    bad = [
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, -5, 20], "segmentation": [[10, 10, 20, 10, 20, 20]]},
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 20, 10]]},
        {"image_id": 2, "category_id": 7, "bbox": [500, 500, 20, 20], "segmentation": [[500, 500, 520, 500, 520, 520]]},
        {"image_id": 2, "category_id": 99, "bbox": [1, 1, 20, 20], "segmentation": [[1, 1, 20, 1, 20, 20]]},
        {"image_id": 3, "category_id": 7, "bbox": [1, 1, 20, 20], "segmentation": {"size": [7, 7], "counts": "0"}},
        # a polygon list with one broken and one good polygon: the annotation stays, the bad polygon goes
        {
            "image_id": 3,
            "category_id": 7,
            "bbox": [1, 1, 30, 30],
            "segmentation": [[1, 1, 2, 2], [1, 1, 30, 1, 30, 30, 1, 30]],
        },
    ]
    ann, img_dir = make_shapes(tmp_path, 4, 96, extra_annotations=bad)
    (img_dir / "0003.png").write_bytes(b"this is not a png")  # image id 4 is corrupt
    ds = CocoInstances(ann, img_dir, train_transforms(scales=[96], max_size=128, crop_branch=False), train=True)
    reasons = [p.reason for p in ds.problems]
    assert len(ds.problems) == 6, reasons
    # each reason names the key (and the value)
    assert any(r.startswith("bbox: width and height must be > 0") for r in reasons)
    assert any("dropped 1 unusable polygon" in r for r in reasons)
    assert any(r.startswith("segmentation: no polygon of at least 3") for r in reasons)
    assert any("outside" in r for r in reasons)
    assert any(r.startswith("category_id:") and r.endswith("got 99") for r in reasons)
    assert any(r.startswith("segmentation.size [7, 7] differs") for r in reasons)
    assert sum(len(ds._anns[i]) for i in ds.ids) == 8 + 1  # 2 shapes x 4 images + the repaired annotation
    with contextlib.redirect_stderr(io.StringIO()):
        items = [ds[i] for i in range(len(ds))]
    assert items[3] is None and ds.problems[-1].kind == "image" and "cannot read image" in ds.problems[-1].reason
    images, targets = detection_collate(items)
    assert len(images) == 3 and all(len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) for t in targets)
    assert {int(v) for t in targets for v in t["labels"]} <= {1, 2}  # category ids 3, 7 -> labels 1, 2
    assert detection_collate([None, None]) is None


def test_coco_tiny_loss_step_with_masks_and_empty_image():
    root = need(DATA / "coco-tiny")
    tf = train_transforms(scales=[128, 160], max_size=192, crop_resize_scales=[112, 128], crop_range=[96, 128])
    ds = CocoInstances(root / "annotations/instances_train2017.json", root / "train2017", tf)
    assert ds.num_classes == 81 and ds.category_ids[-1] == 90 and ds.class_names[0] == "person"
    crowd_img = next(i for i in ds.ids if any(a.get("iscrowd") for a in ds._anns[i]))
    torch.manual_seed(0)
    sample = ds[ds.ids.index(crowd_img)]
    image, target = sample
    assert min(image.shape[-2:]) <= 160 and max(image.shape[-2:]) <= 192 and image.dtype == torch.float32
    assert target["masks"].shape[0] == len(target["boxes"]) > 0 and target["iscrowd"].sum() == 0  # crowd dropped
    assert target["masks"].shape[-2:] == image.shape[-2:] and target["masks"].max() == 1
    # a mask lies inside its box
    m, b = target["masks"][0], target["boxes"][0]
    ys, xs = torch.nonzero(m, as_tuple=True)
    assert xs.min() >= b[0] - 1 and xs.max() <= b[2] + 1 and ys.min() >= b[1] - 1 and ys.max() <= b[3] + 1
    empty = (
        image[:, :100, :120].clone(),
        {"boxes": target["boxes"][:0], "labels": target["labels"][:0], "masks": target["masks"][:0, :100, :120]},
    )
    model = build_detector("mask_rcnn", "focalnet_tiny_srf", ds.num_classes, **TINY)
    model.train()
    torch.manual_seed(0)
    loss, logs, n = detection_step(model, detection_collate([sample, empty]), torch.device("cpu"))
    assert n == 2 and torch.isfinite(loss)
    assert set(logs) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert logs["loss_mask"] > 0.1 and logs["loss_classifier"] > math.log(81) * 0.5  # untrained: ~ln(81)
    loss.backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_random_crop_branch_keeps_boxes_masks_labels_consistent(tmp_path):
    ann, img_dir = make_shapes(tmp_path, 2, 128)
    tf = train_transforms(scales=[100], max_size=200, crop_resize_scales=[128], crop_range=[48, 64])
    ds = CocoInstances(ann, img_dir, tf)
    torch.manual_seed(1)
    for _ in range(10):
        image, t = ds[0]
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) == len(t["iscrowd"])
        assert min(image.shape[-2:]) == 100 or max(image.shape[-2:]) == 200
        b = t["boxes"]
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 0] >= 0).all() and (b[:, 2] <= image.shape[-1]).all()


# ---------------------------------------------------------------------------------------------- evaluator
def _hand_made_results(coco) -> list[dict]:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    res = []
    for a in coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        img = coco.imgs[a["image_id"]]
        jit = rng.uniform(-6, 6, 4)
        poly = [v + jit[i % 2] for i, v in enumerate(a["segmentation"][0])]
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], img["height"], img["width"]))
        rle["counts"] = rle["counts"].decode()
        res.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "score": float(rng.uniform(0.3, 1)),
                "bbox": [x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                "segmentation": rle,
            }
        )
        # a false positive of the other class and a poorly localised duplicate
        other = 7 if a["category_id"] == 3 else 3
        res.append(
            {
                "image_id": a["image_id"],
                "category_id": other,
                "score": float(rng.uniform(0, 0.6)),
                "bbox": [x + 10, y + 10, w, h],
                "segmentation": rle,
            }
        )
    return res


def test_evaluator_reproduces_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann, _ = make_shapes(tmp_path, 4, 128)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
    results = _hand_made_results(gt)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    metrics = coco_evaluate(gt, json.loads(path.read_text()))
    for iou in ("bbox", "segm"):

        def dets(iou: str = iou) -> list[dict]:  # pycocotools' loadRes mutates its input: a fresh copy each time
            out = json.loads(path.read_text())
            for d in out:
                d.pop("bbox" if iou == "segm" else "segmentation")
            return out

        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(gt, gt.loadRes(dets()), iou)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        names = [
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
        ]
        assert [metrics[f"{iou}_{n}"] for n in names] == pytest.approx(list(ev.stats), abs=1e-12)
        assert 0.2 < metrics[f"{iou}_mAP"] < 0.95  # the hand-made file is neither perfect nor useless
        for cat, name in ((3, "square"), (7, "disc")):  # per-category AP = COCOeval restricted to that category
            with contextlib.redirect_stdout(io.StringIO()):
                one = COCOeval(gt, gt.loadRes(dets()), iou)
                one.params.catIds = [cat]
                one.evaluate()
                one.accumulate()
                one.summarize()
            assert metrics[f"{iou}_AP_per_category"][name] == pytest.approx(one.stats[0], abs=1e-9)
    exact = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]
    assert coco_evaluate(gt, exact, ("bbox",))["bbox_mAP"] == pytest.approx(1.0)
    assert coco_evaluate(gt, [], ("bbox",))["bbox_mAP"] == 0.0


# ---------------------------------------------------------------------------------------------- mmdet weights
def _mmdet_state_dict(num_classes: int = 80) -> dict[str, torch.Tensor]:
    ref = json.loads(need(REFERENCE / "official-state-dicts/backbone_maskrcnn_focalnet_tiny_lrf.json").read_text())
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    sd = {
        f"backbone.{k}": (torch.ones(shape) if "norm" in k and k.endswith("weight") else r(*shape))
        for k, shape in ref["keys"]
    }
    for i, c in enumerate((96, 192, 384, 768)):
        sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"] = r(256, c, 1, 1), r(256)
        sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"] = r(256, 256, 3, 3), r(256)
    sd.update(
        {
            "rpn_head.rpn_conv.weight": r(256, 256, 3, 3),
            "rpn_head.rpn_conv.bias": r(256),
            "rpn_head.rpn_cls.weight": r(3, 256, 1, 1),
            "rpn_head.rpn_cls.bias": r(3),
            "rpn_head.rpn_reg.weight": r(12, 256, 1, 1),
            "rpn_head.rpn_reg.bias": r(12),
            "roi_head.bbox_head.shared_fcs.0.weight": r(1024, 256 * 7 * 7),
            "roi_head.bbox_head.shared_fcs.0.bias": r(1024),
            "roi_head.bbox_head.shared_fcs.1.weight": r(1024, 1024),
            "roi_head.bbox_head.shared_fcs.1.bias": r(1024),
            "roi_head.bbox_head.fc_cls.weight": r(num_classes + 1, 1024),
            "roi_head.bbox_head.fc_cls.bias": r(num_classes + 1),
            "roi_head.bbox_head.fc_reg.weight": r(4 * num_classes, 1024),
            "roi_head.bbox_head.fc_reg.bias": r(4 * num_classes),
            "roi_head.mask_head.upsample.weight": r(256, 256, 2, 2),
            "roi_head.mask_head.upsample.bias": r(256),
            "roi_head.mask_head.conv_logits.weight": r(num_classes, 256, 1, 1),
            "roi_head.mask_head.conv_logits.bias": r(num_classes),
        }
    )
    for i in range(4):
        sd[f"roi_head.mask_head.convs.{i}.conv.weight"] = r(256, 256, 3, 3)
        sd[f"roi_head.mask_head.convs.{i}.conv.bias"] = r(256)
    return sd


def test_mmdet_checkpoint_loads_and_runs(tmp_path):
    sd = _mmdet_state_dict()
    path = tmp_path / "mask_rcnn_focalnet_tiny_lrf_3x.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": sd}, path)
    model, meta = load_detector(path, min_size=160, max_size=224)
    assert meta["source"] == "mmdetection" and len(meta["class_names"]) == 80 and meta["category_ids"][-1] == 90
    assert meta["class_names"][:3] == ["person", "bicycle", "car"]
    assert model.backbone.body.cfg.focal_levels == (3, 3, 3, 3) and model.backbone.body.cfg.focal_windows[0] == 9
    assert model.roi_heads.box_roi_pool.aligned and model.roi_heads.box_roi_pool.sampling_ratio == 0  # mmdet RoIAlign
    # background moves from last to first; class k keeps its regression rows
    feats = torch.randn(5, 1024)
    logits, deltas = model.roi_heads.box_predictor(feats)
    ref_logits = feats @ sd["roi_head.bbox_head.fc_cls.weight"].T + sd["roi_head.bbox_head.fc_cls.bias"]
    torch.testing.assert_close(logits[:, 1:], ref_logits[:, :80])
    torch.testing.assert_close(logits[:, 0], ref_logits[:, 80])
    ref_deltas = feats @ sd["roi_head.bbox_head.fc_reg.weight"].T + sd["roi_head.bbox_head.fc_reg.bias"]
    torch.testing.assert_close(deltas[:, 4:], ref_deltas)
    torch.testing.assert_close(
        model.roi_heads.mask_predictor.mask_fcn_logits.weight[1:], sd["roi_head.mask_head.conv_logits.weight"]
    )
    torch.testing.assert_close(model.backbone.body.norm2.weight, sd["backbone.norm2.weight"])
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        out = model([torch.rand(3, 150, 200)])[0]
    assert len(out["boxes"]) > 0 and out["masks"].shape[1:] == (1, 150, 200)
    assert out["labels"].min() >= 1 and out["labels"].max() <= 80
    from focalnet.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["detection", "convert", str(path), str(tmp_path / "converted.pt")]) == 0
    again, meta2 = load_detector(tmp_path / "converted.pt")
    assert meta2["source"] == "focalnet" and meta2["class_names"] == meta["class_names"]
    assert again.roi_heads.box_roi_pool.aligned  # the original RoIAlign travels with the converted file
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(ValueError, match="unknown mmdetection keys"):
        convert_mmdet_state_dict({**sd, "roi_head.extra.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------- configs, schedule
def test_packaged_configs_follow_the_model_zoo():
    zoo = json.loads(need(REFERENCE / "model-zoo.json").read_text())["coco_mask_rcnn"]
    names = {"T": "tiny", "S": "small", "B": "base"}
    drop = {("T", "1x"): 0.1, ("S", "1x"): 0.2, ("B", "1x"): 0.3, ("T", "3x"): 0.3, ("S", "3x"): 0.5, ("B", "3x"): 0.5}
    assert len(zoo) == 12 and "mask_rcnn_focalnet_cpu_tiny" in list_configs()
    for row in zoo:
        kind = "srf" if len(row["kernels"]) == 2 else "lrf"
        cfg = load_config(
            DetectionConfig, config_path(f"mask_rcnn_focalnet_{names[row['backbone']]}_{kind}_{row['schedule']}")
        )
        assert cfg.model.backbone == f"focalnet_{names[row['backbone']]}_{kind}"
        assert cfg.model.focal_windows == [9, 9, 9, 9]
        assert cfg.model.drop_path_rate == drop[(row["backbone"], row["schedule"])]
        assert (cfg.epochs, cfg.optim.lr_steps) == ((12, [9, 11]) if row["schedule"] == "1x" else (36, [27, 33]))
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.min_size, cfg.model.max_size) == (1e-4, 0.05, 800, 1333)
    with pytest.raises(ValueError, match="optim.lr_steps"):
        load_config(DetectionConfig, overrides=["optim.lr_steps=[11, 9]"])


def test_schedule_warmup_and_step_decay():
    cfg = load_config(DetectionConfig, overrides=["optim.warmup_steps=10", "optim.lr_steps=[9, 11]"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    upe = 100
    sched = build_scheduler(cfg, opt, upe, 12 * upe)
    lrs = {}
    for step in (0, 5, 10, 899, 900, 1099, 1100):
        sched.step_update(step)
        lrs[step] = opt.param_groups[0]["lr"]
    assert lrs[0] == pytest.approx(1e-7) and 1e-7 < lrs[5] < 1e-4 and lrs[10] == pytest.approx(1e-4)
    assert lrs[899] == pytest.approx(1e-4) and lrs[900] == pytest.approx(1e-5)
    assert lrs[1099] == pytest.approx(1e-5) and lrs[1100] == pytest.approx(1e-6)


def test_model_structure_matches_the_original_settings():
    model = build_detector("faster_rcnn", "focalnet_tiny_srf", 5, **{**TINY, "rpn_post_nms_top_n_train": 1000})
    assert model.backbone.strides == [4, 8, 16, 32, 64]
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert model.rpn.anchor_generator.aspect_ratios[0] == (0.5, 1.0, 2.0)
    assert model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert (
        model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
        and model.roi_heads.fg_bg_sampler.positive_fraction == 0.25
    )
    assert (model.roi_heads.score_thresh, model.roi_heads.nms_thresh, model.roi_heads.detections_per_img) == (
        0.05,
        0.5,
        100,
    )
    assert model.transform.size_divisible == 32 and model.roi_heads.mask_roi_pool is None  # Faster R-CNN
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 96, 128))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
    assert all(f.shape[1] == 32 for f in feats.values())
    images, _ = model.transform([torch.rand(3, 100, 130)])
    assert images.tensors.shape[-1] % 32 == 0 and images.tensors.shape[-2] % 32 == 0
    assert max(images.image_sizes[0]) <= 160 and min(images.image_sizes[0]) == 123  # 128 short side, 160 cap
    m = build_detector("faster_rcnn", "focalnet_tiny_srf", 5, **{**TINY, "drop_path_rate": 0.2, "focal_levels": 3})
    assert m.backbone.body.cfg.drop_path_rate == 0.2 and m.backbone.body.cfg.focal_levels == (3, 3, 3, 3)
    with pytest.raises(TypeError, match=r"unknown Faster R-CNN option\(s\)"):
        build_detector("faster_rcnn", "focalnet_tiny_srf", 5, box_nms=0.3)
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("retinanet", "focalnet_tiny_srf", 5)


def test_eval_dataset_keeps_crowd_and_original_size():
    root = need(DATA / "coco-tiny")
    ds = CocoInstances(root / "annotations/instances_val2017.json", root / "val2017", eval_transforms(), train=False)
    info = ds.coco.imgs[ds.ids[0]]
    image, target = ds[0]
    assert image.shape[-2:] == (info["height"], info["width"]) and image.max() <= 1.0
    crowd = sum(
        int(ds[i][1]["iscrowd"].sum()) for i in range(len(ds)) if any(a["iscrowd"] for a in ds._anns[ds.ids[i]])
    )
    assert crowd == sum(a["iscrowd"] for a in ds.coco.dataset["annotations"])


def test_backbone_initialised_from_an_imagenet_checkpoint(tmp_path):
    import focalnet

    cls = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1))
    focalnet.save_model(cls, tmp_path / "in1k.safetensors")
    model = build_detector(
        "mask_rcnn",
        "focalnet_tiny_srf",
        3,
        backbone_checkpoint=tmp_path / "in1k.safetensors",
        frozen_stages=1,
        backbone_overrides={"embed_dim": 16, "depths": (1, 1, 1, 1)},
    )
    body = model.backbone.body
    w, w0 = (
        body.layers[0].blocks[0].modulation.focal_layers[0][0].weight,
        cls.layers[0].blocks[0].modulation.focal_layers[0][0].weight,
    )
    assert w.shape[-1] == 9 and w0.shape[-1] == 3  # window 3 -> 9: zero-padded into the centre
    torch.testing.assert_close(w[..., 3:6, 3:6], w0)
    assert w[..., :3, :].abs().sum() == 0
    torch.testing.assert_close(body.layers[1].blocks[0].mlp.fc1.weight, cls.layers[1].blocks[0].mlp.fc1.weight)
    assert not any(p.requires_grad for p in body.patch_embed.parameters())  # frozen stem
