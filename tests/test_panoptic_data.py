"""COCO panoptic data (reading, checks, the dataset, writing predictions) and the Mask2Former datasets of the
three tasks (large-scale jitter, semantic and instance masks, the collate), with hostile files (hypothesis)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from focalnet.segmentation.panoptic import (
    MAX_SEGMENT_ID,
    CocoPanoptic,
    PanopticFormatError,
    build_panoptic_dataset,
    id_to_rgb,
    load_panoptic_json,
    panoptic_paths,
    read_id_png,
    rgb_to_id,
    write_panoptic_prediction,
)
from focalnet.segmentation.pq import pq_compute
from focalnet.segmentation.universal_data import (
    CocoInstanceMasks,
    LargeScaleJitter,
    SemanticMasks,
    semantic_target,
    universal_collate,
)
from panoptic_synth import CATEGORIES, CORRUPTIONS, corrupt_png, write_synthetic_panoptic

from conftest import DATA, need


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_synthetic_panoptic(tmp_path_factory.mktemp("pan"), 6, 6, 64, seed=5)


def _copy(root: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(root, dst)
    return dst


@given(st.lists(st.integers(0, MAX_SEGMENT_ID), min_size=1, max_size=64))
def test_ids_and_colours_round_trip(ids):
    a = np.array(ids, dtype=np.int64).reshape(1, -1)
    rgb = id_to_rgb(a)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, len(ids), 3)
    assert (rgb_to_id(rgb) == a).all()
    assert rgb_to_id(rgb)[0, 0] == int(rgb[0, 0, 0]) + 256 * int(rgb[0, 0, 1]) + 65536 * int(rgb[0, 0, 2])


def test_out_of_range_ids_are_refused():
    for bad in (np.array([[-1]]), np.array([[MAX_SEGMENT_ID + 1]]), np.array([[0.5]])):
        with pytest.raises(ValueError, match="segment ids"):
            id_to_rgb(bad)


def test_layouts_and_custom_paths(synth, tmp_path):
    js, png, img = panoptic_paths(synth, "train")
    assert (js, png, img) == (
        synth / "annotations/panoptic_train2017.json",
        synth / "annotations/panoptic_train2017",
        synth / "train2017",
    )
    root = _copy(synth, tmp_path)
    shutil.move(root / "annotations/panoptic_val2017", root / "panoptic_val2017")  # PNGs at the root
    assert panoptic_paths(root, "val")[1] == root / "panoptic_val2017"
    assert len(build_panoptic_dataset(root, "val")) == 6
    shutil.move(root / "val2017", root / "pics")
    ds = build_panoptic_dataset(root, "val", img_dir="pics", png_dir=root / "panoptic_val2017")
    assert len(ds) == 6 and not ds.problems


def test_dataset_items_and_targets(synth):
    ds = build_panoptic_dataset(synth, "train")
    assert ds.class_names == [c["name"] for c in CATEGORIES] and ds.category_ids == [1, 3, 17, 21]
    assert ds.thing_classes == [True, True, False, False] and len(ds) == 6 and not ds.problems
    crowd_seen = False
    for i in range(len(ds)):
        raw = ds[i]
        ids, segs = raw["ids"], raw["segments"]
        assert raw["image"].shape[:2] == ids.shape and raw["image"].dtype == np.uint8
        index, labels = ds.index_map(ids, segs)
        crowd = [s for s in segs if s.iscrowd]
        crowd_seen |= bool(crowd)
        for k, s in enumerate([s for s in segs if not s.iscrowd], start=1):
            assert ((index == k) == (ids == s.id)).all() and labels[k - 1] == ds.cat_to_index[s.category_id]
        for s in crowd:  # crowd and void pixels are in no target
            assert (index[ids == s.id] == 0).all()
        assert (index[ids == 0] == 0).all()
    assert crowd_seen
    ds.transform = LargeScaleJitter(size=48, scale_range=(0.5, 1.5))
    random.seed(0)
    img, target = ds[0]
    assert img.shape[0] == 3 and max(img.shape[1:]) <= 48 and img.dtype == torch.float32
    masks, labels = target["masks"], target["labels"]
    assert masks.dtype == torch.bool and masks.shape[1:] == img.shape[1:] and labels.dtype == torch.int64
    assert masks.sum(0).max() <= 1 and masks.flatten(1).any(1).all()  # disjoint, none empty


def test_large_scale_jitter_keeps_masks_aligned():
    """An image whose colour encodes its segment: after the jitter, each mask's pixels have its colour."""
    rng = np.random.default_rng(0)
    index = np.zeros((60, 80), dtype=np.int32)
    index[10:40, 5:30], index[30:55, 40:75] = 1, 2
    img = np.stack([index * 100, index * 0 + 50, 200 - index * 90], -1).astype(np.uint8)
    t = LargeScaleJitter(size=64, scale_range=(0.3, 2.0), mean=(0, 0, 0), std=(1, 1, 1))
    sizes = set()
    for seed in range(20):
        random.seed(seed)
        crop, idx = t(img, index)
        random.seed(seed)
        _, masks = t(img, np.stack([index == 1, index == 2]))
        assert (masks[0] == (idx == 1)).all() and (masks[1] == (idx == 2)).all()
        assert crop.shape[1:] == idx.shape and max(idx.shape) <= 64
        sizes.add(idx.shape)
        for k in (1, 2):
            inner = idx == k
            if inner.sum() > 40:  # away from edges the bilinear image agrees with the nearest labels
                red = crop[0].numpy()[inner]
                assert np.median(np.abs(red - 100 * k)) < 1
    assert len(sizes) > 5 and rng is not None


