"""Generated checkpoint files through the command line of every task's loader.

Hypothesis edits a valid file of each task (a classifier in the original layout, a detector and a UPerNet
in ours): keys dropped or renamed, tensors replaced by other shapes, dtypes, strides (transposed, stride-0
views claiming absurd sizes), non-finite values or non-tensors, metadata replaced by random values of any
type; a Mask2Former in ours and in the official (detectron2) layout too. ``predict`` and ``info`` must then
either work or print one ``error:`` line for a bad input (exit 2), never a traceback, an unexpected exception type (the CLI marks those "run with --debug") or a signal.
``FOCALNET_FUZZ_EXAMPLES`` sets the examples per task (default 25; the slow test runs 300 per task).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from focalnet import FocalNet
from focalnet.detection.load import FOCALNET_FORMAT
from test_detectors import file_of, tiny_model
from test_load_checks_seg_cls import seg_model

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = int(os.environ.get("FOCALNET_FUZZ_EXAMPLES", "25"))
TASKS = ("classification", "detection", "segmentation", "mask2former", "mask2former_official")
DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool, torch.complex64]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
edits = st.lists(
    st.tuples(
        st.sampled_from(["drop", "rename", "shape", "dtype", "nonfinite", "strided", "huge", "not_tensor", "meta"]),
        st.integers(0, 10**6),
        st.lists(st.integers(0, 6), max_size=4),
        json_values,
        st.sampled_from(DTYPES),
    ),
    min_size=1,
    max_size=4,
)


@cache
def base_file(task: str) -> dict[str, Any]:
    """A valid file of ``task`` as the object ``torch.save`` writes."""
    torch.manual_seed(0)
    if task == "classification":
        model = FocalNet(embed_dim=8, depths=(1, 1), num_classes=3)
        return {"model": model.state_dict()}
    if task == "detection":
        return file_of(FOCALNET_FORMAT.name, *tiny_model("mask_rcnn"))
    if task.startswith("mask2former"):
        from focalnet.segmentation.registry import get_segmentor
        from test_segmentors import tiny

        model = tiny("mask2former")
        if task == "mask2former":
            return {
                "format": "focalnet-segmentation",
                "meta": dict(model.meta),
                "extra": {},
                "state_dict": model.state_dict(),
            }
        return get_segmentor("mask2former").write(dict(model.meta), model.state_dict(), {})
    model = seg_model()
    return {"state_dict": model.state_dict(), "meta": dict(model.meta)}


def _state_dict_key(obj: dict[str, Any]) -> str:
    return max(obj, key=lambda k: sum(isinstance(v, torch.Tensor) for v in getattr(obj[k], "values", list)()))


def mutate(obj: dict[str, Any], todo: list[tuple]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    sd_key = _state_dict_key(obj)
    sd = obj[sd_key]
    for op, i, shape, value, dtype in todo:
        keys = list(sd)
        if op == "meta":
            others = sorted(k for k in obj if k != sd_key) + ["extra_key"]
            obj[others[i % len(others)]] = value
            continue
        if not keys:
            continue
        k = keys[i % len(keys)]
        t = sd[k]
        if op == "drop":
            del sd[k]
        elif op == "rename":
            sd[k + ".renamed"] = sd.pop(k)
        elif op == "shape":
            sd[k] = torch.zeros(shape)
        elif op == "not_tensor":
            sd[k] = value
        elif not isinstance(t, torch.Tensor):
            continue
        elif op == "dtype":
            sd[k] = t.to(dtype)
        elif op == "nonfinite" and t.is_floating_point() and t.numel():
            sd[k] = t.clone().fill_(float("nan") if i % 2 else float("inf"))
        elif op == "strided" and t.numel():  # same shape and values, not contiguous
            wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype) if t.ndim else torch.zeros(2)
            view = wide[..., ::2] if t.ndim else wide[:1].view(())
            sd[k] = view.copy_(t)
        elif op == "huge":  # one stored element claiming up to 10^18 entries
            sd[k] = torch.zeros(1, dtype=t.dtype).expand(*([10**6] * (2 + i % 2)))
    return obj


@cache
def image(root: str) -> str:
    path = Path(root) / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype("uint8")).save(path)
    return str(path)


def commands(task: str, ckpt: str, root: Path) -> list[list[str]]:
    out = str(root / "pred")
    predict = {
        "classification": ["classification", "predict", image(str(root)), "--checkpoint", ckpt],
        "detection": ["detection", "predict", image(str(root)), "--checkpoint", ckpt, "--output", out],
        "segmentation": ["segmentation", "predict", image(str(root)), "--checkpoint", ckpt, "--output", out],
    }[task if not task.startswith("mask2former") else "segmentation"]
    return [predict, ["info", ckpt]]


def check(task: str, todo: list[tuple], root: Path) -> None:
    from conftest import run_cli

    path = root / f"{task}.pt"
    torch.save(mutate(base_file(task), todo), path)
    for argv in commands(task, str(path), root):
        rc, _, err = run_cli(*argv, "--threads", "1") if argv[0] != "info" else run_cli(*argv)
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("warning", "W"))]
        assert "Traceback" not in err, f"{argv[:2]} {todo}: {err[-2000:]}"
        if rc:
            assert rc in (1, 2), (argv[:2], rc, err)
            assert lines and lines[-1].startswith("error: "), (argv[:2], todo, err)
            assert "--debug" not in lines[-1], f"{argv[:2]} raised an unexpected exception type: {lines[-1]} ({todo})"
        if os.environ.get("FOCALNET_FAULT_REPORT"):  # the figures of docs/reliability.md
            with open(os.environ["FOCALNET_FAULT_REPORT"], "a") as f:
                f.write(json.dumps({"fuzz": "checkpoint", "task": task, "command": argv[0], "rc": rc}) + "\n")


FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=FIXTURE_OK)
@given(todo=edits)
def test_any_edited_checkpoint_gives_a_result_or_one_line(tmp_path, task, todo):
    check(task, todo, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(todo=edits)
def test_any_edited_checkpoint_gives_a_result_or_one_line_many(tmp_path, task, todo):
    check(task, todo, tmp_path)


def test_no_signal_on_hostile_files(tmp_path):
    """The same edits in a separate process, so that a crash of the C++ side (a signal) fails the test."""
    files = []
    for task in TASKS:
        for n, todo in enumerate(
            [
                [("huge", 3, [], None, torch.float32)],
                [("strided", 5, [], None, torch.float32), ("dtype", 7, [], None, torch.complex64)],
                [("shape", 2, [0, 3], None, torch.float32), ("meta", 0, [], [1, {"a": None}], torch.float32)],
            ]
        ):
            path = tmp_path / f"{task}-{n}.pt"
            torch.save(mutate(base_file(task), todo), path)
            files.append(str(path))
    script = "import sys\nfrom focalnet.cli import main\nfor f in sys.argv[1:]:\n    main(['info', f])\n"
    proc = subprocess.run([sys.executable, "-c", script, *files], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: a signal): {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
