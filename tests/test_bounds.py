"""Sizes and loops from stored settings and flags (issue 27): every count and size a file or a flag gives
is range-checked by its field before anything is built or run, so that each hostile value of the issue is
one ``error:`` line (exit 2) within a minute and 2 GB, instead of minutes, gigabytes or a crash; and the
normalisation a file stores is checked (a std of 0 gave NaN maps and a confident wrong class).

All cases run on the command line of one driver subprocess (``VmHWM``: its own peak, since exec), each
case timed; the issue's figures before the fix are in the comments."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_KB = 2 * 1024 * 1024  # 2 GB
MAX_S = 60.0


def _classifier(path: Path, **pretrained: object) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import focalnet

    focalnet.save_model(
        focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), num_classes=3), path
    )
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    pc = {**json.loads(meta["pretrained_cfg"]), **pretrained}
    save_file(load_file(str(path)), str(path), metadata={**meta, "pretrained_cfg": json.dumps(pc)})
    return path


def _segmentor(path: Path, **extra: object) -> Path:
    from test_load_checks_seg_cls import seg_model

    model = seg_model()
    from focalnet.segmentation.load import FORMAT

    torch.save({"format": FORMAT, "state_dict": model.state_dict(), "meta": dict(model.meta), "extra": extra}, path)
    return path


def _detector(path: Path, name: str, edit) -> Path:
    from focalnet.detection.load import FOCALNET_FORMAT
    from test_detectors import file_of, tiny_model

    layout = "focalnet-dino-v1" if name == "dino" else FOCALNET_FORMAT.name
    obj = file_of(layout, *tiny_model(name))
    edit(obj)
    torch.save(obj, path)
    return path


def _set(obj: dict, keys: str, value: object) -> None:
    *head, last = keys.split(".")
    for k in head:
        obj = obj[k]
    obj[last] = value


def _cases(root: Path) -> dict[str, tuple[list[str], str]]:
    """``{case id: (focalnet argv, what the one error line must say)}``."""
    img = root / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img)
    out = str(root / "out")
    cls_train = [
        "classification",
        "train",
        "--model",
        "focalnet_tiny_srf",
        "--data",
        str(root / "none"),
        "--output",
        out,
    ]
    det_train = [
        "detection",
        "train",
        "--config",
        "dino_focalnet_cpu_tiny",
        "--data",
        str(root / "none"),
        "--output",
        out,
    ]
    seg_train = ["segmentation", "train", "--config", "upernet_focalnet_tiny_srf_ade20k_160k", "--data", str(root)]
    seg_train += ["--output", out]

    def det_file(name: str, keys: str, value: object) -> str:
        return str(_detector(root / f"det-{name}-{keys}.pt", name, lambda o: _set(o, keys, value)))

    depths = [1000000, 1, 1, 1]
    both = _detector(root / "det.pt", "mask_rcnn", lambda o: None)
    mixed = torch.load(both, weights_only=True)
    seg = torch.load(_segmentor(root / "s.pt"), weights_only=True)
    torch.save({**mixed, **seg, "format": "focalnet-segmentation"}, root / "both.pt")
    from safetensors.torch import load_file

    sd = load_file(str(_classifier(root / "c.safetensors")))
    from focalnet.weights import convert_state_dict

    layouts = {**sd, **convert_state_dict(sd, to="transformers", source="original")}
    torch.save({"model": layouts}, root / "two-layouts.pt")
    return {
        # 118 s and 4.9 GB before a MemoryError
        "cls-depths": (cls_train + ["--set", f"model.overrides.depths={depths}"], "model.overrides.depths[0]"),
        # 198 s instead of 5
        "cls-randaugment": (cls_train + ["--set", "aug.auto_augment=rand-m99999-n1000000"], "auto_augment"),
        # OverflowError
        "cls-warmup": (cls_train + ["--set", "train.warmup_epochs=1e308"], "train.warmup_epochs"),
        # > 6 GB
        "cls-img-size": (cls_train + ["--set", "data.img_size=100000"], "data.img_size"),
        # predict still busy at 330 s, growing 11 MB/s
        "dino-enc-layers-flag": (det_train + ["--set", "model.dino.enc_layers=1000000"], "enc_layers"),
        # ZeroDivisionError
        "dino-nheads-flag": (det_train + ["--set", "model.dino.nheads=0"], "nheads"),
        "dino-enc-layers-file": (
            ["detection", "predict", str(img), "--checkpoint", det_file("dino", "dino_config.enc_layers", 10**6)],
            "enc_layers",
        ),
        "dino-nheads-file": (
            ["detection", "predict", str(img), "--checkpoint", det_file("dino", "dino_config.nheads", 0)],
            "nheads",
        ),
        # SystemError: error return without exception set
        "det-file-depths": (
            [
                "detection",
                "predict",
                str(img),
                "--checkpoint",
                det_file("mask_rcnn", "detection_config.model.backbone_overrides.depths", depths),
            ],
            "depths",
        ),  # fmt: skip
        "seg-train-stride": (seg_train + ["--set", "eval.mode=slide", "eval.stride=[1,1]"], "eval.stride"),
        # killed by the OOM killer (13.4 GB)
        "seg-file-scale": (
            [
                "segmentation",
                "predict",
                str(img),
                "--checkpoint",
                str(_segmentor(root / "scale.pt", test={"scale": [100000, 100000]})),
            ],
            "scale",
        ),  # fmt: skip
        # > 300 s on a 160x120 image
        "seg-file-slide": (
            [
                "segmentation",
                "predict",
                str(img),
                "--checkpoint",
                str(_segmentor(root / "slide.pt", test={"mode": "slide", "crop_size": [1, 1], "stride": [1, 1]})),
            ],
            "crop_size",
        ),  # fmt: skip
        # predicted "Sky 100.0"
        "seg-file-std0": (
            ["segmentation", "predict", str(img), "--checkpoint", str(_segmentor(root / "std.pt", std=[0, 0, 0]))],
            "std",
        ),
        # 13.3 GB before a bomb error
        "cls-file-input-size": (
            [
                "classify",
                str(img),
                "--checkpoint",
                str(_classifier(root / "size.safetensors", input_size=[1, 100000, 100000])),
            ],
            "input_size",
        ),  # fmt: skip
        # visualize exited 0 with NaN maps ("8 (nan%)")
        "cls-file-std0": (
            ["classify", str(img), "--checkpoint", str(_classifier(root / "std.safetensors", std=[0, 0, 0]))],
            "std",
        ),
        "both-tasks-det": (["detection", "predict", str(img), "--checkpoint", str(root / "both.pt")], "refusing"),
        "both-tasks-seg": (["segmentation", "predict", str(img), "--checkpoint", str(root / "both.pt")], "refusing"),
        # `info` said "fit: all keys match"
        "two-layouts": (["info", str(root / "two-layouts.pt")], "several layouts"),
    }


DRIVER = r"""
import contextlib, io, json, sys, time
from focalnet.cli import main
for cid, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv + ["--threads", "1"] if argv[0] != "info" else argv)
    dt = time.perf_counter() - t0
    kb = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
    print(json.dumps({"id": cid, "rc": rc, "err": err.getvalue(), "s": dt, "kb": kb}), flush=True)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bounds")
    cases = _cases(root)
    argv = {cid: a for cid, (a, _) in cases.items()}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    got = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(got) == set(cases), proc.stderr[-2000:]
    for cid, (_, needle) in cases.items():
        got[cid]["needle"] = needle
    return got


