"""The shared training engine: configs, checkpoints, resume, sampler."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from focalnet.engine import (
    CheckpointManager,
    ConfigError,
    ResumableSampler,
    Trainer,
    TrainerConfig,
    load_config,
    param_groups,
)


@dataclasses.dataclass
class _Opt:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)

    def validate(self):
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


@dataclasses.dataclass
class _Cfg:
    name: str = "x"
    epochs: int = 3
    amp: bool = False
    opt: _Opt = dataclasses.field(default_factory=_Opt)


def test_config_overrides_and_errors_name_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 5\nopt:\n  lr: 1e-4\n")
    cfg = load_config(_Cfg, f, ["opt.betas=[0.8, 0.9]", "amp=true"])
    assert cfg.epochs == 5 and cfg.opt.lr == 1e-4 and cfg.opt.betas == (0.8, 0.9) and cfg.amp is True
    with pytest.raises(ConfigError, match="opt.lrr"):
        load_config(_Cfg, overrides=["opt.lrr=1"])
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_config(_Cfg, overrides=["epochs=abc"])
    with pytest.raises(ConfigError, match="opt.lr must be > 0"):
        load_config(_Cfg, overrides=["opt.lr=-1"])


def test_sampler_resume_and_ranks_partition():
    s = ResumableSampler(10, shuffle=True, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    parts = []
    for r in range(2):
        sr = ResumableSampler(10, rank=r, world_size=2, seed=3)
        sr.set_epoch(2)
        parts += list(sr)
    assert sorted(parts) == list(range(10))


def test_checkpoint_manager_skips_corrupt(tmp_path):
    m = CheckpointManager(tmp_path, keep=3)
    m.save({"step": 1, "w": torch.ones(2)}, 1)
    m.save({"step": 2, "w": torch.ones(2)}, 2)
    (tmp_path / "checkpoint-000000003.pt").write_bytes(b"truncated")
    path, state = m.latest()
    assert state["step"] == 2 and path.name == "checkpoint-000000002.pt"
    m.save({"step": 4}, 4)
    m.save({"step": 5}, 5)
    assert len(m.paths()) == 3


def _toy(seed=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 1))
    return TensorDataset(x, y), model


def _step(model, batch, device):
    x, y = (t.to(device) for t in batch)
    loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
    return loss, {}, len(x)


def _trainer(tmp_path, model, ds, **kw):
    cfg = TrainerConfig(output_dir=str(tmp_path), epochs=4, batch_size=8, num_workers=0, progress=False, **kw)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=3e-2)
    return Trainer(cfg, model, opt, ds, _step, eval_fn=lambda m, t: {"loss_eval": 0.0})


def test_loss_falls_and_resume_after_interrupt_is_exact(tmp_path):
    ds, model = _toy()
    ref = _trainer(tmp_path / "ref", model, ds)
    ref.fit()
    losses = [h["train_loss"] for h in ref.history if "train_loss" in h]
    assert losses[-1] < losses[0] * 0.5

    ds, model = _toy()
    t = _trainer(tmp_path / "run", model, ds)
    orig = t.step_fn

    def interrupting(m, b, d):
        if t.step == 13:
            t._stop = True  # what SIGTERM does
        return orig(m, b, d)

    t.step_fn = interrupting
    out = t.fit()
    assert out["interrupted"] and t.step == 14
    ds, model = _toy(seed=123)  # different init: must be overwritten by the checkpoint
    t2 = _trainer(tmp_path / "run", model, ds, resume="auto")
    t2.fit()
    assert t2.step == ref.step == 32
    for a, b in zip(ref.model.parameters(), t2.model.parameters()):
        torch.testing.assert_close(a, b)
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "curves.png").exists()
