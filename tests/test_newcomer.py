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
        *("--output", str(out), "--iters", "5000", "--batch-size", "2", "--crop-size", "32"),
        *("--no-eval", "--no-progress"),
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


@pytest.mark.parametrize(
    "task",
    [pytest.param(t, marks=pytest.mark.slow) for t in ("classification", "segmentation")] + ["detection"],
)  # about 22, 10-20 and 6-15 s on 2 shared cores
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


# -------------------------------------------------------------------------------------- folders as input


def _folder(root: Path) -> tuple[Path, list[str]]:
    """A folder of images (one in a subfolder), a hidden one, a non-image and an unreadable .png."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for rel in ("b.png", "sub/a.jpg", ".hidden/c.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(root / rel)
    (root / "notes.txt").write_text("no image")
    return root, [str(root / "b.png"), str(root / "sub" / "a.jpg")]


def test_collect_images_walks_folders_sorted_and_skips_hidden_files(tmp_path):
    from focalnet.engine.images import collect_images

    root, expected = _folder(tmp_path / "imgs")
    (root / "z.PNG").write_bytes(b"")  # a name that says image is taken (its reader says it is broken)
    assert [str(p) for p in collect_images([root])] == [*expected[:1], str(root / "sub" / "a.jpg"), str(root / "z.PNG")]
    assert [str(p) for p in collect_images([root / "notes.txt", root / "b.png"])] == [
        str(root / "notes.txt"),
        str(root / "b.png"),
    ]  # named directly: taken as given, in order
    with pytest.raises(FileNotFoundError, match="no such image or folder"):
        collect_images([root / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        collect_images([tmp_path / "empty"])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "command",
    ["classification predict", "detection predict", "segmentation predict", "visualize", "classify"],
)
def test_every_predict_command_takes_a_folder(command, kinds, tmp_path, capsys):
    from focalnet import cli

    root, expected = _folder(tmp_path / "imgs")
    ckpt = {"detection predict": "detector.pt", "segmentation predict": "segmentor.pt"}.get(
        command, "classifier.safetensors"
    )
    argv = [*command.split(), str(root), "--checkpoint", str(kinds / ckpt), "--threads", "1"]
    if command != "classify":
        argv += ["--output", str(tmp_path / "out")]
    if command in ("detection predict", "segmentation predict"):
        argv += ["--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    where = [out.find(p) for p in expected]
    assert all(i >= 0 for i in where) and where == sorted(where), out  # both images, in sorted order
    assert ".hidden" not in out and "notes.txt" not in out


def test_detection_predict_says_nothing_was_written_when_no_image_was_readable(kinds, tmp_path, capsys):
    from focalnet import cli

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    argv = ["detection", "predict", str(tmp_path / "imgs"), "--checkpoint", str(kinds / "detector.pt")]
    assert cli.main([*argv, "--output", str(tmp_path / "out"), "--no-progress", "--threads", "1"]) == 1
    captured = capsys.readouterr()
    assert "wrote" not in captured.out
    assert captured.err.strip().splitlines()[-1] == "error: none of the 1 input image(s) could be read"


# ---------------------------------------------------------------------------------------------- no GPU


def _device_commands(kinds: Path, tmp: Path) -> dict[str, list[str]]:
    """The least each command with --device needs to get as far as choosing its device."""
    from test_classification import make_data

    data = make_data(tmp / "cls", per_class=1, classes=2, corrupt=False)
    img = str(kinds / "photo.png")
    out = str(tmp / "out")
    return {
        "classification train": ["--model", "focalnet_tiny_srf", "--data", str(data), "--output", out],
        "classification evaluate": ["--checkpoint", str(kinds / "classifier.safetensors"), "--data", str(data)],
        "classification predict": [img, "--checkpoint", str(kinds / "classifier.safetensors")],
        "classification throughput": ["--model", "focalnet_tiny_srf"],
        "detection train": ["--data", str(tmp), "--output", out],
        "detection evaluate": ["--checkpoint", str(kinds / "detector.pt"), "--data", str(tmp)],
        "detection predict": [img, "--checkpoint", str(kinds / "detector.pt")],
        "segmentation train": ["--data", str(tmp), "--output", out],
        "segmentation evaluate": ["--checkpoint", str(kinds / "segmentor.pt"), "--data", str(tmp)],
        "segmentation predict": [img, "--checkpoint", str(kinds / "segmentor.pt")],
        "benchmark": ["--model", "focalnet_tiny_srf"],
        "app": ["--no-train"],
    }


def test_every_command_with_device_says_the_same_without_a_gpu(kinds, tmp_path, capsys, monkeypatch):
    import torch

    from focalnet import cli
    from test_option_meanings import LEAVES

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine's case, on any machine
    commands = _device_commands(kinds, tmp_path)
    assert set(commands) == {c for c, p in LEAVES.items() if "--device" in p._option_string_actions}
    for command, argv in commands.items():
        rc = cli.main([*command.split(), *argv, "--device", "cuda", "--threads", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1] == (
            "error: device 'cuda' requested but CUDA is not available (use --device cpu or auto)"
        ), (command, err)
        assert not (tmp_path / "out").exists(), command  # nothing written before the check


# --------------------------------------------------------------------------------------------- --help

_ALL_HELP = """
import contextlib, io, json, sys
from focalnet.cli import main
pages = {}
for command in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*command.split(), "--help"])
        except SystemExit as e:
            code = e.code
    pages[command] = [code, out.getvalue()]
