"""Checkpoint formats and layouts: reading, converting, inferring the architecture, errors, downloads."""

import json
import pickle
import warnings

import pytest
import torch

import focalnet
from focalnet.models import VARIANTS, FocalNet, FocalNetBackbone
from focalnet.weights import (
    CheckpointMismatchError,
    MalformedCheckpointError,
    PretrainedUnavailableError,
    infer_config,
    read_checkpoint,
)

from conftest import REFERENCE, need, randomize_

TINY = dict(embed_dim=16, depths=(1, 1, 2, 1))


def _model(name="focalnet_tiny_srf", seed=0, **kw):
    return randomize_(focalnet.create_model(name, **kw).eval(), seed)


def _logits(model, size=(64, 64), seed=0):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_architecture_read_off_reference_key_sets(name):
    ref = json.loads((need(REFERENCE / "official-state-dicts") / f"{name}.json").read_text())
    sd = {k: torch.empty(shape, device="meta") for k, shape in ref["keys"]}
    assert infer_config(sd) == VARIANTS[name].cfg.replace(num_classes=ref["hyperparameters"]["num_classes"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_from_checkpoint_on_files_of_every_variant(tmp_path, name):
    """A released-layout file of each variant: the structure is read off the keys; stride-0 (expanded)
    tensors, tiny on disk, are refused before anything is built; a real file (bfloat16 zeros) of the
    variants under 30 M parameters builds the variant."""
    ref = json.loads((need(REFERENCE / "official-state-dicts") / f"{name}.json").read_text())
    sd = {k: torch.zeros(()).expand(shape) for k, shape in ref["keys"]}
    expected = VARIANTS[name].cfg.replace(num_classes=ref["hyperparameters"]["num_classes"])
    assert infer_config(sd) == expected
    torch.save({"model": sd, "epoch": 300}, tmp_path / f"{name}.pth")
    with pytest.raises(MalformedCheckpointError, match="an expanded tensor"):
        read_checkpoint(tmp_path / f"{name}.pth")
    if ref["num_params"] < 30e6:  # the larger ones would write hundreds of MB here
        sd = {k: torch.zeros(shape, dtype=torch.bfloat16) for k, shape in ref["keys"]}
        torch.save({"model": sd, "epoch": 300}, tmp_path / f"{name}.pth")
        ckpt = read_checkpoint(tmp_path / f"{name}.pth")
        assert ckpt.layout == "original" and len(ckpt.state_dict) == len(ref["keys"])
        m = focalnet.model_from_checkpoint(tmp_path / f"{name}.pth")
        assert m.cfg == expected and m.variant_name == name
        assert all(p.requires_grad and p.device.type == "cpu" and p.dtype == torch.float32 for p in m.parameters())


def test_backbone_reference_key_set_builds_a_backbone(tmp_path):
    ref = json.loads(
        (need(REFERENCE / "official-state-dicts") / "backbone_maskrcnn_focalnet_tiny_lrf.json").read_text()
    )
    sd = {k: torch.randn(shape) * 0.02 for k, shape in ref["keys"]}
    mm = {"state_dict": {**{"backbone." + k: v for k, v in sd.items()}, "neck.fpn_convs.0.conv.weight": torch.zeros(1)}}
    torch.save(mm, tmp_path / "mask_rcnn.pth")
    m = focalnet.model_from_checkpoint(tmp_path / "mask_rcnn.pth")
    assert isinstance(m, FocalNetBackbone) and m.cfg.focal_windows == (9, 9, 9, 9) and m.cfg.focal_levels == (3,) * 4
    b = focalnet.create_backbone(
        "focalnet_tiny_lrf", focal_windows=(9, 9, 9, 9), checkpoint_path=tmp_path / "mask_rcnn.pth"
    )
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, sd[k])


@pytest.mark.parametrize("container", ["model", "state_dict", "bare", "module"])
def test_original_containers(tmp_path, container):
    m = _model(**TINY)
    sd = m.state_dict()
    obj = {
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd},
        "bare": sd,
        "module": {"model": {"module." + k: v for k, v in sd.items()}},
    }[container]
    torch.save(obj, tmp_path / "c.pth")
    with pytest.warns(UserWarning, match="matches no registered variant"):  # a bare file of an unregistered shape
        m2 = focalnet.model_from_checkpoint(tmp_path / "c.pth")
    torch.testing.assert_close(_logits(m2), _logits(m))


