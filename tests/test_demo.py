"""``focalnet demo``: a shortened run learns the real digits and writes a complete, loadable report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import focalnet
from focalnet import demo
from focalnet.cli import build_parser, main
from test_visualize import _images_loaded_in_browser, _is_png


def test_digits_split_is_fixed_and_disjoint():
    xtr, ytr, xte, yte = demo.load_digits_tensors(32)
    assert xtr.shape[1:] == (1, 32, 32) and len(xtr) + len(xte) == 1797 and len(xte) == 450
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    assert min(torch.bincount(yte, minlength=10).tolist()) >= 40  # stratified: every digit is in the test set
    xte2 = demo.load_digits_tensors(32)[2]
    assert torch.equal(xte, xte2)
    # no test image is also a training image (load_digits has a couple of pixel-identical digits)
    seen = {r.numpy().tobytes() for r in xtr}
    assert sum(r.numpy().tobytes() in seen for r in xte) <= 2


def test_short_demo_learns_and_writes_everything(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    rc = main(
        [
            "demo",
            "--epochs",
            "2",
            "--max-train",
            "640",
            "--samples",
            "4",
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "test accuracy" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 60.0, metrics["test_accuracy"]  # chance is 10%
    assert metrics["train_samples"] == 640 and metrics["test_samples"] == 450
    assert metrics["train_time_s"] > 0 and len(metrics["history"]) == 2

    # the checkpoint rebuilds the trained model and reproduces the reported accuracy
    model = focalnet.model_from_checkpoint(out / "model.safetensors").eval()
    assert model.cfg == demo.DEMO_CONFIG
    assert model.class_names == [str(i) for i in range(10)]
    _, _, xte, yte = demo.load_digits_tensors(32)
    assert demo.evaluate(model, xte, yte) == pytest.approx(metrics["test_accuracy"], abs=1e-3)

    pngs = [
        "digits_grid.png",
        "digits_stages.png",
        "digits_gates.png",
        "digits_modulator.png",
        "kernels.png",
        "training.png",
    ]
    for name in pngs:
        assert _is_png(out / name), name
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(pngs)
    assert f"{metrics['test_accuracy']:.2f}%" in page
    import numpy as np

    with np.load(out / "maps.npz") as z:
        assert z["stage1_block0_gates"].shape == (4, 3, 8, 8)
        assert z["images"].shape == (4, 32, 32)
    assert _images_loaded_in_browser(out / "index.html", tmp_path) == (len(pngs), len(pngs))


def test_pretrained_section_offline_says_so(tmp_path, capsys):
    # conftest sets FOCALNET_OFFLINE=1: the ImageNet part is skipped with a clear note
    figs, preds, notes = demo._photos_section(tmp_path, -1, -1, progress=False)
    assert figs == [] and preds == []
    assert len(notes) == 1 and "skipped" in notes[0] and "offline" in notes[0]
    assert "skipped" in capsys.readouterr().err


def test_demo_cli_options():
    args = build_parser().parse_args(["demo", "--epochs", "3", "--stage", "0", "--pretrained"])
    assert args.epochs == 3 and args.stage == 0 and args.pretrained and args.out is None
    assert demo._default_out().parent == Path("runs")
