"""Every detector through the same tests, parametrised over ``DETECTORS``: defaults in one place (the
released recipe, the Python builder and a bare config build the same model), the recipe's size against
the reference, a tiny command-line run (train, evaluate, predict, resume), learning generated shapes,
strict loads of each original layout with exact parameter counts, misfit and hostile files, and a
detector defined outside the package."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from torch import nn

from detection_synth import TINY_HEADS, make_shapes, tiny_config, train_on_shapes
from focalnet.detection import (
    DETECTORS,
    DetectionConfig,
    DetectorSpec,
    ModelConfig,
    build_backbone,
    build_from_config,
    config_path,
    list_configs,
    load_detector,
    register_detector,
)
from focalnet.detection.load import FOCALNET_FORMAT, detector_file_meta
from focalnet.detection.registry import builder_kwargs
from focalnet.engine.config import build_config, load_config
from focalnet.models.focalnet import FocalNetBackbone
from focalnet.weights.checks import (
    CheckpointMismatchError,
    MalformedCheckpointError,
    NonFiniteWeightsError,
)

from conftest import DATA, REFERENCE, need, run_cli, seeded_state_dict

NAMES = list(DETECTORS)
SLOW = pytest.mark.slow


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny detection models are faster single-threaded


def test_the_suite_covers_every_detector():
    assert NAMES == ["mask_rcnn", "faster_rcnn", "cascade_mask_rcnn", "atss", "sparse_rcnn", "dino"]
    assert set(TINY_HEADS) == set(NAMES)
    for spec in DETECTORS.values():
        assert spec.recipe in list_configs() and spec.summary and spec.title


# ---------------------------------------------------------------------------------------------- defaults
def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _head(spec: DetectorSpec, kwargs: dict) -> dict:
    """The head settings a build gets: the spec's defaults under what ``kwargs`` gives."""
    return _plain({**spec.head_defaults, **{k: v for k, v in kwargs.items() if k in spec.head_defaults}})


def _body(model: nn.Module) -> FocalNetBackbone:
    return next(m for m in model.modules() if isinstance(m, FocalNetBackbone))


@pytest.mark.parametrize("name", NAMES)
def test_bare_config_builder_and_recipe_build_the_same_detector(name):
    """``detection train --detector X`` without a config, ``X()`` and the packaged recipe agree."""
    spec = DETECTORS[name]
    recipe = load_config(DetectionConfig, config_path(spec.recipe)).model
    bare = build_config(ModelConfig, {"detector": name})
    assert recipe.detector == name
    assert (bare.backbone, bare.drop_path_rate) == (recipe.backbone, recipe.drop_path_rate)
    assert bare.backbone == spec.backbone_defaults["backbone"]
    for field in spec.config_fields:  # the head fields, resolved from the spec
        assert getattr(bare, field) == getattr(recipe, field), field
    defaults = _plain(dict(spec.head_defaults))
    assert _head(spec, builder_kwargs(bare, 81)) == defaults == _head(spec, builder_kwargs(recipe, 81))
    with torch.device("meta"):
        models = [spec.build(num_classes=81), build_from_config(bare, 81), build_from_config(recipe, 81)]
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    assert shapes[0] == shapes[1] == shapes[2]
    bodies = [_body(m) for m in models]
    assert all(b.cfg == bodies[0].cfg and b.out_indices == bodies[0].out_indices for b in bodies)
    assert bodies[0].cfg.drop_path_rate == spec.backbone_defaults["drop_path_rate"]
    windows = spec.backbone_defaults["focal_windows"]
    assert windows is None or bodies[0].cfg.focal_windows == tuple(windows)


