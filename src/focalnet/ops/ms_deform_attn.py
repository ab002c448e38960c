"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

:func:`ms_deform_attn` reads all levels and points in one gather. The values of each image and head form one
table of rows, every level zero-padded by two pixels on each side. A sampling location, clamped to
``[-2, W] x [-2, H]`` pixels (further out, all four corners are padding either way), becomes the row of its
top-left bilinear corner and four weights (attention weight times bilinear weight), and one weighted
``F.embedding_bag`` sums the ``levels * points * 4`` corner rows of each query and head. That is bilinear
``grid_sample`` with zero padding and ``align_corners=False`` (pixel centres: ``x = loc_x * W - 0.5``, with
grid_sample's rounding, so the floors agree) summed over the points, the semantics of the original CUDA
kernel, on CPU and GPU.

The backward is a custom autograd function. Value gradient: the transposed gather, i.e. the locations sorted
by row and one weighted ``F.embedding_bag`` over the output gradient per corner, shifted onto the corner
rows. Corner-weight gradient: one dot product per corner (``torch.sparse.sampled_addmm``; while compiling,
the ``embedding_bag`` per-sample-weight backward, as sparse tensors cannot be traced), from which the
attention weight and location gradients follow in closed form (through the fractional parts of the pixel
coordinates, as in grid_sample). No data-dependent Python control flow (the level shapes are Python ints),
so ``torch.compile`` traces it as one graph.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from torch.compiler import is_compiling as _is_compiling
except ImportError:  # torch < 2.3
    from torch._dynamo import is_compiling as _is_compiling

__all__ = ["MSDeformAttn", "exporting", "level_sizes", "ms_deform_attn", "ms_deform_attn_grid_sample"]

# zero padding of every level in the value table, pixels on each side: the four corners of a location clamped
# to [-2, W] x [-2, H] are always rows of the table, and at and beyond the clamp bounds all four are padding
# (value and location gradient zero, as grid_sample's out-of-bounds corners)
_PAD = 2


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
    ``[N, Lq, M, L, P]``. Returns ``[N, Lq, M * D]`` in the promoted dtype of the three (computed in float32
    for half and bfloat16).
    """
    if exporting():
        return ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if len(spatial_shapes) != L:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {L} levels of sampling locations")
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    device = value.device

    # the table [N * M * rows, D]: per image and head, the zero-padded levels one after the other
    levels = []
    for v, (h, w) in zip(value.to(compute).split([h * w for h, w in shapes], dim=1), shapes):
        v = v.view(N, h, w, M, D).permute(0, 3, 1, 2, 4)
        levels.append(F.pad(v, (0, 0, _PAD, _PAD, _PAD, _PAD)).reshape(N, M, -1, D))
    table = torch.cat(levels, 2).view(-1, D)

    # pixel coordinates [B = N * Lq * M, 2 (x, y), J = L * P] as grid_sample computes them from the grid
    # 2 * loc - 1: (grid + 1) * W / 2 - 0.5 rounded once (a fused multiply-add)
    B, J = N * Lq * M, L * P
    wide = torch.float64 if device.type != "mps" else compute
    half = torch.tensor([[w / 2 for h, w in shapes for _ in range(P)], [h / 2 for h, w in shapes for _ in range(P)]])
    grid = 2.0 * sampling_locations.to(compute) - 1.0
    shifted = (grid + 1.0).view(B, J, 2).transpose(1, 2).to(wide, memory_format=torch.contiguous_format)
    pix = (shifted * half.to(device, wide) - 0.5).to(compute)
    out = _DeformableGather.apply(table, pix, attention_weights.to(compute).reshape(B, J), shapes, N, Lq, M, P)
    return out.view(N, Lq, M * D).to(dtype)


def exporting() -> bool:
    """True while ``torch.onnx.export`` or ``torch.jit.trace`` records the model: deformable attention then
    takes :func:`ms_deform_attn_grid_sample` (traceable, level sizes kept as traced values)."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def level_sizes(spatial_shapes: Sequence[tuple[Any, Any]], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[L, 2]`` ``(W_l, H_l)`` of ``spatial_shapes`` as a tensor; while tracing, built from the traced sizes
    (``torch.tensor`` would freeze them into constants)."""
    if exporting():
        sizes = [v if isinstance(v, Tensor) else torch.tensor(v) for h, w in spatial_shapes for v in (w, h)]
        return torch.stack(sizes).view(-1, 2).to(device, dtype)
    return torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=device)


def ms_deform_attn_grid_sample(
    value: Tensor,
    spatial_shapes: Sequence[tuple[Any, Any]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """:func:`ms_deform_attn` as per-level bilinear ``F.grid_sample`` (zero padding, ``align_corners=False``)
    and a weighted sum over the levels and points: the Deformable DETR reference formulation, which ONNX
    exports (``GridSample``, opset 16+). ``spatial_shapes`` may hold traced sizes (``x.shape[-2]`` while
    tracing), so height and width stay dynamic in the graph. Forward only (no custom backward)."""
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if len(spatial_shapes) != L:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {L} levels of sampling locations")
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    grids = (2.0 * sampling_locations.to(compute) - 1.0).transpose(1, 2).flatten(0, 1)  # [N * M, Lq, L, P, 2]
    start = 0
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = value[:, start : start + h * w].to(compute)  # [N, h * w, M, D]
        start = start + h * w
        v = v.flatten(2).transpose(1, 2).reshape(N * M, D, h, w)
        sampled.append(
            F.grid_sample(v, grids[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [N * M, D, Lq, P]
    weights = attention_weights.to(compute).transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (torch.cat(sampled, -1) * weights).sum(-1)  # [N * M, D, Lq]
    return out.view(N, M * D, Lq).transpose(1, 2).to(dtype)


def _level_constants(shapes: tuple[tuple[int, int], ...], P: int, device: torch.device) -> dict[str, Tensor]:
    """Per point ``j = (level, point)``: ``size`` ``[2, J]`` (W, H), ``width`` ``[J]`` the padded width,
    ``origin`` ``[J]`` the row of pixel (0, 0) in a head's block, ``corners`` ``[4, J]`` the row offsets of the
    four corners from the top-left one; per level: ``level_width``, ``level_rows`` (padded width and rows)."""
    width = [w + 2 * _PAD for h, w in shapes]
    rows = [(h + 2 * _PAD) * (w + 2 * _PAD) for h, w in shapes]
    origin = [sum(rows[:level]) + _PAD * (width[level] + 1) for level in range(len(shapes))]
    per_point = torch.tensor(
        [[w, h, width[level], origin[level]] for level, (h, w) in enumerate(shapes) for _ in range(P)]
    ).t()
    w_j = per_point[2]
    return {
        "size": per_point[:2].to(device),
        "width": w_j.to(device),
        "origin": per_point[3].to(device),
        "corners": torch.stack([torch.zeros_like(w_j), torch.ones_like(w_j), w_j, w_j + 1]).to(device),
        "level_width": torch.tensor(width, device=device),
        "level_rows": torch.tensor(rows, device=device),
    }


class _DeformableGather(torch.autograd.Function):
    """``out[b] = sum_j attw[b, j] * bilinear(table, pix[b, :, j])``: ``table`` ``[N * M * rows, D]`` (the
    padded levels), ``pix`` ``[B, 2, J]`` pixel coordinates (x, y) of level ``j // P``, ``attw`` ``[B, J]``,
    ``b = (n, q, m)``. Gradients for the table, the pixel coordinates and the attention weights."""

    @staticmethod
    def forward(
        ctx: Any,
        table: Tensor,
        pix: Tensor,
        attw: Tensor,
        shapes: tuple[tuple[int, int], ...],
        N: int,
        Lq: int,
        M: int,
        P: int,
    ) -> Tensor:
        B, _, J = pix.shape
        T = table.shape[0]
        index = torch.int32 if T < 2**31 else torch.int64
        const = _level_constants(shapes, P, pix.device)
        # into [-2, W] x [-2, H]; NaN stays NaN (NaN weights on padding rows: NaN out, as grid_sample)
        clamped = pix.clamp(min=-float(_PAD)).clamp_(max=const["size"].to(pix.dtype))
        inside = clamped == pix  # where the location gradient passes (not clamped, not NaN)
        floor = clamped.floor().nan_to_num_(-float(_PAD))
        frac = clamped - floor
        xy = floor.to(index)
        # row of the top-left corner: head block + level origin + y * padded width + x
        head = (torch.arange(N, device=pix.device).view(N, 1, 1) * M + torch.arange(M, device=pix.device)) * (
            T // (N * M)
        )
        top_left = xy[:, 1] * const["width"].to(index) + xy[:, 0]
        top_left += (const["origin"] + head.expand(N, Lq, M).reshape(B, 1)).to(index)
        corners = top_left.unsqueeze(1) + const["corners"].to(index)  # [B, 4, J]
        fx, fy = frac.unbind(1)
        a1 = attw * fy
        weights = torch.stack([attw - a1, a1], 1).unsqueeze(2) * torch.stack([1.0 - fx, fx], 1).unsqueeze(1)
        ctx.save_for_backward(table, top_left, frac, attw, weights, inside)
        ctx.geometry = (shapes, P, J)
        return F.embedding_bag(corners.view(B, 4 * J), table, per_sample_weights=weights.view(B, 4 * J), mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        table, top_left, frac, attw, weights, inside = ctx.saved_tensors
        shapes, P, J = ctx.geometry
        B = top_left.shape[0]
        T, D = table.shape
        const = _level_constants(shapes, P, top_left.device)
        grad_out = grad_out.contiguous()
        grad_table = grad_pix = grad_attw = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # d out[b] / d weight of a corner = grad_out[b] . table[corner]: one dot product per corner
            corners = (top_left.unsqueeze(1) + const["corners"].to(top_left.dtype)).view(-1)
            if _is_compiling():  # sparse tensors cannot be traced
                bag = torch.arange(B, device=corners.device).repeat_interleave(4 * J, output_size=4 * B * J)
                starts = torch.arange(0, 4 * B * J, 4 * J, device=corners.device)
                g = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                    grad_out, table, corners.long(), starts, bag, 0
                )
            else:
                crow = torch.arange(0, 4 * B * J + 1, 4 * J, device=corners.device, dtype=corners.dtype)
                with warnings.catch_warnings():  # "sparse CSR support is in beta"
                    warnings.simplefilter("ignore", UserWarning)
                    pattern = torch.sparse_csr_tensor(
                        crow, corners, grad_out.new_ones(()).expand(4 * B * J), (B, T), check_invariants=False
                    )
                g = torch.sparse.sampled_addmm(pattern, grad_out, table.t(), beta=0.0).values()
            g = g.view(B, 2, 2, J)  # [b, y corner, x corner, j]
            fx, fy = frac.unbind(1)
            row0, row1 = torch.lerp(g[:, 0, 0], g[:, 0, 1], fx), torch.lerp(g[:, 1, 0], g[:, 1, 1], fx)
            col0, col1 = torch.lerp(g[:, 0, 0], g[:, 1, 0], fy), torch.lerp(g[:, 0, 1], g[:, 1, 1], fy)
            grad_attw = torch.lerp(row0, row1, fy)
            grad_pix = torch.stack([col1 - col0, row1 - row0], 1).mul_(attw.unsqueeze(1))
            grad_pix = torch.where(inside, grad_pix, 0.0)
        if ctx.needs_input_grad[0]:
            # the transposed gather: per corner c, G_c[s] = sum over the locations whose top-left corner is
            # row s of their corner weight times grad_out[b] (locations sorted by row, one embedding_bag for
            # the four corners), then row s of G_c goes to row s + (its level's offset of corner c)
            n = top_left.numel()
            keys, order = top_left.view(-1).sort()
            first = torch.searchsorted(keys, torch.arange(T, dtype=keys.dtype, device=keys.device))
            offsets = (first + torch.arange(4, device=keys.device).unsqueeze(1) * n).view(-1)
            bag = torch.div(order, J, rounding_mode="floor").repeat(4)
            corner_weights = weights.view(B, 4, J).transpose(0, 1).reshape(4, n).index_select(1, order).view(-1)
            shifted = F.embedding_bag(bag, grad_out, offsets, per_sample_weights=corner_weights, mode="sum")
            rows = sum((h + 2 * _PAD) * (w + 2 * _PAD) for h, w in shapes)  # of each head's block
            width = const["level_width"].repeat_interleave(const["level_rows"], output_size=rows).repeat(T // rows)
            shift = torch.stack([torch.zeros_like(width), torch.ones_like(width), width, width + 1])  # [4, T]
            # rows whose shifted target leaves the table are never top-left corners (their G_c is zero)
            targets = (torch.arange(T, device=keys.device) + shift).clamp_(max=T - 1).view(-1)
            grad_table = torch.zeros_like(table).index_add_(0, targets, shifted)
        return grad_table, grad_pix, grad_attw, None, None, None, None, None


def _softmax_last(x: Tensor) -> Tensor:
    """``x.softmax(-1)`` for a short last dimension (the ``L * P`` weights of a head), several times faster
    on CPU than ``torch.softmax`` there; the same values up to rounding. Half precision takes
    ``torch.softmax`` (which autocast runs in float32)."""
    if x.dtype not in (torch.float32, torch.float64):
        return x.softmax(-1)
    e = (x - x.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True)


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
        # both projections of the query in one matrix product
        so, aw = self.sampling_offsets, self.attention_weights
        projected = F.linear(query, torch.cat([so.weight, aw.weight]), torch.cat([so.bias, aw.bias]))
        offsets, logits = projected.split([so.out_features, aw.out_features], -1)
        offsets = offsets.view(N, Lq, M, L, P, 2)
        weights = _softmax_last(logits.reshape(N, Lq, M, L * P)).view(N, Lq, M, L, P)
        if reference_points.shape[-1] == 2:
            # offsets in pixels of each level: divide by (W_l, H_l)
            normalizer = level_sizes(spatial_shapes, offsets.dtype, offsets.device).view(1, 1, 1, L, 1, 2)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer
        elif reference_points.shape[-1] == 4:
            # offsets relative to the reference box: half its size over the number of points
            centre = reference_points[:, :, None, :, None, :2]
            size = reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / P * size * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
