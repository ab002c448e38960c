"""The fused inference path that detection and segmentation evaluate/predict take (``fuse_blocks``)
computes what the regular path computes, within 1e-5, for every detector's backbone and for UPerNet."""

from __future__ import annotations

import copy

import pytest
import torch

from focalnet.detection import DETECTORS
from focalnet.models import FocalNetBackbone, fuse_blocks
from focalnet.segmentation import upernet
from test_detectors import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _bodies(model: torch.nn.Module) -> list[FocalNetBackbone]:
    return [m for m in model.modules() if isinstance(m, FocalNetBackbone)]


@pytest.mark.parametrize("name", list(DETECTORS))
def test_fused_detector_backbone_equals_the_regular_path(name):
    _, model = tiny_model(name)
    fused = fuse_blocks(copy.deepcopy(model))
    (body,), (fbody,) = _bodies(model), _bodies(fused)
    assert any(b.fused for b in fused.modules() if hasattr(b, "fused")), "nothing was fused"
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        for a, b in zip(body(x), fbody(x)):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_fused_upernet_logits_equal_the_regular_path():
    torch.manual_seed(0)
    overrides = dict(embed_dim=16, depths=(1, 1, 2, 1))
    model = upernet("focalnet_tiny_srf", num_classes=5, head={"channels": 32, "aux": False}, **overrides).eval()
    fused = fuse_blocks(copy.deepcopy(model))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(fused.encode_decode(x), model.encode_decode(x), atol=1e-5, rtol=0)
