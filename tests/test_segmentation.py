"""Segmentation: loaders (both layouts), label mapping, bad samples, metrics, inference modes, UPerNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focalnet.segmentation import (
    ADE20K_CLASSES,
    DataConfig,
    TestConfig,
    build_dataset,
    confusion_matrix,
    load_segmentor,
    map_label,
    metrics_from_confusion,
    predict_probs,
    save_segmentor,
    slide_inference,
    upernet,
    whole_inference,
)
from focalnet.segmentation.transforms import TrainTransform, photometric_distortion, random_crop, rescale_size

from conftest import DATA, REFERENCE, need

COLORS = np.array([[40, 40, 40], [220, 40, 40], [40, 200, 60], [50, 80, 230]], dtype=np.float32)
TINY = {"embed_dim": 16, "depths": (1, 1, 1, 1), "focal_windows": (3, 3, 3, 3), "drop_path_rate": 0.0}
TINY_HEAD = {"channels": 16, "aux_channels": 8}


def make_folder_dataset(
    root: Path,
    n_train: int = 4,
    n_val: int = 2,
    size: tuple[int, int] = (64, 64),
    num_classes: int = 4,
    ignore: int | None = None,
    seed: int = 0,
    names: bool = True,
) -> Path:
    """Images whose colour tells the class (blocks on a dark background) + label PNGs, folder layout."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = size
            lab = np.zeros((h, w), np.uint8)
            for c in range(1, num_classes):
                for _ in range(2):
                    bh, bw = rng.integers(h // 6, h // 2), rng.integers(w // 6, w // 2)
                    y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
                    lab[y : y + bh, x : x + bw] = c
            img = COLORS[lab % len(COLORS)] + rng.normal(0, 12, (h, w, 3))
            if ignore is not None:
                lab[:2] = ignore
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / split / f"img{i:03d}.jpg", quality=95)
            Image.fromarray(lab).save(root / f"{split}annot" / f"img{i:03d}.png")
    if names:
        (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(num_classes)) + "\n")
    return root


# ------------------------------------------------------------------------------------ label mapping
def test_map_label_reduce_zero_label_and_ignore_index():
    raw = np.array([[0, 1, 2], [150, 255, 151]], np.uint8)
    lab, bad = map_label(raw, 150, reduce_zero_label=True)
    assert lab.tolist() == [[255, 0, 1], [149, 255, 255]]
    assert bad == [151]
    raw = np.array([[0, 10, 11], [255, 12, 3]], np.uint8)
    lab, bad = map_label(raw, 11, ignore_index=11)
    assert lab.tolist() == [[0, 10, 255], [255, 255, 3]]
    assert bad == [12]


def test_folder_layout_generated(tmp_path):
    root = make_folder_dataset(tmp_path, n_train=3, n_val=2, num_classes=3, ignore=7)
    cfg = DataConfig(root=str(root), layout="folder", ignore_index=7, num_workers=1)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 3 and ds.class_names == ["c0", "c1", "c2"] and ds.num_classes == 3
    img, lab = ds.load(0)
    raw = np.asarray(Image.open(root / "trainannot" / "img000.png"))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert (lab[:2] == 255).all() and (raw[:2] == 7).all()  # dataset ignore -> 255
    np.testing.assert_array_equal(lab[2:], raw[2:])
    assert not ds.problems
    # no classes.txt: names from the config, else numbered with the count from the labels
    (root / "classes.txt").unlink()
    ds = build_dataset(DataConfig(root=str(root), layout="folder", ignore_index=7, class_names=["a", "b", "c"]), "val")
    assert ds.class_names == ["a", "b", "c"] and len(ds) == 2
    ds = build_dataset(DataConfig(root=str(root), layout="folder", ignore_index=7), "val")
    assert ds.class_names == ["class_0", "class_1", "class_2"]


def test_ade20k_layout_generated(tmp_path):
    for sub in ("training", "validation"):
        (tmp_path / "images" / sub).mkdir(parents=True)
        (tmp_path / "annotations" / sub).mkdir(parents=True)
        raw = np.zeros((20, 30), np.uint8)
        raw[5:, :10] = 1
        raw[5:, 10:] = 150
        Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "images" / sub / "ADE_x_1.jpg")
        Image.fromarray(raw).save(tmp_path / "annotations" / sub / "ADE_x_1.png")
    ds = build_dataset(DataConfig(root=str(tmp_path)), "val")
    assert ds.num_classes == 150 and ds.class_names == list(ADE20K_CLASSES) and ds.reduce_zero_label
    _, lab = ds.load(0)
    assert (lab[:5] == 255).all() and (lab[5:, :10] == 0).all() and (lab[5:, 10:] == 149).all()


