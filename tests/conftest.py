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
