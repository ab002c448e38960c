"""Reliability (issue 13): run folders, checkpoints, strict outputs, clear errors for bad input."""

import json
import os
import stat

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from focalnet.engine import CheckpointManager, RunFolderError, Trainer, TrainerConfig, param_groups, write_json
from focalnet.engine.runs import avoid_inputs, read_run_file


def _toy(seed=0, n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    torch.manual_seed(seed)
    return TensorDataset(x, y), nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))


def _step(model, batch, device):
    x, y = (t.to(device) for t in batch)
    return nn.functional.mse_loss(model(x).squeeze(-1), y), {}, len(x)


def _trainer(out, seed=0, eval_fn=None, **kw):
    ds, model = _toy(seed)
    kw = {"epochs": 2, "batch_size": 8, "num_workers": 0, "progress": False, **kw}
    cfg = TrainerConfig(output_dir=str(out), **kw)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-2)
    return Trainer(cfg, model, opt, ds, _step, eval_fn=eval_fn)


# ------------------------------------------------------------------------------------------- run folders


def test_new_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path):
    out = tmp_path / "R"
    first = _trainer(out, epochs=3)
    first.fit()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    metrics = (out / "metrics.json").read_text()
    with pytest.raises(RunFolderError, match=r"--resume auto.*--overwrite"):
        _trainer(out, seed=1).fit()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert (out / "metrics.json").read_text() == metrics  # nothing of the first run was touched
    # --overwrite: a new run, a new id, only its own checkpoints
    second = _trainer(out, seed=1, overwrite=True)
    second.fit()
    assert second.cfg.run_id != first.cfg.run_id and read_run_file(out)["run_id"] == second.cfg.run_id
    states = [CheckpointManager.load(p) for p in CheckpointManager(out / "checkpoints").paths()]
    assert states and all(s["run_id"] == second.cfg.run_id for s in states)
    assert max(s["step"] for s in states) == second.step  # the new run's last checkpoint was kept


def test_resume_and_overwrite_together_is_an_error(tmp_path):
    with pytest.raises(RunFolderError, match="not both"):
        _trainer(tmp_path / "R", resume="auto", overwrite=True).fit()


def test_resume_auto_never_continues_another_run(tmp_path):
    out = tmp_path / "R"
    _trainer(out).fit()
    (out / "run.json").write_text(json.dumps({"run_id": "someoneelse", "task": None}))
    with pytest.raises(ValueError, match="only checkpoints of another run"):
        _trainer(out, resume="auto").fit()


def test_rotation_keeps_newest_valid_and_removes_invalid(tmp_path):
    m = CheckpointManager(tmp_path, keep=2)
    m.save({"step": 1, "run_id": "a"}, 1)
    (tmp_path / "checkpoint-000000099.pt").write_bytes(b"PK\x03\x04truncated")  # a stale, truncated file
    m.save({"step": 2, "run_id": "a"}, 2)
    m.save({"step": 3, "run_id": "a"}, 3)
    assert [p.name for p in m.paths()] == ["checkpoint-000000002.pt", "checkpoint-000000003.pt"]
    path, state = m.latest("a")
    assert state["step"] == 3


def test_resuming_a_finished_run_adds_nothing(tmp_path):
    out = tmp_path / "R"
    t = _trainer(out, eval_fn=lambda m, tr: {"score": 1.0})
    t.fit()
    history = json.loads((out / "metrics.json").read_text())["history"]
    n_ckpt = len(list((out / "checkpoints").iterdir()))
    t2 = _trainer(out, resume="auto", eval_fn=lambda m, tr: {"score": 1.0})
    t2.fit()
    assert json.loads((out / "metrics.json").read_text())["history"] == history
    assert len(list((out / "checkpoints").iterdir())) == n_ckpt


def test_ckpt_every_steps_applies_in_epoch_mode(tmp_path):
    t = _trainer(tmp_path / "R", epochs=1, ckpt_every_steps=1, keep_checkpoints=10)
    t.fit()
    assert len(CheckpointManager(tmp_path / "R" / "checkpoints", keep=10).paths()) == t.step == 4