CASE_IDS = [
    "cls-depths", "cls-randaugment", "cls-warmup", "cls-img-size", "dino-enc-layers-flag", "dino-nheads-flag",
    "dino-enc-layers-file", "dino-nheads-file", "det-file-depths", "seg-train-stride", "seg-file-scale",
    "seg-file-slide", "seg-file-std0", "cls-file-input-size", "cls-file-std0", "both-tasks-det", "both-tasks-seg",
    "two-layouts",
]  # fmt: skip


@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_size_or_setting_is_one_line_fast_and_small(results, case):
    r = results[case]
    lines = [ln for ln in r["err"].strip().splitlines() if ln.startswith("error:")]
    assert r["rc"] == 2 and len(lines) == 1, r["err"][-1500:]
    assert r["needle"] in lines[0] and "run with --debug" not in lines[0], lines[0]
    assert r["s"] < MAX_S, r["s"]
    assert r["kb"] < MAX_KB, f"peak {r['kb'] / 1024:.0f} MB by {case}"


def test_the_bounds_leave_every_packaged_config_valid():
    from focalnet.classification.config import list_configs as cls_configs
    from focalnet.classification.config import load_classification_config
    from focalnet.detection.config import list_configs as det_configs
    from focalnet.detection.config import load_detection_config
    from focalnet.engine.config import packaged_configs
    from focalnet.models.registry import VARIANTS
    from focalnet.segmentation.train import load_segmentation_config

    for name in cls_configs():
        load_classification_config(name)
    for name in det_configs():
        load_detection_config(name)
    for name in packaged_configs("segmentation"):
        load_segmentation_config(name)
    assert all(v.cfg.replace() == v.cfg for v in VARIANTS.values())


