"""The one output rule of every command (:class:`focalnet.engine.outputs.OutputRule`): a file a command
would write is refused before anything runs (exit 2, one line, nothing written, the user's files intact)
when it is an input of any kind, lies in another run's folder, exists and was not written by the same
command earlier (``--overwrite`` allows it), is not a regular file, or is reached through a link.
The cases are issue 27's, on the command line of each task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focalnet.engine.outputs import MANIFEST, OutputPathError, OutputRule

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@cache
def _files(root: str) -> dict[str, Path]:
    """A tiny classifier, detector and UPerNet file and two images, written once per session."""
    import focalnet
    from focalnet.detection.load import FOCALNET_FORMAT
    from test_detectors import file_of, tiny_model
    from test_load_checks_seg_cls import seg_model

    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    files = {
        "classification": base / "m.safetensors",
        "detection": base / "det.pt",
        "segmentation": base / "seg.pt",
    }
    torch.manual_seed(0)
    focalnet.save_model(
        focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), num_classes=3),
        files["classification"],
        class_names=["a", "b", "c"],
    )
    torch.save(file_of(FOCALNET_FORMAT.name, *tiny_model("mask_rcnn")), files["detection"])
    model = seg_model()
    torch.save({"state_dict": model.state_dict(), "meta": dict(model.meta)}, files["segmentation"])
    return files


@pytest.fixture
def files(tmp_path_factory) -> dict[str, Path]:
    return _files(str(tmp_path_factory.getbasetemp() / "output-rule-models"))


def _image(path: Path, size: tuple[int, int] = (48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(rc: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


PREDICT = {
    "classification": lambda ckpt, img, out, *extra: [
        "classification", "predict", str(img), "--checkpoint", str(ckpt), "--output", str(out), *extra
    ],
    "detection": lambda ckpt, img, out, *extra: [
        "detection", "predict", str(img), "--checkpoint", str(ckpt), "--output", str(out), "--no-progress", *extra
    ],
    "segmentation": lambda ckpt, img, out, *extra: [
        "segmentation", "predict", str(img), "--checkpoint", str(ckpt), "--output", str(out), "--no-progress", *extra
    ],
}  # fmt: skip


# ------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("target", ["checkpoint", "image", "config"])
def test_json_onto_any_input_is_refused(tmp_path, files, target):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(files["classification"].read_bytes())
    img = _image(tmp_path / "x.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {}\n")
    before = _snapshot(tmp_path)
    if target == "config":  # classify's inputs: images and checkpoint; predict's config is the checkpoint's
        argv = ["classify", str(img), "--checkpoint", str(ckpt), "--json", str(ckpt)]
    else:
        argv = ["classification", "predict", str(img), "--checkpoint", str(ckpt)]
        argv += ["--json", str(ckpt if target == "checkpoint" else img)]
    rc, _, err = run_cli(*argv)
    _refused(rc, err, "is one of the inputs")
    assert _snapshot(tmp_path) == before


def test_json_onto_a_folder_leaves_no_temporary_file(tmp_path, files):
    img = _image(tmp_path / "x.png")
    (tmp_path / "in").mkdir()
    rc, _, err = run_cli(
        "classification", "predict", str(img), "--checkpoint", str(files["classification"]), "--json",
        str(tmp_path / "in"),
    )  # fmt: skip
    _refused(rc, err, "is a folder")
    assert list((tmp_path / "in").iterdir()) == [] and not list(tmp_path.glob(".*tmp"))
    from focalnet.engine import write_json

    with pytest.raises(ValueError, match="is a folder"):  # the writer itself, called directly
        write_json(tmp_path / "in", {"a": 1})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ existing files


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_output_into_the_input_folder_keeps_its_other_files(tmp_path, files, task):
    """``--output`` = the images' folder holding files the command would name like its outputs."""
    folder = tmp_path / "photos"
    img = _image(folder / "x.jpg")
    for name in ("x.png", "x_label.png", "x_color.png", "x_overlay.png", "detections.json", "predictions.json"):
        (folder / name).write_bytes(b"the user's own file")
    before = _snapshot(folder)
    rc, _, err = run_cli(*PREDICT[task](files[task], img, folder))
    _refused(rc, err, "exists and was not written by an earlier", "--overwrite")
    assert _snapshot(folder) == before


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_a_command_may_rewrite_its_own_outputs_not_changed_ones(tmp_path, files, task):
    img = _image(tmp_path / "in" / "x.jpg")
    out = tmp_path / "out"
    assert run_cli(*PREDICT[task](files[task], img, out))[0] == 0
    written = sorted(p.name for p in out.iterdir())
    assert MANIFEST in written
    assert run_cli(*PREDICT[task](files[task], img, out))[0] == 0  # its own earlier run: rewritten
    victim = next(p for p in sorted(out.iterdir()) if p.name != MANIFEST)
    victim.write_bytes(b"edited by the user")
    rc, _, err = run_cli(*PREDICT[task](files[task], img, out))
    _refused(rc, err, victim.name, "--overwrite")
    assert victim.read_bytes() == b"edited by the user"
    assert run_cli(*PREDICT[task](files[task], img, out, "--overwrite"))[0] == 0
    assert victim.read_bytes() != b"edited by the user"