def test_bad_samples_are_reported_or_raised(tmp_path):
    root = make_folder_dataset(tmp_path, n_train=5, n_val=0, num_classes=3)
    # 1: label of another size, 2: label value 9 (3 classes, ignore 255), 3: unreadable image, 4: no label
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "trainannot" / "img001.png")
    lab = np.asarray(Image.open(root / "trainannot" / "img002.png")).copy()
    lab[0, 0] = 9
    Image.fromarray(lab).save(root / "trainannot" / "img002.png")
    (root / "train" / "img003.jpg").write_bytes(b"not an image")
    (root / "trainannot" / "img004.png").unlink()
    cfg = DataConfig(root=str(root), layout="folder", num_workers=1)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 1
    probs = {Path(p["file"]).name: p["problem"] for p in ds.problems}
    assert set(probs) == {"img001.jpg", "img002.jpg", "img003.jpg", "img004.jpg"}
    assert "64x64" in probs["img001.jpg"] and "10x10" in probs["img001.jpg"]
    assert "9" in probs["img002.jpg"] and "outside" in probs["img002.jpg"]
    assert "unreadable image" in probs["img003.jpg"]
    assert "no label file" in probs["img004.jpg"]
    cfg.on_error = "raise"
    with pytest.raises(ValueError, match="4 bad sample"):
        build_dataset(cfg, "train")


def test_camvid_folder_layout():
    root = need(DATA / "camvid")
    cfg = DataConfig(root=str(root), layout="folder", ignore_index=11, num_workers=2, verify=False)
    val = build_dataset(cfg, "val")
    assert len(val) == 101 and val.num_classes == 11
    assert val.class_names[0] == "Sky" and val.class_names[-1] == "Bicyclist"
    img, lab = val.load(0)
    raw = np.asarray(Image.open(val.pairs[0][1]))
    assert img.shape == (360, 480, 3) and lab.shape == (360, 480)
    assert (lab[raw == 11] == 255).all() and (lab[raw < 11] == raw[raw < 11]).all()
    assert set(np.unique(lab)) <= set(range(11)) | {255}
    # class names without classes.txt: from the config (CamVid is often shipped without one)
    named = build_dataset(
        DataConfig(
            root=str(root), layout="folder", ignore_index=11, verify=False, class_names=[f"k{i}" for i in range(11)]
        ),
        "train",
    )
    assert len(named) == 184 and named.class_names[3] == "k3"


def test_ade20k_sample_layout():
    root = need(DATA / "ade20k-sample")
    ds = build_dataset(DataConfig(root=str(root), layout="ade20k", num_workers=1), "val")
    assert len(ds) == 3 and not ds.problems
    assert ds.class_names[0] == "wall" and ds.class_names[44] == "chest of drawers" and len(ds.class_names) == 150
    img, lab = ds.load(0)
    raw = np.asarray(Image.open(ds.pairs[0][1]))
    assert lab.shape == img.shape[:2] == raw.shape
    assert (lab[raw == 0] == 255).all()
    np.testing.assert_array_equal(lab[raw > 0], raw[raw > 0] - 1)
    # explicit folders give the same pairs
    ds2 = build_dataset(
        DataConfig(root=str(root), val_img_dir="sampleData/images", val_ann_dir="sampleData/annotations"), "val"
    )
    assert ds2.pairs == ds.pairs


# ------------------------------------------------------------------------------------ transforms
def test_train_transform_shapes_padding_and_resize_range():
    import random

    random.seed(0)
    img = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    lab = np.zeros((40, 60), np.uint8)
    lab[:, 30:] = 1
    tf = TrainTransform(scale=(60, 40), ratio_range=(0.5, 0.5), crop_size=(32, 32))
    t, y = tf(img, lab)
    assert t.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
    # resized to 30x20 (ratio 0.5): the rest is padding (image 0, label 255)
    assert (y[20:] == 255).all() and (y[:, 30:] == 255).all() and (t[:, 20:] == 0).all()
    assert set(y[:20, :30].unique().tolist()) <= {0, 1}
    assert rescale_size(683, 512, (2048, 512)) == (683, 512)
    assert rescale_size(400, 300, (2048, 512)) == (683, 512)
    assert rescale_size(3000, 500, (2048, 512)) == (2048, 341)
    # cat_max_ratio: crops dominated by one class are re-drawn
    lab = np.zeros((100, 100), np.uint8)
    lab[:, 80:] = 1
    hits = sum(len(np.unique(random_crop(img[:1], lab, (20, 20), 0.75)[1])) > 1 for _ in range(50))
    assert hits > 25  # without re-drawing only ~1 in 4 crops would see both classes
    out = photometric_distortion(img)
    assert out.shape == img.shape and out.dtype == np.uint8


