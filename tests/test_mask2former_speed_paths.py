"""Mask2Former's fast inference path against the regular one: ``forward_logits`` (the last prediction, the
earlier ones at the attended scales, one attention mask for all heads) against the last entries of
``forward`` (every prediction at full resolution, ``nn.MultiheadAttention`` with a mask per head), in float64
(equal up to rounding) and float32 (within 1e-4, attention masks agreeing); the pieces one by one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from focalnet.segmentation.mask2former import Mask2FormerConfig, mask2former
from focalnet.segmentation.mask2former.model import Mask2FormerHead
from focalnet.segmentation.mask2former.transformer_decoder import (
    CrossAttentionLayer,
    allowed_positions,
    attention_mask,
)

from conftest import randomize_

IN_CHANNELS = (16, 24, 40, 56)
HEAD = dict(
    hidden_dim=32,
    conv_dim=32,
    mask_dim=32,
    dim_feedforward=48,
    enc_dim_feedforward=40,
    enc_layers=1,
    dec_layers=4,
    num_queries=8,
    nheads=4,
    enc_heads=4,
)


def _head(seed: int = 1, **kw) -> Mask2FormerHead:
    torch.manual_seed(0)
    head = Mask2FormerHead(IN_CHANNELS, 5, Mask2FormerConfig.from_dict({**HEAD, **kw})).eval()
    return randomize_(head, seed=seed, scale=0.3)


def _features(sizes, dtype=torch.float64, batch=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g, dtype=dtype) for c, (h, w) in zip(IN_CHANNELS, sizes)]


def _mask_embeddings(head: Mask2FormerHead, run) -> list[torch.Tensor]:
    """The outputs of the decoder's ``mask_embed`` MLP during ``run()``, in call order."""
    seen: list[torch.Tensor] = []
    handle = head.predictor.mask_embed.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize(
    "kw, sizes",
    [
        (dict(), [(24, 20), (12, 10), (6, 5), (3, 3)]),
        (dict(dec_layers=7, pre_norm=True), [(20, 28), (10, 14), (5, 7), (3, 4)]),
        (dict(conv_dim=64, mask_dim=48, nheads=8, enc_heads=8), [(16, 16), (8, 8), (4, 4), (2, 2)]),
        (dict(dec_layers=1), [(16, 12), (8, 6), (4, 3), (2, 2)]),  # one layer: one attention mask
    ],
)
def test_forward_last_equals_the_last_prediction_float64(one_thread, kw, sizes):
    """In float64 no attention-mask pixel can flip between the two orders of resizing and dot products."""
    head = _head(**kw).double()
    features = _features(sizes)
    with torch.no_grad():
        classes, masks = head(features)
        logits, last = head.forward_last(features)
    assert logits.shape == classes[-1].shape and last.shape == masks[-1].shape
    torch.testing.assert_close(logits, classes[-1], rtol=0, atol=1e-9)
    torch.testing.assert_close(last, masks[-1], rtol=0, atol=1e-9)
    # the attention masks hid something, and not everything
    hidden = sum(int((m < 0).sum()) for m in masks[:-1])
    assert 0 < hidden < sum(m.numel() for m in masks[:-1])


def test_forward_logits_float32_within_1e4_and_attention_masks_agree(one_thread):
    """The model's ``forward_logits`` (the fast path) against ``forward``'s last prediction in float32;
    every intermediate attention mask computed both ways (resize the logits, or predict at the attended
    scale from resized mask features) from the same queries."""
    model = mask2former("focalnet_tiny_lrf", 5, head=HEAD, embed_dim=16, depths=(1, 1, 1, 1))
    model = randomize_(model, seed=3, scale=0.2).eval()
    x = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(4))
    head, predictor = model.sem_seg_head, model.sem_seg_head.predictor
    with torch.no_grad():
        out = model(x)
        logits, masks = model.forward_logits(x)
        features = model.backbone(x)
        mask_features, multi_scale = head.pixel_decoder(features)
        embeds = _mask_embeddings(head, lambda: head.forward_last(features))
    torch.testing.assert_close(logits, out["pred_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(masks, out["pred_masks"], rtol=0, atol=1e-4)
    regular = [a["pred_masks"] for a in out["aux_outputs"]]
    assert len(embeds) == len(regular) + 1 == HEAD["dec_layers"] + 1
    agree = total = hidden = 0
    for i, (embed, full) in enumerate(zip(embeds, regular)):
        size = tuple(multi_scale[i % predictor.num_feature_levels].shape[-2:])
        small = F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
        direct = torch.einsum("bqc,bchw->bqhw", embed, small)
        resized = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(direct, resized, rtol=0, atol=1e-4)
        fast = allowed_positions(direct)[:, 0]
        slow = ~attention_mask(full, size, predictor.num_heads).view(2, predictor.num_heads, *fast.shape[1:])[:, 0]
        agree += int((fast == slow).sum())
        total += fast.numel()
        hidden += int((~slow).sum())
    assert 0 < hidden < total
    assert agree / total >= 0.999


@pytest.mark.parametrize("pre_norm", [False, True])
def test_attend_equals_masked_multihead_attention(one_thread, pre_norm):
    torch.manual_seed(0)
    layer = randomize_(CrossAttentionLayer(32, 4, pre_norm), seed=6, scale=0.3).double()
    g = torch.Generator().manual_seed(7)
    tgt, query_pos = (torch.randn(2, 5, 32, generator=g, dtype=torch.float64) for _ in range(2))
    memory = torch.randn(2, 30, 32, generator=g, dtype=torch.float64)
    pos = torch.randn(1, 30, 32, generator=g, dtype=torch.float64)
    logits = torch.randn(2, 5, 6, 5, generator=g, dtype=torch.float64)
    logits[0, 2] = -3.0  # a query that would see nothing: released
    with torch.no_grad():
        expected = layer(tgt, memory, attention_mask(logits, (6, 5), 4), pos, query_pos)
        got = layer.attend(tgt, memory, allowed_positions(logits), pos, query_pos)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 5),
    st.lists(st.floats(-50, 50, allow_subnormal=True, width=32), min_size=1, max_size=8),
)
def test_allowed_positions_is_the_released_attention_mask(b, q, h, w, values):
    """Logits already at the attended size: the fast mask is the regular one's complement, one per head,
    for any values (zeros, tiny ones where sigmoid rounds to 0.5, rows entirely hidden or visible)."""
    n = b * q * h * w
    logits = torch.tensor((values * n)[:n], dtype=torch.float32).view(b, q, h, w)
    allowed = allowed_positions(logits)
    assert allowed.shape == (b, 1, q, h * w) and allowed.dtype == torch.bool
    hidden = attention_mask(logits, (h, w), 3).view(b, 3, q, h * w)
    for head in range(3):
        assert torch.equal(allowed[:, 0], ~hidden[:, head])
    assert allowed.any(-1).all()  # every query attends somewhere
