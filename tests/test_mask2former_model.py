"""Mask2Former model: the head against transformers' port on the same features and seeded weights (every
prediction), the official key layout both ways, parameter counts, output shapes, the released attention rows,
and the restricted unpickler of the model zoo's ``.pkl`` files."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focalnet.segmentation.mask2former import (
    Mask2FormerConfig,
    is_official_mask2former,
    mask2former,
    mask2former_from_meta,
    official_to_ours,
    ours_to_official,
)
from focalnet.segmentation.mask2former.model import Mask2FormerHead
from focalnet.segmentation.mask2former.transformer_decoder import attention_mask
from focalnet.weights.errors import MalformedCheckpointError
from focalnet.weights.pickle_numpy import load_numpy_pickle

from conftest import randomize_

TINY_BACKBONE = dict(embed_dim=16, depths=(1, 1, 1, 1))


def _tiny_head(**kw):
    head = dict(
        hidden_dim=32,
        conv_dim=32,
        mask_dim=32,
        dim_feedforward=48,
        enc_dim_feedforward=40,
        enc_layers=1,
        dec_layers=3,
        num_queries=6,
        nheads=4,
        enc_heads=4,
    )
    head.update(kw)
    return head


# ---------------------------------------------------------------- parity with transformers' Mask2Former

# ours (detectron2's names under sem_seg_head.) -> transformers' Mask2FormerPixelDecoder / TransformerModule
_PIXEL_RULES = [
    (r"transformer\.level_embed", "level_embed"),
    (r"input_proj\.(\d+)\.(\d)\.(weight|bias)", r"input_projections.\1.\2.\3"),
    (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)", r"encoder.layers.\1.self_attn.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm1\.(.+)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear1\.(.+)", r"encoder.layers.\1.fc1.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.linear2\.(.+)", r"encoder.layers.\1.fc2.\2"),
    (r"transformer\.encoder\.layers\.(\d+)\.norm2\.(.+)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"mask_features\.(.+)", r"mask_projection.\1"),
    (r"(adapter|layer)_(\d+)\.weight", r"\1_\2.0.weight"),
    (r"(adapter|layer)_(\d+)\.norm\.(.+)", r"\1_\2.1.\3"),
]
_PREDICTOR_RULES = [
    (r"query_embed\.weight", "queries_embedder.weight"),
    (r"query_feat\.weight", "queries_features.weight"),
    (r"level_embed\.weight", "level_embed.weight"),
    (r"input_proj\.(\d+)\.(.+)", r"input_projections.\1.\2"),
    (
        r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.(.+)",
        r"decoder.layers.\1.self_attn.out_proj.\2",
    ),
    (r"transformer_self_attention_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.self_attn_layer_norm.\2"),
    (r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(.+)", r"decoder.layers.\1.cross_attn.\2"),
    (r"transformer_cross_attention_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.cross_attn_layer_norm.\2"),
    (r"transformer_ffn_layers\.(\d+)\.linear1\.(.+)", r"decoder.layers.\1.fc1.\2"),
    (r"transformer_ffn_layers\.(\d+)\.linear2\.(.+)", r"decoder.layers.\1.fc2.\2"),
    (r"transformer_ffn_layers\.(\d+)\.norm\.(.+)", r"decoder.layers.\1.final_layer_norm.\2"),
    (r"decoder_norm\.(.+)", r"decoder.layernorm.\1"),
    (r"mask_embed\.layers\.(\d)\.(.+)", r"decoder.mask_predictor.mask_embedder.\1.0.\2"),
]


def _rename(sd, rules):
    out = {}
    for k, v in sd.items():
        # nn.MultiheadAttention's packed q/k/v projection of the self-attention -> transformers' q/k/v_proj
        if m := re.fullmatch(r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", k):
            for name, part in zip("qkv", v.chunk(3)):
                out[f"decoder.layers.{m.group(1)}.self_attn.{name}_proj.{m.group(2)}"] = part
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, k):
                out[re.sub(pattern, repl, k)] = v
                break
        else:
            raise AssertionError(f"no transformers name for {k}")
    return out


def _transformers_head(head: Mask2FormerHead, cfg: Mask2FormerConfig, num_classes: int, in_channels):
    from transformers import Mask2FormerConfig as HFConfig
    from transformers.models.mask2former import modeling_mask2former as hf

    assert cfg.enc_heads == cfg.nheads  # transformers has one number of heads
    hf_cfg = HFConfig(
        feature_size=cfg.conv_dim,
        mask_feature_size=cfg.mask_dim,
        hidden_dim=cfg.hidden_dim,
        encoder_feedforward_dim=cfg.enc_dim_feedforward,
        encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers + 1,  # transformers counts the predictions, as detectron2's DEC_LAYERS
        num_attention_heads=cfg.nheads,
        dim_feedforward=cfg.dim_feedforward,
        num_queries=cfg.num_queries,
        pre_norm=cfg.pre_norm,
        enforce_input_projection=cfg.enforce_input_project,
        num_labels=num_classes,
    )
    pixel = hf.Mask2FormerPixelDecoder(hf_cfg, feature_channels=list(in_channels)).eval().double()
    module = hf.Mask2FormerTransformerModule(in_features=cfg.conv_dim, config=hf_cfg).eval().double()
    classifier = torch.nn.Linear(cfg.hidden_dim, num_classes + 1).double()
    sd = head.state_dict()
    pixel.load_state_dict(_rename({k[14:]: v for k, v in sd.items() if k.startswith("pixel_decoder.")}, _PIXEL_RULES))
    predictor = {k[10:]: v for k, v in sd.items() if k.startswith("predictor.") and ".class_embed." not in k}
    module.load_state_dict(_rename(predictor, _PREDICTOR_RULES))
    classifier.load_state_dict({"weight": sd["predictor.class_embed.weight"], "bias": sd["predictor.class_embed.bias"]})

    def run(features):
        px = pixel(features)
        out = module(list(px.multi_scale_features), px.mask_features, output_hidden_states=True)
        classes = [classifier(h.transpose(0, 1)) for h in out.intermediate_hidden_states]
        return classes, list(out.masks_queries_logits)

    return run


@pytest.mark.parametrize(
    "head_kw, num_classes, sizes",
    [
        (dict(), 5, [(24, 20), (12, 10), (6, 5), (3, 3)]),  # odd coarse level, 3 decoder layers
        (
            dict(
                hidden_dim=64,
                conv_dim=64,
                mask_dim=48,
                nheads=8,
                enc_heads=8,
                num_queries=12,
                dec_layers=4,
                enc_layers=2,
                enforce_input_project=True,
            ),
            3,
            [(20, 28), (10, 14), (5, 7), (3, 4)],
        ),
        (  # a pixel decoder wider than the queries: the decoder projects its inputs
            dict(hidden_dim=32, conv_dim=64, mask_dim=32, nheads=8, enc_heads=8, dec_layers=5, num_queries=9),
            2,
            [(16, 16), (8, 8), (4, 4), (2, 2)],
        ),
    ],
)
def test_head_matches_transformers(one_thread, head_kw, num_classes, sizes):
    """In float64, so that rounding cannot flip an attention-mask pixel (sigmoid at 0.5) between the two."""
    cfg = Mask2FormerConfig.from_dict(_tiny_head(**head_kw))
    in_channels = (16, 24, 40, 56)
    torch.manual_seed(0)
    head = Mask2FormerHead(in_channels, num_classes, cfg).eval()
    randomize_(head, seed=1, scale=0.3)
    head.double()
    reference = _transformers_head(head, cfg, num_classes, in_channels)
    g = torch.Generator().manual_seed(2)
    features = [torch.randn(2, c, h, w, generator=g, dtype=torch.float64) for c, (h, w) in zip(in_channels, sizes)]
    with torch.no_grad():
        ours_cls, ours_masks = head(features)
        ref_cls, ref_masks = reference(features)
    assert len(ours_cls) == len(ref_cls) == cfg.dec_layers + 1
    masked = 0
    for i, (a, b, ma, mb) in enumerate(zip(ours_cls, ref_cls, ours_masks, ref_masks)):
        assert a.shape == b.shape == (2, cfg.num_queries, num_classes + 1)
        assert ma.shape == mb.shape == (2, cfg.num_queries, *sizes[0])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=f"class logits of prediction {i}")
        torch.testing.assert_close(ma, mb, rtol=0, atol=1e-4, msg=f"mask logits of prediction {i}")
        masked += int((ma < 0).sum())
    # the attention masks hid something (else the masked attention would be untested)
    assert 0 < masked < sum(m.numel() for m in ours_masks)


# ---------------------------------------------------------------- the model


def _tiny(num_classes=4, **head_kw):
    return mask2former("focalnet_tiny_lrf", num_classes, head=_tiny_head(**head_kw), **TINY_BACKBONE)


def test_forward_shapes_and_logits(one_thread):
    torch.manual_seed(0)
    model = _tiny(num_classes=4).eval()
    x = torch.randn(2, 3, 70, 45)  # odd sizes: the backbone pads, the masks are at ceil(H / 4)
    with torch.no_grad():
        out = model(x)
        logits, masks = model.forward_logits(x)
    assert out["pred_logits"].shape == (2, 6, 5)
    assert out["pred_masks"].shape == (2, 6, 18, 12)
    assert len(out["aux_outputs"]) == 3  # the learnable queries' prediction and the first two layers'
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 6, 5) and aux["pred_masks"].shape == (2, 6, 18, 12)
        assert not torch.equal(aux["pred_masks"], out["pred_masks"])
    torch.testing.assert_close(logits, out["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(masks, out["pred_masks"], rtol=0, atol=0)
    # the batch is independent: image 1 alone gives its own logits
    with torch.no_grad():
        single, _ = model.forward_logits(x[1:])
    torch.testing.assert_close(single[0], logits[1], rtol=0, atol=1e-5)


def test_single_small_image_with_one_channel_per_group(one_thread):
    """conv_dim 32 = one channel per GroupNorm group: a 32 px image's 1x1 coarsest map is one value per
    group (F.group_norm refuses it); its normalised values are 0, the output the GroupNorm bias."""
    torch.manual_seed(0)
    model = randomize_(_tiny(num_classes=2), seed=5).eval()
    with torch.no_grad():
        logits, masks = model.forward_logits(torch.randn(1, 3, 32, 32))
        proj = model.sem_seg_head.pixel_decoder.input_proj[0]
        coarse = proj(torch.randn(1, 128, 1, 1))  # the stride-32 level of the tiny backbone: 128 channels
    assert logits.shape == (1, 6, 3) and masks.shape == (1, 6, 8, 8) and torch.isfinite(masks).all()
    torch.testing.assert_close(coarse.flatten(), proj[1].bias, rtol=0, atol=0)


def test_training_backward_reaches_every_parameter(one_thread):
    torch.manual_seed(0)
    # no stochastic depth (a dropped block has no gradient), random weights (the deformable attention's
    # zero-initialised offsets would hide the level embedding's gradient)
    model = mask2former("focalnet_tiny_lrf", 2, head=_tiny_head(), drop_path_rate=0.0, **TINY_BACKBONE)
    model = randomize_(model, seed=4, scale=0.2).train()
    out = model(torch.randn(1, 3, 64, 64))  # GroupNorm(32) of 32 channels needs more than 1x1 at stride 32
    loss = out["pred_logits"].sum() + out["pred_masks"].mean()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].mean() for a in out["aux_outputs"])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_fully_masked_rows_are_released():
    logits = torch.randn(2, 4, 8, 8)
    logits[0, 1] = -5.0  # query 1 of image 0 hides every pixel
    logits[1, 3] = 5.0  # query 3 of image 1 hides none
    mask = attention_mask(logits, (4, 4), num_heads=3).view(2, 3, 4, 16)
    assert not mask[0, :, 1].any()  # released: attends everywhere
    assert not mask[1, :, 3].any()
    expected = torch.nn.functional.interpolate(logits, size=(4, 4), mode="bilinear").flatten(2).sigmoid() < 0.5
    expected[0, 1] = False
    for h in range(3):  # the same mask for every head
        assert torch.equal(mask[:, h], expected)


def test_decoder_with_every_pixel_masked_matches_unmasked_attention(one_thread):
    """Queries whose masks cover nothing attend to every position: with all mask logits negative the
    masked decoder equals one without masks."""
    torch.manual_seed(0)
    head = Mask2FormerHead((16, 24, 40, 56), 3, Mask2FormerConfig.from_dict(_tiny_head())).eval()
    predictor = head.predictor
    with torch.no_grad():  # mask embeddings far negative: every mask logit < 0 at every layer
        predictor.mask_embed.layers[2].weight.zero_()
        predictor.mask_embed.layers[2].bias.fill_(-1.0)
    feats = [torch.randn(1, 32, s, s) for s in (2, 4, 8)]
    mask_features = torch.ones(1, 32, 16, 16)
    with torch.no_grad():
        classes, masks = predictor(feats, mask_features)
        assert all((m < 0).all() for m in masks)
        # the same layers run without any mask
        out = predictor.query_feat.weight[None]
        qpos = predictor.query_embed.weight[None]
        for i in range(predictor.num_layers):
            lvl = i % 3
            src = feats[lvl].flatten(2).transpose(1, 2) + predictor.level_embed.weight[lvl]
            from focalnet.segmentation.mask2former.pixel_decoder import sine_position_embedding

            pos = sine_position_embedding(*feats[lvl].shape[-2:], 16).flatten(1).t()[None]
            out = predictor.transformer_cross_attention_layers[i](out, src, None, pos, qpos)
            out = predictor.transformer_self_attention_layers[i](out, qpos)
            out = predictor.transformer_ffn_layers[i](out)
        expected = predictor.class_embed(predictor.decoder_norm(out))
    torch.testing.assert_close(classes[-1], expected, rtol=0, atol=1e-5)


def test_meta_rebuilds_the_model(one_thread):
    model = _tiny(num_classes=3)
    model.meta["class_names"] = ["a", "b", "c"]
    rebuilt = mask2former_from_meta(model.meta)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in model.state_dict().items())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.class_names == ["a", "b", "c"] and rebuilt.head_cfg == model.head_cfg
    model.reset_classes(7)
    assert model.sem_seg_head.predictor.class_embed.out_features == 8 and model.meta["num_classes"] == 7


@pytest.mark.parametrize(
    "setting",
    [
        dict(num_queries=0),
        dict(num_queries=10**6),
        dict(dec_layers=1000),
        dict(hidden_dim=2**20),
        dict(nheads=7),  # 32 is not a multiple of 7
        dict(conv_dim=48),  # GroupNorm(32)
        dict(enc_dropout=1.0),
        dict(num_queries="100"),
        dict(pre_norm="yes"),
        dict(bogus=1),
    ],
)
def test_config_rejects_bad_settings_in_one_line(setting):
    with pytest.raises(ValueError) as err:
        Mask2FormerConfig.from_dict(_tiny_head(**setting))
    assert "\n" not in str(err.value) and list(setting)[0] in str(err.value)


def test_defaults_follow_the_released_recipes():
    cfg = Mask2FormerConfig()
    assert (cfg.hidden_dim, cfg.num_queries, cfg.dec_layers, cfg.nheads, cfg.dim_feedforward) == (256, 100, 9, 8, 2048)
    assert (cfg.conv_dim, cfg.enc_layers, cfg.enc_heads, cfg.enc_points, cfg.enc_dim_feedforward) == (
        256,
        6,
        8,
        4,
        1024,
    )
    with torch.device("meta"):
        large = mask2former("focalnet_large_fl4", 133)
        tiny = mask2former("focalnet_tiny_lrf", 133)
    assert large.head_cfg.num_queries == 200 and tiny.head_cfg.num_queries == 100
    assert tiny.backbone.cfg.drop_path_rate == 0.3


# ---------------------------------------------------------------- parameter counts


def _params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "variant", ["focalnet_tiny_lrf", "focalnet_small_lrf", "focalnet_base_lrf", "focalnet_large_fl4"]
)
def test_parameter_count_head_equals_transformers(variant):
    """The head of a FocalNet Mask2Former has exactly the parameters of transformers' head (pixel decoder,
    transformer module, class predictor) on a backbone of the same widths (the Swin-T/S/B/L configs)."""
    from transformers import Mask2FormerConfig as HFConfig
    from transformers.models.mask2former import modeling_mask2former as hf

    with torch.device("meta"):
        model = mask2former(variant, 133)
        queries = model.head_cfg.num_queries
        hf_cfg = HFConfig(num_queries=queries, num_labels=133)
        channels = list(model.backbone.out_channels)
        hf_head = _params(hf.Mask2FormerPixelDecoder(hf_cfg, feature_channels=channels))
        hf_head += _params(hf.Mask2FormerTransformerModule(in_features=256, config=hf_cfg))
        hf_head += 256 * 134 + 134  # class_predictor
    head, total = _params(model.sem_seg_head), _params(model)
    print(f"{variant}: head {head / 1e6:.2f} M, backbone {(total - head) / 1e6:.2f} M, total {total / 1e6:.2f} M")
    assert head == hf_head


# ---------------------------------------------------------------- the official layout


def test_official_layout_round_trip(one_thread):
    model = randomize_(_tiny(num_classes=5), seed=3)
    ours = model.state_dict()
    official = ours_to_official(ours)
    assert is_official_mask2former(official) and not is_official_mask2former({"backbone.x": 1})
    assert official["criterion.empty_weight"].tolist() == pytest.approx([1, 1, 1, 1, 1, 0.1])
    fields, back = official_to_ours(official)
    assert list(back) == list(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    assert fields["num_classes"] == 5
    assert Mask2FormerConfig.from_dict(fields["head"]) == model.head_cfg
    assert fields["backbone_config"]["embed_dim"] == 16 and tuple(fields["backbone_config"]["depths"]) == (1, 1, 1, 1)
    rebuilt = mask2former_from_meta(fields)
    rebuilt.load_state_dict(back, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().forward_logits(x), model.eval().forward_logits(x), rtol=0, atol=0)


def test_official_layout_reads_the_sizes_off_the_tensors():
    with torch.device("meta"):
        model = mask2former("focalnet_base_lrf", 133, head={"num_queries": 150, "dec_layers": 6, "enc_layers": 4})
        sd = ours_to_official(model.state_dict())
    fields, _ = official_to_ours(sd)
    head = Mask2FormerConfig.from_dict(fields["head"])
    assert head == model.head_cfg
    assert fields["backbone"] == "focalnet_base_lrf" and fields["num_classes"] == 133


def test_official_layout_errors_are_one_line():
    with torch.device("meta"):
        sd = ours_to_official(_tiny().state_dict())
    broken = dict(sd)
    del broken["sem_seg_head.predictor.query_feat.weight"]
    with pytest.raises(ValueError) as err:
        official_to_ours(broken)
    assert "query_feat" in str(err.value) and "\n" not in str(err.value)
    odd = dict(sd)
    odd["sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.attention_weights.weight"] = torch.zeros(
        7, 32
    )
    with pytest.raises(ValueError, match="attention_weights"):
        official_to_ours(odd)


# ---------------------------------------------------------------- model-zoo .pkl files


def _zoo_pickle(path, arrays):
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "detectron2", "matching_heuristics": True}, f, protocol=2)


def test_numpy_pickle_reads_model_zoo_files(tmp_path):
    arrays = {
        "a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b.bias": np.array([1.5, -2.0], dtype=np.float64),
        "c.count": np.array(7, dtype=np.int64),
    }
    for protocol in (2, 4, 5):
        path = tmp_path / f"m{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "x", "matching_heuristics": True}, f, protocol=protocol)
        obj = load_numpy_pickle(path)
        assert set(obj["model"]) == set(arrays)
        for k, v in arrays.items():
            t = obj["model"][k]
            assert isinstance(t, torch.Tensor) and t.dtype == torch.from_numpy(v).dtype
            assert np.array_equal(t.numpy(), v)
        assert obj["__author__"] == "x"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_numpy_pickle_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    _zoo_pickle(path, {"w": np.zeros(2, dtype=np.float32), "x": _Payload(marker)})
    with pytest.raises(MalformedCheckpointError) as err:
        load_numpy_pickle(path)
    assert not marker.exists()
    assert "system" in str(err.value) and "\n" not in str(err.value)


def test_numpy_pickle_refuses_object_arrays_and_huge_claims(tmp_path):
    path = tmp_path / "objects.pkl"
    _zoo_pickle(path, {"w": np.array([1, "a"], dtype=object)})
    with pytest.raises(MalformedCheckpointError):
        load_numpy_pickle(path)
    path = tmp_path / "big.pkl"
    _zoo_pickle(path, {"w": np.zeros(1000, dtype=np.float32)})
    with pytest.raises(ValueError, match="budget|more than"):
        load_numpy_pickle(path, budget=1000)


_VALID_PKL = None


def _valid_bytes():
    global _VALID_PKL
    if _VALID_PKL is None:
        arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, dtype=np.float16)}
        _VALID_PKL = pickle.dumps({"model": arrays, "__author__": "t", "matching_heuristics": True}, protocol=2)
    return _VALID_PKL


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_numpy_pickle_fuzz_mutations_give_one_error_type(tmp_path, data):
    raw = bytearray(_valid_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del raw[i:]
            if not raw:
                break
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    path = tmp_path / "m.pkl"
    path.write_bytes(bytes(raw))
    try:
        obj = load_numpy_pickle(path)
    except MalformedCheckpointError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(obj, dict)