def test_timm_layout_round_trip_and_equals_timm_model():
    pytest.importorskip("timm")
    m = _model("focalnet_tiny_srf", **TINY)
    sd_t = focalnet.convert_state_dict(m.state_dict(), to="timm", use_postln=False)
    tm = _timm_like(m.cfg)
    tm.load_state_dict(sd_t, strict=True)
    torch.testing.assert_close(_logits(m), _logits(tm), atol=1e-4, rtol=0)
    back = focalnet.convert_state_dict(sd_t, to="original")
    assert list(back) == list(m.state_dict())
    for k, v in m.state_dict().items():
        assert torch.equal(back[k], v)


def _timm_like(cfg, normalize_modulator=None):
    """timm's FocalNet class with the same settings as our config (timm's own variant functions fix the sizes)."""
    from timm.models.focalnet import FocalNet as TimmFocalNet

    return TimmFocalNet(
        embed_dim=cfg.embed_dim,
        depths=cfg.depths,
        focal_levels=cfg.focal_levels,
        focal_windows=cfg.focal_windows,
        use_overlap_down=cfg.use_conv_embed,
        use_post_norm=cfg.use_postln,
        use_post_norm_in_modulation=cfg.use_postln_in_modulation,
        normalize_modulator=cfg.normalize_modulator if normalize_modulator is None else normalize_modulator,
        layerscale_value=cfg.layerscale_value if cfg.use_layerscale else None,
        num_classes=cfg.num_classes,
    ).eval()


@pytest.mark.parametrize("name", ["focalnet_large_fl3", "focalnet_large_fl4", "focalnet_huge_fl4"])
def test_post_norm_variants_equal_timm(name):
    pytest.importorskip("timm")
    m = _model(name, **TINY, num_classes=10)
    tm = _timm_like(m.cfg)
    # a reduced (unregistered) structure: the post-norm flag must be given, keys cannot show it
    tm.load_state_dict(focalnet.convert_state_dict(m.state_dict(), to="timm", use_postln=True), strict=True)
    torch.testing.assert_close(_logits(m), _logits(tm), atol=1e-4, rtol=0)
    if m.cfg.normalize_modulator:  # timm's large_fl4 omits the flag and gives other logits
        tm2 = _timm_like(m.cfg, normalize_modulator=False)
        tm2.load_state_dict(tm.state_dict())
        assert (_logits(m) - _logits(tm2)).abs().max() > 1e-3


