import contextlib
import io
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FOCALNET_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
DATA = Path(os.environ.get("FOCALNET_DATA", SHARED / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def need(path: Path) -> Path:
    """Skip the test (with the reason) where ../shared is absent, e.g. in a user's clone."""
    if not path.exists():
        pytest.skip(f"{path} not found (set FOCALNET_SHARED / FOCALNET_DATA to the shared folder)")
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # nothing in the tests touches the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FOCALNET_OFFLINE", "1")


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Fill every tensor with random values (norm weights around 1) so that layouts cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if p.is_floating_point():
                base = 1.0 if ("norm" in k or ".ln." in k or "layernorm" in k) and k.endswith("weight") else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * scale + base)
    return model


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``focalnet`` in-process: (exit code, stdout, stderr)."""
    from focalnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def seeded_state_dict(
    keys: list[tuple[str, list[int]]], *, seed: int = 0, gamma: bool = False, one_d_fan_in: str = "length"
) -> dict[str, torch.Tensor]:
    """Tensors for ``keys`` (``(name, shape)`` pairs) by the recipe of ``../shared/reference``: one
    ``numpy.random.RandomState(seed)``, keys in sorted order, ``z = standard_normal(shape)`` as float32;
    1-D ``*weight`` -> ``1 + 0.1 z``, ``*bias`` -> ``0.02 z``, (``gamma=True``, DINO's recipe) keys containing
    ``gamma`` -> ``0.3 + 0.1 z``, otherwise ``z / sqrt(fan_in)`` with ``fan_in = prod(shape[1:])`` (for other
    1-D tensors, e.g. ``running_mean``, the length, or 1 with ``one_d_fan_in="one"``). BatchNorm statistics
    as the segmentation reference: ``running_var`` -> ``|v| + 0.5``; 0-d keys (``num_batches_tracked``)
    -> ``tensor(0)`` without drawing. Returned in the order of ``keys``."""
    import math

    import numpy as np

    rs = np.random.RandomState(seed)
    out: dict[str, torch.Tensor] = {}
    for k, shape in sorted(keys):
        if not shape:
            out[k] = torch.tensor(0)
            continue
        z = rs.standard_normal(shape).astype(np.float32)
        if len(shape) == 1 and k.endswith("weight"):
            v = 1 + 0.1 * z
        elif k.endswith("bias"):
            v = 0.02 * z
        elif gamma and "gamma" in k:
            v = 0.3 + 0.1 * z
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else (shape[0] if one_d_fan_in == "length" else 1)
            v = z / np.float32(math.sqrt(fan_in))
        if k.endswith("running_var"):
            v = np.abs(v) + 0.5
        out[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    return {k: out[k] for k, _ in keys}
