"""What a new user meets first (issue 26, the newcomer list): interrupted commands exit 130 with one line,
folders as input, checkpoints of the wrong kind named, one GPU check, no torchvision for ``--help``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FOCALNET_DEBUG"}
    path = f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


# ------------------------------------------------------------------------------------------- interruption


def _classification_train(tmp: Path, out: Path) -> list[str]:
    from test_classification import make_data

    data = make_data(tmp / "cls", per_class=2, classes=2, corrupt=False)
    tiny = ["model.overrides.embed_dim=16", "model.overrides.depths=[1,1,1,1]", "model.drop_path_rate=0.0"]
    return [
        *("classification", "train", "--model", "focalnet_tiny_srf", "--data", str(data), "--output", str(out)),
        *("--epochs", "500", "--batch-size", "2", "--img-size", "32", "--workers", "0", "--no-eval", "--no-progress"),
        *("--set", *tiny, "train.warmup_epochs=0", "train.ckpt_every_steps=1"),
    ]


def _segmentation_train(tmp: Path, out: Path) -> list[str]:
    from test_segmentation import make_folder_dataset
    from test_segmentation_train import TINY_SET

    root = make_folder_dataset(tmp / "seg", n_train=2, n_val=0, size=(48, 48), num_classes=3)
    return [
        *("segmentation", "train", "--backbone", "focalnet_tiny_srf", "--data", str(root), "--layout", "folder"),
        *("--output", str(out), "--iters", "5000", "--batch-size", "1", "--crop-size", "32", "--no-eval", "--no-progress"),
        *("--set", *TINY_SET, "train.ckpt_every=1", "optim.warmup_iters=1", "aug.scale=[48, 48]"),
    ]


def _detection_train(tmp: Path, out: Path) -> list[str]:
    from detection_synth import make_shapes
    from test_detection_train import TINY_CONFIG

    root = tmp / "shapes"
    make_shapes(root, 2, 96, split="train")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_CONFIG, "ckpt_every_steps": 1}))
    return [
        *("detection", "train", "--config", str(cfg), "--data", str(root), "--output", str(out)),
        *("--max-steps", "5000", "--batch-size", "1", "--no-eval", "--no-progress"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_ctrl_c_during_training_exits_130_with_one_line_and_a_checkpoint(task, tmp_path):
    """A real SIGINT once the first checkpoint exists: the run saves, says how to go on in one ``error:``
    line and exits 130, so that ``train && evaluate`` stops."""
    out = tmp_path / "run"
    argv = {"classification": _classification_train, "segmentation": _segmentation_train}.get(
        task, _detection_train
    )(tmp_path, out)
    err_file = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "focalnet", *argv, "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=err_file,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 240
        while not list((out / "checkpoints").glob("*.pt")):  # the first step has run and was saved
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "stderr").read_text()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 130, err
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert errors[0].startswith("error: interrupted at step ") and "--resume auto" in errors[0], errors
    assert "Traceback" not in err


def test_an_interrupted_demo_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    """``focalnet demo`` (and the app, which trains the demo's model through it) interrupted before its
    model is saved: exit 130 and no empty ``runs/demo-<time>/``."""
    from focalnet import cli, demo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "train_classifier", interrupted)
    assert cli.main(["demo", "--epochs", "1", "--max-train", "16", "--quiet"]) == 130
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()
    from focalnet.app import core

    with pytest.raises(KeyboardInterrupt):
        core.demo_checkpoint(tmp_path / "runs", log=lambda line: None)
    assert list((tmp_path / "runs").iterdir()) == []  # runs/ was there before: kept, and nothing in it


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--threads", "0"], ["--batch-size", "-1"], ["--epochs", "x"]])
def test_demo_counts_must_be_positive(argv, tmp_path, capsys):
    from focalnet import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["demo", *argv, "--output", str(tmp_path / "d")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("focalnet demo: error: argument") and argv[0] in err[-1], err
    assert not (tmp_path / "d").exists()