def test_temp_files_of_a_killed_run_are_removed_and_outputs_respect_umask(tmp_path):
    out = tmp_path / "R"
    (out / "checkpoints").mkdir(parents=True)
    orphans = [out / "checkpoints" / ".checkpoint-000000004.pt.x1y2.tmp", out / ".metrics.json.tmp"]
    for p in orphans:
        p.write_bytes(b"partial")
    old = os.umask(0o022)
    try:
        _trainer(out, epochs=1).fit()
    finally:
        os.umask(old)
    assert not any(p.exists() for p in orphans)
    for p in [*(out / "checkpoints").iterdir(), out / "metrics.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_output_under_a_regular_file_is_a_one_line_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunFolderError, match="afile is a file, not a folder"):
        _trainer(tmp_path / "afile" / "sub")


def test_metrics_json_is_strict_json(tmp_path):
    write_json(
        tmp_path / "m.json", {"loss": float("nan"), "top1": [1.0, float("inf")], "t": torch.tensor(float("nan"))}
    )
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "loss": None,
        "top1": [1.0, None],
        "t": None,
    }


def test_outputs_never_replace_inputs(tmp_path):
    from PIL import Image

    from focalnet.detection.predict import predict_images

    class Empty(nn.Module):
        def forward(self, images):
            z = torch.zeros(0, 4)
            return [{"boxes": z, "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)} for _ in images]

    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(photo)
    original = photo.read_bytes()
    recs = predict_images(Empty(), [photo], class_names=["a"], out_dir=tmp_path)
    assert photo.read_bytes() == original
    assert recs[0]["drawn"] != str(photo) and os.path.exists(recs[0]["drawn"])
    assert avoid_inputs(tmp_path / "x.png", [tmp_path / "y.png"]) == tmp_path / "x.png"


def test_cli_refusal_is_exit_code_2_and_one_line(tmp_path, capsys):
    from focalnet.cli import main

    out = tmp_path / "R"
    _trainer(out).fit()
    data = tmp_path / "nodata"
    capsys.readouterr()
    rc = main(["segmentation", "train", "--data", str(data), "--output", str(out), "--iters", "1", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--overwrite" in err and "--resume auto" in err


def test_set_is_repeatable_and_applies_in_order(capsys):
    from focalnet.cli import main

    args = ["classification", "configs", "focalnet_tiny_srf", "--set", "train.epochs=7", "train.seed=3"]
    assert main([*args, "--set", "train.batch_size=6", "--set", "train.epochs=9"]) == 0
    text = capsys.readouterr().out
    assert "epochs: 9" in text and "seed: 3" in text and "batch_size: 6" in text


# ------------------------------------------------------------------ stored settings and non-finite weights


def _tiny_segmentor_file(path):
    from focalnet.segmentation import save_segmentor, upernet

    save_segmentor(upernet("focalnet_tiny_srf", 3, embed_dim=8, depths=(1, 1, 1, 1)), path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o["meta"]["backbone_config"].update(embed_dim=4096), "backbone_config disagrees"),
        (
            lambda o: o["meta"]["backbone_config"].update(embed_dim=100000),
            r"embed_dim: 100000 is outside .*\[1, 4096\]",
        ),
        (lambda o: o["meta"]["head"].update(bogus=1), r"head settings \['bogus'\] are not HeadConfig fields"),
        (lambda o: o["meta"].update(num_classes=10**9), "does not fit the model"),
        (lambda o: o["state_dict"]["decode_head.conv_seg.weight"].fill_(float("nan")), "decode_head.conv_seg.weight"),
    ],
)
def test_segmentation_file_settings_checked_before_building(tmp_path, change, message):
    from focalnet.segmentation import load_segmentor

    obj = _tiny_segmentor_file(tmp_path / "m.pt")
    change(obj)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        load_segmentor(tmp_path / "bad.pt")


def test_detection_file_settings_checked_before_building(tmp_path):
    from focalnet.detection import build_from_config, load_detector
    from focalnet.detection.config import DetectionConfig, ModelConfig
    from focalnet.engine import config_to_dict

    mc = ModelConfig(
        detector="faster_rcnn",
        backbone="focalnet_tiny_srf",
        backbone_overrides={"embed_dim": 8, "depths": [1, 1, 1, 1]},
        focal_windows=[3, 3, 3, 3],
        fpn_channels=16,
        representation_size=32,
        min_size=64,
        max_size=96,
    )
    model = build_from_config(mc, 3)
    obj = {
        "model": model.state_dict(),
        "detection_config": config_to_dict(DetectionConfig(model=mc)),
        "class_names": ["a", "b"],
        "category_ids": [1, 2],
        "num_classes": 3,
    }
    obj["detection_config"]["model"]["fpn_channels"] = 8192  # within its bound, not the tensors' width
    torch.save(obj, tmp_path / "big.pt")
    with pytest.raises(ValueError, match="does not fit the model"):
        load_detector(tmp_path / "big.pt")
    obj["detection_config"]["model"]["fpn_channels"] = 10**6  # beyond its bound: named before any build
    torch.save(obj, tmp_path / "big.pt")
    with pytest.raises(ValueError, match=r"fpn_channels: 1000000 is outside the allowed range \[1, 8192\]"):
        load_detector(tmp_path / "big.pt")
    obj["detection_config"]["model"]["fpn_channels"] = 16
    obj["model"]["roi_heads.box_predictor.cls_score.weight"][0, 0] = float("inf")
    torch.save(obj, tmp_path / "inf.pt")
    with pytest.raises(ValueError, match="cls_score.weight"):
        load_detector(tmp_path / "inf.pt")


def test_nonfinite_classifier_is_refused_with_exit_2_unless_allowed(tmp_path, capsys, monkeypatch):
    from focalnet import create_model
    from focalnet.cli import main
    from focalnet.factory import model_from_checkpoint, save_model

    m = create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1, 1), num_classes=3)
    with torch.no_grad():
        m.layers[0].blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    save_model(m, tmp_path / "nan.safetensors")
    capsys.readouterr()
    assert main(["classify", "--checkpoint", str(tmp_path / "nan.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "layers.0.blocks.0.mlp.fc1.weight" in err
    monkeypatch.setenv("FOCALNET_ALLOW_NONFINITE", "1")
    assert model_from_checkpoint(tmp_path / "nan.safetensors").num_classes == 3


def test_load_errors_never_suggest_weights_only_false(tmp_path, capsys):

    from focalnet.cli import main

    torch.save({"f": os.path.join}, tmp_path / "evil.pt")  # a global that weights_only refuses
    for cmd in (
        ["info"],
        ["segmentation", "predict", "x.png", "--checkpoint"],
        ["detection", "evaluate", "--data", "d", "--checkpoint"],
    ):
        capsys.readouterr()
        assert main([*cmd, str(tmp_path / "evil.pt")]) == 2
        err = capsys.readouterr().err
        assert "weights_only=False" not in err.replace(" ", "") and "set to `False`" not in err, err


# ------------------------------------------------------------------------------------------------ images


def test_16bit_and_float_images_are_rescaled_not_saturated(tmp_path):
    import numpy as np
    from PIL import Image

    from focalnet.engine.images import open_image

    ramp16 = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 31).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "a16.png")
    got = np.asarray(open_image(tmp_path / "a16.png"))
    assert got.shape == (32, 64, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got[..., 0].astype(float), ramp16 / 257.0, atol=1)
    ramp = np.linspace(0, 1, 32 * 64, dtype=np.float32).reshape(32, 64)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f.tif")
    got = np.asarray(open_image(tmp_path / "f.tif"))
    np.testing.assert_allclose(got[..., 1].astype(float), ramp * 255, atol=1)
    assert got.min() == 0 and got.max() == 255


def test_decompression_bombs_are_a_clear_error_everywhere(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from focalnet.cli import main
    from focalnet.engine.images import ImageDecodeError, open_image

    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        open_image(tmp_path / "bomb.png")
    viz = ["visualize", "--model", "focalnet_tiny_srf", "--out", str(tmp_path / "viz")]
    for cmd in (["classify", "--model", "focalnet_tiny_srf"], viz):
        capsys.readouterr()
        assert main([*cmd, str(tmp_path / "bomb.png")]) == 2
        err = [e for e in capsys.readouterr().err.strip().splitlines() if e.startswith("error")]
        assert len(err) == 1 and "decompression bomb" in err[0], err


def test_posterize_is_safe_at_every_level_and_augmentation_errors_are_not_bad_files(tmp_path):
    import numpy as np
    from PIL import Image
    from timm.data import create_transform

    from focalnet.classification.data import ImageFolder
    from focalnet.engine.images import patch_posterize, safe_posterize

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8))
    assert np.asarray(safe_posterize(img, 0)).max() == 0
    assert np.array_equal(np.asarray(safe_posterize(img, 8)), np.asarray(img))
    # magnitude 10 with the 'increasing' ops: PosterizeIncreasing asks for 0 bits, which Pillow 13 refuses
    tf = create_transform(24, is_training=True, auto_augment="rand-m10-n4-inc1", re_prob=0.0)
    assert patch_posterize(tf) == 1
    for _ in range(60):
        tf(img)
    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    img.save(d / "ok.png")

    def broken(_):
        raise RuntimeError("a bug in an augmentation")

    with pytest.raises(RuntimeError, match="a bug in an augmentation"):  # never "skipping unreadable image"
        ImageFolder(tmp_path / "train", broken)[0]


