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
        *(
            "--output",
            str(out),
            "--iters",
            "5000",
            "--batch-size",
            "1",
            "--crop-size",
            "32",
            "--no-eval",
            "--no-progress",
        ),
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
    argv = {"classification": _classification_train, "segmentation": _segmentation_train}.get(task, _detection_train)(
        tmp_path, out
    )
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


# --------------------------------------------------------------------------------- checkpoints of a kind

KIND_TASK = {
    "classifier.safetensors": "classification",
    "classifier_original.pth": "classification",
    "detector.pt": "detection",
    "detector_mmdet.pth": "detection",
    "segmentor.pt": "segmentation",
    "photo.png": None,
    "notes.txt": None,
}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """One small file of every kind the package writes or reads, plus two that are no checkpoint."""
    import numpy as np
    import torch
    from PIL import Image

    from focalnet import FocalNet
    from focalnet.detection.load import FOCALNET_FORMAT
    from focalnet.factory import save_model
    from focalnet.segmentation.load import save_segmentor
    from test_detectors import file_of, tiny_model
    from test_load_checks_seg_cls import seg_model

    root = tmp_path_factory.mktemp("kinds")
    torch.manual_seed(0)
    clf = FocalNet(embed_dim=8, depths=(1, 1), num_classes=3)
    save_model(clf, root / "classifier.safetensors", class_names=["a", "b", "c"])
    torch.save({"model": clf.state_dict()}, root / "classifier_original.pth")
    cfg, det = tiny_model("mask_rcnn")
    torch.save(file_of(FOCALNET_FORMAT.name, cfg, det), root / "detector.pt")
    torch.save(file_of("mmdet-rcnn", cfg, det), root / "detector_mmdet.pth")
    save_segmentor(seg_model(), root / "segmentor.pt")
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(root / "photo.png")
    (root / "notes.txt").write_text("not weights\n")
    return root


def _loaders():
    from focalnet.classification import load_classifier
    from focalnet.detection import load_detector
    from focalnet.factory import model_from_checkpoint
    from focalnet.segmentation import load_segmentor

    # the one loading path of each task; model_from_checkpoint is visualize's, classify's and info's
    return {
        "classification": load_classifier,
        "detection": load_detector,
        "segmentation": load_segmentor,
        "focalnet": model_from_checkpoint,
    }


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(KIND_TASK))
def test_every_loader_names_a_checkpoint_of_another_kind(kinds, name):
    """Every kind of file x every loader: its own loader reads it; another says in one line what the file
    is and which command reads it; a file that is no checkpoint is called so by all of them."""
    from focalnet.weights.kind import file_kind

    path = kinds / name
    task = KIND_TASK[name]
    assert file_kind(path).task == task and file_kind(path).checkpoint == (task is not None)
    for loader_task, load in _loaders().items():
        own = task == loader_task or (loader_task == "focalnet" and task == "classification")
        if own:
            load(path)  # reads it
            continue
        try:
            model = load(path)
        except ValueError as e:
            msg = str(e)
        else:  # the backbone of an mmdetection/mmsegmentation-style file: visualize and info read it
            from focalnet import FocalNetBackbone

            assert loader_task == "focalnet" and isinstance(model, FocalNetBackbone), (name, loader_task)
            continue
        assert "\n" not in msg and len(msg) < 300, msg
        if task is None:
            assert msg.startswith(f"{path} is not a readable checkpoint: it is a "), msg
            assert ("PNG image" if name.endswith(".png") else "text file") in msg
        else:
            assert msg.startswith(f"{path} is a") and f"use `focalnet {task} ...`" in msg, msg


def test_the_app_and_info_and_classify_tell_the_kind(kinds, capsys):
    from focalnet.app import core

    for name, task in KIND_TASK.items():
        if task is None:
            with pytest.raises(ValueError, match="is not a readable checkpoint: it is a"):
                core.load_checkpoint(kinds / name)
        else:
            kind = {"classification": "classifier", "detection": "detector", "segmentation": "segmentor"}[task]
            assert core.load_checkpoint(kinds / name).kind == kind
    from focalnet import cli

    assert cli.main(["info", str(kinds / "photo.png")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {kinds / 'photo.png'} is not a readable checkpoint: it is a PNG image"
    )
    assert cli.main(["classify", str(kinds / "photo.png"), "--checkpoint", str(kinds / "segmentor.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "use `focalnet segmentation ...`" in err[-1], err
