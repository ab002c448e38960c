"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

:func:`ms_deform_attn` samples every level with one bilinear ``F.grid_sample`` call (zero padding,
``align_corners=False``: the semantics of the original CUDA kernel) and accumulates the attention-weighted
points level by level, so no ``[.., levels * points]`` stack is ever built. It is the same function on
CPU and GPU, differentiable in the value, the sampling locations and the weights, and free of
data-dependent Python control flow (the level shapes are Python ints), so ``torch.compile`` traces it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MSDeformAttn", "ms_deform_attn"]


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Deformable attention over several feature levels.

    ``value`` ``[N, S, M, D]`` (``S = sum(H_l * W_l)``, levels flattened row-major and concatenated),
    ``spatial_shapes`` the ``(H_l, W_l)`` of each level, ``sampling_locations`` ``[N, Lq, M, L, P, 2]``
    (normalised ``x, y`` in ``[0, 1]`` of each level; outside reads zeros), ``attention_weights``
    ``[N, Lq, M, L, P]``. Returns ``[N, Lq, M * D]``.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if len(spatial_shapes) != L:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {L} levels of sampling locations")
    # level-major [L, N*M, Lq, P, 2] grids in [-1, 1] and [L, N*M, 1, Lq, P] weights: one contiguous
    # slice per level
    grids = (2.0 * sampling_locations - 1.0).permute(3, 0, 2, 1, 4, 5).reshape(L, N * M, Lq, P, 2)
    weights = attention_weights.permute(3, 0, 2, 1, 4).reshape(L, N * M, 1, Lq, P)
    inplace = not torch.is_grad_enabled()
    out: Tensor | None = None
    for level, v in enumerate(value.split([h * w for h, w in spatial_shapes], dim=1)):
        h, w = spatial_shapes[level]
        v_l = v.permute(0, 2, 3, 1).reshape(N * M, D, h, w)  # each head's channels as an image batch
        sampled = F.grid_sample(v_l, grids[level], mode="bilinear", padding_mode="zeros", align_corners=False)
        # [N*M, D, Lq, P] -> weighted sum over the points; in place when nothing needs the samples
        sampled = sampled.mul_(weights[level]) if inplace else sampled * weights[level]
        part = sampled.sum(-1)  # [N*M, D, Lq]
        out = part if out is None else out + part
    assert out is not None
    return out.reshape(N, M * D, Lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the original parameter names and initialisation.

    ``sampling_offsets`` (zero weights, biases pointing each head in its own direction with the point
    index as length), ``attention_weights`` (zeros: uniform softmax), ``value_proj`` / ``output_proj``
    (Xavier-uniform, zero bias).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values  # onto the unit square
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * scale
        self.sampling_offsets.bias.copy_(bias.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``query`` ``[N, Lq, C]``; ``reference_points`` ``[N, Lq, L, 2]`` (points) or ``[N, Lq, L, 4]``
        (boxes ``cx, cy, w, h``), normalised; ``input_flatten`` ``[N, S, C]``; ``input_padding_mask``
        ``[N, S]`` (True on padding). Returns ``[N, Lq, C]``."""
        N, Lq, _ = query.shape
        S = input_flatten.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P).softmax(-1).view(N, Lq, M, L, P)
        if reference_points.shape[-1] == 2:
            # offsets in pixels of each level: divide by (W_l, H_l)
            normalizer = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device
            ).view(1, 1, 1, L, 1, 2)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer
        elif reference_points.shape[-1] == 4:
            # offsets relative to the reference box: half its size over the number of points
            centre = reference_points[:, :, None, :, None, :2]
            size = reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / P * size * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