def test_empty_class_folder_is_an_error(tmp_path):
    from PIL import Image

    from focalnet.classification.data import ImageFolder

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(ValueError, match=r"\['b'\] hold no images"):
        ImageFolder(tmp_path)


def test_coco_entries_missing_fields_are_skipped_not_fatal(tmp_path):
    from PIL import Image

    from focalnet.detection.data import CocoInstances

    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}, {"id": 2, "width": 32, "height": 32}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = CocoInstances(tmp_path / "ann.json", tmp_path / "img", train=False, with_masks=False)
    assert ds.ids == [1] and len(ds.load_target(1, 32, 32)["boxes"]) == 1
    reasons = [p.reason for p in ds.problems]
    assert any("file_name" in r for r in reasons) and any("category_id" in r for r in reasons)


# ------------------------------------------------------------------------------------- clear errors


def test_class_names_not_matching_the_head_is_a_clear_error(tmp_path, capsys):
    from focalnet import create_model
    from focalnet.cli import main
    from focalnet.factory import save_model

    m = create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1, 1), num_classes=3)
    save_model(m, tmp_path / "m.safetensors", class_names=["a", "b"])
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    for cmd in (["classify", "--checkpoint"], ["classification", "predict", str(tmp_path / "x.png"), "--checkpoint"]):
        capsys.readouterr()
        assert main([*cmd, str(tmp_path / "m.safetensors")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "class_names must be a list of 3 names, got 2 entries" in err[0], err


def test_non_finite_config_values_are_refused(capsys):
    from focalnet.cli import main

    assert main(["classification", "configs", "focalnet_tiny_srf", "--set", "train.base_lr=inf"]) == 2
    assert "train.base_lr: expected a finite number" in capsys.readouterr().err


def test_predict_exits_non_zero_when_every_input_failed(tmp_path, capsys):
    from focalnet import create_model
    from focalnet.cli import main
    from focalnet.factory import save_model

    save_model(
        create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1, 1), num_classes=2), tmp_path / "m.safetensors"
    )
    (tmp_path / "bad.png").write_bytes(b"not an image")
    args = ["classification", "predict", str(tmp_path / "bad.png"), "--checkpoint"]
    assert main([*args, str(tmp_path / "m.safetensors")]) == 1
    assert "none of the 1 input image(s)" in capsys.readouterr().err