def test_collate_pads_images_and_masks_alike():
    a = (torch.ones(3, 30, 20), {"labels": torch.tensor([0]), "masks": torch.ones(1, 30, 20, dtype=torch.bool)})
    b = (torch.ones(3, 10, 40), {"labels": torch.tensor([1, 2]), "masks": torch.ones(2, 10, 40, dtype=torch.bool)})
    images, targets = universal_collate([a, None, b])
    assert images.shape == (2, 3, 32, 64)
    assert images[0, :, :30, :20].eq(1).all() and images[0, :, 30:].eq(0).all() and images[0, :, :, 20:].eq(0).all()
    assert targets[0]["masks"].shape == (1, 32, 64) and targets[1]["masks"].shape == (2, 32, 64)
    assert targets[0]["masks"].sum() == 600 and targets[1]["masks"].sum() == 800
    assert universal_collate([None]) is None


def test_semantic_masks_from_the_ade20k_reading():
    from focalnet.segmentation.data import DataConfig, build_dataset
    from focalnet.segmentation.transforms import TrainTransform

    root = need(DATA / "ade20k-sample")
    ds = build_dataset(DataConfig(root=str(root)), "train", TrainTransform(crop_size=(64, 64), scale=(128, 64)))
    sem = SemanticMasks(ds)
    random.seed(0)
    img, target = sem[0]
    assert img.shape == (3, 64, 64)
    label = torch.full((64, 64), 255, dtype=torch.long)
    for c, m in zip(target["labels"], target["masks"]):
        assert 0 <= c < 150 and m.any()
        label[m] = c
    assert target["masks"].sum(0).max() == 1 or target["masks"].sum() == 0
    t2 = semantic_target(label)
    assert torch.equal(t2["labels"], target["labels"]) and torch.equal(t2["masks"], target["masks"])


def test_instance_masks_from_coco():
    root = need(DATA / "coco-tiny")
    ds = CocoInstanceMasks(root / "annotations/instances_val2017.json", root / "val2017")
    assert ds.num_classes == 80 and len(ds) > 0
    img, target = ds[0]
    info = ds.images[0]
    assert img.shape == (3, info["height"], info["width"])
    anns = [a for a in ds.anns[info["id"]]]
    assert not any(a.get("iscrowd") for a in anns)
    assert len(target["labels"]) == len(anns) and target["masks"].shape[1:] == img.shape[1:]
    areas = target["masks"].flatten(1).sum(1).float()
    ref = torch.tensor([a["area"] for a in anns], dtype=torch.float32)
    assert ((areas - ref).abs() / ref).max() < 0.1  # COCO's polygon areas vs the decoded pixels
    ds.transform = LargeScaleJitter(size=64, scale_range=(0.5, 1.0))
    img, target = ds[0]
    assert max(img.shape[1:]) <= 64 and target["masks"].shape[1:] == img.shape[1:]


