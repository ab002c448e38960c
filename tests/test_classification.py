"""Image classification: recipes, training (overfit, resume, DDP), evaluation, prediction, CLI."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from focalnet.classification import (
    IN22K_UNUSED_INDEX,
    TrainingRun,
    evaluate,
    evaluate_model,
    head_logits,
    list_configs,
    load_classification_config,
    load_classifier,
    measure_throughput,
    target_indices,
)
from focalnet.engine import ConfigError

from conftest import DATA, need

TINY = ["model.overrides.embed_dim=16", "model.overrides.depths=[1,1,1,1]", "model.drop_path_rate=0.0"]
IMAGENETTE_IDX = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 40)]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(root: Path, per_class: int = 4, classes: int = 4, corrupt: bool = True, seed: int = 0) -> Path:
    """An ImageFolder of noisy colour patches (class = colour), optionally with unreadable files."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a = np.array(COLORS[c])[None, None] + rng.normal(0, 40, (36, 36, 3))
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
        (root / "val" / "class_1" / "broken.jpg").write_bytes(b"not an image")
    return root


def tiny_cfg(data: Path, out: Path, *extra: str, aug: bool = False):
    ov = [
        f"data.path={data}",
        f"output_dir={out}",
        "data.img_size=32",
        "data.num_workers=0",
        "train.progress=false",
        f"aug.enabled={'true' if aug else 'false'}",
        "train.batch_size=8",
        "train.warmup_epochs=0",
        *TINY,
        *extra,
    ]
    return load_classification_config(model="focalnet_tiny_srf", overrides=ov)


# ---------------------------------------------------------------------------------------------- configs