def test_segmentation_batch_of_one_is_a_clear_error(tmp_path):
    from focalnet.engine import ConfigError
    from focalnet.segmentation import load_segmentation_config
    from focalnet.segmentation.train import train

    cfg = load_segmentation_config(overrides=["train.batch_size=1", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="at least 2"):
        train(cfg, tmp_path / "out")


def test_ddp_collective_timeout_is_configurable(monkeypatch):
    from focalnet.engine.distributed import collective_timeout

    assert collective_timeout() == 1800
    monkeypatch.setenv("FOCALNET_DDP_TIMEOUT", "42")
    assert collective_timeout() == 42 and collective_timeout(7) == 7
    monkeypatch.setenv("FOCALNET_DDP_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="FOCALNET_DDP_TIMEOUT"):
        collective_timeout()


def test_samples_are_seeded_per_sample_not_per_process():
    import random

    import numpy as np

    from focalnet.engine.distributed import SeededSamples

    class Draw:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return (random.random(), float(np.random.rand()), float(torch.rand(())))

    a, b = SeededSamples(Draw(), 3), SeededSamples(Draw(), 3)
    forward = [a[i] for i in range(5)]
    random.seed(99)  # whatever the process state and order, a sample draws the same numbers
    assert [b[i] for i in reversed(range(5))] == forward[::-1]
    state = random.getstate()
    a[0]
    assert random.getstate() == state  # the caller's generators are untouched
    a.epoch = 1
    assert a[0] != forward[0]