def _problems(ds: CocoPanoptic) -> str:
    return " | ".join(p["problem"] for p in ds.problems)


def test_broken_entries_are_skipped_and_counted(synth, tmp_path):
    root = _copy(synth, tmp_path)
    js = root / "annotations/panoptic_train2017.json"
    data = json.loads(js.read_text())
    a = data["annotations"]
    a[0]["segments_info"].pop(0)  # a PNG id missing from the JSON
    a[1]["segments_info"].append({"id": 123, "category_id": 1})  # a JSON segment missing from the PNG
    a[2]["segments_info"][0]["category_id"] = 999  # unknown category
    data["images"][3]["width"] += 1  # the JSON's size is not the image's
    js.write_text(json.dumps(data))
    png = root / "annotations/panoptic_train2017"
    corrupt_png(png / a[4]["file_name"], "palette")
    corrupt_png(png / a[5]["file_name"], "resized")
    with pytest.raises(ValueError, match="no usable images"):
        build_panoptic_dataset(root, "train")
    data["annotations"].append(dict(a[5], image_id=99))  # same PNG: still bad
    shutil.copy(synth / "annotations/panoptic_train2017" / a[5]["file_name"], png / "good.png")
    data["annotations"].append(dict(a[5], image_id=100, file_name="good.png"))
    data["images"].append(dict(data["images"][5], id=100))
    js.write_text(json.dumps(data))
    ds = build_panoptic_dataset(root, "train")
    assert len(ds) == 1 and len(ds.problems) == 7, ds.problems
    text = _problems(ds)
    for expect in (
        "not in the JSON's segments_info",
        "[123] of the JSON are not in the PNG",
        "unknown category_id 999",
        "but the JSON says",
        "a mode P PNG",
        "but its PNG",
    ):
        assert expect in text, expect
    assert all(p["split"] == "train" and "\n" not in p["problem"] for p in ds.problems)
    with pytest.raises(ValueError, match="7 bad panoptic entries"):
        build_panoptic_dataset(root, "train", on_error="raise")


def test_file_level_problems_are_one_line(synth, tmp_path):
    root = _copy(synth, tmp_path)
    js = root / "annotations/panoptic_val2017.json"
    good = json.loads(js.read_text())
    cases = [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({**good, "categories": []}), "no categories"),
        (json.dumps({**good, "categories": good["categories"] + good["categories"][:1]}), "duplicate category id 1"),
        (json.dumps({**good, "images": good["images"] + good["images"][:1]}), "duplicate id 7"),
        (json.dumps({**good, "annotations": good["annotations"] * 2}), "duplicate image_id 7"),
        (json.dumps({k: v for k, v in good.items() if k != "annotations"}), "no 'annotations' list"),
    ]
    for text, expect in cases:
        js.write_text(text)
        with pytest.raises(PanopticFormatError) as e:
            build_panoptic_dataset(root, "val")
        assert expect in str(e.value) and str(js) in str(e.value) and "\n" not in str(e.value), str(e.value)
    js.unlink()
    with pytest.raises(FileNotFoundError, match="panoptic JSON not found"):
        load_panoptic_json(js)


def test_hostile_pngs_are_refused_without_allocating(tmp_path):
    from panoptic_synth import giant_png_header

    p = tmp_path / "bomb.png"
    p.write_bytes(giant_png_header(300_000, 300_000))
    with pytest.raises(PanopticFormatError, match="decompression bomb"):
        read_id_png(p)
    for how, expect in (("grey", "mode L"), ("truncated", "cannot read"), ("random", "cannot read"), ("jpeg", "JPEG")):
        q = tmp_path / f"{how}.png"
        Image.fromarray(id_to_rgb(np.arange(64).reshape(8, 8))).save(q)
        corrupt_png(q, how)
        with pytest.raises(PanopticFormatError, match=expect):
            read_id_png(q)


