"""Fast execution paths compute the reference function: ``fuse()``, its reversal, hooks, ``torch.compile``."""

import copy
import os

import pytest
import torch

from focalnet.models import VARIANTS, FocalNet, FocalNetBackbone

from conftest import randomize_
from original_focalnet import original_like

SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1))
CASES = [
    ("focalnet_tiny_srf", SMALL),
    ("focalnet_tiny_lrf", SMALL),
    ("focalnet_base_iso", dict(embed_dim=32, depths=(2,))),  # post-norm + layer scale + modulation LN
    ("focalnet_large_fl4", SMALL),  # conv stem, post-norm, layer scale, normalize_modulator
    ("focalnet_huge_fl4", SMALL),  # + modulation LN, 4 levels
]


def _pair(name, overrides):
    cfg = VARIANTS[name].cfg.replace(num_classes=11, **overrides)
    ours = randomize_(FocalNet(cfg).eval())
    return ours, original_like(ours)


@pytest.mark.parametrize("name,overrides", CASES)
def test_fused_equals_original_and_reload_undoes_it(name, overrides):
    ours, orig = _pair(name, overrides)
    sd = copy.deepcopy(ours.state_dict())
    x = torch.randn(2, 3, 97, 75)
    with torch.no_grad():
        ref, plain = orig(x), ours(x)
        ours.fuse()
        assert all(b.fused for s in ours.layers for b in s.blocks)
        assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in sd.items()]
        fused = ours(x)
        with torch.enable_grad():  # autograd: regular path on the folded weights
            folded = ours(x)
    torch.testing.assert_close(fused, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(folded, ref, atol=1e-4, rtol=0)
    ours.load_state_dict(sd)
    assert not any(b.fused for s in ours.layers for b in s.blocks)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, sd[k]), k
    with torch.no_grad():
        assert torch.equal(ours(x), plain)


def test_fused_backbone_equals_plain():
    cfg = VARIANTS["focalnet_tiny_lrf"].cfg.replace(embed_dim=16, focal_windows=(9, 9, 9, 9))
    bb = randomize_(FocalNetBackbone(cfg).eval())
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        ref = bb(x)
        out = bb.fuse()(x)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_hooks_see_gates_contexts_and_modulator_also_after_fuse():
    ours, _ = _pair("focalnet_tiny_srf", SMALL)
    mod = ours.layers[0].blocks[0].modulation
    seen = {}
    handles = [
        mod.f.register_forward_hook(lambda m, i, o: seen.__setitem__("f", o)),
        mod.h.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o)),
        mod.proj.register_forward_hook(lambda m, i, o: seen.__setitem__("proj", o)),
    ]
    handles += [
        layer.register_forward_hook(lambda m, i, o, lv=lv: seen.__setitem__(lv, o))
        for lv, layer in enumerate(mod.focal_layers)
    ]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = ours(x)
        assert set(seen) == {"f", "h", "proj", 0, 1}
        assert seen["f"].shape == (1, 16, 16, 2 * 16 + 3) and seen["h"].shape == (1, 16, 16, 16)
        seen.clear()
        out = ours.fuse()(x)  # hooks registered: the hooked block keeps calling its modules
        assert set(seen) == {"f", "h", "proj", 0, 1}
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    for h in handles:
        h.remove()


def test_training_after_fuse_uses_autograd_path():
    ours, _ = _pair("focalnet_tiny_srf", SMALL)
    ours.fuse().train()
    loss = ours(torch.randn(2, 3, 64, 64)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in ours.parameters() if p.requires_grad)


def test_compile_has_no_graph_breaks_and_dynamic_shapes():
    """Dynamo traces the whole model in one graph reused across batch and image sizes (backend ``eager``: no
    codegen). Dynamo itself specialises batch 1 and equal height/width (duck sizing) of the first call."""
    torch._dynamo.reset()
    ours, orig = _pair("focalnet_tiny_srf", SMALL)
    frames = []

    def backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    comp = torch.compile(ours, backend=backend, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for shape in [(2, 3, 96, 64), (3, 3, 97, 75), (4, 3, 128, 96)]:
            x = torch.randn(shape)
            torch.testing.assert_close(comp(x), orig(x), atol=1e-4, rtol=0)
    assert len(frames) == 1


@pytest.mark.skipif(not os.environ.get("FOCALNET_TEST_INDUCTOR"), reason="set FOCALNET_TEST_INDUCTOR=1 (slow: codegen)")
def test_inductor_compiled_equals_original():
    torch._dynamo.reset()
    ours, orig = _pair("focalnet_tiny_srf", SMALL)
    comp = torch.compile(ours, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for shape in [(2, 3, 64, 64), (3, 3, 97, 75)]:
            x = torch.randn(shape)
            torch.testing.assert_close(comp(x), orig(x), atol=1e-4, rtol=0)
