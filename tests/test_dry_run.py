"""``--dry-run`` on every training command, and schedules that fit the run (issue 26)."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from focalnet.engine.schedule import MAX_WARMUP_SHARE, fit_decays, fit_warmup, run_updates

from conftest import DATA, need, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

COCO = DATA / "coco-tiny"
ANN = COCO / "annotations"

# each training command on the small shared data, as a user would type it (OUT: the run folder)
TRAIN_COMMANDS = {
    "classification": [
        "classification",
        "train",
        "--config",
        "imagenette_cpu",
        "--data",
        str(DATA / "imagenette"),
        "--epochs",
        "3",
        "--batch-size",
        "16",
    ],  # fmt: skip
    "detection": [
        "detection",
        "train",
        "--config",
        "mask_rcnn_focalnet_cpu_tiny",
        "--data",
        str(COCO),
        "--epochs",
        "2",
    ],  # fmt: skip
    "segmentation": [
        "segmentation",
        "train",
        "--config",
        "upernet_focalnet_tiny_srf_camvid_cpu",
        "--data",
        str(DATA / "camvid"),
        "--layout",
        "folder",
        "--ignore-index",
        "11",
        "--iters",
        "40",
    ],  # fmt: skip
    "demo": ["demo", "--epochs", "2", "--max-train", "256"],
}
DATASETS = {"classification": "imagenette", "detection": "coco-tiny", "segmentation": "camvid", "demo": None}


def _split(stdout: str) -> tuple[dict, list[str], str]:
    """(the printed config, its trailing comment lines, the summary line) of a dry run's output."""
    lines = stdout.rstrip("\n").splitlines()
    assert lines[-1].startswith("dry run: ") and sum(line.startswith("dry run: ") for line in lines) == 1
    return yaml.safe_load("\n".join(lines[:-1])), [s[2:] for s in lines[:-1] if s.startswith("# ")], lines[-1]


@pytest.mark.parametrize("task", list(TRAIN_COMMANDS))
def test_dry_run_prints_the_config_and_one_summary_line_and_writes_nothing(task, tmp_path, monkeypatch):
    if DATASETS[task]:
        need(DATA / DATASETS[task])
    monkeypatch.chdir(tmp_path)  # nothing may appear in the working folder either (runs/demo-<time>/...)
    out = tmp_path / "runs" / "out"
    rc, stdout, stderr = run_cli(*TRAIN_COMMANDS[task], "--output", str(out), "--dry-run")
    assert rc == 0, stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    config, notes, summary = _split(stdout)
    assert isinstance(config, dict) and config
    m = [line for line in notes if line.startswith("schedule: warm-up ")]
    assert len(m) == 1
    warmup, total = (int(x) for x in m[0].split()[2:5:2])  # "schedule: warm-up W of T updates (...)"
    assert f"{total} updates" in summary and f"warm-up {warmup};" in summary
    assert 0 <= warmup <= MAX_WARMUP_SHARE * total  # every command here runs shorter than its recipe
    params = float(summary.split("M parameters")[0].rsplit(" ", 1)[1])
    assert params > 0.1
    assert int(summary.split(" images per epoch")[0].rsplit(" ", 1)[1]) > 0


def test_detection_dry_run_prints_the_config_the_run_uses(tmp_path):
    """The printed YAML loads back to the config the run would use (flags and --set included)."""
    from focalnet.detection.config import load_detection_config

    need(COCO)
    argv = [*TRAIN_COMMANDS["detection"], "--min-size", "256", "--max-size", "448", "--set", "optim.lr=2e-4"]
    rc, stdout, stderr = run_cli(*argv, "--output", str(tmp_path / "run"), "--dry-run")
    assert rc == 0, stderr
    (tmp_path / "printed.yaml").write_text(stdout.rsplit("dry run: ", 1)[0])
    printed = load_detection_config(tmp_path / "printed.yaml")
    assert printed.model.min_size == 256 and printed.optim.lr == 2e-4 and printed.epochs == 2
    assert max(printed.data.scales) == 256  # the recipe's 256-320 scales rescaled by 256/320
    assert not (tmp_path / "run").exists()