def test_written_predictions_score_as_the_ground_truth(synth, tmp_path):
    """Predictions written from the ground truth's own maps (class indices mapped back to the dataset's
    ids) score PQ 1; ids without an entry become void and entries without pixels are left out."""
    ds = build_panoptic_dataset(synth, "val")
    out = tmp_path / "pred"
    entries = []
    for i in range(len(ds)):
        raw = ds[i]
        ids = raw["ids"].copy()
        segs = [
            {"id": s.id, "category_id": ds.cat_to_index[s.category_id], "isthing": True, "score": 0.9}
            for s in raw["segments"]
            if not s.iscrowd
        ]
        crowd = [s.id for s in raw["segments"] if s.iscrowd]
        if i == 0:
            segs.append({"id": 4242, "category_id": 0, "score": 0.1})  # no pixels: left out
        e = write_panoptic_prediction(ids, segs, out / f"{raw['image_id']:012d}.png", raw["image_id"], ds.category_ids)
        assert [s["id"] for s in e["segments_info"]] == [s["id"] for s in segs if s["id"] != 4242]
        back = read_id_png(out / e["file_name"])
        assert (back[np.isin(ids, crowd)] == 0).all()  # crowd ids had no entry: void
        assert all(s["area"] == int((back == s["id"]).sum()) for s in e["segments_info"])
        entries.append(e)
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": entries}))
    gt_json, gt_dir, _ = panoptic_paths(synth, "val")
    r = pq_compute(gt_json, gt_dir, tmp_path / "pred.json", out)
    assert r["All"]["pq"] == 1.0 and r["All"]["n"] == 4 and not list(tmp_path.glob("pred/.*.tmp"))


FUZZ = settings(
    max_examples=int(os.environ.get("FOCALNET_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
    st.just([]),
    st.just({}),
    st.sampled_from([".", "/", "..", "a\x00b", "/dev/zero"]),
)
FIELDS = ["id", "category_id", "iscrowd", "segments_info", "file_name", "image_id", "width", "height", "isthing", None]


@FUZZ
@given(
    edits=st.lists(st.tuples(st.sampled_from(FIELDS), JUNK, st.integers(0, 5)), max_size=3),
    png=st.sampled_from(CORRUPTIONS),
    which=st.integers(0, 5),
)
def test_hostile_panoptic_files_through_the_dataset(synth, tmp_path_factory, edits, png, which):
    """Random field and PNG damage: the dataset is built (bad entries skipped and counted, good ones
    yield valid targets) or refused in one line; never another exception."""
    root = tmp_path_factory.mktemp("fz")
    shutil.copytree(synth / "annotations", root / "annotations")
    (root / "train2017").symlink_to(synth / "train2017")
    js = root / "annotations/panoptic_train2017.json"
    data = json.loads(js.read_text())
    for field, value, k in edits:
        ann, im = data["annotations"][k], data["images"][k]
        if field in ("width", "height"):
            im[field] = value
        elif field == "isthing":
            data["categories"][k % 4][field] = value
        elif field in ("file_name", "image_id", "segments_info"):
            ann[field] = value
        elif field is not None and isinstance(ann["segments_info"], list) and ann["segments_info"]:
            ann["segments_info"][0][field] = value
    js.write_text(json.dumps(data))
    corrupt_png(root / f"annotations/panoptic_train2017/{which + 1:012d}.png", png)
    try:
        ds = build_panoptic_dataset(root, "train", transform=LargeScaleJitter(size=32, scale_range=(0.5, 1.0)))
    except (ValueError, FileNotFoundError) as e:
        assert str(e) and "\n" not in str(e)
        return
    assert len(ds) + len(ds.problems) == 6
    if png != "keep":
        assert ds.problems
    for i in range(len(ds)):
        img, t = ds[i]
        assert t["masks"].shape[1:] == img.shape[1:] and ((t["labels"] >= 0) & (t["labels"] < 4)).all()


def test_the_synthetic_set_is_deterministic_and_complete(tmp_path):
    """The helper the learning test uses: same arguments, same bytes; things, stuff, crowd and void occur."""
    a = write_synthetic_panoptic(tmp_path / "a", 4, 2, 64, seed=9)
    b = write_synthetic_panoptic(tmp_path / "b", 4, 2, 64, seed=9)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * (4 + 2) + 2
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    ds = build_panoptic_dataset(a, "train")
    segs = [s for i in range(len(ds)) for s in ds[i]["segments"]]
    cats = {s.category_id for s in segs}
    assert {17, 21} <= cats and cats & {1, 3} and not ds.problems
    assert any((ds[i]["ids"] == 0).any() for i in range(len(ds)))