# ------------------------------------------------------------------------------------------ links


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
@pytest.mark.parametrize("where", ["file", "subfolder"])
def test_a_link_in_the_output_folder_is_never_written_through(tmp_path, files, task, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    a, b = _image(tmp_path / "a" / "x.jpg"), _image(tmp_path / "b" / "x.jpg")  # same names: subfolders a/, b/
    names = {
        "classification": "predictions.json",
        "detection": "a/x.png",
        "segmentation": "a/x_label.png",
    }
    target = out / names[task]
    if where == "subfolder" and task != "classification":
        (out / "a").symlink_to(outside, target_is_directory=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(outside / "precious.txt")
    before = _snapshot(outside)
    images = [a, b] if task != "classification" else [a]
    argv = PREDICT[task](files[task], images[0], out)
    if len(images) > 1:
        argv.insert(3, str(images[1]))
    rc, _, err = run_cli(*argv)
    _refused(rc, err, "through the link")
    assert _snapshot(outside) == before


# ------------------------------------------------------------------------------------------ run folders


def _finished_run(folder: Path, task: str = "classification") -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"run_id": "0123456789ab", "task": task}))
    (folder / "metrics.json").write_text('{"top1": 91.0}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return _snapshot(folder)


@pytest.mark.parametrize(
    "argv",
    [
        ["classification", "evaluate", "--checkpoint", "{ckpt}", "--data", "{data}", "--output", "{run}"],
        ["detection", "evaluate", "--checkpoint", "{det}", "--data", "{data}", "--output", "{run}"],
        ["classification", "predict", "{img}", "--checkpoint", "{ckpt}", "--json", "{run}/metrics.json"],
        ["classification", "predict", "{img}", "--checkpoint", "{ckpt}", "--output", "{run}/checkpoints"],
    ],
    ids=["cls-evaluate", "det-evaluate", "json", "checkpoints"],
)
def test_another_runs_folder_is_refused(tmp_path, files, argv):
    run = tmp_path / "run"
    before = _finished_run(run)
    (run / "checkpoints").mkdir()
    before = _snapshot(run)
    img = _image(tmp_path / "x.png")
    fill = {"ckpt": files["classification"], "det": files["detection"], "data": tmp_path, "run": run, "img": img}
    rc, _, err = run_cli(*[a.format(**fill) for a in argv], "--overwrite")  # --overwrite does not open a run
    _refused(rc, err, "lies in the run folder")
    assert _snapshot(run) == before


def test_demo_takes_the_run_lock_and_keeps_another_run(tmp_path):
    from focalnet.demo import run_demo

    run = tmp_path / "run"
    before = _finished_run(run)
    rc, _, err = run_cli("demo", "--out", str(run), "--epochs", "1", "--max-train", "64", "--quiet")
    _refused(rc, err, "holds a classification run", "--overwrite")
    assert {k: v for k, v in _snapshot(run).items() if k != ".run.lock"} == before  # the lock, as train's

    held = tmp_path / "held"
    code = (
        "import sys; from focalnet.engine.runs import lock_run_folder; "
        f"lock_run_folder({str(held)!r}); print('locked', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"is in use by a running run .*pid {holder.pid}"):
            run_demo(held, 1, max_train=64, progress=False)
        assert sorted(p.name for p in held.iterdir()) == [".run.lock"]
    finally:
        holder.communicate("")


def test_demo_refuses_files_it_did_not_write(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "metrics.json").write_text("my numbers")
    rc, _, err = run_cli("demo", "--out", str(folder), "--epochs", "1", "--max-train", "64", "--quiet")
    _refused(rc, err, "metrics.json", "--overwrite")
    assert (folder / "metrics.json").read_text() == "my numbers"


# ------------------------------------------------------------------------------------------ the rule itself


def test_the_rule_refuses_devices_and_fifos_and_claims_nothing_on_a_refusal(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")
    rule = OutputRule("classify", [])
    for bad in (tmp_path / "fifo.json", Path("/dev/null")):
        with pytest.raises(OutputPathError, match="not a regular file"):
            rule.claim([tmp_path / "ok.json", bad])
    assert not (tmp_path / MANIFEST).exists() and not (tmp_path / "ok.json").exists()
    rule.claim([tmp_path / "ok.json"])
    (tmp_path / "ok.json").write_text("{}")
    rule.finish()
    entry = json.loads((tmp_path / MANIFEST).read_text())["files"]["ok.json"]
    assert entry["command"] == "classify" and entry["size"] == 2
    assert OutputRule("classify", []).check(tmp_path / "ok.json")  # a later run of the same command
    with pytest.raises(OutputPathError, match="not written by an earlier `focalnet convert`"):
        OutputRule("convert", []).check(tmp_path / "ok.json")


# ------------------------------------------------------------------------------------------ smaller


def test_deleting_the_run_folder_during_training_is_one_line(tmp_path, capfd):
    import shutil

    from torch import nn
    from torch.utils.data import TensorDataset

    from focalnet.cli import error_line
    from focalnet.engine import Trainer, TrainerConfig, param_groups

    x = torch.randn(64, 4)
    model = nn.Linear(4, 1)
    cfg = TrainerConfig(output_dir=str(tmp_path / "run"), epochs=3, batch_size=8, num_workers=0, progress=False)
    cfg.log_every = 1  # TensorBoard's writer thread is running when the folder goes

    def step(m, batch, device):
        if trainer.step == 3:
            shutil.rmtree(tmp_path / "run")
        xb, yb = batch
        return nn.functional.mse_loss(m(xb).squeeze(-1), yb), {}, len(xb)

    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-2)
    trainer = Trainer(cfg, model, opt, TensorDataset(x, x.sum(1)), step)
    with pytest.raises(ValueError, match="was deleted while the run was using it") as e:
        trainer.fit()
    line, code = error_line(e.value)
    assert code == 2 and "\n" not in line
    assert "Traceback" not in capfd.readouterr().err


def test_a_full_disk_says_no_space_left_on_device(tmp_path, monkeypatch):
    from focalnet.cli import error_line
    from focalnet.weights import io

    def full(*a, **k):  # what torch's zip writer raises when a write fails
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    class Stat:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(io.torch, "save", full)
    monkeypatch.setattr(io.os, "statvfs", lambda p: Stat())
    with pytest.raises(OSError) as e:
        io.atomic_save({"a": torch.zeros(1)}, tmp_path / "m.pt")
    assert error_line(e.value) == (f"error: no space left on device: {tmp_path / 'm.pt'}", 2)
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_real_full_disk_too(tmp_path):
    """The same on a 1 MB tmpfs (where the machine lets us mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        from focalnet.weights.io import atomic_save

        with pytest.raises(OSError, match="no space left on device"):
            atomic_save({"w": torch.zeros(1_000_000)}, disk / "m.pt")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_labels_that_are_all_ignored_say_so(tmp_path):
    from focalnet.segmentation.data import SegmentationDataset

    img, lab = _image(tmp_path / "a.png"), tmp_path / "a_label.png"
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(lab)
    with pytest.raises(ValueError, match="no pixel is labelled in the train set"):
        SegmentationDataset([(img, lab)], 3)
    Image.fromarray(np.full((40, 48), 1, np.uint8)).save(lab)
    assert len(SegmentationDataset([(img, lab)], 3)) == 1


@pytest.mark.parametrize("inside", ["checkpoints", "sub"])
def test_a_run_inside_another_runs_folder_is_refused(tmp_path, inside):
    from focalnet.engine import prepare_run_folder

    before = _finished_run(tmp_path / "run")
    with pytest.raises(ValueError, match="lies in the run folder"):
        prepare_run_folder(tmp_path / "run" / inside, resume=None)
    assert _snapshot(tmp_path / "run") == before
