"""Every model kind through `focalnet export` (checked ONNX) and back through `predict` on ONNX Runtime,
parametrised over the registries: a new detector or segmentor is covered without a new test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from detection_synth import make_shapes, tiny_config  # noqa: E402
from focalnet.detection.registry import DETECTORS  # noqa: E402
from focalnet.engine.onnx import check_detections, open_exported  # noqa: E402

from conftest import randomize_, run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# what cannot be exported yet, and why (docs/deploy.md says the same)
NOT_EXPORTABLE: dict[str, str] = {}


def _param(name: str, reasons: dict[str, str], slow: bool = False) -> object:
    marks = [pytest.mark.xfail(reason=reasons[name], strict=True)] if name in reasons else []
    return pytest.param(name, marks=[*marks, *([pytest.mark.slow] if slow else [])], id=name)


def _tiny_detector_file(name: str, path: Path) -> None:
    from focalnet.detection.config import DetectionConfig
    from focalnet.detection.load import save_detector
    from focalnet.detection.registry import build_from_config
    from focalnet.engine.config import build_config

    config = tiny_config(name)
    if "detections_per_img" in DETECTORS[name].config_fields:  # fewer masks to paste: a quicker check
        config["model"].setdefault("detections_per_img", 30)
    cfg = build_config(DetectionConfig, config)
    torch.manual_seed(0)
    model = build_from_config(cfg.model, 3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_detector(path, model, cfg, ["square", "disc"], [3, 7])


def _detections(path: Path) -> list[dict[str, np.ndarray]]:
    from pycocotools import mask as mask_utils

    out = []
    for rec in json.loads(path.read_text()):
        d = rec["detections"]
        det = {
            "boxes": np.array([x["box"] for x in d], dtype=np.float64).reshape(-1, 4),
            "labels": np.array([x["category_id"] for x in d]),
            "scores": np.array([x["score"] for x in d]),
        }
        if d and "segmentation" in d[0]:
            det["masks"] = np.stack([mask_utils.decode(x["segmentation"])[None] for x in d]).astype(np.float32)
        out.append(det)
    return out


# detectors with masks paste them at every checked size: 20-70 s on a loaded 2-core machine (-m slow)
@pytest.mark.parametrize("name", [_param(n, NOT_EXPORTABLE, slow=s.masks) for n, s in DETECTORS.items()])
def test_every_detector_exports_checked_and_predicts_the_same_on_onnxruntime(name, tmp_path):
    ckpt = tmp_path / "model.pt"
    _tiny_detector_file(name, ckpt)
    rc, out, err = run_cli("export", str(ckpt), "--output", str(tmp_path / "m.onnx"), "--img-size", "120")
    assert rc == 0, err
    assert "checked against PyTorch" in out
    meta = open_exported(tmp_path / "m.onnx", "detection").meta
    assert meta["model"] == name and meta["class_names"] == ["square", "disc"] and meta["category_ids"] == [3, 7]
    assert len(meta["source_sha256"]) == 64
    _, images = make_shapes(tmp_path / "data", n_images=2, size=96)
    files = sorted(str(p) for p in images.iterdir())
    runs = {}
    for what, source in (("torch", ckpt), ("onnx", tmp_path / "m.onnx")):
        rc, _, err = run_cli(
            *("detection", "predict", *files, "--checkpoint", str(source), "--score-thr", "0.005"),
            *("--output", str(tmp_path / what), "--threads", "1"),
        )
        assert rc == 0, err
        runs[what] = _detections(tmp_path / what / "detections.json")
        written = sorted(p.name for p in (tmp_path / what).iterdir() if not p.name.startswith("."))
        assert written == ["0000.png", "0001.png", "detections.json"]
    assert sum(len(d["scores"]) for d in runs["torch"]) > 0  # something to compare
    for ref, got in zip(runs["torch"], runs["onnx"]):
        check_detections(ref, got, box_tol=0.5 + 0.01, score_tol=2e-4)  # JSON rounds boxes to 0.01, scores to 1e-4


def _tiny_segmentor_file(path: Path, scale: list[int] | None, name: str = "upernet") -> None:
    from focalnet.segmentation import save_segmentor, upernet
    from focalnet.segmentation.mask2former import mask2former

    torch.manual_seed(0)
    names = ["sky", "road", "tree", "car"]
    if name == "mask2former":
        head = dict(hidden_dim=32, conv_dim=32, mask_dim=32, dim_feedforward=48, enc_dim_feedforward=40)
        head.update(enc_layers=1, dec_layers=2, num_queries=6, nheads=4, enc_heads=4)
        model = mask2former("focalnet_tiny_srf", 4, head=head, embed_dim=16, depths=(1, 1, 1, 1), class_names=names)
        model.meta["thing_classes"] = [False, False, True, True]
        randomize_(model)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # confident classes (above the 0.8 threshold) and masks that vary: several segments
            model.sem_seg_head.predictor.query_feat.weight.normal_(0, 3, generator=g)
            model.sem_seg_head.predictor.class_embed.weight.normal_(0, 2, generator=g)
            model.sem_seg_head.predictor.mask_embed.layers[-1].weight.normal_(0, 5, generator=g)
        model.eval()
        save_segmentor(model, path, {"test": {"scale": scale}})
        return
    model = upernet(
        "focalnet_tiny_srf",
        num_classes=4,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        head={"channels": 16, "aux_channels": 8},
        class_names=names,
    )
    model.eval()  # default init: BatchNorm statistics stay valid
    with torch.no_grad():  # logits that vary across the image: label maps with several classes
        model.decode_head.conv_seg.weight.normal_(0, 3, generator=torch.Generator().manual_seed(1))
    save_segmentor(model, path, {"test": {"scale": scale}})


TINY_SEGMENTORS = ("upernet", "mask2former")


def _segmentors() -> list[str]:
    from focalnet.segmentation.registry import SEGMENTORS

    return list(SEGMENTORS)


SEGMENTOR_NOT_EXPORTABLE: dict[str, str] = {}


@pytest.mark.parametrize("name", [_param(n, SEGMENTOR_NOT_EXPORTABLE) for n in _segmentors()])
@pytest.mark.parametrize("scale", [None, [128, 64]], ids=["original-size", "rescaled"])
def test_every_segmentor_exports_checked_and_predicts_the_same_on_onnxruntime(name, scale, tmp_path):
    if name not in TINY_SEGMENTORS:
        pytest.xfail(SEGMENTOR_NOT_EXPORTABLE.get(name, "no tiny file recipe for it here"))
    ckpt = tmp_path / "model.pt"
    _tiny_segmentor_file(ckpt, scale, name)
    rc, out, err = run_cli("export", str(ckpt), "--output", str(tmp_path / "m.onnx"), "--img-size", "96")
    assert rc == 0, err
    meta = open_exported(tmp_path / "m.onnx", "segmentation").meta
    assert meta["class_names"] == ["sky", "road", "tree", "car"] and meta["size_rules"]["test_scale"] == scale
    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate(((72, 96), (90, 70))):
        low = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
        Image.fromarray(low).resize((w, h), Image.BICUBIC).save(tmp_path / f"img{i}.png")
        files.append(str(tmp_path / f"img{i}.png"))
    runs = ("torch", "onnx")
    for what, source in zip(runs, (ckpt, tmp_path / "m.onnx")):
        rc, _, err = run_cli(
            *("segmentation", "predict", *files, "--checkpoint", str(source), "--output", str(tmp_path / what)),
            *("--threads", "1"),
        )
        assert rc == 0, err
    written = {w: sorted(str(p.relative_to(tmp_path / w)) for p in (tmp_path / w).rglob("*")) for w in runs}
    assert written["torch"] == written["onnx"]
    # at the original size the graph computes what PyTorch does; rescaled, it resizes in float where
    # predict resizes the uint8 image with Pillow (docs/deploy.md)
    least = 0.999 if scale is None else 0.99
    for i in range(2):
        ref = np.asarray(Image.open(tmp_path / "torch" / f"img{i}_label.png"))
        got = np.asarray(Image.open(tmp_path / "onnx" / f"img{i}_label.png"))
        assert ref.shape == got.shape and len(np.unique(ref)) > 1
        assert (ref == got).mean() >= least
    if (tmp_path / "torch" / "panoptic.json").exists():  # a universal segmentor: COCO panoptic PNGs + JSON
        ref_json, got_json = (json.loads((tmp_path / w / "panoptic.json").read_text()) for w in runs)
        assert got_json["categories"] == ref_json["categories"]
        for a, b in zip(ref_json["annotations"], got_json["annotations"]):
            ref = np.asarray(Image.open(tmp_path / "torch" / "panoptic" / a["file_name"]))
            got = np.asarray(Image.open(tmp_path / "onnx" / "panoptic" / b["file_name"]))
            assert ref.shape == got.shape and (ref == got).all(-1).mean() >= least
            if scale is None:
                key = ["id", "category_id", "iscrowd", "area"]
                assert [[s.get(k) for k in key] for s in b["segments_info"]] == [
                    [s.get(k) for k in key] for s in a["segments_info"]
                ]
        if scale is None:  # the instance outputs (not written by predict) against the checkpoint's inference
            from focalnet.segmentation import load_segmentor
            from focalnet.segmentation.evaluate import TestConfig
            from focalnet.segmentation.mask2former.postprocess import instance_inference
            from focalnet.segmentation.universal_eval import infer_logits

            image = np.asarray(Image.open(files[0]).convert("RGB"))
            model, extra = load_segmentor(ckpt)
            with torch.no_grad():
                logits = infer_logits(model, image, TestConfig.from_stored(extra["test"]))
                ref = instance_inference(*logits, topk=100, boxes=False)
            got = open_exported(tmp_path / "m.onnx", "segmentation").run({"image": image})
            assert len(got["instance_labels"]) == len(ref["labels"]) > 0
            # the same (label, score) pairs; pairs of tied class probability may come in another order
            pairs = [
                np.array(sorted(zip(lab.tolist(), sc.tolist())))
                for lab, sc in (
                    (got["instance_labels"], got["instance_scores"]),
                    (ref["labels"], ref["scores"].numpy()),
                )
            ]
            assert (pairs[0][:, 0] == pairs[1][:, 0]).all()
            np.testing.assert_allclose(pairs[0][:, 1], pairs[1][:, 1], atol=1e-4)
            confident = ref["scores"].numpy() > 0.05  # distinct, high scores: same order, same masks
            same = got["instance_masks"][confident].astype(bool) == ref["masks"].numpy()[confident]
            assert confident.any() and same.mean() >= 0.999


def test_classifier_export_predicts_the_same_and_carries_its_preprocessing(tmp_path):
    import focalnet

    model = randomize_(focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), num_classes=3))
    focalnet.save_model(model.eval(), tmp_path / "c.safetensors", class_names=["cat", "dog", "fox"])
    rc, out, err = run_cli(
        "export", str(tmp_path / "c.safetensors"), "--output", str(tmp_path / "c.onnx"), "--img-size", "64"
    )
    assert rc == 0, err
    meta = open_exported(tmp_path / "c.onnx", "classification").meta
    assert meta["class_names"] == ["cat", "dog", "fox"] and meta["input_format"].startswith("float32")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    tops = {}
    for what, source in (("torch", tmp_path / "c.safetensors"), ("onnx", tmp_path / "c.onnx")):
        rc, _, err = run_cli(
            *("classification", "predict", str(tmp_path / "a.png"), "--checkpoint", str(source)),
            *("--img-size", "64", "--json", str(tmp_path / f"{what}.json"), "--threads", "1"),
        )
        assert rc == 0, err
        tops[what] = json.loads((tmp_path / f"{what}.json").read_text())["results"][0]["top"]
    assert [t["index"] for t in tops["torch"]] == [t["index"] for t in tops["onnx"]]
    np.testing.assert_allclose([t["prob"] for t in tops["onnx"]], [t["prob"] for t in tops["torch"]], atol=1e-5)


def test_wrong_kind_and_foreign_onnx_files_are_refused_in_one_line(tmp_path):
    import focalnet
    from focalnet.export import export_onnx

    model = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), num_classes=3).eval()
    focalnet.save_model(model, tmp_path / "c.safetensors")
    assert (
        run_cli("export", str(tmp_path / "c.safetensors"), "--output", str(tmp_path / "c.onnx"), "--img-size", "64")[0]
        == 0
    )
    export_onnx(model, tmp_path / "plain.onnx")  # no focalnet metadata
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    cases = [
        ("detection", "c.onnx", "is a classification export"),
        ("segmentation", "c.onnx", "is a classification export"),
        ("classification", "plain.onnx", "was not written by `focalnet export`"),
        ("segmentation", "junk.onnx", "is not a readable ONNX file"),
    ]
    for task, name, said in cases:
        rc, out, err = run_cli(
            task,
            "predict",
            str(tmp_path / "a.png"),
            "--checkpoint",
            str(tmp_path / name),
            "--output",
            str(tmp_path / f"o-{task}-{name}"),
        )
        assert rc == 2 and said in err and len(err.strip().splitlines()) == 1, (task, name, err)


def test_a_failed_check_exits_2_naming_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    import focalnet.engine.onnx as onnx_mod

    ckpt = tmp_path / "model.pt"
    _tiny_detector_file("faster_rcnn", ckpt)
    real = onnx_mod.ort_session

    class Shifted:  # ONNX Runtime's boxes one pixel off: what a broken graph would give
        def __init__(self, path):
            self.session = real(path)

        def run(self, names, feeds):
            outs = self.session.run(names, feeds)
            return [o + 1.0 if n == "boxes" else o for n, o in zip(names, outs)]

    monkeypatch.setattr(onnx_mod, "ort_session", Shifted)
    (tmp_path / "out").mkdir()
    rc, out, err = run_cli("export", str(ckpt), "--output", str(tmp_path / "out" / "m.onnx"), "--img-size", "120")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "output 'boxes'" in err and "differs from PyTorch by 1 px" in err
    assert list((tmp_path / "out").iterdir()) == []  # no file, no temporary left


def test_the_deploy_script_runs_a_detector_and_a_segmentor_without_torch(tmp_path):
    import re
    import subprocess
    import sys

    from focalnet.detection.export import export_detector
    from focalnet.detection.load import load_detector
    from focalnet.segmentation import load_segmentor
    from focalnet.segmentation.export import export_segmentor

    doc = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    script = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "deploy.py").write_text(script)
    _tiny_detector_file("faster_rcnn", tmp_path / "det.pt")
    model, meta = load_detector(tmp_path / "det.pt")
    export_detector(model, meta, tmp_path / "det.onnx", sizes=((96, 128), (80, 64), (100, 120)))
    _tiny_segmentor_file(tmp_path / "seg.pt", None)
    seg, extra = load_segmentor(tmp_path / "seg.pt")
    export_segmentor(seg, extra, tmp_path / "seg.onnx", sizes=((64, 80), (48, 40), (72, 56)))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    wrapper = (
        "import runpy, sys; sys.argv = ['deploy.py', 'det.onnx', 'seg.onnx', 'a.png']; "
        "runpy.run_path('deploy.py', run_name='__main__'); "
        "print('TORCH IMPORTED' if any(m == 'torch' or m.startswith('torch.') for m in sys.modules) else 'NO TORCH')"
    )
    res = subprocess.run([sys.executable, "-c", wrapper], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "NO TORCH"
    assert any(line.endswith("% of the pixels") for line in lines)
    label_map = np.asarray(Image.open(tmp_path / "label_map.png"))
    assert label_map.shape == (70, 90) and label_map.max() < 4


def test_benchmark_rows_per_kind_time_all_three_paths_on_one_input():
    from focalnet.benchmark import format_kinds_table, run_kinds_benchmark

    res = run_kinds_benchmark(
        ["classification", "segmentation"], tiny=True, reps=2, warmup=1, min_time=0.05, log=lambda s: None
    )
    assert list(res["kinds"]) == ["classification", "segmentation"]
    for row in res["kinds"].values():
        assert row["file_mb"] > 0.1
        for path in ("eager", "fused", "onnxruntime"):
            assert row[path]["images_per_s"] > 0 and row[path]["reps"] == 2
    table = format_kinds_table(res)
    assert table.count("\n| ") == 2 and "2 interleaved repetitions" in table


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_fp16_export_builds_passes_the_checker_and_loads_on_cpu(kind, tmp_path):
    import onnx
    from onnx import TensorProto

    import focalnet

    if kind == "classification":
        model = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), num_classes=3).eval()
        focalnet.save_model(model, tmp_path / "m.safetensors")
        ckpt = tmp_path / "m.safetensors"
    else:
        ckpt = tmp_path / "m.pt"
        _tiny_segmentor_file(ckpt, None)
    rc, out, err = run_cli("export", str(ckpt), "--output", str(tmp_path / "m.onnx"), "--img-size", "64", "--fp16")
    assert rc == 0, err
    assert "float16 for GPU providers" in out
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    weights = [t.data_type for t in graph.initializer if len(t.dims) > 1]
    assert weights and all(d == TensorProto.FLOAT16 for d in weights)
    exported = open_exported(tmp_path / "m.onnx", kind)  # inputs and outputs as declared (float32 / uint8)
    assert exported.meta["dtype"] == "float16"


def _graph_with_metadata(path: Path, entry: str | None, out_type: int) -> None:
    """A one-node ONNX file (uint8 image -> its label map, cast) carrying ``entry`` as its focalnet metadata."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("ReduceMax", ["image"], ["reduced"], axes=[2], keepdims=0)
    cast = helper.make_node("Cast", ["reduced"], ["label_map"], to=out_type)
    graph = helper.make_graph(
        [node, cast],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["h", "w", 3])],
        [helper.make_tensor_value_info("label_map", out_type, ["h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if entry is not None:
        helper.set_model_props(model, {"focalnet": entry})
    onnx.save(model, str(path))


_VALID = {
    "format": "focalnet-export",
    "format_version": 1,
    "kind": "segmentation",
    "model": "upernet",
    "inputs": [["image", "uint8"]],
    "outputs": [["label_map", "int64"]],
    "class_names": ["a", "b"],
}


def test_open_exported_reads_a_valid_file_and_refuses_hostile_metadata_in_one_line(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from onnx import TensorProto

    _graph_with_metadata(tmp_path / "ok.onnx", json.dumps(_VALID), TensorProto.INT64)
    ok = open_exported(tmp_path / "ok.onnx", "segmentation")
    assert ok.run({"image": np.zeros((5, 7, 3), np.uint8)})["label_map"].shape == (5, 7)

    scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8)
    values = st.recursive(
        scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6
    )
    hostile = st.one_of(
        st.text(max_size=40),  # not JSON, or JSON of another type
        st.builds(lambda k, v: json.dumps({**_VALID, k: v}), st.sampled_from(sorted(_VALID)), values),
        st.builds(lambda k: json.dumps({x: y for x, y in _VALID.items() if x != k}), st.sampled_from(sorted(_VALID))),
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(entry=hostile, out_type=st.sampled_from([TensorProto.INT64, TensorProto.FLOAT]))
    def check(entry, out_type):
        path = tmp_path / "h.onnx"
        _graph_with_metadata(path, entry, out_type)
        try:
            open_exported(path, "segmentation")
        except ValueError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:  # accepted: only what a valid file holds
            meta = json.loads(entry)
            fixed = [k for k in _VALID if k not in ("model", "class_names")]  # any model name, any names
            assert out_type == TensorProto.INT64 and all(meta[k] == _VALID[k] for k in fixed)
            assert type(meta["format_version"]) is int and meta["class_names"]

    check()