def test_timm_files_and_folder_load(tmp_path):
    timm = pytest.importorskip("timm")
    tm = randomize_(_timm_like(VARIANTS["focalnet_large_fl4"].cfg.replace(num_classes=7, **TINY)))
    # a bare timm state dict of a registered structure: flags come from the registry
    full = randomize_(timm.create_model("focalnet_tiny_lrf").eval())
    torch.save(full.state_dict(), tmp_path / "timm.pth")
    m = focalnet.model_from_checkpoint(tmp_path / "timm.pth")
    torch.testing.assert_close(_logits(m), _logits(full), atol=1e-4, rtol=0)
    # a timm hub folder (config.json + model.safetensors)
    from safetensors.torch import save_file

    (tmp_path / "folder").mkdir()
    save_file(tm.state_dict(), tmp_path / "folder" / "model.safetensors")
    (tmp_path / "folder" / "config.json").write_text(
        json.dumps(  # what timm's push_to_hf_hub writes
            {
                "architecture": "focalnet_large_fl4",
                "num_classes": 7,
                "num_features": 128,
                "pretrained_cfg": {"input_size": [3, 384, 384], "crop_pct": 1.0, "interpolation": "bicubic"},
            }
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = focalnet.model_from_checkpoint(tmp_path / "folder")
    assert m.cfg.use_postln and m.cfg.normalize_modulator  # from the config's architecture name
    torch.testing.assert_close(_logits(m), _logits(tm), atol=1e-4, rtol=0)


def _hf_model(m):
    transformers = pytest.importorskip("transformers")
    c = m.cfg
    hf_cfg = transformers.FocalNetConfig(
        embed_dim=c.embed_dim,
        depths=list(c.depths),
        focal_levels=list(c.focal_levels),
        focal_windows=list(c.focal_windows),
        use_conv_embed=c.use_conv_embed,
        use_layerscale=c.use_layerscale,
        use_post_layernorm=c.use_postln,
        use_post_layernorm_in_modulation=c.use_postln_in_modulation,
        normalize_modulator=c.normalize_modulator,
        num_labels=m.num_classes,
        patch_size=c.patch_size,
        hidden_sizes=[c.embed_dim * 2 ** (i + 1) for i in range(len(c.depths) - 1)] + [c.num_features],
    )
    return transformers.FocalNetForImageClassification(hf_cfg).eval()


@pytest.mark.parametrize("name,kw", [("focalnet_tiny_lrf", TINY), ("focalnet_huge_fl3", dict(TINY, num_classes=5))])
def test_transformers_layout_equals_transformers_model(tmp_path, name, kw):
    m = _model(name, **kw)
    hf = _hf_model(m)
    sd_hf = focalnet.convert_state_dict(m.state_dict(), to="transformers")
    missing, unexpected = hf.load_state_dict(sd_hf, strict=False)
    assert not unexpected and all("mask_token" in k for k in missing)
    torch.testing.assert_close(_logits(m), _logits(hf), atol=1e-4, rtol=0)
    back = focalnet.convert_state_dict(sd_hf, to="original")
    assert list(back) == list(m.state_dict())
    # a transformers model folder: the flags come from config.json
    hf.save_pretrained(tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m2 = focalnet.model_from_checkpoint(tmp_path / "hf")
    assert m2.cfg.use_postln == m.cfg.use_postln
    torch.testing.assert_close(_logits(m2), _logits(m), atol=1e-4, rtol=0)


def test_own_safetensors_keeps_flags_that_keys_cannot_show(tmp_path):
    cfg = focalnet.FocalNetConfig(
        embed_dim=24,
        depths=(1, 2),
        focal_levels=(2, 4),
        focal_windows=(5, 3),
        use_postln=True,
        normalize_modulator=True,
        num_classes=4,
    )
    m = randomize_(FocalNet(cfg).eval())
    focalnet.save_model(m, tmp_path / "m.safetensors", class_names=["a", "b", "c", "d"])
    m2 = focalnet.model_from_checkpoint(tmp_path / "m.safetensors")
    assert m2.cfg.use_postln and m2.cfg.normalize_modulator and m2.class_names == ["a", "b", "c", "d"]
    torch.testing.assert_close(_logits(m2), _logits(m))
    # without the stored config, the unregistered structure falls back to pre-norm, with a warning
    torch.save(m.state_dict(), tmp_path / "bare.pth")
    with pytest.warns(UserWarning, match="no registered variant"):
        m3 = focalnet.model_from_checkpoint(tmp_path / "bare.pth")
    assert not m3.cfg.use_postln


def test_mismatch_error_lists_keys_and_names_the_fitting_variant(tmp_path):
    torch.save({"model": _model("focalnet_tiny_lrf").state_dict()}, tmp_path / "lrf.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        focalnet.create_model("focalnet_tiny_srf", checkpoint_path=tmp_path / "lrf.pth")
    msg = str(e.value)
    assert "layers.0.blocks.0.modulation.f.weight: checkpoint (196, 96) vs model (195, 96)" in msg
    assert "unexpected keys" in msg and "focal_layers.2.0.weight" in msg
    assert "focalnet_tiny_lrf" in msg


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        focalnet.model_from_checkpoint(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    torch.save(_model(**TINY).state_dict(), good)
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match="corrupt"):
        focalnet.model_from_checkpoint(tmp_path / "trunc.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pth")
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unrecognized checkpoint layout"):
        focalnet.model_from_checkpoint(tmp_path / "other.pth")


def test_new_head_when_num_classes_differs(tmp_path):
    m = _model(**TINY)
    torch.save({"model": m.state_dict()}, tmp_path / "c.pth")
    with pytest.warns(UserWarning, match="new 10-class head"):
        m2 = focalnet.create_model("focalnet_tiny_srf", checkpoint_path=tmp_path / "c.pth", num_classes=10, **TINY)
    assert m2.head.out_features == 10
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(m2.eval().forward_features(x), m.forward_features(x))


def test_backbone_kernel_resizing_gives_the_small_kernels_output(tmp_path):
    m = _model("focalnet_tiny_srf", **TINY)
    torch.save({"model": m.state_dict()}, tmp_path / "in1k.pth")
    small = focalnet.create_backbone("focalnet_tiny_srf", checkpoint_path=tmp_path / "in1k.pth", **TINY).eval()
    big = focalnet.create_backbone(
        "focalnet_tiny_srf", checkpoint_path=tmp_path / "in1k.pth", focal_windows=(9, 9, 9, 9), **TINY
    ).eval()
    assert big.layers[0].blocks[0].modulation.focal_layers[1][0].weight.shape[-1] == 11
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        for a, b in zip(small(x), big(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # cropping back to 3 recovers the original kernels exactly
    w = big.layers[0].blocks[0].modulation.focal_layers[0][0].weight
    assert torch.equal(w[..., 3:6, 3:6], m.layers[0].blocks[0].modulation.focal_layers[0][0].weight)


def test_backbone_level_expansion_maps_gate_rows(tmp_path):
    m = _model("focalnet_tiny_srf", **TINY)  # 2 levels
    torch.save({"model": m.state_dict()}, tmp_path / "in1k.pth")
    b = focalnet.create_backbone(
        "focalnet_tiny_srf", checkpoint_path=tmp_path / "in1k.pth", focal_levels=(3,) * 4, **TINY
    )
    f_old = m.layers[0].blocks[0].modulation.f.weight
    f_new = b.layers[0].blocks[0].modulation.f.weight
    C = 16
    assert torch.equal(f_new[: 2 * C + 2], f_old[: 2 * C + 2])  # q, ctx, level gates
    assert torch.equal(f_new[2 * C + 3], f_old[2 * C + 2])  # global gate moved to the last row
    assert torch.count_nonzero(f_new[2 * C + 2]) == 0  # the new level's gate starts closed
    assert torch.equal(b.norm0.weight, torch.ones(16)) and torch.equal(b.norm0.bias, torch.zeros(16))


def test_pretrained_download_is_mocked_and_offline_fails_fast(tmp_path, monkeypatch):
    with pytest.raises(PretrainedUnavailableError) as e:
        focalnet.create_model("focalnet_tiny_srf", pretrained=True)
    assert "focalnet_tiny_srf.pth" in str(e.value) and "checkpoint_path" in str(e.value)
    m = _model("focalnet_tiny_srf")
    timm_sd = focalnet.convert_state_dict(m.state_dict(), to="timm")
    from safetensors.torch import save_file

    save_file(timm_sd, tmp_path / "model.safetensors")
    calls = []

    def fake_download(repo, filename, local_files_only=False, **kw):
        calls.append((repo, filename, local_files_only))
        return str(tmp_path / "model.safetensors")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    m2 = focalnet.create_model("focalnet_tiny_srf", pretrained=True)
    assert calls[0] == ("timm/focalnet_tiny_srf.ms_in1k", "model.safetensors", True)
    torch.testing.assert_close(_logits(m2), _logits(m))
    with pytest.raises(ValueError, match="no pretrained tag"):
        focalnet.create_model("focalnet_tiny_srf", pretrained="ms_in22k")


def test_cli_models_info_convert(tmp_path, capsys):
    from focalnet.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(VARIANTS)
    assert next(r for r in rows if r["name"] == "focalnet_tiny_srf")["gflops"] == pytest.approx(4.41, abs=0.01)
    m = _model("focalnet_tiny_iso")
    torch.save({"model": m.state_dict()}, tmp_path / "orig.pth")
    assert main(["info", str(tmp_path / "orig.pth"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["variant"] == "focalnet_tiny_iso" and info["layout"] == "original" and info["fit"] == "all keys match"
    for fmt, name in [
        ("timm", "t.pth"),
        ("transformers", "h.safetensors"),
        ("safetensors", "o.safetensors"),
        ("original", "back.pth"),
    ]:
        src = tmp_path / ("orig.pth" if fmt != "original" else "t.pth")
        assert main(["convert", str(src), str(tmp_path / name), "--to", fmt]) == 0
        assert read_checkpoint(tmp_path / name).layout == ("original" if fmt == "safetensors" else fmt)
        torch.testing.assert_close(_logits(focalnet.model_from_checkpoint(tmp_path / name)), _logits(m))
    assert main(["info", str(tmp_path / "nothing.pth")]) == 2
    assert "not found" in capsys.readouterr().err
