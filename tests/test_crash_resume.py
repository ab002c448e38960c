"""Crash-and-resume: SIGKILL training of each task at random moments (and inside checkpoint writes and
atomic renames), resume with ``--resume auto`` until it finishes, and compare with an uninterrupted run
of the same seed: classification and segmentation bit-identical, detection within float tolerance."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
CLS_TINY = ["model.overrides.embed_dim=16", "model.overrides.depths=[1,1,1,1]", "model.drop_path_rate=0.0"]


def _env(fault: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("CRASH_AT", None)
    if fault:
        env["CRASH_AT"] = fault
    return env


def _run(args: list[str], fault: str | None = None, kill_after: float | None = None) -> int:
    """Run the CLI in a child; SIGKILL it after ``kill_after`` s (if still running). Returns its exit code."""
    p = subprocess.Popen(
        [sys.executable, str(HERE / "crash_driver.py"), *args],
        env=_env(fault),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = p.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.communicate()
        return -9
    if p.returncode not in (0, -9):
        raise AssertionError(f"exit code {p.returncode}: {err[-2000:]}")
    return p.returncode


def crash_until_done(args: list[str], faults: list[str], kill_times: list[float]) -> dict[str, int]:
    """Inject each fault, then SIGKILL at each time, resuming every time; then finish. Returns counts."""
    stats = {"runs": 0, "killed": 0}
    for fault in faults:
        stats["runs"] += 1
        stats["killed"] += _run(args, fault=fault) == -9
    for t in kill_times:
        stats["runs"] += 1
        stats["killed"] += _run(args, kill_after=t) == -9
    stats["runs"] += 1
    assert _run(args) == 0
    return stats


def _no_leftovers(out: Path) -> None:
    for d in (out, out / "checkpoints"):
        assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
    json.loads((out / "metrics.json").read_text())  # strict JSON


def _report(name: str, stats: dict[str, int]) -> None:
    path = os.environ.get("FOCALNET_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"task": name, **stats}) + "\n")


# ------------------------------------------------------------------------------------ engine (fast, in CI)


def test_engine_training_survives_sigkill_in_checkpoint_writes_and_renames(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _run(["--toy", str(ref)]) == 0
    faults = ["save:3", "replace:6", "save:2"]  # mid-checkpoint (half-written file), before a rename
    stats = crash_until_done(["--toy", str(out)], faults, [])
    assert stats["killed"] == 3
    a = torch.load(out / "final.pt", weights_only=True)
    b = torch.load(ref / "final.pt", weights_only=True)
    _assert_identical(a, b)
    history = json.loads((out / "metrics.json").read_text())["history"]
    ref_history = json.loads((ref / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [h["step"] for h in ref_history] == [6, 12, 18]  # none lost or repeated
    _no_leftovers(out)
    _report("engine", {**stats, "faults": len(faults)})


# ---------------------------------------------------------------------------------------- classification


def _cls_args(data: Path, out: Path) -> list[str]:
    return [
        "classification",
        "train",
        "--model",
        "focalnet_tiny_srf",
        "--data",
        str(data),
        "--output",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--img-size",
        "32",
        "--workers",
        "0",
        "--no-progress",
        "--resume",
        "auto",
        "--set",
        *CLS_TINY,
        "train.warmup_epochs=0",
        "train.ckpt_every_steps=1",
        "train.keep_checkpoints=2",
    ]


def _cls_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    from test_classification import make_data

    return make_data(tmp_path_factory.mktemp("clsdata"), per_class=4, classes=3, corrupt=False)


@pytest.fixture(scope="module")
def cls_reference(cls_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clsref") / "run"
    assert _run(_cls_args(cls_data, out)) == 0
    return out


@pytest.mark.slow
def test_classification_survives_kills_in_checkpoint_writes_and_resumes_exactly(cls_data, cls_reference, tmp_path):
    out = tmp_path / "run"
    args = _cls_args(cls_data, out)
    stats = crash_until_done(args, faults=["save:2", "replace:4"], kill_times=[])
    assert stats["killed"] == 2
    _assert_identical(_cls_weights(out), _cls_weights(cls_reference))
    ref_hist = json.loads((cls_reference / "metrics.json").read_text())["history"]
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in hist] == [h["step"] for h in ref_hist]  # no duplicated or lost record
    _no_leftovers(out)
    _report("classification", {**stats, "faults": 2})


@pytest.mark.slow
def test_classification_random_kills(cls_data, cls_reference, tmp_path):
    rng = random.Random(int(time.time()))
    faults = [f"save:{rng.randint(1, 6)}", f"replace:{rng.randint(1, 12)}"]
    kills = [rng.uniform(2.0, 12.0) for _ in range(3)]
    out = tmp_path / "run"
    stats = crash_until_done(_cls_args(cls_data, out), faults, kills)
    _assert_identical(_cls_weights(out), _cls_weights(cls_reference))
    _no_leftovers(out)
    _report("classification-random", {**stats, "faults": len(faults) + len(kills)})


# ------------------------------------------------------------------------------------------ segmentation


def _seg_args(root: Path, out: Path) -> list[str]:
    from test_segmentation_train import TINY_SET

    return [
        "segmentation",
        "train",
        "--backbone",
        "focalnet_tiny_srf",
        "--data",
        str(root),
        "--layout",
        "folder",
        "--output",
        str(out),
        "--iters",
        "6",
        "--batch-size",
        "2",
        "--crop-size",
        "32",
        "--workers",
        "0",
        "--eval-every",
        "0",
        "--resume",
        "auto",
        "--set",
        *TINY_SET,
        "train.ckpt_every=1",
        "optim.warmup_iters=2",
        "eval.scale=[48, 48]",
        "aug.scale=[48, 48]",
        "eval.enabled=false",
    ]


def _seg_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    from test_segmentation import make_folder_dataset

    return make_folder_dataset(
        tmp_path_factory.mktemp("segdata") / "d", n_train=4, n_val=0, size=(48, 48), num_classes=3
    )


@pytest.mark.slow
def test_segmentation_same_seed_is_reproducible_and_resume_is_exact(seg_data, tmp_path):
    ref_a, ref_b = tmp_path / "a", tmp_path / "b"
    assert _run(_seg_args(seg_data, ref_a)) == 0
    assert _run(_seg_args(seg_data, ref_b)) == 0
    _assert_identical(_seg_weights(ref_a), _seg_weights(ref_b))  # two uninterrupted runs: identical
    out = tmp_path / "run"
    rng = random.Random(int(time.time()))
    faults = ["save:2", f"replace:{rng.randint(3, 9)}"]
    kills = [rng.uniform(3.0, 10.0)]
    stats = crash_until_done(_seg_args(seg_data, out), faults, kills)
    _assert_identical(_seg_weights(out), _seg_weights(ref_a))
    _no_leftovers(out)
    _report("segmentation", {**stats, "faults": len(faults) + len(kills)})


# --------------------------------------------------------------------------------------------- detection


@pytest.mark.slow
def test_detection_resume_after_kills_matches_the_uninterrupted_run(tmp_path):
    from detection_synth import make_shapes
    from test_detection_train import TINY_CONFIG

    root = tmp_path / "shapes"
    make_shapes(root, 4, 128, split="train")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_CONFIG, "ckpt_every_steps": 1}))

    def args(out: Path) -> list[str]:
        return [
            "detection",
            "train",
            "--config",
            str(cfg),
            "--data",
            str(root),
            "--output",
            str(out),
            "--max-steps",
            "5",
            "--batch-size",
            "2",
            "--resume",
            "auto",
        ]

    assert _run(args(tmp_path / "ref")) == 0
    rng = random.Random(int(time.time()))
    faults = ["save:2", f"replace:{rng.randint(3, 8)}"]
    kills = [rng.uniform(3.0, 10.0)]
    out = tmp_path / "run"
    stats = crash_until_done(args(out), faults, kills)
    a = torch.load(out / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:  # torchvision's detection ops are deterministic on CPU: equal up to float rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    _no_leftovers(out)
    _report("detection", {**stats, "faults": len(faults) + len(kills)})
