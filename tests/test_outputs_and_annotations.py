"""Output names that never replace inputs or each other, and the COCO validation layer under fuzzing:
whatever a COCO file holds, reading it gives either one ``ValueError`` line or a cleaned dataset that
pycocotools indexes and evaluates without an error (or a signal: the suite runs it in-process)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focalnet.detection.annotations import read_coco
from focalnet.engine.outputs import OutputPathError, output_paths, refuse_input_overwrite

from conftest import run_cli

# ---------------------------------------------------------------------------------------------- names


def test_output_paths_never_collide_nor_replace_an_input(tmp_path):
    inputs = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "x.png", tmp_path / "a" / "x.jpg"]
    for p in inputs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"img")
    out = output_paths(inputs, tmp_path, "", ".png")  # the usual name of x.png would be x.png itself
    assert len({p.resolve() for p in out}) == len(inputs)
    assert not {p.resolve() for p in out} & {p.resolve() for p in inputs}
    # names depend on the inputs only: the label and colour outputs of one input are named alike
    assert [p.name.replace("_label", "") for p in output_paths(inputs, tmp_path / "o", "_label")] == [
        p.name.replace("_color", "") for p in output_paths(inputs, tmp_path / "o", "_color")
    ]


def test_an_output_onto_an_input_is_refused_also_through_a_link(tmp_path):
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"img")
    (tmp_path / "link.jpg").symlink_to(photo)
    for target in (photo, tmp_path / "link.jpg", tmp_path / "sub" / ".." / "x.jpg"):
        with pytest.raises(OutputPathError):
            refuse_input_overwrite(target, [photo])
    assert refuse_input_overwrite(tmp_path / "y.json", [photo]).name == "y.json"


def test_convert_onto_its_input_keeps_the_input(tmp_path):
    import focalnet

    src = tmp_path / "m.safetensors"
    focalnet.save_model(focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1)), src)
    before = src.read_bytes()
    rc, _, err = run_cli("convert", str(src), str(src), "--to", "timm")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "m.safetensors" in err
    assert src.read_bytes() == before


# ---------------------------------------------------------------------------------------------- COCO fuzz

BASE = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
    "categories": [{"id": 1, "name": "thing"}, {"id": 7, "name": "other"}],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [2, 3, 10, 12],
            "area": 120,
            "iscrowd": 0,
            "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]],
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 7,
            "bbox": [20, 5, 8, 8],
            "area": 64,
            "iscrowd": 1,
            "segmentation": {"size": [30, 40], "counts": [600, 10, 590]},
        },
    ],
}
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, math.inf, "abc", "", "yes", [], {}, [1, 2], [0, 0, 0, 0], [1e308] * 8]),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=9),
    st.text(max_size=8),
)
FIELDS = [
    ("images", "id"),
    ("images", "width"),
    ("images", "height"),
    ("images", "file_name"),
    ("categories", "id"),
    ("categories", "name"),
    *[("annotations", k) for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")],
]


EDITS = st.lists(st.tuples(st.sampled_from(FIELDS), st.integers(0, 1), HOSTILE), min_size=1, max_size=4)
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(edits=EDITS)
def test_any_coco_file_reads_cleanly_or_fails_in_one_line(tmp_path, edits):
    check_coco_edits(tmp_path, edits)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=FIXTURE_OK)
@given(edits=EDITS)
def test_any_coco_file_reads_cleanly_or_fails_in_one_line_many(tmp_path, edits):
    check_coco_edits(tmp_path, edits)


def check_coco_edits(tmp_path: Path, edits: list) -> None:
    """``BASE`` with ``edits`` (field, entry, hostile value): one ValueError line, or a cleaned dataset on
    which pycocotools builds its index and decodes every kept mask."""
    from pycocotools.coco import COCO

    data = copy.deepcopy(BASE)
    for (section, key), i, value in edits:
        entries = data[section]
        entries[i % len(entries)][key] = value
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))  # NaN/inf become the JSON extensions Python reads back
    try:
        clean, problems = read_coco(path, None, with_masks=True)
    except ValueError as e:
        assert "\n" not in str(e).strip() and "ann.json" in str(e)
        return
    images, cats = {i["id"] for i in clean["images"]}, {c["id"] for c in clean["categories"]}
    assert all(a["image_id"] in images and a["category_id"] in cats for a in clean["annotations"])
    assert len(clean["annotations"]) + sum(p.kind == "annotation" for p in problems) >= 1 or not images
    coco = COCO()
    coco.dataset = clean
    coco.createIndex()
    for ann in clean["annotations"]:  # what evaluation does with each kept annotation
        coco.annToMask(ann)
        assert all(math.isfinite(v) for v in ann["bbox"]) and ann["bbox"][2] > 0 and ann["bbox"][3] > 0


def test_a_polygon_of_1e308_is_skipped_and_named(tmp_path):
    data = copy.deepcopy(BASE)
    data["annotations"][0]["segmentation"] = [[1e308, 1e308, 5, 5, 9, 9]]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    clean, problems = read_coco(path, None, with_masks=True)
    assert [a["id"] for a in clean["annotations"]] == [2]
    assert any("segmentation" in p.reason for p in problems), problems


def test_file_level_problems_are_one_line(tmp_path):
    for text in ("not json", "[1, 2]", json.dumps({"images": 3, "annotations": [], "categories": []})):
        path = Path(tmp_path / "bad.json")
        path.write_text(text)
        with pytest.raises(ValueError) as err:
            read_coco(path, None)
        assert "bad.json" in str(err.value) and "\n" not in str(err.value).strip()