def test_the_issues_own_data_example_runs_without_config(tmp_path):
    """docs/detection.md's own-data example (no --config, --min-size/--max-size) failed with a TypeError."""
    need(COCO)
    rc, stdout, stderr = run_cli(
        "detection", "train", "--backbone", "focalnet_small_srf", "--detector", "faster_rcnn",
        "--train-ann", str(ANN / "instances_train2017.json"), "--train-images", str(COCO / "train2017"),
        "--val-ann", str(ANN / "instances_val2017.json"), "--val-images", str(COCO / "val2017"),
        "--output", str(tmp_path / "mine"), "--epochs", "24", "--batch-size", "4", "--min-size", "512",
        "--max-size", "853", "--set", "optim.lr=2e-4", "model.frozen_stages=1", "model.grad_checkpointing=true",
        "--dry-run",
    )  # fmt: skip
    assert rc == 0, stderr
    config, _, summary = _split(stdout)
    assert config["model"]["min_size"] == 512 and max(config["data"]["scales"]) == 512  # 480-800 x 512/800
    assert "faster_rcnn with focalnet_small_srf" in summary and "80 images per epoch" in summary
    assert not (tmp_path / "mine").exists()


def test_min_size_without_config_for_every_detector():
    """``--min-size`` rescales from the detector's own test size ("the detector's own": None in the file)."""
    import argparse

    from focalnet.detection.cli import resolve_config
    from focalnet.detection.registry import DETECTORS

    for name, spec in DETECTORS.items():
        args = argparse.Namespace(config=None, detector=name, min_size=400, max_size=700, overrides=[])
        cfg = resolve_config(args)
        base = spec.head_defaults[spec.config_fields["min_size"]] if "min_size" in spec.config_fields else 800
        assert cfg.model.min_size == 400 and cfg.model.max_size == 700, name
        assert max(cfg.data.scales) == round(800 * 400 / base), name


def test_dry_run_input_errors_are_one_line_and_write_nothing(tmp_path):
    need(COCO)
    for extra, words in (
        (["--data", str(tmp_path / "nowhere")], "not found"),
        (["--train-ann", str(tmp_path / "x.json"), "--train-images", str(COCO / "train2017")], "not found"),
        (["--data", str(COCO), "--backbone-checkpoint", str(tmp_path / "b.pth")], "backbone checkpoint not found"),
    ):
        argv = ["detection", "train", "--config", "mask_rcnn_focalnet_cpu_tiny", *extra]
        rc, stdout, stderr = run_cli(*argv, "--output", str(tmp_path / "run"), "--dry-run")
        assert rc == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert words in stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- schedules
def _lrs(cfg, per_epoch: int, total: int) -> list[float]:
    """The learning rate of each update of ``cfg``'s detection run, from the scheduler the run builds."""
    import torch

    from focalnet.detection.train import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = build_scheduler(cfg, opt, per_epoch, total)
    lrs = []
    for step in range(total):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_mask_rcnn_on_8_images_for_40_epochs_peaks_within_the_first_tenth():
    from focalnet.detection.config import detection_schedule, load_detection_config

    cfg = load_detection_config(values={"epochs": 40})  # the released 1x recipe's schedule: 500 warm-up updates
    per_epoch, total = run_updates(8, cfg.batch_size, cfg.epochs)
    assert (per_epoch, total) == (4, 160)
    lrs = _lrs(cfg, per_epoch, total)
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(cfg.optim.lr) and peak <= MAX_WARMUP_SHARE * total
    warmup, decays = detection_schedule(cfg, per_epoch, total)
    # the x0.1 steps after epochs 9 and 11 of 12 move to the same fractions of the 40 epochs
    assert decays == [round(s / 12 * total) for s in cfg.optim.lr_steps] == [120, 147]
    assert lrs[decays[0] - 1] == pytest.approx(cfg.optim.lr) and lrs[decays[0]] == pytest.approx(cfg.optim.lr / 10)
    assert "capped at 10%" in warmup.note
    # the released recipe at its length on COCO (7,330 updates an epoch) keeps its schedule
    coco = load_detection_config("mask_rcnn_focalnet_tiny_lrf_1x")
    w, d = detection_schedule(coco, 7330, 12 * 7330)
    assert w.steps == coco.optim.warmup_steps == 500 and d == [round(s * 7330) for s in coco.optim.lr_steps]
    # a schedule the user sets is taken as given
    mine = load_detection_config(values={"epochs": 40}, overrides=["optim.warmup_steps=60"])
    w, d = detection_schedule(mine, per_epoch, total)
    assert w.steps == 60 and d == [round(s * per_epoch) for s in mine.optim.lr_steps]


