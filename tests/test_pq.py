"""Panoptic quality: hand-computed cases, torchmetrics' PanopticQuality where the definitions agree, the
prediction checks, hostile prediction files (hypothesis) and the ``segmentation pq`` command."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from focalnet.segmentation.panoptic import PanopticCategory, id_to_rgb, read_id_png
from focalnet.segmentation.pq import PQStat, format_pq_table, pq_compute
from panoptic_synth import CORRUPTIONS, corrupt_png, write_synthetic_panoptic

from conftest import run_cli

T, U, S, S2 = 1, 2, 10, 11  # things T, U; stuff S, S2
CATS = [
    PanopticCategory(T, "t", True),
    PanopticCategory(U, "u", True),
    PanopticCategory(S, "s", False),
    PanopticCategory(S2, "s2", False),
]


def _seg(i: int, c: int, crowd: int = 0) -> dict:
    return {"id": i, "category_id": c, "iscrowd": crowd}


def _score(*images: tuple) -> dict:
    stat = PQStat(CATS)
    for gt, gsegs, pred, psegs in images:
        stat.update(np.array(gt), gsegs, np.array(pred), psegs)
    return stat.summary()


def _grid(cols: list[int], rows: int = 4) -> np.ndarray:
    """A ``rows x len(cols)`` id map whose column ``j`` holds ``cols[j]``."""
    return np.tile(np.array(cols, dtype=np.int64), (rows, 1))


def test_void_leaves_the_union():
    """gt: 4x4 segment 1 (T) and 4x4 void. pred: segment 5 (T) = the 16 px + 8 void px (24 px).
    IoU = 16 / (24 + 16 - 16 - 8) = 1.0 (without removing void: 16/24): PQ = SQ = RQ = 1, n = 1."""
    gt = _grid([1, 1, 1, 1, 0, 0, 0, 0])
    pred = _grid([5, 5, 5, 5, 5, 5, 0, 0])
    r = _score((gt, [_seg(1, T)], pred, [_seg(5, T)]))
    assert r["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    assert r["per_class"][T]["tp"] == 1 and r["Stuff"]["n"] == 0


def test_crowd_is_ignored_for_its_own_class_only():
    """gt: 4x4 crowd 2 (T) | 4x4 stuff 3 (S). pred: segment 7 = crowd + 1 column of S (20 px), segment 8
    (S) = the other 12 px of S. Segment 8: IoU = 12 / (12 + 16 - 12) = 0.75, a match. Segment 7 of class T
    lies 16/20 = 0.8 in T's crowd: no false positive, T has no count at all: n = 1, PQ = 0.75.
    The same segment 7 of class U is a false positive (the crowd is T's): U PQ 0, All n = 2, PQ = 0.375."""
    gt = _grid([2, 2, 2, 2, 3, 3, 3, 3])
    pred = _grid([7, 7, 7, 7, 7, 8, 8, 8])
    gsegs = [_seg(2, T, 1), _seg(3, S)]
    r = _score((gt, gsegs, pred, [_seg(7, T), _seg(8, S)]))
    assert r["All"]["n"] == 1 and r["All"]["pq"] == pytest.approx(0.75, abs=1e-12)
    assert r["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert (r["per_class"][T]["tp"], r["per_class"][T]["fp"], r["per_class"][T]["fn"]) == (0, 0, 0)
    r = _score((gt, gsegs, pred, [_seg(7, U), _seg(8, S)]))
    assert r["All"]["n"] == 2 and r["All"]["pq"] == pytest.approx(0.375, abs=1e-12)
    assert r["per_class"][U]["fp"] == 1


def test_a_split_segment():
    """gt: segment 1 (T), 4x5 = 20 px. pred: a (T) = 3 columns (12 px), b (T) = 2 columns (8 px).
    a: IoU 12/20 = 0.6 > 0.5, a match; b: IoU 0.4, a false positive. T: PQ = 0.6 / (1 + 0.5) = 0.4,
    SQ = 0.6, RQ = 1 / 1.5. An even split (10 + 10 px of a 4x5 segment): IoU 0.5 is no match (> 0.5 is
    needed): 1 false negative, 2 false positives, PQ = 0."""
    gt = _grid([1, 1, 1, 1, 1])
    r = _score((gt, [_seg(1, T)], _grid([4, 4, 4, 6, 6]), [_seg(4, T), _seg(6, T)]))
    assert r["per_class"][T] | {"name": "t"} == {
        "name": "t",
        "isthing": True,
        "pq": pytest.approx(0.4, abs=1e-12),
        "sq": pytest.approx(0.6, abs=1e-12),
        "rq": pytest.approx(2 / 3, abs=1e-12),
        "tp": 1,
        "fp": 1,
        "fn": 0,
    }
    even = np.array([[4] * 5] * 2 + [[6] * 5] * 2)
    r = _score((gt, [_seg(1, T)], even, [_seg(4, T), _seg(6, T)]))
    assert (r["per_class"][T]["tp"], r["per_class"][T]["fp"], r["per_class"][T]["fn"]) == (0, 2, 1)
    assert r["All"]["pq"] == 0.0 and r["All"]["n"] == 1


def test_a_wrong_class_is_a_false_negative_and_a_false_positive():
    """gt: segment 1 (T) on all 16 px; pred: the same pixels as U. T: fn 1, U: fp 1; n = 2, PQ 0."""
    gt = _grid([1, 1, 1, 1])
    r = _score((gt, [_seg(1, T)], _grid([9, 9, 9, 9]), [_seg(9, U)]))
    assert r["per_class"][T]["fn"] == 1 and r["per_class"][U]["fp"] == 1
    assert r["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}


def test_false_positives_mostly_in_void_do_not_count():
    """gt: columns 0-3 segment 1 (S), columns 4-7 void. pred: A (S) = columns 0-2, IoU 12/16 = 0.75;
    B (T) = columns 3-4, half in void (4/8 = 0.5, not more): a false positive; C (U) = columns 5-7,
    all void: ignored. S PQ 0.75, T PQ 0, U absent: All n = 2, PQ = 0.375; Things n = 1, PQ 0."""
    gt = _grid([1, 1, 1, 1, 0, 0, 0, 0])
    pred = _grid([3, 3, 3, 4, 4, 5, 5, 5])
    r = _score((gt, [_seg(1, S)], pred, [_seg(3, S), _seg(4, T), _seg(5, U)]))
    assert r["per_class"][S]["pq"] == pytest.approx(0.75, abs=1e-12)
    assert r["per_class"][T]["fp"] == 1 and r["per_class"][U]["fp"] == 0
    assert r["All"]["n"] == 2 and r["All"]["pq"] == pytest.approx(0.375, abs=1e-12)
    assert r["Things"]["n"] == 1 and r["Things"]["pq"] == 0.0 and r["Stuff"]["pq"] == pytest.approx(0.75)


def test_a_stuff_only_image_and_streaming_over_images():
    """Image 1: sky (S) rows 0-1, ground (S2) rows 2-3, predicted exactly: Stuff PQ 1, n 2, Things n 0.
    Adding the split case (T: IoU 0.6, tp 1, fp 1) and the wrong-class case (T fn 1, U fp 1):
    T: 0.6 / (1 + 0.5 + 0.5) = 0.3, U: 0, S and S2: 1 -> All (0.3 + 0 + 1 + 1) / 4 = 0.575, Things 0.15."""
    gt = np.array([[1] * 4] * 2 + [[2] * 4] * 2)
    stuff = (gt, [_seg(1, S), _seg(2, S2)], gt + 10, [_seg(11, S), _seg(12, S2)])
    r = _score(stuff)
    assert r["Stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2} and r["Things"]["n"] == 0
    split = (_grid([1, 1, 1, 1, 1]), [_seg(1, T)], _grid([4, 4, 4, 6, 6]), [_seg(4, T), _seg(6, T)])
    wrong = (_grid([1, 1, 1, 1]), [_seg(1, T)], _grid([9, 9, 9, 9]), [_seg(9, U)])
    r = _score(stuff, split, wrong)
    assert r["per_class"][T]["pq"] == pytest.approx(0.3, abs=1e-12)
    assert r["All"]["pq"] == pytest.approx(0.575, abs=1e-12) and r["All"]["n"] == 4
    assert r["Things"]["pq"] == pytest.approx(0.15, abs=1e-12) and r["num_images"] == 3


def test_prediction_checks_are_one_line_errors():
    gt = _grid([1, 1, 0, 0])
    stat = PQStat(CATS)
    cases = [
        (_grid([5, 5, 7, 7]), [_seg(5, T)], "[7] not in the JSON"),
        (_grid([5, 5, 0, 0]), [_seg(5, T), _seg(8, T)], "[8] of the JSON not in the PNG"),
        (_grid([5, 5, 0, 0]), [_seg(5, 99)], "unknown category_id [99]"),
        (_grid([5, 5, 0])[:, :3], [_seg(5, T)], "prediction is (3, 4) but ground truth (4, 4)"),
        (_grid([5, 5, 0, 0]), [_seg(5, T), _seg(5, U)], "duplicate segment id 5"),
    ]
    for pred, psegs, msg in cases:
        with pytest.raises(ValueError) as e:
            stat.update(gt, [_seg(1, T)], pred, psegs, image=42)
        assert msg in str(e.value) and "\n" not in str(e.value)
    assert stat.num_images == 0 and stat.tp.sum() == stat.fp.sum() == stat.fn.sum() == 0


# ------------------------------------------------------------------------------ torchmetrics
def _random_pair(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(gt, pred) as ``H x W x 2`` (category, instance): gt with void (category 0), pred without void;
    one segment per stuff class, things as rectangles; pred = shifted gt + random rectangles."""
    h, w = (int(v) for v in rng.integers(12, 40, size=2))
    gt = np.zeros((h, w, 2), dtype=np.int64)
    gt[..., 0] = np.where(np.arange(h)[:, None] < rng.integers(2, h - 2), S, S2)
    for inst in range(1, int(rng.integers(1, 6))):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        gt[y : y + rng.integers(3, 12), x : x + rng.integers(3, 12)] = (rng.choice([T, U]), inst)
    gt[rng.random((h, w)) < 0.05] = (0, 0)
    gt[:, : rng.integers(0, 3)] = (0, 0)
    pred = np.roll(gt, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    void = pred[..., 0] == 0
    pred[void] = (S, 0)
    for inst in range(10, 10 + int(rng.integers(0, 4))):
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        pred[y : y + rng.integers(2, 10), x : x + rng.integers(2, 10)] = (rng.choice([T, U, S, S2]), inst)
    pred[np.isin(pred[..., 0], [S, S2]), 1] = 0  # stuff: one segment per class (torchmetrics merges them)
    return gt, pred


def _to_ids(pan: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    ids = np.where(pan[..., 0] == 0, 0, pan[..., 0] * 1000 + pan[..., 1] + 1)
    segs = [_seg(int(v), int(v - 1) // 1000) for v in np.unique(ids) if v != 0]
    return ids, segs


def test_pq_equals_torchmetrics_where_the_definitions_agree():
    """Where they agree: predictions without void (torchmetrics also removes predicted void from the union
    and does not count a ground truth mostly covered by predicted void as a false negative), no crowd
    (torchmetrics has none), one segment per stuff class and image (torchmetrics merges stuff instances).
    Ground-truth void (category 0: unknown, torchmetrics' void) is allowed."""
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.detection")
    rng = np.random.default_rng(0)
    metric = tm.PanopticQuality(things={T, U}, stuffs={S, S2}, return_sq_and_rq=True, return_per_class=True)
    stat = PQStat(CATS)
    for _ in range(40):
        gt, pred = _random_pair(rng)
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
        (gi, gs), (pi, ps) = _to_ids(gt), _to_ids(pred)
        stat.update(gi, gs, pi, ps)
    theirs = metric.compute().double().numpy()  # (classes: T, U, S, S2) x (pq, sq, rq)
    ours = stat.summary()
    for row, cat in enumerate([T, U, S, S2]):
        got = [ours["per_class"][cat][k] for k in ("pq", "sq", "rq")]
        np.testing.assert_allclose(got, theirs[row], atol=1e-6)
    seen = (stat.tp + stat.fp + stat.fn) > 0
    np.testing.assert_allclose(ours["All"]["pq"], theirs[seen, 0].mean(), atol=1e-6)
    assert seen.all() and stat.fp.sum() > 0 and stat.fn.sum() > 0 and stat.tp.sum() > 20


# ------------------------------------------------------------------------------ files and the command
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_synthetic_panoptic(tmp_path_factory.mktemp("pan"), 0, 6, 48, seed=3)


def _gt(root: Path) -> tuple[Path, Path]:
    return root / "annotations" / "panoptic_val2017.json", root / "annotations" / "panoptic_val2017"


def _write_pred(root: Path, gt_json: Path, gt_dir: Path, seed: int) -> tuple[Path, Path]:
    """Predictions: the ground truth shifted, with its crowd segments as ordinary ones and one class changed."""
    rng = np.random.default_rng(seed)
    out = root / f"pred{seed}"
    out.mkdir(exist_ok=True)
    anns = []
    for a in json.loads(gt_json.read_text())["annotations"]:
        ids = np.roll(read_id_png(gt_dir / a["file_name"]), tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        present = set(np.unique(ids).tolist())
        segs = [_seg(s["id"], s["category_id"]) for s in a["segments_info"] if s["id"] in present]
        if segs and rng.random() < 0.5:
            segs[-1]["category_id"] = 3 if segs[-1]["category_id"] != 3 else 1
        Image.fromarray(id_to_rgb(ids)).save(out / a["file_name"])
        anns.append({"image_id": a["image_id"], "file_name": a["file_name"], "segments_info": segs})
    js = root / f"pred{seed}.json"
    js.write_text(json.dumps({"annotations": anns}))
    return js, out


def test_pq_command_json_equals_the_api(synth, tmp_path, monkeypatch):
    from focalnet.engine import options

    gt_json, gt_dir = _gt(synth)
    pj, pd = _write_pred(tmp_path, gt_json, gt_dir, 0)
    api = pq_compute(gt_json, gt_dir, pj, pd)
    assert 0.2 < api["All"]["pq"] < 0.95 and api["All"]["n"] == 4  # a mixed result: every path is used
    assert pq_compute(gt_json, gt_dir, pj, pd, num_threads=3) == api
    files = ("--gt-json", str(gt_json), "--gt-folder", str(gt_dir), "--pred-json", str(pj), "--pred-folder", str(pd))
    out = tmp_path / "scores"
    rc, stdout, stderr = run_cli("segmentation", "pq", *files, "--output", str(out))
    assert rc == 0, stderr
    written = json.loads((out / "pq.json").read_text())
    for k in ("All", "Things", "Stuff"):
        assert written[k] == api[k]
        assert f"{k:10s}| {100 * api[k]['pq']:5.1f}  {100 * api[k]['sq']:5.1f}" in stdout
    assert written["per_class"] == {str(c): v for c, v in api["per_class"].items()}
    assert stdout.splitlines() == format_pq_table(api).splitlines()
    # --json is the switch of every command: the same results as JSON on stdout, nothing written
    rc, stdout, stderr = run_cli("segmentation", "pq", *files, "--json")
    assert rc == 0 and json.loads(stdout) == written and stderr == "", stderr
    # the old --json FILE writes FILE for one release, with one note
    monkeypatch.setattr(options, "_NOTED", set())
    old = tmp_path / "old.json"
    rc, stdout, stderr = run_cli("segmentation", "pq", *files, "--json", str(old))
    assert rc == 0 and json.loads(old.read_text()) == written
    assert stdout.splitlines() == format_pq_table(api).splitlines()
    assert [ln for ln in stderr.splitlines() if ln.startswith("note:")] == [
        "note: --json FILE is deprecated and goes in the next release: --json prints the JSON, "
        "--output DIR writes the command's JSON file in DIR"
    ]
    before = pj.read_bytes()
    rc, _, stderr = run_cli("segmentation", "pq", "--gt-json", str(gt_json), "--pred-json", str(pj), "--json", str(pj))
    assert rc == 2 and stderr.startswith("error: --json") and "one of the inputs" in stderr
    assert len(stderr.strip().splitlines()) == 1 and pj.read_bytes() == before
    (out / "pq.json").write_text("{}")  # changed since: not this command's any more
    rc, _, stderr = run_cli("segmentation", "pq", *files, "--output", str(out))
    assert rc == 2 and "pass --overwrite" in stderr and (out / "pq.json").read_text() == "{}"
    assert run_cli("segmentation", "pq", *files, "--output", str(out), "--overwrite")[0] == 0


def test_pq_memory_is_flat_in_the_number_of_images(tmp_path):
    """The peak of traced allocations scoring 30 images is that of 3 (one image pair in flight)."""
    peaks = []
    for n in (3, 30):
        root = write_synthetic_panoptic(tmp_path / str(n), 0, n, 96, seed=1)
        gt_json, gt_dir = _gt(root)
        tracemalloc.start()
        pq_compute(gt_json, gt_dir, gt_json, gt_dir)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0], peaks


def test_pq_file_errors_are_one_line(synth, tmp_path):
    gt_json, gt_dir = _gt(synth)
    pj, pd = _write_pred(tmp_path, gt_json, gt_dir, 1)
    data = json.loads(pj.read_text())

    def run(mutate, expect: str) -> None:
        d = json.loads(json.dumps(data))
        mutate(d)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        rc, _, err = run_cli(
            "segmentation", "pq", "--gt-json", str(gt_json), "--pred-json", str(bad), "--pred-folder", str(pd)
        )
        assert rc == 2 and len(err.strip().splitlines()) == 1 and expect in err, err

    run(lambda d: d["annotations"].pop(0), "no prediction for the image with id 1")
    run(lambda d: d["annotations"].append(dict(d["annotations"][0])), "duplicate image_id 1")
    run(lambda d: d["annotations"][0]["segments_info"][0].update(category_id=5), "unknown category_id [5]")
    run(lambda d: d["annotations"][0]["segments_info"].pop(0), "not in the JSON's segments_info")
    run(lambda d: d["annotations"][0]["segments_info"].append(_seg(77, 1)), "[77] of the JSON not in the PNG")
    run(lambda d: d["annotations"][0].update(file_name="nothere.png"), "nothere.png")
    run(lambda d: d.pop("annotations"), "no 'annotations' list")


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
    st.text(max_size=5),
    st.just([]),
    st.just({}),
    st.sampled_from([".", "/", "..", "a\x00b", "/dev/zero"]),
)


@FUZZ
@given(
    key=st.sampled_from(["id", "category_id", "iscrowd", "segments_info", "file_name", "image_id", None]),
    value=JUNK,
    png=st.sampled_from(CORRUPTIONS),
    which=st.integers(0, 5),
)
def test_pq_hostile_predictions_give_a_result_or_one_line(synth, tmp_path_factory, key, value, png, which):
    gt_json, gt_dir = _gt(synth)
    tmp = tmp_path_factory.mktemp("fz")
    pred_dir = tmp / "pred"
    shutil.copytree(gt_dir, pred_dir)
    data = json.loads(gt_json.read_text())
    ann = data["annotations"][which]
    if key in ("file_name", "image_id", "segments_info"):
        ann[key] = value
    elif key is not None:
        ann["segments_info"][0][key] = value
    corrupt_png(pred_dir / f"{which + 1:012d}.png", png)
    pj = tmp / "pred.json"
    pj.write_text(json.dumps(data))
    try:
        r = pq_compute(gt_json, gt_dir, pj, pred_dir)
    except (ValueError, FileNotFoundError) as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert 0.0 <= r["All"]["pq"] <= 1.0 and r["num_images"] == 6
    rc, out, err = run_cli(
        "segmentation", "pq", "--gt-json", str(gt_json), "--pred-json", str(pj), "--pred-folder", str(pred_dir)
    )
    assert (rc == 0 and "All" in out) or (rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err)


def _rank_sums(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    rng = np.random.default_rng(7)
    pairs = [_random_pair(rng) for _ in range(6)]
    stat = PQStat(CATS)
    for gt, pred in pairs[rank::world]:  # each process scores its share of the images
        (gi, gs), (pi, ps) = _to_ids(gt), _to_ids(pred)
        stat.update(gi, gs, pi, ps)
    stat.all_reduce()
    dist.destroy_process_group()
    Path(out).write_text(json.dumps(stat.summary()))


def test_pq_statistics_sum_over_processes(tmp_path):
    """Two gloo processes scoring half of the images each end with the one-process result."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_rank_sums, args=(r, 2, str(tmp_path / "store"), str(tmp_path / f"{r}.json")))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    rng = np.random.default_rng(7)
    stat = PQStat(CATS)
    for gt, pred in [_random_pair(rng) for _ in range(6)]:
        (gi, gs), (pi, ps) = _to_ids(gt), _to_ids(pred)
        stat.update(gi, gs, pi, ps)
    one = json.loads(json.dumps(stat.summary()))
    for r in range(2):
        got = json.loads((tmp_path / f"{r}.json").read_text())
        assert got["num_images"] == 6 and got["per_class"].keys() == one["per_class"].keys()
        for c, v in one["per_class"].items():  # IoU sums added in another order: equal to rounding
            assert got["per_class"][c] == {**v, **{m: pytest.approx(v[m], abs=1e-12) for m in ("pq", "sq", "rq")}}
        for k in ("All", "Things", "Stuff"):
            assert got[k] == pytest.approx(one[k], abs=1e-12)
    stat.all_reduce()  # one process: nothing changes
    assert json.loads(json.dumps(stat.summary())) == one
