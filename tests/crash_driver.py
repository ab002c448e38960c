"""Runs ``focalnet`` with a fault injected: SIGKILL of this process during the N-th checkpoint write
(``CRASH_AT=save:N``: the temporary file is left half written) or just before the N-th atomic rename
(``CRASH_AT=replace:N``). Used by test_crash_resume.py; ``python crash_driver.py <focalnet args>``."""

from __future__ import annotations

import os
import signal
import sys

import torch


def _arm(kind: str, n: int) -> None:
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == n

    if kind == "save":
        real_save = torch.save

        def save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            if hit() and hasattr(f, "truncate"):
                f.flush()
                f.truncate(max(f.tell() // 2, 1))  # a half-written checkpoint, then the process dies
                os.kill(os.getpid(), signal.SIGKILL)

        torch.save = save
    elif kind == "replace":
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    else:
        raise SystemExit(f"unknown fault {kind}")


def toy(out: str) -> int:
    """A small regression trained by the engine (with random augmentation), resumed from ``out``."""
    import random

    import numpy as np
    from torch import nn
    from torch.utils.data import Dataset

    from focalnet.engine import Trainer, TrainerConfig
    from focalnet.weights.io import atomic_save

    class Noisy(Dataset):
        def __len__(self) -> int:
            return 24

        def __getitem__(self, i: int):
            x = torch.linspace(-1, 1, 4) * (i + 1) / 24 + random.gauss(0, 0.1) + float(np.random.rand()) * 0.1
            return x, x.sum() + torch.randn(()) * 0.01

    def step(model, batch, device):
        x, y = batch
        return nn.functional.mse_loss(model(x).squeeze(-1), y), {}, len(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.GELU(), nn.Linear(16, 1))
    cfg = TrainerConfig(
        output_dir=out, epochs=3, batch_size=4, num_workers=0, progress=False, ckpt_every_steps=1, resume="auto"
    )
    trainer = Trainer(cfg, model, torch.optim.AdamW(model.parameters(), lr=1e-2), Noisy(), step)
    trainer.fit()
    atomic_save(model.state_dict(), f"{out}/final.pt")
    return 0


if __name__ == "__main__":
    fault = os.environ.get("CRASH_AT")
    if fault:
        kind, n = fault.split(":")
        _arm(kind, int(n))
    torch.set_num_threads(1)
    if sys.argv[1] == "--toy":
        sys.exit(toy(sys.argv[2]))
    from focalnet.cli import main

    sys.exit(main(sys.argv[1:]))
