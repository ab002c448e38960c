"""Deformable attention's export path (per-level grid_sample) against the regular one-pass gather: equal on
random inputs, and as a traced ONNX graph with dynamic height and width run by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from focalnet.ops import MSDeformAttn, ms_deform_attn
from focalnet.ops.ms_deform_attn import ms_deform_attn_grid_sample

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
    heads=st.integers(1, 3),
    points=st.integers(1, 4),
    queries=st.integers(1, 7),
    spread=st.floats(0.0, 0.6),
    seed=st.integers(0, 2**16),
)
def test_grid_sample_path_equals_the_gather(shapes, heads, points, queries, spread, seed):
    g = torch.Generator().manual_seed(seed)
    N, D, L = 2, 4, len(shapes)
    value = torch.randn(N, sum(h * w for h, w in shapes), heads, D, generator=g)
    # locations inside, on and beyond the borders (zero padding there)
    loc = torch.rand(N, queries, heads, L, points, 2, generator=g) * (1 + 2 * spread) - spread
    weights = torch.rand(N, queries, heads, L, points, generator=g)
    ref = ms_deform_attn(value, shapes, loc, weights)
    got = ms_deform_attn_grid_sample(value, shapes, loc, weights)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


class _Pyramid(nn.Module):
    """One image -> three levels (strides 1, 2, 4) -> deformable self-attention over all tokens, with the
    level sizes read from the maps (so they stay traced values), as the pixel decoder and DINO do."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2)
        with torch.no_grad():
            for p in self.attn.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)

    def forward(self, x: Tensor) -> Tensor:
        maps = [x, F.avg_pool2d(x, 2, ceil_mode=True), F.avg_pool2d(x, 4, ceil_mode=True)]
        shapes = [(m.shape[-2], m.shape[-1]) for m in maps]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        refs = []
        for h, w in shapes:
            ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
            refs.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2))
        ref = torch.cat(refs, 0)[None, :, None, :].expand(x.shape[0], -1, 3, -1)
        return self.attn(tokens, ref, tokens, shapes)


def test_traced_onnx_graph_keeps_height_and_width_dynamic(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _Pyramid().eval()
    sizes = ((12, 16), (9, 20), (17, 7))
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(1, 8, *sizes[0]),),
            str(tmp_path / "a.onnx"),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {2: "h", 3: "w"}, "y": {1: "tokens"}},
            opset_version=17,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), opts, providers=["CPUExecutionProvider"])
    for i, (h, w) in enumerate(sizes):
        x = torch.randn(1, 8, h, w, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            ref = model(x).numpy()  # the regular (gather) path
        got = session.run(["y"], {"x": x.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@settings(max_examples=20, deadline=None)
@given(src=st.tuples(st.integers(1, 40), st.integers(1, 40)), dst=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_matrix_antialias_resize_equals_interpolate(src, dst):
    from focalnet.detection.export import antialias_resize

    x = torch.rand(1, 3, *src, generator=torch.Generator().manual_seed(src[0] * 41 + src[1]))
    ref = F.interpolate(x, size=dst, mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(antialias_resize(x, torch.tensor(dst)), ref, atol=1e-5, rtol=0)
