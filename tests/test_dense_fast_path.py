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


def test_inference_path_compiles_the_trunks_only_and_new_sizes_reuse_the_graph():
    import torch._dynamo.utils as dynamo_utils

    from focalnet.models.inference import compiled_modules, inference_path

    _, model = tiny_model("mask_rcnn")
    model.eval()
    fast = inference_path(copy.deepcopy(model), compile=True, backend="eager")  # tracing, no code generation
    assert compiled_modules(fast) == _bodies(fast), "exactly the FocalNet trunks are compiled"
    (body,), (fbody,) = _bodies(model), _bodies(fast)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    with torch.no_grad():
        for hw in [(96, 128), (70, 90), (100, 124)]:  # 70x90 and 100x124 need padding to a multiple of 4/32
            x = torch.randn(1, 3, *hw)
            for a, b in zip(body(x), fbody(x), strict=True):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1, "a new image size recompiled"