REFERENCE_FILES = {
    "mask_rcnn": "mask_rcnn_focalnet_tiny_lrf_3x.json",
    "cascade_mask_rcnn": "cascade_mask_rcnn_focalnet_tiny_lrf_3x.json",
    "atss": "atss_focalnet_tiny_lrf_3x.json",
    "sparse_rcnn": "sparse_rcnn_focalnet_tiny_lrf_3x.json",
    "dino": "dino_focalnet_large_fl4_5scale.json",
}
# torchvision's Mask R-CNN predictors keep a (zero) background row that mmdetection's do not:
# 4 x 1024 + 4 box-regression weights and 256 + 1 mask-logit weights
EXTRA_PARAMS = {"mask_rcnn": 4 * 1024 + 4 + 256 + 1}
COCO_CLASSES = {"dino": 91}  # DINO's labels are the COCO category ids (slot 0 unused)


def _reference(name: str) -> dict:
    return json.loads(need(REFERENCE / "detection" / REFERENCE_FILES[name]).read_text())


@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_recipe_builds_the_reference_size(name):
    ref = _reference(name)
    cfg = load_config(DetectionConfig, config_path(DETECTORS[name].recipe))
    with torch.device("meta"):
        model = build_from_config(cfg.model, COCO_CLASSES.get(name, 81))
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] + EXTRA_PARAMS.get(name, 0)
    assert len(model.state_dict()) == ref["num_state_dict_entries"]


# ---------------------------------------------------------------------------------------------- original files
@pytest.mark.parametrize("name", [n if n != "dino" else pytest.param(n, marks=SLOW) for n in REFERENCE_FILES])
def test_original_file_loads_strictly_with_the_reference_size(name, tmp_path):
    ref = _reference(name)
    sd = seeded_state_dict(ref["state_dict"], ref.get("aliased_state_dict_keys", ()))
    path = tmp_path / f"{name}.pth"
    torch.save({"model": sd} if name == "dino" else {"meta": {"epoch": 36}, "state_dict": sd}, path)
    model, meta = load_detector(path)
    layout = DETECTORS[name].layouts[0]
    assert (meta["detector"], meta["layout"], meta["masks"]) == (name, layout.name, DETECTORS[name].masks)
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] + EXTRA_PARAMS.get(name, 0)
    assert len(model.state_dict()) == ref["num_state_dict_entries"]
    assert len(meta["class_names"]) == COCO_CLASSES.get(name, 81) - 1 and meta["category_ids"][-1] == 90
    # every tensor arrived where it belongs: written back in the file's layout, it is the file
    written = layout.write(model.state_dict())
    back = written.get("state_dict", written.get("model"))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    shapes = ref.get("feature_shapes_1x3x256x320", {}).get("neck")
    if shapes:  # the original's neck outputs on a 1x3x256x320 input
        with torch.no_grad():
            feats = model.backbone(torch.zeros(1, 3, 256, 320))
        assert [list(f.shape) for f in feats.values()] == shapes