def test_recipes_of_all_released_models():
    names = list_configs()
    in1k = [
        "focalnet_tiny_srf",
        "focalnet_tiny_lrf",
        "focalnet_small_srf",
        "focalnet_small_lrf",
        "focalnet_base_srf",
        "focalnet_base_lrf",
        "focalnet_tiny_iso",
        "focalnet_small_iso",
        "focalnet_base_iso",
    ]
    in22k = [
        "focalnet_large_fl3",
        "focalnet_large_fl4",
        "focalnet_xlarge_fl3",
        "focalnet_xlarge_fl4",
        "focalnet_huge_fl3",
        "focalnet_huge_fl4",
    ]
    assert set(in1k + in22k + ["imagenette_cpu"]) <= set(names)
    drop_path = {"tiny": 0.2, "small": 0.3, "base": 0.5}
    for n in in1k + in22k:
        c = load_classification_config(n)
        assert c.model.name == n
        a, t = c.aug, c.train
        assert (
            a.auto_augment,
            a.reprob,
            a.mixup,
            a.cutmix,
            a.mixup_switch_prob,
            a.label_smoothing,
            a.color_jitter,
        ) == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.5, 0.1, 0.4)
        assert c.data.interpolation == "bicubic" and c.data.crop_pct == 0.875 and t.clip_grad == 5.0 and t.scale_lr
        if n in in1k:
            expected = 0.2 if "iso" in n else drop_path[n.split("_")[1]]
            assert (t.epochs, t.weight_decay, c.model.drop_path_rate, c.data.img_size) == (300, 0.05, expected, 224)
            assert t.batch_size * 8 == 1024 and c.model.pretrained is None
        else:
            assert c.model.pretrained == "ms_in22k" and c.model.drop_path_rate == 0.5
            assert c.data.img_size == (224 if "huge" in n else 384) and t.epochs == 30


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=3", "train.epochz"),
        ("train.epochs=abc", "train.epochs: expected an integer"),
        ("aug.reprob=2", "aug.reprob must be in"),
        ("model.name=focalnet_nope", "model.name: unknown model"),
        ("model.overrides.embed_dimm=8", "model.overrides"),
        ("train.amp=fp8", "train.amp"),
        ("train.batch_size=0", r"train.batch_size: 0 is outside the allowed range \[1, 65536\]"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_classification_config(model="focalnet_tiny_srf", overrides=[override])


def test_cli_rejects_bad_config_before_work(tmp_path, capsys):
    from focalnet.cli import main

    rc = main(
        [
            "classification",
            "train",
            "--model",
            "focalnet_tiny_srf",
            "--data",
            str(tmp_path),
            "--output",
            str(tmp_path / "run"),
            "--set",
            "train.lr=1",
        ]
    )
    assert rc == 2 and "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- training


def test_overfits_a_handful_of_images_and_skips_corrupt_ones(tmp_path):
    data = make_data(tmp_path / "data")
    run = TrainingRun(
        tiny_cfg(
            data,
            tmp_path / "run",
            "train.epochs=16",
            "train.base_lr=0.1",
            "train.eval_every_epochs=8",
            "aug.label_smoothing=0",
        )
    )
    final = run.fit()
    losses = [h["train_loss"] for h in run.trainer.history if "train_loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    # every training image is now classified correctly
    from focalnet.classification import ImageFolder, build_transform

    ds = ImageFolder(data / "train", build_transform(run.cfg, False), img_size=32)
    r = evaluate_model(run.model, ds, list(range(4)), batch_size=16, num_workers=0, progress=False)
    assert r["top1"] == 100.0 and r["num_images"] == 16
    assert r["skipped_images"] == 1 and r["skipped_files"][0].endswith("broken.png")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"]["train"] == 1 and metrics["skipped_images"]["val"] == 1
    assert metrics["skipped_images"]["val_files"][0].endswith("broken.jpg")
    assert final["top1"] == metrics["top1"] and {"top1", "top5", "loss", "images_per_second"} <= set(metrics)
    assert all({"top1", "top5", "loss", "images_per_second"} <= set(h) for h in metrics["history"] if "top1" in h)
    assert "broken.png" in (tmp_path / "run" / "train.log").read_text()


def test_resume_after_interrupt_continues_the_same_run(tmp_path):
    """Full augmentation (RandAugment, mixup/cutmix, erasing, drop-path): an interrupted and resumed run
    ends with exactly the weights and learning-rate schedule of an uninterrupted one."""
    data = make_data(tmp_path / "data", corrupt=False)
    extra = ["train.epochs=3", "train.base_lr=0.05", "train.warmup_epochs=1", "model.drop_path_rate=0.1"]
    ref = TrainingRun(tiny_cfg(data, tmp_path / "ref", *extra, aug=True))
    ref.fit()
    run = TrainingRun(tiny_cfg(data, tmp_path / "run", *extra, aug=True))
    step_fn = run.trainer.step_fn

    def interrupting(model, batch, device):
        if run.trainer.step == 2:
            run.trainer._stop = True  # what SIGTERM/SIGINT do
        return step_fn(model, batch, device)

    run.trainer.step_fn = interrupting
    out = run.fit()
    assert out["interrupted"] and out["step"] == 3  # mid-epoch
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*.pt"))
    assert ckpts[-1].name == "checkpoint-000000003.pt"
    # a truncated newer checkpoint is skipped
    (tmp_path / "run" / "checkpoints" / "checkpoint-000000004.pt").write_bytes(ckpts[-1].read_bytes()[:1000])
    torch.manual_seed(123)
    resumed = TrainingRun(tiny_cfg(data, tmp_path / "run", *extra, aug=True))
    resumed.fit("auto")
    assert resumed.trainer.step == ref.trainer.step == 6
    assert [h["lr"] for h in resumed.trainer.history] == [h["lr"] for h in ref.trainer.history]
    for a, b in zip(ref.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from focalnet.classification import train
    from focalnet.engine import cleanup_distributed

    try:
        train(
            tiny_cfg(
                Path(data),
                Path(out),
                "train.epochs=2",
                "train.batch_size=4",
                "train.base_lr=0.2",
                "train.eval_every_epochs=2",
            )
        )
    finally:
        cleanup_distributed()


def test_two_process_ddp_matches_one_process(tmp_path):
    """2 gloo processes x batch 4 = 1 process x batch 8: same data order, lr, gradients, metrics."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    data = make_data(tmp_path / "data", corrupt=False)
    single = TrainingRun(
        tiny_cfg(
            data,
            tmp_path / "one",
            "train.epochs=2",
            "train.batch_size=8",
            "train.base_lr=0.2",
            "train.eval_every_epochs=2",
        )
    )
    m1 = single.fit()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(data), str(tmp_path / "two")), nprocs=2, join=True)
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["total_batch_size"] == m1["total_batch_size"] == 8 and m2["steps"] == m1["steps"] == 4
    assert m2["top1"] == pytest.approx(m1["top1"]) and m2["loss"] == pytest.approx(m1["loss"], rel=1e-4)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)
    assert (w1["head.weight"] - single.model.state_dict()["head.weight"]).abs().max() == 0


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_train_evaluate_predict_finetune(tmp_path, capsys):
    from focalnet.cli import main

    data = make_data(tmp_path / "data")
    out = tmp_path / "run"
    base = [
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
        "--lr",
        "0.1",
        "--workers",
        "0",
        "--no-progress",
        "--set",
        *TINY,
        "aug.mixup=0",
        "aug.cutmix=0",
        "train.warmup_epochs=0",
        "train.ema_decay=0.5",
    ]
    assert main(base) == 0
    for f in (
        "metrics.json",
        "config.yaml",
        "model.safetensors",
        "model_ema.safetensors",
        "curves.png",
        "confusion_matrix.json",
        "train.log",
    ):
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == [f"class_{i}" for i in range(4)] and "ema_top1" in metrics
    saved = load_classification_config(out / "config.yaml")
    assert saved.train.epochs == 2 and saved.model.overrides["embed_dim"] == 16 and saved.data.img_size == 32

    # evaluate the saved model and a training checkpoint: same numbers as at the end of training
    assert (
        main(
            [
                "classification",
                "evaluate",
                "--checkpoint",
                str(out / "model.safetensors"),
                "--data",
                str(data),
                "--output",
                str(tmp_path / "ev"),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["top1"] == pytest.approx(metrics["top1"]) and ev["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert (
        ev["skipped_images"] == 1
        and ev["img_size"] == 32
        and set(ev["per_class_accuracy"]) == set(metrics["class_names"])
    )
    ckpt = sorted((out / "checkpoints").glob("checkpoint-*.pt"))[-1]
    capsys.readouterr()
    assert (
        main(
            [
                "classification",
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(data),
                "--ema",
                "--json",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    ema = json.loads(capsys.readouterr().out)
    assert ema["top1"] == pytest.approx(metrics["ema_top1"])

    # resuming a finished run does nothing more (same step)
    assert main(["classification", "train", "--output", str(out), "--resume", "auto", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == metrics["steps"]

    # predict: names and probabilities, table and JSON; an unreadable file is reported, not fatal
    capsys.readouterr()
    assert (
        main(
            [
                "classification",
                "predict",
                "--checkpoint",
                str(out / "model.safetensors"),
                str(data / "val" / "class_1"),
                "--topk",
                "2",
                "--json",
                str(tmp_path / "pred.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    pred = json.loads((tmp_path / "pred.json").read_text())["results"]
    assert len(pred) == 5 and sum("error" in p for p in pred) == 1
    good = [p for p in pred if "top" in p]
    assert all(len(p["top"]) == 2 and p["top"][0]["class"].startswith("class_") for p in good)
    assert all(0 < p["top"][1]["prob"] <= p["top"][0]["prob"] <= 1 for p in good) and "class_" in printed

    # fine-tune the trained model on a 2-class dataset: new head, layer-wise lr decay
    data2 = make_data(tmp_path / "data2", classes=2, corrupt=False)
    cfg = tiny_cfg(
        data2,
        tmp_path / "ft",
        f"model.checkpoint={out / 'model.safetensors'}",
        "train.layer_decay=0.8",
        "train.epochs=1",
    )
    ft = TrainingRun(cfg)
    assert ft.model.num_classes == 2
    trained = load_classifier(out / "model.safetensors").model.state_dict()
    key = "layers.0.blocks.0.modulation.f.weight"
    torch.testing.assert_close(ft.model.state_dict()[key], trained[key])
    scales = sorted({g["lr_scale"] for g in ft.trainer.optimizer.param_groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.8**5)


# ---------------------------------------------------------------------------------------------- ImageNet mapping


def test_head_subset_and_imagenet_label_maps():
    logits = torch.randn(2, 21842)
    sub = head_logits(logits, "in1k")
    assert sub.shape == (2, 1000) and torch.isneginf(sub[:, IN22K_UNUSED_INDEX]).all()
    torch.testing.assert_close(sub[:, :IN22K_UNUSED_INDEX], logits[:, :IN22K_UNUSED_INDEX])
    with pytest.raises(ValueError, match="21,842"):
        head_logits(torch.randn(1, 1000), "in1k")
    wnids = ["n01440764", "n02102040", "n02979186"]
    assert target_indices(wnids, None, 1000) == [0, 217, 482]
    assert target_indices(wnids, None, 21842) == [0, 217, 482]  # 22K order starts with the 1K classes
    assert target_indices(["b", "a"], ["a", "b", "c"], 3) == [1, 0]
    with pytest.raises(ValueError, match="not among"):
        target_indices(["zebra"], ["a", "b"], 2)
    with pytest.raises(ValueError, match="cannot match"):
        target_indices(["x", "y"], None, 1000)


def test_imagenette_train_and_1k_evaluation(tmp_path):
    root = need(DATA / "imagenette")
    run = TrainingRun(
        tiny_cfg(
            root,
            tmp_path / "run",
            "data.max_per_class=2",
            "train.epochs=1",
            "train.batch_size=10",
            "train.base_lr=0.05",
        )
    )
    final = run.fit()
    assert final["skipped_images"] == {"train": 0, "train_files": [], "val": 0, "val_files": []}
    assert final["class_names"][0] == "n01440764" and len(final["class_names"]) == 10 and "top1" in final
    # a 1,000-class model on imagenette: the folders are scored through their ImageNet-1K outputs
    from focalnet import create_model, save_model

    model = create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1))
    save_model(model, tmp_path / "in1k.safetensors")
    m = evaluate(
        tmp_path / "in1k.safetensors",
        data=root,
        img_size=32,
        max_per_class=1,
        num_workers=0,
        progress=False,
        output_dir=tmp_path / "ev",
    )
    assert list(m["output_indices"].values()) == IMAGENETTE_IDX and m["num_images"] == 10
    assert (tmp_path / "ev" / "metrics.json").exists() and len(m["confusion_matrix"]["matrix"]) == 10


def test_throughput(tmp_path, capsys):
    from focalnet import create_model
    from focalnet.cli import main

    r = measure_throughput(
        create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1)),
        batch_size=2,
        img_size=32,
        warmup=1,
        runs=3,
    )
    assert (
        r["images_per_second"] > 0
        and r["images_per_second_min"] <= r["images_per_second"] <= r["images_per_second_max"]
    )
    assert (
        main(
            [
                "classification",
                "throughput",
                "--model",
                "focalnet_tiny_iso",
                "--batch-size",
                "2",
                "--img-size",
                "32",
                "--warmup",
                "1",
                "--runs",
                "2",
                "--json",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["model"] == "focalnet_tiny_iso" and saved["batch_size"] == 2 and saved["images_per_second"] > 0
    assert "images/s" in capsys.readouterr().out
