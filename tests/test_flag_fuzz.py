"""Combinations of each training command's flags, resolved with ``--dry-run`` (issue 26).

Hypothesis draws flags from the command's own parser (every option it has, with values of its type, its
choices, real and missing paths) with and without ``--config``, every detector of
:data:`focalnet.detection.registry.DETECTORS` and every segmentor, plus ``--set`` overrides. The answer must
be a dry run (exit 0, the summary line, nothing written) or one ``error:`` line with exit code 2: never
an exception type the command line does not know ("run with --debug for the traceback") and never a
traceback. The default suite draws 30 examples per command; ``-m slow`` 300.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, need, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

COMMANDS = {"classification": ("classification", "train"), "detection": ("detection", "train")}
COMMANDS |= {"segmentation": ("segmentation", "train"), "demo": ("demo",)}
SKIPPED = {"help", "output", "out", "dry_run", "resume", "overwrite", "debug", "threads", "quiet", "json"}
MISSING = "/nonexistent/focalnet-fuzz"
COCO = DATA / "coco-tiny"

# real inputs for the path options (a missing path and a file-for-a-folder are drawn too)
PATHS: dict[str, list[str]] = {
    "data": [str(DATA / "imagenette"), str(COCO), str(DATA / "camvid")],
    "train_ann": [str(COCO / "annotations" / "instances_train2017.json")],
    "val_ann": [str(COCO / "annotations" / "instances_val2017.json")],
    "train_images": [str(COCO / "train2017")],
    "val_images": [str(COCO / "val2017")],
    "img_dir": ["train", "val"],
    "ann_dir": ["trainannot", "valannot"],
    "val_img_dir": ["val"],
    "val_ann_dir": ["valannot"],
    "classes_file": [str(COCO / "annotations" / "instances_val2017.json")],
}
TEXT: dict[str, list[str]] = {
    "class_names": ["a,b,c", "sky,building", ""],
    "pretrained": ["ms_in1k", "nope"],
    "crop_size": ["64", "0"],
}
# --set overrides of each task: valid, impossible, wrongly typed and unknown ones
SETS: dict[str, list[str]] = {
    "classification": ["train.epochs=0", "train.warmup_epochs=1", "train.base_lr=abc", "model.overrides={embed_dim: 16}",
                       "data.img_size=-5", "aug.mixup=0.5", "nonexistent=1", "train.batch_size=3", "eval.enabled=false",
                       "train.recipe_epochs=-1", "model.drop_path_rate=2.0"],
    "detection": ["optim.warmup_steps=10", "optim.lr_steps=[11, 9]", "model.fpn_channels=0", "data.scales=[]",
                  "model.dino={num_queries: 10}", "epochs=0", "optim.lr=nan", "model=3", "data.crop_range=[5, 1]",
                  "model.detector_overrides={bogus: 1}", "optim.recipe_epochs=24", "model.min_size=10"],
    "segmentation": ["train.iters=0", "optim.warmup_iters=5", "model.head.channels=16", "eval.mode=bogus",
                     "aug.crop_size=[32, 32]", "optim.lr=-1", "model.segmentor=mask2former", "model.segmentor=nope",
                     "train.recipe_iters=10", "data.num_classes=0"],
    "demo": [],
}  # fmt: skip


def _train_parser(task: str) -> argparse.ArgumentParser:
    from focalnet.cli import build_parser

    parser = build_parser([COMMANDS[task][0]])
    for name in COMMANDS[task]:
        parser = next(
            a.choices[name] for a in parser._actions if isinstance(a, argparse._SubParsersAction) and name in a.choices
        )
    return parser


def _values(task: str, action: argparse.Action) -> st.SearchStrategy[list[str]]:
    """Command-line words for one option: its choices, values of its type, paths, or nothing (a switch)."""
    flag = action.option_strings[-1] if action.option_strings[0] == "--out" else action.option_strings[0]
    if action.nargs == 0:
        return st.just([flag])
    if action.dest == "overrides":
        return st.lists(st.sampled_from(SETS[task]), min_size=1, max_size=3).map(lambda v: [flag, *v])
    if action.dest == "detector":
        from focalnet.detection.registry import DETECTORS

        words: st.SearchStrategy[str] = st.sampled_from([*DETECTORS, "nope"])
    elif action.dest == "config":
        from focalnet.engine.config import packaged_configs

        words = st.sampled_from([*packaged_configs(task), MISSING])
    elif action.dest == "backbone" or action.dest == "model":
        words = st.sampled_from(["focalnet_tiny_srf", "focalnet_tiny_lrf", "focalnet_base_iso", "nope"])
    elif action.choices is not None:
        words = st.sampled_from([*action.choices, "bogus"])
    elif getattr(action.type, "__name__", "") in ("int", "positive_int"):
        words = st.one_of(st.integers(-2, 64), st.sampled_from([10**9, 2**31])).map(str)
    elif action.type is float:
        words = st.sampled_from(["0", "-1", "1e-4", "3e-3", "1e9", "nan", "inf", "x"])
    elif action.dest == "device":
        words = st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "tpu"])
    elif action.dest in ("checkpoint", "backbone_checkpoint"):
        words = st.sampled_from([MISSING, str(COCO / "val2017")])
    elif action.dest in PATHS:
        words = st.sampled_from([*PATHS[action.dest], MISSING])
    else:
        words = st.sampled_from(TEXT.get(action.dest, ["x", ""]))
    return words.map(lambda w: [flag, w])


@st.composite
def _argv(draw: st.DrawFn, task: str) -> list[str]:
    parser = _train_parser(task)
    actions = [a for a in parser._actions if a.option_strings and a.dest not in SKIPPED]
    by_dest = {a.dest: a for a in actions}
    argv: list[str] = []
    # the inputs a run needs, most of the time (else their error); the task's model choice, always drawn
    base = {"classification": ["--data", str(DATA / "imagenette")], "detection": ["--data", str(COCO)]}
    base["segmentation"] = ["--data", str(DATA / "camvid"), "--layout", "folder", "--ignore-index", "11"]
    if task in base and draw(st.integers(0, 9)) > 0:
        argv += base[task]
    for dest in ("config", "detector", "segmentor", "model"):
        if dest in by_dest and draw(st.booleans()):
            argv += draw(_values(task, by_dest[dest]))
    chosen = draw(st.lists(st.sampled_from(sorted(by_dest)), max_size=5, unique=True))
    for dest in chosen:
        argv += draw(_values(task, by_dest[dest]))
    return argv


def _check(task: str, argv: list[str], out: Path) -> None:
    try:
        rc, stdout, stderr = run_cli(*COMMANDS[task], *argv, "--output", str(out), "--dry-run")
    except SystemExit as e:  # argparse: the usage and "...: error: ..." (a value of the wrong type or choice)
        assert e.code == 2, argv
        return
    assert "Traceback" not in stderr and "run with --debug for the traceback" not in stderr, (argv, stderr)
    if rc == 0:
        assert stdout.rstrip("\n").splitlines()[-1].startswith("dry run: "), (argv, stdout[-300:])
    else:
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert rc == 2 and len(lines) == 1 and stderr.rstrip("\n").splitlines()[-1] == lines[0], (argv, stderr)
    assert not out.exists(), argv


def _fuzz(task: str, tmp_path: Path, examples: int) -> None:
    for name in ("imagenette", "coco-tiny", "camvid"):
        need(DATA / name)
    seen = {"ok": 0}

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(argv=_argv(task))
    def run(argv: list[str]) -> None:
        _check(task, argv, tmp_path / "run")
        seen["ok"] += 1

    run()
    assert seen["ok"] >= math.ceil(examples / 2)  # hypothesis ran the examples (not filtered away)


@pytest.mark.parametrize("task", list(COMMANDS))
def test_train_flag_combinations_give_a_dry_run_or_one_error_line(task, tmp_path):
    _fuzz(task, tmp_path, 30)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(COMMANDS))
def test_train_flag_combinations_many(task, tmp_path):
    _fuzz(task, tmp_path, 300)
