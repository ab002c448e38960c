"""Reliability (issue 13): run folders, checkpoints, strict outputs, clear errors for bad input."""

import json
import os
import stat

import pytest
import torch
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
    from focalnet.segmentation.model import save_segmentor, upernet

    save_segmentor(upernet("focalnet_tiny_srf", 3, embed_dim=8, depths=(1, 1, 1, 1)), path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o["meta"]["backbone_config"].update(embed_dim=100000), "do not match the tensors"),
        (lambda o: o["meta"]["head"].update(bogus=1), "settings stored with the weights are invalid"),
        (lambda o: o["meta"].update(num_classes=10**9), "do not match the tensors"),
        (lambda o: o["state_dict"]["decode_head.conv_seg.weight"].fill_(float("nan")), "decode_head.conv_seg.weight"),
    ],
)
def test_segmentation_file_settings_checked_before_building(tmp_path, change, message):
    from focalnet.segmentation.model import load_segmentor

    obj = _tiny_segmentor_file(tmp_path / "m.pt")
    change(obj)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        load_segmentor(tmp_path / "bad.pt")


def test_detection_file_settings_checked_before_building(tmp_path):
    from focalnet.detection import build_detector, load_detector
    from focalnet.detection.config import DetectionConfig, ModelConfig
    from focalnet.detection.model import detector_kwargs_from_config
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
    model = build_detector(**detector_kwargs_from_config(mc, 3))
    obj = {
        "model": model.state_dict(),
        "detection_config": config_to_dict(DetectionConfig(model=mc)),
        "class_names": ["a", "b"],
        "category_ids": [1, 2],
        "num_classes": 3,
    }
    obj["detection_config"]["model"]["fpn_channels"] = 10**6
    torch.save(obj, tmp_path / "big.pt")
    with pytest.raises(ValueError, match="do not match the tensors"):
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