print(json.dumps([pages, "torchvision" in sys.modules]))
"""
_ONE_HELP = """
import json, sys
from focalnet.cli import main
try:
    main([*sys.argv[1].split(), "--help"])
except SystemExit as e:
    code = e.code
print(json.dumps([code, sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm")
                               or m.count(".") == 1 and m.startswith("focalnet."))]), file=sys.stderr)
"""
TASKS = ("classification", "detection", "segmentation")


def _help_pages() -> list[str]:
    """Every node of the ``focalnet`` parser tree, by its words: ``""`` (the top), each command, each task
    group (``"detection"``) and each of their subcommands."""
    import argparse

    from focalnet import cli

    pages: list[str] = []

    def walk(parser: argparse.ArgumentParser, words: str) -> None:
        pages.append(words.strip())
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{words} {name}")

    walk(cli.build_parser(), "")
    return pages


def test_no_help_page_imports_torchvision_and_a_broken_one_breaks_none(tmp_path):
    """Every command's ``--help`` in one process with a torchvision that fails to import (as one built for
    another torch): every page prints with exit 0, and torchvision is never imported (``sys.modules``)."""
    import json

    from test_option_meanings import LEAVES

    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("operator torchvision::nms does not exist")\n')
    env = _env(PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{SRC}")
    r = subprocess.run(
        [sys.executable, "-c", _ALL_HELP, json.dumps(list(LEAVES))], capture_output=True, text=True, env=env
    )
    pages, torchvision = json.loads(r.stdout.strip().splitlines()[-1])
    for command, (code, page) in pages.items():
        assert code == 0 and page.startswith(f"usage: focalnet {command}"), (command, code, r.stderr[-500:])
    assert not torchvision


def test_no_help_page_imports_torch_or_another_task():
    """``--help`` of every command, task group and subcommand (the parser tree walked) in a fresh process:
    exit 0 without torch, torchvision or timm in ``sys.modules``, and no task package but the page's own.
    (Measured on 2 idle cores: 0.15-0.6 s each, the segmentation pages the slowest.)"""
    import json

    pages = _help_pages()
    assert {"", "demo", "benchmark", "export", "detection", "segmentation pq"} <= set(pages)
    for page in pages:
        r = subprocess.run([sys.executable, "-c", _ONE_HELP, page], capture_output=True, text=True, env=_env())
        code, modules = json.loads(r.stderr.strip().splitlines()[-1])
        own = page.split()[0] if page else None
        assert code == 0 and r.stdout.startswith(f"usage: focalnet {page}".rstrip()), (page, r.stderr[-500:])
        heavy = [m for m in modules if not m.startswith("focalnet.")]
        tasks = {m for m in modules if m.removeprefix("focalnet.") in TASKS} - {f"focalnet.{own}"}
        assert not heavy and not tasks, (page, heavy, tasks)


def test_the_light_parsers_show_what_the_commands_run():
    """``demo`` and ``benchmark`` build their parsers from the heavy modules' constants read from source
    (:func:`focalnet.lazy.module_constants`): the same values as the imported modules'."""
    from focalnet import benchmark, benchmark_cli, demo, demo_cli
    from focalnet.lazy import module_constants

    assert demo_cli.DEFAULT_EPOCHS == demo.DEFAULT_EPOCHS
    for name in ("ALL_PATHS", "DEFAULT_PATHS", "COMPILE_NOTE", "KINDS"):
        assert getattr(benchmark_cli, name) == getattr(benchmark, name), name
    with pytest.raises(LookupError, match="assigns no literal DEMO_CONFIG"):  # a call, not a literal
        module_constants("focalnet.demo", "DEMO_CONFIG")


# ------------------------------------------------------------------------------------- smaller items