# ---------------------------------------------------------------------------------------------- tiny files
def tiny_model(name: str, num_classes: int = 3) -> tuple[DetectionConfig, nn.Module]:
    """A tiny detector with perturbed weights (so that no layout mix-up can hide behind an init)."""
    cfg = build_config(DetectionConfig, tiny_config(name))
    torch.manual_seed(0)
    model = build_from_config(cfg.model, num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for k, v in model.state_dict().items():  # background rows torchvision keeps and mmdetection has not
            if ".box_predictor.bbox_pred." in k:
                v[:4] = 0
            elif ".mask_predictor.mask_fcn_logits." in k:
                v[:1] = 0
    return cfg, model.eval()


def file_of(layout: str, cfg: DetectionConfig, model: nn.Module) -> dict:
    """The tiny model saved in ``layout`` (ours, the older focalnet-dino format, or an original one)."""
    sd = model.state_dict()
    names, ids = ["square", "disc"], [3, 7]
    if layout == FOCALNET_FORMAT.name:
        return {"model": sd, **detector_file_meta(cfg, names, ids)}
    if layout == "focalnet-dino-v1":
        return {
            "format": "focalnet-dino",
            "dino_config": model.cfg.to_dict(),
            "model": sd,
            "num_classes": 3,
            "class_names": names,
            "category_ids": ids,
        }
    spec = DETECTORS[cfg.model.detector]
    return next(lo for lo in spec.layouts if lo.name == layout).write(sd)


def weights_of(obj: dict) -> dict:
    return obj["state_dict"] if "state_dict" in obj else obj["model"]


CASES = [(n, FOCALNET_FORMAT.name) for n in NAMES] + [
    (n, lo.name) for n in NAMES for lo in DETECTORS[n].layouts if lo.write is not None or lo.name == "focalnet-dino-v1"
]
CASE_IDS = [f"{n}-{lo}" for n, lo in CASES]


def _settings(cfg: DetectionConfig) -> dict:
    """The tiny config's settings no original file records (test sizes, proposals, thresholds)."""
    keys = ("min_size", "max_size", "score_thresh", "nms_thresh", "detections_per_img", "detector_overrides", "dino")
    return {k: getattr(cfg.model, k) for k in keys if getattr(cfg.model, k) not in (None, {})}


@pytest.mark.parametrize("name,layout", CASES, ids=CASE_IDS)
def test_tiny_file_round_trip(name, layout, tmp_path):
    cfg, model = tiny_model(name)
    obj = file_of(layout, cfg, model)
    path = tmp_path / "file.pth"
    torch.save(obj, path)
    loaded, meta = load_detector(path, mmdet_compat=False, **_settings(cfg))
    assert (meta["detector"], meta["layout"], meta["masks"]) == (name, layout, DETECTORS[name].masks)
    mine = loaded.state_dict()
    assert set(mine) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(mine[k], v), k
    img = torch.rand(3, 100, 140)
    with torch.no_grad():
        a, b = model([img])[0], loaded([img])[0]
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(a[k], b[k])
    # convert to our format (or refuse: already ours) and, where the layout has a writer, back again
    rc, stdout, stderr = run_cli("detection", "convert", str(path), str(tmp_path / "ours.pt"))
    if layout == FOCALNET_FORMAT.name:
        assert rc == 2 and "already" in stderr
        return
    assert rc == 0 and name in stdout, stderr
    again, meta2 = load_detector(tmp_path / "ours.pt")
    assert meta2["layout"] == FOCALNET_FORMAT.name and meta2["class_names"] == meta["class_names"]
    assert all(torch.equal(v, mine[k]) for k, v in again.state_dict().items())
    rc, _, stderr = run_cli(
        "detection", "convert", str(tmp_path / "ours.pt"), str(tmp_path / "back.pth"), "--to", "original"
    )
    if DETECTORS[name].layouts[0].write is None:
        assert rc == 2, stderr
        return
    assert rc == 0, stderr
    original = weights_of(torch.load(tmp_path / "back.pth", weights_only=True))
    expected = weights_of(file_of(DETECTORS[name].layouts[0].name, cfg, model))
    assert list(original) == list(expected) and all(torch.equal(original[k], expected[k]) for k in expected)


def _key(sd: dict, part: str) -> str:
    return next(k for k in sd if part in k)


@pytest.mark.parametrize("name,layout", CASES, ids=CASE_IDS)
def test_misfit_file_names_the_keys_in_its_own_names(name, layout, tmp_path):
    cfg, model = tiny_model(name)
    obj = file_of(layout, cfg, model)
    sd = weights_of(obj)
    missing, misshaped = _key(sd, "mlp.fc2.weight"), _key(sd, "mlp.fc2.bias")
    del sd[missing]
    sd["extra_module.weight"] = torch.zeros(3)
    n = sd[misshaped].shape[0]
    sd[misshaped] = torch.zeros(n + 1)
    torch.save(obj, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_detector(tmp_path / "bad.pth")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "bad.pth")) and "\n" not in msg
    assert (
        missing in msg and "extra_module.weight" in msg and f"{misshaped}: checkpoint ({n + 1},) vs model ({n},)" in msg
    )