# ------------------------------------------------------------------------------------------ large images


def test_a_tall_thin_image_is_drawn_bounded_with_a_bounded_legend(tmp_path):
    """The 312-byte 1 x 60000 PNG of the issue (11.5 GB: the legend's font grew with the height)."""
    from focalnet.bounds import MAX_DRAW_SIDE, MAX_LEGEND_FONT
    from focalnet.drawing import font_size_for
    from focalnet.segmentation.evaluate import TestConfig
    from focalnet.segmentation.predict import predict_images
    from test_load_checks_seg_cls import seg_model

    Image.fromarray(np.zeros((60000, 1, 3), np.uint8)).save(tmp_path / "tall.png")
    assert (tmp_path / "tall.png").stat().st_size < 1000
    assert font_size_for(60000, 60000) == MAX_LEGEND_FONT
    (rec,) = predict_images(seg_model(), [tmp_path / "tall.png"], tmp_path / "out", TestConfig(), progress=False)
    overlay = Image.open(rec["overlay"])
    assert max(overlay.size) <= MAX_DRAW_SIDE and overlay.width < 20 * MAX_LEGEND_FONT
    assert rec["reduced"]["from"] == [1, 60000] and Image.open(rec["label"]).size == tuple(rec["reduced"]["to"])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_huge_black_png_takes_under_2_gb(tmp_path, task):
    """The 258 KB 9400 x 9400 black PNG of the issue (CLI segmentation 11.1 GB and a 1.08-gigapixel overlay;
    the app's tabs 5.3 / 13.4 GB): predicted and drawn at the model's working size."""
    Image.fromarray(np.zeros((9400, 9400, 3), np.uint8)).save(tmp_path / "black.png")
    ckpt = (
        _detector(tmp_path / "m.pt", "mask_rcnn", lambda o: None)
        if task == "detection"
        else _segmentor(tmp_path / "m.pt")
    )
    argv = [task, "predict", str(tmp_path / "black.png"), "--checkpoint", str(ckpt), "--output", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps({"big": argv + ["--no-progress"]})],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    (r,) = map(json.loads, proc.stdout.splitlines())
    assert r["rc"] == 0, r["err"]
    assert r["kb"] < MAX_KB and r["s"] < MAX_S, r
    from focalnet.bounds import MAX_DRAW_SIDE

    assert all(max(Image.open(p).size) <= MAX_DRAW_SIDE for p in (tmp_path / "o").glob("*.png"))