@pytest.mark.usefixtures("one_thread")
def test_detection_prints_map_in_percent_and_stores_fractions(kinds, tmp_path, capsys):
    import json

    from detection_synth import make_shapes
    from focalnet import cli

    ann, images = make_shapes(tmp_path / "shapes", 2, 96, split="val")
    argv = ["detection", "evaluate", "--checkpoint", str(kinds / "detector.pt"), "--val-ann", str(ann)]
    argv += ["--val-images", str(images), "--output", str(tmp_path / "eval"), "--no-progress", "--threads", "1"]
    assert cli.main(argv) == 0
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("bbox_mAP="))
    printed = dict(item.split("=") for item in line.split())
    for key in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50"):
        assert 0.0 <= stored[key] <= 1.0  # the file: pycocotools' fractions, as documented
        assert printed[key] == f"{100 * stored[key]:.2f}%"  # the line: percent, as the other tasks


def test_the_app_says_what_its_classifier_knows():
    import torch

    from focalnet.app.core import LoadedModel

    digits = LoadedModel("classifier", torch.nn.Linear(1, 1), "demo", [str(i) for i in range(10)])
    assert digits.knows() == "knows 10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; anything else comes out as one of them"
    many = LoadedModel("classifier", torch.nn.Linear(1, 1), "in1k", [f"c{i}" for i in range(1000)])
    assert many.knows(4).startswith("knows 1000 classes: c0, c1, c2, ..., c999;")


def test_classify_refuses_a_checkpoint_with_pretrained_and_prints_names(kinds, capsys):
    from focalnet import cli

    ckpt = str(kinds / "classifier.safetensors")
    assert cli.main(["classify", "--checkpoint", ckpt, "--pretrained"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: give --checkpoint FILE or --pretrained (the released weights of --model), not both"
    )
    assert cli.main(["classify", str(kinds / "photo.png"), "--checkpoint", ckpt, "--json", "--threads", "1"]) == 0
    result = __import__("json").loads(capsys.readouterr().out)
    assert {t["class"] for t in result["results"][0]["top"]} == {"a", "b", "c"}  # the stored names
    from focalnet.classification.predict import class_labels

    # an ImageNet head: the names classification predict prints, not bare indices or wnids
    assert class_labels(None, 1000)[281] == "tabby, tabby cat" and class_labels(["n01440764"], 1) == [
        "n01440764 (tench)"
    ]


@pytest.mark.usefixtures("one_thread")
def test_torchscript_export_says_its_deprecation_once(kinds, tmp_path):
    import warnings

    from focalnet import cli

    argv = ["export", str(kinds / "classifier.safetensors"), "--format", "torchscript", "--check"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*argv, "--output", str(tmp_path / "m.pt"), "--threads", "1"]) == 0
    said = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert len(said) == 1 and "TorchScript" in said[0] and "--format onnx" in said[0], said
    assert (tmp_path / "m.pt").stat().st_size > 0


@pytest.mark.slow
def test_ctrl_c_stops_the_app_with_exit_130_and_one_line(tmp_path):
    """Gradio's own wait swallows Ctrl-C (exit 0); the app waits itself and ends as every command."""
    pytest.importorskip("gradio")
    import socket

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "focalnet", "app", "--no-train", "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 180
        while "ready" not in proc.stdout.readline():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().strip().splitlines()
    assert rc == 130 and err[-1] == "error: interrupted" and sum(ln.startswith("error:") for ln in err) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # five subprocesses importing torch: about 25 s on 2 shared cores
def test_every_detection_command_names_a_broken_torchvision_and_the_fix(kinds, tmp_path):
    """A torchvision built for another torch: every detection command says so in the README's one line."""
    from test_option_meanings import LEAVES

    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("operator torchvision::nms does not exist")\n')
    env = _env(PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{SRC}")
    det, img = str(kinds / "detector.pt"), str(kinds / "photo.png")
    argv = {
        "detection train": ["--data", str(tmp_path), "--output", str(tmp_path / "run")],
        "detection evaluate": ["--checkpoint", det, "--data", str(tmp_path)],
        "detection predict": [img, "--checkpoint", det, "--output", str(tmp_path / "pred")],
        "detection convert": [det, str(tmp_path / "converted.pt")],
        "detection configs": [],
    }
    assert set(argv) == {c for c in LEAVES if c.startswith("detection ")}
    for command, args in argv.items():
        r = subprocess.run(
            [sys.executable, "-m", "focalnet", *command.split(), *args], capture_output=True, text=True, env=env
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (command, r.stderr[-800:])
        assert lines[0].startswith("error: focalnet detection needs torchvision, which cannot be imported"), lines
        assert "pip install --force-reinstall torchvision (the release built for the installed torch" in lines[0]
    assert not [p for p in tmp_path.iterdir() if p.name != "site"]  # nothing written