_HOSTILE_SCRIPT = textwrap.dedent(
    """
    import json, sys  # peak memory: VmHWM, this program's own since exec (ru_maxrss inherits the parent's)
    from focalnet.detection import load_detector
    out = {}
    for path in sys.argv[1:]:
        try:
            load_detector(path)
            out[path] = "loaded"
        except BaseException as e:
            out[path] = type(e).__name__ + ": " + str(e)
        out["rss:" + path] = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
    out["maxrss_kb"] = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
    print(json.dumps(out))
    """
)


def _hostile(kind: str, layout: str, obj: dict) -> tuple[dict, type]:
    """``obj`` spoilt one way, and the error type it must give."""
    sd = weights_of(obj)
    if kind == "nan":
        sd[_key(sd, "mlp.fc2.bias")] = torch.full_like(sd[_key(sd, "mlp.fc2.bias")], float("nan"))
        return obj, NonFiniteWeightsError
    if kind == "shape":
        sd[_key(sd, "mlp.fc2.weight")] = torch.zeros(5, 7)
        return obj, CheckpointMismatchError
    if kind == "expanded":  # 4e10 elements on the file's one float: 160 GB if materialised
        sd[_key(sd, "mlp.fc1.weight")] = torch.zeros(1).expand(200_000, 200_000)
        return obj, MalformedCheckpointError
    if kind == "int_key":
        sd[5] = torch.zeros(1)
        return obj, MalformedCheckpointError
    if kind == "str_tensor":
        sd[_key(sd, "mlp.fc2.bias")] = "not a tensor"
        return obj, MalformedCheckpointError
    if kind == "metadata":  # metadata of the wrong type where the layout has any
        if layout == FOCALNET_FORMAT.name:
            obj["class_names"] = 123
        elif layout == "focalnet-dino-v1":
            obj["dino_config"] = [1, 2]
        else:
            obj["state_dict" if "state_dict" in obj else "model"] = list(sd.values())[:3]
            return obj, MalformedCheckpointError
        return obj, MalformedCheckpointError
    if kind == "huge_config":  # stored settings larger than the tensors (within the field's bounds: beyond
        # them, 10**6, they are refused as malformed before this check): they disagree with them
        obj["detection_config"]["model"]["fpn_channels"] = 8192
        return obj, CheckpointMismatchError
    raise AssertionError(kind)


