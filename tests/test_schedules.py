"""Warm-up and evaluation scaled to a run shorter than its recipe (issue 14)."""

import pytest

from focalnet.classification import load_classification_config
from focalnet.classification.train import TrainingRun
from focalnet.segmentation import load_segmentation_config
from focalnet.segmentation.train import scaled_schedule
from test_classification import TINY, make_data

pytestmark = pytest.mark.usefixtures("one_thread")


def test_classification_config_records_the_recipe_length():
    recipe = load_classification_config("imagenette_cpu")
    short = load_classification_config("imagenette_cpu", ["train.epochs=1"])
    assert short.train.recipe_epochs == recipe.train.epochs != 1
    fixed = load_classification_config("imagenette_cpu", ["train.epochs=1", "train.warmup_epochs=0.5"])
    assert fixed.train.recipe_epochs == 0  # the user chose the warm-up: kept as given


def test_shortened_classification_run_keeps_its_warmup_share(tmp_path):
    data = make_data(tmp_path / "data", per_class=8, classes=2, corrupt=False)
    base = [
        f"data.path={data}",
        f"output_dir={tmp_path / 'run'}",
        "data.img_size=32",
        "data.num_workers=0",
        "train.batch_size=4",  # 4 updates per epoch
        "train.warmup_epochs=5",
        "train.epochs=20",
        *TINY,
    ]
    cfg = load_classification_config(model="focalnet_tiny_srf", overrides=base)
    cfg.train.recipe_epochs = 20.0  # the recipe as written: 5 of 20 epochs
    assert TrainingRun(cfg).warmup_steps == 20
    cfg.train.epochs = 10  # a 2x shorter run warms up 2x shorter (10 of 40 steps), capped at 10 %: 4...
    run = TrainingRun(cfg)
    assert run.warmup_steps == 4 and "scaled" in run.warmup_note and "capped at 10%" in run.warmup_note
    cfg.train.max_steps = 400  # ... and an iteration-based run of 400 updates (100 epochs) the same share: 100 -> 40
    assert TrainingRun(cfg).warmup_steps == 40
    cfg.train.max_steps, cfg.train.warmup_epochs = 400, 2  # 2 of 20 epochs, at 100 epochs: 10 of 100, within 10 %
    assert TrainingRun(cfg).warmup_steps == 40
    cfg.train.max_steps, cfg.train.warmup_epochs = 0, 5
    cfg.train.recipe_epochs = 0  # no recipe length: the warm-up as given, capped to the run
    assert TrainingRun(cfg).warmup_steps == 20


def test_segmentation_trial_scales_warmup_and_evaluation():
    cfg = load_segmentation_config("upernet_focalnet_tiny_srf_camvid_cpu", ["train.iters=10"])
    assert cfg.train.recipe_iters == 2000
    warmup, max_images, note = scaled_schedule(cfg, num_val=101)
    assert warmup == 0 or warmup < 10
    assert max_images == 10 and "10 of the 101" in note
    cfg = load_segmentation_config("upernet_focalnet_tiny_srf_camvid_cpu", ["train.iters=1000"])
    assert scaled_schedule(cfg, 101)[:2] == (50, 0)  # half the recipe: half the warm-up, every image
    cfg = load_segmentation_config(None, ["train.iters=300"])  # the ADE20K recipe: 1500 of 160k
    assert scaled_schedule(cfg, 2000)[0] == 3
    cfg = load_segmentation_config(None, ["train.iters=300", "optim.warmup_iters=100"])
    assert scaled_schedule(cfg, 2000)[:2] == (100, 0)


def test_layer_decay_scales_the_scheduled_lr_once():
    """timm's schedulers multiply by each group's ``lr_scale``: the optimizer must not scale the base too."""
    from timm.scheduler import CosineLRScheduler

    from focalnet import create_model
    from focalnet.engine import build_adamw

    model = create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), num_classes=3)
    opt = build_adamw(model, 1e-3, 0.05, layer_decay=0.5)
    scales = [g["lr_scale"] for g in opt.param_groups]
    assert min(scales) == 0.5**5 and max(scales) == 1.0
    assert [g["lr"] for g in opt.param_groups] == [1e-3 * s for s in scales]  # right before any schedule
    sched = CosineLRScheduler(opt, t_initial=100, lr_min=0.0, warmup_t=0, t_in_epochs=False)
    sched.step_update(50)  # half-way down the cosine: the base lr halves
    for g, s in zip(opt.param_groups, scales):
        assert g["lr"] == pytest.approx(0.5e-3 * s, rel=1e-6)
