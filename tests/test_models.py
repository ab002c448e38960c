"""The model library: keys, shapes, params, FLOPs and outputs against the original implementation."""

import json
import math

import pytest
import torch

import focalnet
from focalnet.models import VARIANTS, FocalNet, FocalNetBackbone, count_flops, num_params

from conftest import REFERENCE, need, randomize_
from original_focalnet import original_like


def _ref(name):
    return json.loads((need(REFERENCE / "official-state-dicts") / f"{name}.json").read_text())


def _meta_model(cfg, cls=FocalNet, **kw):
    with torch.device("meta"):
        return cls(cfg, **kw)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_keys_shapes_params_flops_match_reference(name):
    ref = _ref(name)
    model = _meta_model(VARIANTS[name].cfg)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [tuple(x) for x in ref["keys"]]
    for k, v in ref["hyperparameters"].items():
        assert getattr(model.cfg, k) == (tuple(v) if isinstance(v, list) else v), k
    assert num_params(model) == ref["num_params"]
    assert count_flops(model, 224) == ref["flops_official_224"]


def test_params_and_flops_match_model_zoo_table():
    zoo = json.loads((need(REFERENCE) / "model-zoo.json").read_text())
    for row in zoo["imagenet_1k"]:
        cfg = VARIANTS[row["name"]].cfg
        model = _meta_model(cfg)
        # the table truncates or rounds to 0.1; the exact counts are checked against the JSON files
        assert num_params(model) / 1e6 == pytest.approx(row["params_m"], abs=0.1), row["name"]
        assert count_flops(cfg) / 1e9 == pytest.approx(row["flops_g"], abs=0.1), row["name"]
    for row in zoo["imagenet_22k"]:
        model = _meta_model(VARIANTS[row["name"]].cfg.replace(num_classes=1000))
        assert round(num_params(model) / 1e6) == pytest.approx(row["params_m_with_1k_head"], abs=1), row["name"]


def test_backbone_keys_match_reference():
    ref = _ref("backbone_maskrcnn_focalnet_tiny_lrf")
    hp = ref["hyperparameters"]
    bb = _meta_model(
        VARIANTS["focalnet_tiny_lrf"].cfg.replace(focal_windows=tuple(hp["focal_windows"])),
        FocalNetBackbone,
        out_indices=hp["out_indices"],
    )
    assert [(k, list(v.shape)) for k, v in bb.state_dict().items()] == [tuple(x) for x in ref["keys"]]


def _pair(cfg, backbone=False, out_indices=(0, 1, 2, 3)):
    if backbone:
        ours = FocalNetBackbone(cfg, out_indices=out_indices).eval()
    else:
        ours = FocalNet(cfg).eval()
    randomize_(ours)
    return ours, original_like(ours)


SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1))


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("focalnet_tiny_srf", {}),
        ("focalnet_tiny_lrf", {}),
        ("focalnet_tiny_iso", {}),
        ("focalnet_base_iso", dict(embed_dim=64, depths=(3,))),  # post-norm + layer scale + modulation LN
        ("focalnet_large_fl3", SMALL),  # conv stem, post-norm, layer scale, window 5
        ("focalnet_large_fl4", SMALL),  # + normalize_modulator
        ("focalnet_huge_fl4", SMALL),  # + modulation LN, 4 levels
    ],
)
@pytest.mark.parametrize("size", [(224, 224), (97, 131), (65, 64)])
def test_outputs_equal_original_implementation(name, overrides, size):
    cfg = VARIANTS[name].cfg.replace(num_classes=37, **overrides)
    ours, orig = _pair(cfg)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        a, b = ours(x), orig(x)
    assert a.shape == (2, 37)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides", [dict(focal_windows=(9, 9, 9, 9)), dict(use_conv_embed=True, use_postln=True)])
@pytest.mark.parametrize("size", [(128, 96), (131, 97), (33, 65)])
def test_backbone_equals_original_detection_backbone(overrides, size):
    cfg = VARIANTS["focalnet_tiny_lrf"].cfg.replace(embed_dim=16, **overrides)
    ours, orig = _pair(cfg, backbone=True, out_indices=(0, 1, 2, 3))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs, refs = ours(x), orig(x)
    assert len(outs) == 4
    for i, (a, b) in enumerate(zip(outs, refs)):
        s = 4 * 2**i
        assert a.shape == (1, 16 * 2**i, math.ceil(size[0] / s), math.ceil(size[1] / s))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_backbone_out_indices_and_frozen_stages():
    bb = focalnet.create_backbone("focalnet_tiny_srf", out_indices=(1, 3), frozen_stages=2, embed_dim=16)
    outs = bb(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 128] == bb.out_channels
    assert bb.strides == [8, 32]
    assert not any(p.requires_grad for p in bb.patch_embed.parameters())
    assert not any(p.requires_grad for p in bb.layers[0].parameters())
    assert all(p.requires_grad for p in bb.layers[1].parameters())
    bb.train()
    assert not bb.layers[0].training and bb.layers[1].training
    assert not hasattr(bb, "norm0") and hasattr(bb, "norm1")


def test_any_batch_size_in_chans_and_iso_backbone():
    m = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, in_chans=1, num_classes=5).eval()
    assert m(torch.randn(1, 1, 64, 48)).shape == (1, 5)
    assert m(torch.randn(3, 1, 64, 48)).shape == (3, 5)
    iso = focalnet.create_backbone("focalnet_tiny_iso", embed_dim=32)
    assert [o.shape for o in iso(torch.randn(2, 3, 50, 70))] == [(2, 32, 4, 5)]


def test_too_small_input_is_a_clear_error():
    m = focalnet.create_model("focalnet_tiny_srf", embed_dim=16).eval()
    with pytest.raises(ValueError, match="too small"):
        m(torch.randn(1, 3, 20, 20))


def test_timm_style_api():
    m = focalnet.create_model("focalnet_tiny_srf", embed_dim=16).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = m.forward_features(x)
    assert feats.shape == (2, 2, 2, 128)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 128)
    torch.testing.assert_close(m.forward_head(feats), m(x))
    m.reset_classifier(7)
    assert m(x).shape == (2, 7) and m.num_classes == 7 and m.default_cfg["num_classes"] == 7
    m.reset_classifier(0)
    assert m(x).shape == (2, 128)
    cfg = focalnet.create_model("focalnet_large_fl3").default_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["num_classes"] == 21842
    inter = m.forward_intermediates(x)
    assert [t.shape[1:] for t in inter] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    m = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, drop_path_rate=0.0, num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    m(x).sum().backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    for a, p in zip(g1, m.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_drop_path_and_dropout_only_in_training():
    m = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, drop_path_rate=0.5, drop_rate=0.3)
    x = torch.randn(2, 3, 64, 64)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x))


def test_uniform_settings_fit_any_number_of_stages():
    cfg = focalnet.FocalNetConfig(depths=(1, 1))
    assert cfg.focal_levels == (2, 2) and cfg.focal_windows == (3, 3)


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match="focal_levels"):
        focalnet.FocalNetConfig(depths=(2, 2), focal_levels=(2, 3, 4))
    with pytest.raises(TypeError, match="focal_lvls"):
        focalnet.create_model("focalnet_tiny_srf", focal_lvls=3)
    with pytest.raises(ValueError, match="Did you mean"):
        focalnet.create_model("focalnet_tiny_sfr")