def test_hostile_files_give_documented_errors_within_2_gb(tmp_path):
    """Each layout fed a NaN, a wrong shape, an expanded huge tensor, an int key, a string for a tensor and
    metadata of the wrong type (our format also huge stored settings): one of the documented error types,
    one line each, in a process whose peak memory stays under 2 GB."""
    paths, expected = [], {}
    kinds = ("nan", "shape", "expanded", "int_key", "str_tensor", "metadata")
    layouts: dict[str, str] = {}
    for n, lo in CASES:  # one detector per layout (ours: Mask R-CNN)
        layouts.setdefault(lo, n)
    for layout, name in layouts.items():
        cfg, model = tiny_model(name)
        for kind in kinds + (("huge_config",) if layout == FOCALNET_FORMAT.name else ()):
            obj, err = _hostile(kind, layout, file_of(layout, cfg, model))
            path = tmp_path / f"{layout}-{kind}.pth"
            torch.save(obj, path)
            paths.append(str(path))
            expected[str(path)] = err.__name__
    proc = subprocess.run([sys.executable, "-c", _HOSTILE_SCRIPT, *paths], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, err in expected.items():
        assert got[path].startswith(err + ": " + path), (path, got[path])
        assert "\n" not in got[path]
    assert got["maxrss_kb"] < 2 * 1024**2, {k: v for k, v in got.items() if k.startswith("rss:")}


# ---------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize("name", NAMES)
def test_cli_train_evaluate_predict_resume(name, tmp_path):
    """One step of ``focalnet detection train --detector X``, then evaluate, predict and resume."""
    spec = DETECTORS[name]
    make_shapes(tmp_path, 2, 128, split="train")
    make_shapes(tmp_path, 2, 128, split="val")
    config = tiny_config(name)
    del config["model"]["detector"]  # from the flag
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    rc, stdout, stderr = run_cli(
        *("detection", "train", "--config", str(tmp_path / "tiny.yaml"), "--detector", name, "--data", str(tmp_path)),
        *("--output", str(out), "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--no-progress"),
    )
    assert rc == 0, stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert saved["detector"] == name and saved["backbone"] == "focalnet_tiny_srf"
    assert all(saved[f] is not None for f in spec.config_fields)  # resolved: the file says what was built
    m = json.loads((out / "metrics.json").read_text())
    assert "bbox_mAP" in m and ("segm_mAP" in m) == spec.masks and m["history"][-1]["step"] == 1
    assert f"{name} with focalnet_tiny_srf" in (out / "train.log").read_text()
    model, meta = load_detector(out / "model.pt")
    assert (meta["detector"], meta["masks"], meta["class_names"]) == (name, spec.masks, ["square", "disc"])
    rc, stdout, stderr = run_cli(
        "detection",
        "evaluate",
        "--checkpoint",
        str(out / "model.pt"),
        "--data",
        str(tmp_path),
        "--workers",
        "0",
        "--json",
    )
    assert rc == 0, stderr
    ev = json.loads(stdout)
    assert ev["bbox_mAP"] == pytest.approx(m["bbox_mAP"], abs=1e-9) and ("segm_mAP" in ev) == spec.masks
    pred = tmp_path / "pred"
    rc, _, stderr = run_cli(
        *("detection", "predict", str(tmp_path / "val2017" / "0000.png"), "--checkpoint", str(out / "model.pt")),
        *("--out", str(pred), "--score-thr", "0"),
    )
    assert rc == 0, stderr
    dets = json.loads((pred / "detections.json").read_text())[0]["detections"]
    assert {d["label"] for d in dets} <= {"square", "disc"} and (pred / "0000.png").exists()
    assert all(("segmentation" in d) == spec.masks for d in dets)
    rc, _, stderr = run_cli(
        *("detection", "train", "--config", str(out / "config.yaml"), "--output", str(out), "--resume", "auto"),
        *("--max-steps", "2", "--no-progress"),
    )
    assert rc == 0, stderr
    assert [h["step"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2]


def test_cli_train_with_the_backbone_and_size_flags(tmp_path):
    """``--backbone-checkpoint`` initialises the backbone, ``--min-size`` rescales the training scales."""
    import focalnet

    root = tmp_path / "data"
    make_shapes(root, 2, 96, split="train")
    cls = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1))
    focalnet.save_model(cls, tmp_path / "in1k.safetensors")
    rc, _, stderr = run_cli(
        *("detection", "train", "--detector", "atss", "--config", "atss_focalnet_cpu_tiny"),
        *("--backbone", "focalnet_tiny_srf", "--backbone-checkpoint", str(tmp_path / "in1k.safetensors")),
        *("--data", str(root), "--output", str(tmp_path / "run"), "--min-size", "96", "--max-size", "128"),
        *("--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress", "--set"),
        *("model.backbone_overrides.embed_dim=16", "model.fpn_channels=32", "model.detector_overrides.gn_groups=8"),
        "model.detections_per_img=5",
    )
    assert rc == 0, stderr
    cfg = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert cfg["model"]["min_size"] == 96 and max(cfg["data"]["scales"]) == 96 and cfg["model"]["nms_thresh"] == 0.6
    model, _ = load_detector(tmp_path / "run/model.pt")
    assert model.detections_per_img == 5 and model.transform.min_size == (96,)
    w, w0 = model.backbone.body.layers[1].blocks[0].mlp.fc1.weight, cls.layers[1].blocks[0].mlp.fc1.weight
    assert torch.allclose(w, w0, atol=1e-3) and not torch.equal(w, w0)  # initialised from the file, one step taken