# ------------------------------------------------------------------------------------ metrics
def test_metrics_equal_hand_computed_confusion_matrix():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, label, 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    m = metrics_from_confusion(cm, ["a", "b", "c", "d"])
    # IoU: a 1/(2+3-1)=1/4, b 2/(3+3-2)=1/2, c 1/(2+1-1)=1/2, d absent (NaN, skipped)
    assert m["per_class"]["a"]["IoU"] == pytest.approx(25.0)
    assert m["per_class"]["b"]["IoU"] == pytest.approx(50.0)
    assert m["per_class"]["c"]["IoU"] == pytest.approx(50.0)
    assert m["per_class"]["d"]["IoU"] is None and m["per_class"]["d"]["Acc"] is None
    assert m["mIoU"] == pytest.approx(125 / 3)
    assert m["mAcc"] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert m["aAcc"] == pytest.approx(400 / 7)
    json.dumps(m)  # JSON-ready (no NaN)


# ------------------------------------------------------------------------------------ inference
class _PointwiseNet(torch.nn.Module):
    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_slide_equals_whole_for_pointwise_model_and_small_images():
    net = _PointwiseNet()
    x = torch.randn(1, 3, 100, 130)
    whole = whole_inference(net, x)
    slide = slide_inference(net, x, (48, 48), (32, 32))
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)
    # a real UPerNet on an image no larger than the crop: one window = the whole image
    model = upernet("focalnet_tiny_srf", 3, head=TINY_HEAD, **TINY).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(slide_inference(model, x, (64, 64), (42, 42)), whole_inference(model, x))
        # and on a larger image sliding differs from whole (the model sees context)
        big = torch.randn(1, 3, 96, 96)
        assert not torch.allclose(slide_inference(model, big, (64, 64), (32, 32)), whole_inference(model, big))
    img = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    # multi-scale + flip: probabilities at the original size that sum to one
    p = predict_probs(
        net,
        img,
        TestConfig(
            mode="slide",
            scale=(50, 30),
            crop_size=(16, 16),
            stride=(8, 8),
            multi_scale=True,
            ratios=(0.5, 1.0),
            flip=True,
        ),
    )
    assert p.shape == (5, 30, 50)
    torch.testing.assert_close(p.sum(0), torch.ones(30, 50))


# ------------------------------------------------------------------------------------ model
def test_upernet_matches_model_zoo_and_losses():
    zoo = json.loads(need(REFERENCE / "model-zoo.json").read_text())["ade20k_upernet_512x512_160k"]
    sizes = {"T": "tiny", "S": "small", "B": "base"}
    for row in zoo:
        name = f"focalnet_{sizes[row['backbone']]}_{'srf' if len(row['kernels']) == 2 else 'lrf'}"
        with torch.device("meta"):
            m = upernet(name, 150)
        assert m.backbone.cfg.kernel_sizes(0) == row["kernels"]
        assert abs(sum(p.numel() for p in m.parameters()) / 1e6 - row["params_m"]) < 1.0, name
    assert m.auxiliary_head.convs[0][0].in_channels == m.backbone.cfg.dims[2]
    assert m.decode_head.conv_seg.in_channels == 512 and m.auxiliary_head.conv_seg.in_channels == 256
    model = upernet("focalnet_tiny_srf", 3, head=TINY_HEAD, **TINY)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    y[:, :8] = 255
    losses = model(x, y)
    torch.testing.assert_close(losses["loss"], losses["loss_decode"] + 0.4 * losses["loss_aux"])
    assert model.eval()(x).shape == (2, 3, 64, 64)


def test_save_load_and_backbone_checkpoint(tmp_path):
    from focalnet import create_model

    cls = create_model("focalnet_tiny_srf", num_classes=4, **{**TINY, "focal_windows": (3, 3, 3, 3)})
    torch.save({"model": cls.state_dict()}, tmp_path / "in1k.pth")
    model = upernet(
        "focalnet_tiny_srf",
        3,
        tmp_path / "in1k.pth",
        class_names=["x", "y", "z"],
        head=TINY_HEAD,
        **{**TINY, "focal_windows": (9, 9, 9, 9)},
    )
    w_cls = cls.state_dict()["layers.0.blocks.0.modulation.focal_layers.0.0.weight"]  # 3x3 kernel
    w_seg = model.backbone.state_dict()["layers.0.blocks.0.modulation.focal_layers.0.0.weight"]  # 9x9
    assert w_seg.shape[-1] == 9
    torch.testing.assert_close(w_seg[..., 3:6, 3:6], w_cls)
    assert w_seg[..., 0, :].abs().sum() == 0
    save_segmentor(model, tmp_path / "model.pt", {"mean": [1, 2, 3]})
    loaded, extra = load_segmentor(tmp_path / "model.pt")
    assert extra == {"mean": [1, 2, 3]} and loaded.class_names == ["x", "y", "z"] and not loaded.training
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"):
        load_segmentor(tmp_path / "bad.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a focalnet segmentation model"):
        load_segmentor(tmp_path / "other.pt")
