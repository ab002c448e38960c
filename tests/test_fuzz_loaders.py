"""Property-based fuzzing of the data loaders (hypothesis): random bytes, truncated files, odd image
modes and sizes, broken COCO fields, mismatched label maps, broken COCO panoptic files. Never a traceback (only the loaders' own
one-line errors), never a silent wrong result (a decoded image is 8-bit RGB of the file's size; a kept
sample has labels in range; a skipped one is reported)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from focalnet.engine.images import ImageDecodeError, open_image

FUZZ = settings(
    max_examples=int(os.environ.get("FOCALNET_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TRIED = {"images": 0, "coco": 0, "labels": 0, "panoptic": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    path = os.environ.get("FOCALNET_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"fuzz": dict(TRIED)}) + "\n")


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}


def _encode(mode: str, w: int, h: int, fmt: str, seed: int) -> bytes | None:
    rng = np.random.default_rng(seed)
    if mode in ("I;16",):
        im = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode == "I":
        im = Image.fromarray(rng.integers(0, 70000, (h, w)).astype(np.int32), mode="I")
    elif mode == "F":
        im = Image.fromarray(rng.random((h, w), dtype=np.float32), mode="F")
    else:
        im = Image.new(mode, (w, h))
        im.putdata([tuple(v) if len(v) > 1 else int(v[0]) for v in rng.integers(0, 255, (w * h, len(im.getbands())))])
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return None  # this format cannot hold this mode: nothing to test
    try:  # Pillow 12.3 writes a 1x1 palette BMP that it cannot read back: not a valid file, nothing to test
        Image.open(io.BytesIO(buf.getvalue())).load()
    except OSError:
        return None
    return buf.getvalue()


def _check_decoded(path: Path, expect_size: tuple[int, int] | None) -> bool:
    """True if decoded (checked to be 8-bit RGB of the right size), False if refused with a clear error."""
    try:
        im = open_image(path)
    except ImageDecodeError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return False
    a = np.asarray(im)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    if expect_size is not None:
        assert im.size == expect_size
    return True


@FUZZ
@given(data=st.binary(max_size=2048), ext=st.sampled_from(list(FORMATS.values())))
def test_random_bytes_never_crash(data, ext):
    TRIED["images"] += 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{ext}"
        p.write_bytes(data)
        _check_decoded(p, None)


@FUZZ
@given(
    mode=st.sampled_from(MODES),
    w=st.integers(1, 40),
    h=st.integers(1, 40),
    fmt=st.sampled_from(list(FORMATS)),
    cut=st.one_of(st.none(), st.floats(0.0, 0.999)),
    seed=st.integers(0, 2**16),
)
def test_odd_modes_sizes_and_truncations(mode, w, h, fmt, cut, seed):
    TRIED["images"] += 1
    blob = _encode(mode, w, h, fmt, seed)
    if blob is None:
        return
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{FORMATS[fmt]}"
        p.write_bytes(blob if cut is None else blob[: int(len(blob) * cut)])
        ok = _check_decoded(p, (w, h))
        if cut is None:
            assert ok, f"a valid {mode} {fmt} {w}x{h} image was refused"


@FUZZ
@given(mode=st.sampled_from(["I;16", "F"]), seed=st.integers(0, 2**16))
def test_high_bit_depth_is_scaled_not_saturated(mode, seed):
    TRIED["images"] += 1
    blob = _encode(mode, 16, 8, "TIFF" if mode == "F" else "PNG", seed)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.tif"
        p.write_bytes(blob)
        a = np.asarray(open_image(p))[..., 0]
        assert 0 < a.mean() < 255 and a.max() > a.min()  # not all white / all black


# ------------------------------------------------------------------------------------------------ COCO

_ID = st.one_of(st.integers(-2, 4), st.none(), st.text(max_size=2), st.just([1]), st.booleans())
_NUM = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 80), st.none(), st.text(max_size=2)
)
_BBOX = st.one_of(st.lists(_NUM, min_size=0, max_size=6), _NUM, st.none())
_SEG = st.one_of(
    st.lists(st.lists(_NUM, max_size=8), max_size=2),
    st.fixed_dictionaries(
        {
            "counts": st.one_of(st.text(max_size=6), st.lists(st.integers(0, 50), max_size=6)),
            "size": st.lists(st.integers(0, 40), max_size=3),
        }
    ),
    st.none(),
    st.integers(),
)
_ANN = st.dictionaries(
    st.sampled_from(["id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"]),
    st.one_of(_ID, _BBOX, _SEG),
    max_size=7,
)
_IMG = st.dictionaries(
    st.sampled_from(["id", "file_name", "width", "height"]),
    st.one_of(_ID, st.sampled_from(["a.png", "missing.png", ""]), st.integers(-1, 64)),
    max_size=4,
)
_CAT = st.dictionaries(st.sampled_from(["id", "name"]), _ID, max_size=2)


@FUZZ
@given(
    images=st.lists(_IMG, max_size=4),
    anns=st.lists(_ANN, max_size=6),
    cats=st.lists(_CAT, max_size=3),
    masks=st.booleans(),
)
def test_broken_coco_fields_are_skipped_or_refused(tmp_path, images, anns, cats, masks):
    from focalnet.detection.data import CocoInstances

    TRIED["coco"] += 1
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (32, 24), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    # one well-formed image and annotation among the noise
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}, *images],
        "annotations": [
            {
                "id": 10**6,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 8, 8],
                "area": 64,
                "iscrowd": 0,
                "segmentation": [[2, 2, 10, 2, 10, 10]],
            },
            *anns,
        ],
        "categories": [{"id": 1, "name": "thing"}, *cats],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    try:
        ds = CocoInstances(tmp_path / "ann.json", tmp_path / "img", with_masks=masks, train=masks)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    assert 1 in ds.ids
    for i in range(len(ds)):
        item = ds[i]
        if item is None:
            assert ds.problems  # a skipped image is always reported
            continue
        image, target = item
        boxes = target["boxes"]
        assert boxes.shape[-1] == 4 and bool((boxes[:, 2:] >= boxes[:, :2]).all())
        assert bool((target["labels"] >= 1).all()) and bool((target["labels"] <= len(ds.category_ids)).all())


# ------------------------------------------------------------------------------------ segmentation labels


@FUZZ
@given(
    num_classes=st.integers(1, 6),
    label_max=st.integers(0, 255),
    lab_size=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    img_size=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    lab_mode=st.sampled_from(["L", "P", "RGB", "I;16"]),
    ignore=st.integers(0, 255),
    reduce=st.booleans(),
)
def test_mismatched_label_maps_are_reported_never_wrong(
    tmp_path, num_classes, label_max, lab_size, img_size, lab_mode, ignore, reduce
):
    from focalnet.segmentation.data import DataConfig, build_dataset

    TRIED["labels"] += 1
    root = tmp_path / f"r{TRIED['labels']}"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    rng = np.random.default_rng(label_max)
    Image.fromarray(rng.integers(0, 255, (img_size[1], img_size[0], 3), dtype=np.uint8)).save(root / "train" / "a.png")
    lab = rng.integers(0, label_max + 1, (lab_size[1], lab_size[0]))
    if lab_mode == "RGB":
        Image.fromarray(np.repeat(lab[..., None], 3, -1).astype(np.uint8)).save(root / "trainannot" / "a.png")
    elif lab_mode == "I;16":
        Image.fromarray(lab.astype(np.uint16)).save(root / "trainannot" / "a.png")
    else:
        Image.fromarray(lab.astype(np.uint8), mode="L").convert(lab_mode).save(root / "trainannot" / "a.png")
    cfg = DataConfig(
        root=str(root), layout="folder", num_classes=num_classes, ignore_index=ignore, reduce_zero_label=reduce
    )
    try:
        ds = build_dataset(cfg, "train")
    except ValueError as e:
        msg = str(e)
        assert "no usable samples" in msg or "class" in msg or msg.startswith("no pixel is labelled"), msg
        return
    sample = ds[0]
    assert sample is not None
    label = sample["label"]
    assert label.shape == sample["image"].shape[:2]
    valid = label[label != 255]
    assert valid.size == 0 or int(valid.max()) < num_classes


# ------------------------------------------------------------------------------------ COCO panoptic files
_SEGMENT = st.dictionaries(
    st.sampled_from(["id", "category_id", "iscrowd", "area", "bbox"]),
    st.one_of(st.integers(-2, 2**25), st.sampled_from([1, 3, 7]), st.none(), st.text(max_size=3), st.booleans()),
    max_size=5,
)


@FUZZ
@given(
    segments=st.lists(_SEGMENT, max_size=4),
    png_ids=st.lists(st.integers(0, 2**24 - 1), min_size=1, max_size=3),
    png_size=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    width=st.one_of(st.integers(-1, 30), st.none(), st.text(max_size=2)),
    isthing=st.one_of(st.integers(-1, 2), st.none(), st.text(max_size=2)),
)
def test_broken_panoptic_entries_are_skipped_or_refused(tmp_path, segments, png_ids, png_size, width, isthing):
    """A COCO panoptic JSON + PNG with random segments, ids, sizes and category fields, through the
    Mask2Former training data (large-scale jitter): one-line errors for the file, else each image kept with
    targets in range or skipped and reported."""
    from focalnet.segmentation.panoptic import build_panoptic_dataset, id_to_rgb
    from focalnet.segmentation.universal_data import LargeScaleJitter

    TRIED["panoptic"] += 1
    root = tmp_path / f"p{TRIED['panoptic']}"
    (root / "annotations" / "panoptic_train2017").mkdir(parents=True)
    (root / "train2017").mkdir()
    w, h = png_size
    ids = np.array(png_ids)[np.arange(w * h) % len(png_ids)].reshape(h, w)
    Image.fromarray(id_to_rgb(ids)).save(root / "annotations" / "panoptic_train2017" / "1.png")
    Image.new("RGB", (w, h), (9, 9, 9)).save(root / "train2017" / "1.jpg")
    # one well-formed image among the noise
    Image.fromarray(id_to_rgb(np.full((8, 8), 5))).save(root / "annotations" / "panoptic_train2017" / "2.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(root / "train2017" / "2.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": width, "height": h},
            {"id": 2, "file_name": "2.jpg", "width": 8, "height": 8},
        ],
        "annotations": [
            {"image_id": 1, "file_name": "1.png", "segments_info": segments},
            {"image_id": 2, "file_name": "2.png", "segments_info": [{"id": 5, "category_id": 1, "iscrowd": 0}]},
        ],
        "categories": [{"id": 1, "name": "a", "isthing": 1}, {"id": 3, "name": "b", "isthing": isthing}],
    }
    (root / "annotations" / "panoptic_train2017.json").write_text(json.dumps(data))
    try:
        ds = build_panoptic_dataset(root, "train", LargeScaleJitter(16, (0.5, 1.5)), num_threads=1)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    assert len(ds) + len(ds.problems) >= 1
    for i in range(len(ds)):
        item = ds[i]
        if item is None:
            assert ds.problems  # a skipped image is always reported
            continue
        image, target = item
        labels, masks = target["labels"], target["masks"]
        assert masks.shape[0] == labels.numel() and tuple(masks.shape[1:]) == tuple(image.shape[1:])
        assert labels.numel() == 0 or (0 <= int(labels.min()) and int(labels.max()) < ds.num_classes)