def test_configs_too_large_to_train_and_wrong_options_are_one_line(tmp_path, monkeypatch):
    make_shapes(tmp_path, 2, 96, split="train")
    args = ("detection", "train", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--no-progress")
    monkeypatch.setenv("FOCALNET_MAX_MODEL_BYTES", str(2**30))  # within the field's bound, over a 1 GB budget
    rc, _, stderr = run_cli(*args, "--set", "model.fpn_channels=8192", "model.backbone=focalnet_tiny_srf")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "training it needs" in errors[0] and "fpn" in errors[0], stderr
    rc, _, stderr = run_cli(*args, "--set", "model.fpn_channels=1000000", "model.backbone=focalnet_tiny_srf")
    assert rc == 2 and "model.fpn_channels: 1000000 is outside the allowed range [1, 8192]" in stderr, stderr
    assert not (tmp_path / "run" / "model.pt").exists()
    rc, _, stderr = run_cli(*args, "--detector", "atss", "--set", "model.detector_overrides.num_queries=3")
    assert rc == 2 and "model.detector_overrides: unknown key(s) ['num_queries'] for atss" in stderr
    rc, _, stderr = run_cli(*args, "--set", "model.dino.num_queries=3")
    assert rc == 2 and "model.dino is not used by mask_rcnn" in stderr
    rc, _, stderr = run_cli(*args, "--detector", "dino", "--set", "model.dino.min_size=3")
    assert rc == 2 and "set model.min_size instead" in stderr


# ---------------------------------------------------------------------------------------------- learning
LEARN = {
    "mask_rcnn": (50, {}, {"bbox": (0.9, 0.5), "segm": (0.9, 0.5)}),
    "faster_rcnn": (50, {}, {"bbox": (0.9, 0.5)}),
    "cascade_mask_rcnn": (60, {}, {"bbox": (0.9, 0.5), "segm": (0.9, 0.5)}),
    "atss": (50, {}, {"bbox": (0.9, 0.6)}),
    "sparse_rcnn": (
        250,
        {
            "model": {"detector_overrides": {**TINY_HEADS["sparse_rcnn"]["detector_overrides"], "num_heads": 4}},
            "optim": {"weight_decay": 1e-4, "decay_all": True},
            "grad_clip": 1.0,
        },
        {"bbox": (0.9, 0.5)},
    ),
    "dino": (
        200,
        {
            "model": {"dino": {**TINY_HEADS["dino"]["dino"], "nheads": 4, "hidden_dim": 64, "dim_feedforward": 256}},
            "data": {"flip_prob": 0.0},
            "optim": {"lr": 1e-3, "weight_decay": 1e-4, "warmup_steps": 0, "lr_steps": [0.9]},
            "grad_clip": 0.1,
        },
        {"bbox": (0.95, 0.8)},
    ),
}
SLOW_LEARNERS = {"faster_rcnn", "sparse_rcnn", "dino"}  # Faster R-CNN: Mask R-CNN's boxes learn in the default run


@pytest.mark.parametrize("name", [pytest.param(n, marks=SLOW) if n in SLOW_LEARNERS else n for n in NAMES])
def test_learns_generated_shapes(name, tmp_path):
    steps, extra, floors = LEARN[name]
    config = tiny_config(name)
    for section, values in extra.items():
        config[section] = {**config[section], **values} if isinstance(values, dict) else values
    out, rc, stdout, stderr = train_on_shapes(tmp_path, config, steps)
    assert rc == 0, stderr
    m = json.loads((out / "metrics.json").read_text())
    for iou, (map50, map_) in floors.items():
        assert m[f"{iou}_mAP_50"] >= map50 and m[f"{iou}_mAP"] >= map_, m
        assert set(m[f"{iou}_AP_per_category"]) == {"square", "disc"}
    assert ("segm_mAP" in m) == DETECTORS[name].masks and "bbox_mAP=" in stdout
    results = json.loads((out / "results.json").read_text())
    assert {r["category_id"] for r in results} == {3, 7}
    assert json.loads((out / "data_problems.json").read_text()) == []


# ---------------------------------------------------------------------------------------------- outside detector
FCOS_HEAD = {
    "fpn_channels": 32,
    "min_size": 128,
    "max_size": 160,
    "score_thresh": 0.05,
    "nms_thresh": 0.6,
    "detections_per_img": 50,
}


def tiny_fcos(
    backbone: str | None = None, num_classes: int = 81, *, train_resize: bool = False, **options
) -> nn.Module:
    """A detector the package does not know: torchvision's FCOS on the package's backbone, neck and
    image transform, built from the public pieces only."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from focalnet.detection.backbone import pop_backbone_options
    from focalnet.detection.image_transform import detection_transform
    from focalnet.detection.necks import FocalNetFPN
    from focalnet.detection.spec import resolve_options

    body = build_backbone(backbone, TINY_FCOS.backbone_defaults, **pop_backbone_options(options))
    s = resolve_options("tiny FCOS", FCOS_HEAD, options)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,)), ((1.0,),) * 4)
    model = FCOS(
        FocalNetFPN(body, s["fpn_channels"], extra_blocks=None),
        num_classes,
        anchor_generator=anchors,
        score_thresh=s["score_thresh"],
        nms_thresh=s["nms_thresh"],
        detections_per_img=s["detections_per_img"],
    )
    model.transform = detection_transform(s["min_size"], s["max_size"], train_resize=train_resize)
    return model


TINY_FCOS = DetectorSpec(
    name="tiny_fcos",
    title="tiny FCOS",
    summary="a test's one-stage detector on the package's parts",
    build=tiny_fcos,
    backbone_defaults={"backbone": "focalnet_tiny_srf", "focal_windows": (3, 3, 3, 3), "drop_path_rate": 0.0},
    head_defaults=FCOS_HEAD,
    config_fields={k: k for k in FCOS_HEAD},
)


def test_a_detector_defined_outside_the_package_trains_saves_loads_and_predicts(tmp_path):
    root = need(DATA / "coco-tiny")
    register_detector(TINY_FCOS)
    try:
        config = {
            "model": {"backbone_overrides": {"embed_dim": 16, "depths": [1, 1, 1, 1]}},
            "data": {"scales": [128], "max_size": 160, "crop_branch": False, "num_workers": 0},
            "log_every": 1,
        }
        (tmp_path / "fcos.yaml").write_text(yaml.safe_dump(config))
        out = tmp_path / "run"
        rc, stdout, stderr = run_cli(
            *("detection", "train", "--detector", "tiny_fcos", "--config", str(tmp_path / "fcos.yaml")),
            *("--data", str(root), "--output", str(out), "--max-steps", "1", "--batch-size", "2", "--no-progress"),
        )
        assert rc == 0, stderr
        m = json.loads((out / "metrics.json").read_text())
        assert "bbox_mAP" in m and "segm_mAP" not in m
        model, meta = load_detector(out / "model.pt")
        assert meta["detector"] == "tiny_fcos" and type(model).__name__ == "FCOS" and len(meta["class_names"]) == 80
        image = sorted((root / "val2017").iterdir())[0]
        rc, _, stderr = run_cli(
            "detection",
            "predict",
            str(image),
            "--checkpoint",
            str(out / "model.pt"),
            "--out",
            str(tmp_path / "pred"),
            "--score-thr",
            "0",
        )
        assert rc == 0, stderr
        dets = json.loads((tmp_path / "pred" / "detections.json").read_text())[0]["detections"]
        assert dets and {d["label"] for d in dets} <= set(meta["class_names"])
        with pytest.raises(ValueError, match="exists already"):
            register_detector(DetectorSpec(**{**TINY_FCOS.__dict__, "summary": "another"}))
    finally:
        DETECTORS.pop("tiny_fcos", None)
    assert list(DETECTORS) == NAMES
