"""Multi-scale deformable attention: the one-pass gather of ``ms_deform_attn`` against per-level
``F.grid_sample`` (the previous implementation, kept here as the reference), output and the three gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from focalnet.ops import ms_deform_attn


def _grid_sample_reference(value, spatial_shapes, sampling_locations, attention_weights):
    """Per level one bilinear ``F.grid_sample`` (zero padding, ``align_corners=False``), weighted sum."""
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    grids = (2.0 * sampling_locations - 1.0).permute(3, 0, 2, 1, 4, 5).reshape(L, N * M, Lq, P, 2)
    weights = attention_weights.permute(3, 0, 2, 1, 4).reshape(L, N * M, 1, Lq, P)
    out = 0
    for level, v in enumerate(value.split([h * w for h, w in spatial_shapes], dim=1)):
        h, w = spatial_shapes[level]
        v_l = v.permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        sampled = F.grid_sample(v_l, grids[level], mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + (sampled * weights[level]).sum(-1)
    return out.reshape(N, M * D, Lq).transpose(1, 2).contiguous()


def _inputs(seed, shapes, N, M, D, P, Lq, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=dtype)
    # inside and outside [0, 1] (zero padding), across the borders ...
    loc = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype) * 2.0 - 0.5
    # ... and on pixel edges and centres (k / W, (k + 0.5) / W), where bilinear weights are 0 or 1 and the
    # location gradient changes: the floors must agree with grid_sample's
    size = torch.tensor([[w, h] for h, w in shapes], dtype=dtype).view(L, 1, 2)
    k = torch.randint(-2, 9, loc.shape, generator=g).to(dtype)
    half = torch.randint(0, 2, loc.shape, generator=g).to(dtype) * 0.5
    special = torch.rand(loc.shape, generator=g) < 0.3
    loc = torch.where(special, (k + half) / size, loc)
    attw = torch.rand(N, Lq, M, L, P, generator=g, dtype=dtype)
    return value, loc, attw


def _forward_backward(fn, shapes, inputs, seed):
    xs = [t.clone().requires_grad_() for t in inputs]
    out = fn(xs[0], shapes, xs[1], xs[2])
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=out.dtype)
    (out * w).sum().backward()
    return out.detach(), [x.grad for x in xs]


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 7)), min_size=1, max_size=3),
    N=st.integers(1, 2),
    M=st.integers(1, 3),
    D=st.integers(1, 5),
    P=st.integers(1, 3),
    Lq=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_matches_grid_sample_reference(shapes, N, M, D, P, Lq, seed):
    inputs = _inputs(seed, shapes, N, M, D, P, Lq)
    out, grads = _forward_backward(ms_deform_attn, shapes, inputs, seed)
    ref, ref_grads = _forward_backward(_grid_sample_reference, shapes, inputs, seed)
    assert out.shape == (N, Lq, M * D)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for a, b, name in zip(grads, ref_grads, ("value", "locations", "weights")):
        # (float32 rounding: location gradients reach ~100, so relative to their size)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_float64_1x1_and_non_square_levels():
    shapes = [(1, 1), (2, 5), (5, 2), (3, 3)]
    inputs = _inputs(3, shapes, 2, 2, 3, 2, 5, dtype=torch.float64)
    out, grads = _forward_backward(ms_deform_attn, shapes, inputs, 3)
    ref, ref_grads = _forward_backward(_grid_sample_reference, shapes, inputs, 3)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_far_and_non_finite_locations():
    shapes = [(3, 4), (2, 2)]
    value, loc, attw = _inputs(5, shapes, 1, 2, 3, 2, 4)
    loc[0, 0] = 1e6
    loc[0, 1] = -1e6
    loc[0, 2, :, :, :, 0] = float("inf")
    loc[0, 3, 1, 0, 0, 1] = float("nan")
    out, (g_value, g_loc, g_attw) = _forward_backward(ms_deform_attn, shapes, (value, loc, attw), 5)
    # far and infinite: zeros, no gradient (grid_sample: NaN for infinite ones); NaN: NaN in that head, like
    # grid_sample (not an index out of range)
    assert out[0, :3].abs().max() == 0 and g_loc[0, :3].abs().max() == 0 and g_attw[0, :3].abs().max() == 0
    assert out[0, 3].view(2, 3)[1].isnan().all() and not out[0, 3].view(2, 3)[0].isnan().any()
    ref = _grid_sample_reference(value, shapes, loc, attw)
    torch.testing.assert_close(out[:, [0, 1, 3]], ref[:, [0, 1, 3]], rtol=0, atol=1e-5, equal_nan=True)


def test_no_grad_and_reduced_precision():
    shapes = [(4, 3), (2, 2)]
    value, loc, attw = _inputs(7, shapes, 1, 2, 4, 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(
            ms_deform_attn(value, shapes, loc, attw),
            _grid_sample_reference(value, shapes, loc, attw),
            rtol=0,
            atol=1e-5,
        )
    # bfloat16 in, bfloat16 out (computed in float32); mixed (a bfloat16 value under autocast): promoted
    out = ms_deform_attn(value.bfloat16(), shapes, loc.bfloat16(), attw.bfloat16())
    assert out.dtype == torch.bfloat16
    mixed = ms_deform_attn(value.bfloat16(), shapes, loc, attw)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, ms_deform_attn(value.bfloat16().float(), shapes, loc, attw))


def test_compiled_forward_and_backward_as_one_graph():
    """``fullgraph=True`` with gradients: the backward's compiling branch (no sparse tensors) gives the same."""
    shapes = [(5, 4), (2, 3)]
    inputs = _inputs(11, shapes, 1, 2, 3, 2, 6)
    compiled = torch.compile(ms_deform_attn, backend="eager", fullgraph=True)
    out, grads = _forward_backward(compiled, shapes, inputs, 11)
    ref, ref_grads = _forward_backward(ms_deform_attn, shapes, inputs, 11)
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
