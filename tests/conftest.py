import contextlib
import io
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

# The fuzz tests draw the same examples on every run, so that a landing gate is never flaky; set
# FOCALNET_FUZZ_RANDOM=1 to draw new ones (how the slow runs look for new failures).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("random", derandomize=False)
settings.load_profile("random" if os.environ.get("FOCALNET_FUZZ_RANDOM") else "repeatable")

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


@pytest.fixture
def one_thread():
    """One torch compute thread for the test (tiny models run faster single-threaded on a shared 2-core
    machine, and the app and command comparisons are exact with the commands' ``--threads 1``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Fill every tensor with random values (norm weights around 1) so that layouts cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if p.is_floating_point():
                base = 1.0 if ("norm" in k or ".ln." in k or "layernorm" in k) and k.endswith("weight") else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * scale + base)
    return model


def seeded_state_dict(
    keys: Sequence[tuple[str, Sequence[int]]], aliases: Sequence[Sequence[str]] = ()
) -> dict[str, torch.Tensor]:
    """Known values for a ``[key, shape]`` list (the reference READMEs' recipe, which the original outputs
    were computed with): keys sorted, one ``RandomState(0)``, ``z = standard_normal(shape)`` (float32) per
    key, then 1-D or scalar ``*weight`` / ``*scale`` -> ``1 + 0.1 z``; ``*bias`` -> ``0.02 z``; keys with
    ``gamma`` -> ``0.3 + 0.1 z``; else ``z / sqrt(fan_in)`` (``prod(shape[1:])``, the length for 1-D).
    ``running_var`` -> ``|v| + 0.5``; ``num_batches_tracked`` -> 0 (no draw). Each ``aliases`` group takes
    its first key's value. Returned in the order of ``keys``."""
    rs = np.random.RandomState(0)
    out: dict[str, torch.Tensor] = {}
    for k, shape in sorted(keys, key=lambda kv: kv[0]):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0)
            continue
        z = np.asarray(rs.standard_normal(shape), dtype=np.float32)
        if len(shape) <= 1 and k.endswith(("weight", "scale")):
            v = 1 + 0.1 * z
        elif k.endswith("bias"):
            v = 0.02 * z
        elif "gamma" in k:
            v = 0.3 + 0.1 * z
        else:
            v = z / np.float32(math.sqrt(math.prod(shape[1:]) if len(shape) > 1 else max(math.prod(shape), 1)))
        if k.endswith("running_var"):
            v = np.abs(v) + 0.5
        out[k] = torch.from_numpy(np.array(v, dtype=np.float32))  # 0-d stays 0-d
    for group in aliases:
        for k in group[1:]:
            out[k] = out[group[0]]
    return {k: out[k] for k, _ in keys}


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``focalnet`` in-process: (exit code, stdout, stderr)."""
    from focalnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()
