"""A run folder is locked for the life of a run (issue 18): a second launch is refused before it touches
anything, a killed run leaves no stale lock, two launches at the same moment give one run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focalnet.engine import RunFolderError, lock_run_folder, prepare_run_folder, unlock_run_folder
from focalnet.engine.runs import LOCK_FILE, read_run_file

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}

HOLD = """
import sys, time
from focalnet.engine import prepare_run_folder
print(prepare_run_folder(sys.argv[1], resume=None, task="classification"), flush=True)
time.sleep(600)
"""


def _holder(folder: Path) -> tuple[subprocess.Popen, str]:
    """A process that prepares ``folder`` (taking its lock) and sleeps; returns it and its run id."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    run_id = p.stdout.readline().strip()
    assert run_id, "the holder did not start"
    return p, run_id


def test_a_locked_folder_is_refused_before_anything_is_touched_and_freed_when_the_holder_dies(tmp_path):
    out = tmp_path / "R"
    holder, run_id = _holder(out)
    try:
        # what the running run owns: a temporary checkpoint being written, its run.json
        (out / "checkpoints").mkdir()
        partial = out / "checkpoints" / ".checkpoint-000000004.pt.ab12.tmp"
        partial.write_bytes(b"being written")
        before = {p: p.read_bytes() for p in (partial, out / "run.json")}
        with pytest.raises(RunFolderError) as e:
            prepare_run_folder(out, resume=None, task="classification")
        msg = str(e.value)
        assert "\n" not in msg and str(out) in msg and f"pid {holder.pid}" in msg and f"run {run_id}" in msg
        assert {p: p.read_bytes() for p in before} == before  # the temp file survived, run.json unchanged
        for kw in ({"resume": "auto"}, {"resume": None, "overwrite": True}):  # neither resume nor overwrite passes
            with pytest.raises(RunFolderError, match="in use by a running run"):
                prepare_run_folder(out, task="classification", **kw)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL: the OS released the lock; the next run cleans up and proceeds
    assert prepare_run_folder(out, resume="auto", task="classification") == run_id
    assert not partial.exists()
    info = json.loads((out / LOCK_FILE).read_text())
    assert info["pid"] == os.getpid() and info["run_id"] == run_id
    unlock_run_folder(out)


def test_lock_is_reentrant_in_a_process_and_released_on_refusal(tmp_path):
    out = tmp_path / "R"
    assert lock_run_folder(out) is True
    assert lock_run_folder(out) is False  # this process holds it already
    unlock_run_folder(out)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "checkpoint-000000002.pt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="checkpoints of another run"):
        prepare_run_folder(out, resume=None)
    assert lock_run_folder(out) is True  # the refusal released the lock it took
    unlock_run_folder(out)


def _images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, color in enumerate([(220, 30, 30), (30, 200, 40)]):
        d = root / "train" / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(8):
            a = np.array(color)[None, None] + rng.normal(0, 30, (32, 32, 3))
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.slow  # two processes importing torch on a shared machine: 25-40 s
def test_two_training_launches_at_the_same_moment_give_one_run(tmp_path):
    data, out = _images(tmp_path / "data"), tmp_path / "run"
    cmd = [
        sys.executable, "-m", "focalnet", "classification", "train", "--model", "focalnet_tiny_srf",
        "--data", str(data), "--output", str(out), "--max-steps", "30", "--batch-size", "8", "--img-size", "32",
        "--workers", "0", "--no-progress", "--threads", "1", "--set", "model.overrides.embed_dim=16",
        "model.overrides.depths=[1,1,1,1]", "model.drop_path_rate=0.0", "aug.enabled=false",
        "train.warmup_epochs=0", "train.ckpt_every_steps=10", "train.keep_checkpoints=5",
    ]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in "ab"]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], [r[2][-2000:] for r in results]
    (_, _, err_run), (_, _, err_refused) = sorted(results, key=lambda r: r[0])
    lines = err_refused.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "in use by a running run" in lines[0], lines
    winner = next(p.pid for p in procs if p.returncode == 0)
    assert f"pid {winner}" in lines[0] and str(out) in lines[0]
    # the run that ran is whole: its own id everywhere, every checkpoint, the full history
    run_id = read_run_file(out)["run_id"]
    assert (out / "config.yaml").read_text().startswith(f"# run_id: {run_id}")
    import torch

    ckpts = sorted((out / "checkpoints").glob("checkpoint-*.pt"))
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in ckpts]
    assert [s["step"] for s in states] == [10, 20, 30] and {s["run_id"] for s in states} == {run_id}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 30 and (out / "model.safetensors").is_file()
    log = (out / "train.log").read_text()
    assert (
        "in use by a running run" not in log and log.count("no validation folder") == 1
    )  # the refused one wrote nothing
    assert not list(out.rglob("*.tmp"))