@given(
    warmup=st.floats(0, 1e5, allow_nan=False),
    total=st.integers(1, 10**6),
    ratio=st.one_of(st.none(), st.floats(1e-4, 100), st.just(1.0)),
    proportional=st.booleans(),
)
def test_fit_warmup_rule(warmup, total, ratio, proportional):
    w = fit_warmup(warmup, total, ratio, proportional=proportional)
    assert 0 <= w.steps <= max(total - 1, 0) and w.total == total and w.note
    at_recipe_length = ratio is not None and proportional and math.isclose(ratio, 1.0)
    if ratio is None or at_recipe_length:  # as set, or the recipe's own: kept (within the run)
        assert w.steps == min(round(warmup), max(total - 1, 0))
    else:  # another length: scaled (a share) or kept (a count), never more than a tenth of the run
        assert w.steps <= MAX_WARMUP_SHARE * total
        assert w.steps == min(round(warmup * ratio if proportional else warmup), math.floor(0.1 * total), total - 1)


def test_fit_decays_and_run_updates():
    assert fit_decays([9, 11], 40 / 12) == pytest.approx([30, 36.6667], rel=1e-4)
    assert fit_decays([9, 11], None) == [9.0, 11.0]
    assert run_updates(80, 2, 2) == (40, 80)
    assert run_updates(10, 4, 3, accum_steps=2) == (1, 3)  # 2 batches (drop_last), one update
    assert run_updates(10, 4, 3, drop_last=False) == (3, 9)
    assert run_updates(100, 8, 1, 50, world_size=4) == (3, 50)  # 25 per process: 3 batches an epoch
    with pytest.raises(ValueError, match="larger than the training set"):
        run_updates(3, 4, 1)


def test_demo_warmup_keeps_one_epoch_at_its_length():
    from focalnet.demo import DEFAULT_EPOCHS, demo_warmup

    assert demo_warmup(22, 22 * DEFAULT_EPOCHS, DEFAULT_EPOCHS).steps == 22  # the released demo: one epoch
    assert demo_warmup(22, 44, 2).steps == 4  # 2 epochs: 22 x 2/12 = 3.7 -> 4, within 10 % of 44
    assert demo_warmup(22, 22, 1).steps == 2  # 1.8 -> 2, the 10 % cap


def test_a_run_states_its_effective_schedule_in_config_yaml(tmp_path):
    """The run folder's config.yaml says the warm-up the run used (trailing comments) and still loads."""
    from focalnet.classification import load_classification_config, train

    need(DATA / "imagenette")
    sets = ["data.max_per_class=2", "data.img_size=32", "train.batch_size=4", "train.epochs=2", "eval.enabled=false"]
    sets += ["model.overrides={embed_dim: 16, depths: [1, 1, 1, 1]}"]
    cfg = load_classification_config("imagenette_cpu", [f"data.path={DATA / 'imagenette'}", *sets])
    cfg.output_dir, cfg.train.progress = str(tmp_path / "run"), False
    train(cfg)
    text = (tmp_path / "run" / "config.yaml").read_text()
    # 20 images, batch 4: 5 updates an epoch, 10 in all; the recipe's 2 of 20 epochs scaled: 1 update
    assert "# schedule: warm-up 1 of 10 updates (the recipe's 10 scaled to the run's length)" in text
    again = load_classification_config(tmp_path / "run" / "config.yaml")
    assert again.train.epochs == 2 and again.train.warmup_epochs == cfg.train.warmup_epochs
