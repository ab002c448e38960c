"""Mask2Former's pixel decoder: a deformable-attention encoder over strides 8-32 and an FPN adapter to stride 4.

The semantics and parameter names are those of detectron2's ``MSDeformAttnPixelDecoder`` (the reference
Mask2Former code), so that ``sem_seg_head.pixel_decoder.*`` keys of the released files load unchanged:

* ``input_proj.{i}``: 1x1 conv + GroupNorm(32) per deformable level, coarsest first (stride 32, 16, 8);
* ``transformer.level_embed`` and ``transformer.encoder.layers.{i}``: post-norm encoder layers, each a
  multi-scale deformable self-attention (:class:`focalnet.ops.MSDeformAttn`) + a ReLU FFN, queries at the
  pixel centres of every level, keys with the normalised sine position embedding plus the level embedding;
* ``adapter_{j}`` / ``layer_{j}``: for each finer backbone level (stride 4 by default), a lateral 1x1 conv
  and a 3x3 output conv (no bias, GroupNorm, ReLU on the output conv), top-down with bilinear upsampling;
* ``mask_features``: 1x1 conv of the finest map to the mask embedding width.

The decoder runs with autocast off, half-precision inputs in float32, as the reference does (float64 stays).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops import DeformableEncoderLayer, MSDeformAttn

__all__ = ["ConvNorm", "GroupNorm32", "MSDeformAttnPixelDecoder", "sine_position_embedding"]


def sine_position_embedding(
    height: int,
    width: int,
    num_feats: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
) -> Tensor:
    """The normalised 2-D sine embedding of DETR (``normalize=True``, scale ``2 pi``) of an unpadded
    ``height x width`` map: ``[2 * num_feats, height, width]``, y features first (float32 for half
    precision, as the reference computes it)."""
    dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=dtype, device=device)
    x = torch.arange(1, width + 1, dtype=dtype, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=dtype, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def _encode(v: Tensor) -> Tensor:  # [n] -> [n, num_feats]: sin on even, cos on odd channels, interleaved
        p = v[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = _encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = _encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups that also takes a map of one value per group (a 1x1 coarsest level of a
    single small image with 32 channels: the normalised values are 0, the output the bias), where
    ``F.group_norm`` refuses it as a training batch of one."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if x.shape[0] * (x.shape[1] // self.num_groups) * x[0, 0].numel() == 1:  # x - mean is 0 exactly
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return (x - x) * self.weight.view(shape) + self.bias.view(shape)
        return super().forward(x)


class ConvNorm(nn.Conv2d):
    """A conv with a ``norm`` child and an optional ReLU (detectron2's ``Conv2d`` wrapper: the same keys,
    ``weight``, ``bias`` where present, ``norm.weight``, ``norm.bias``)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, norm: nn.Module | None = None, relu: bool = False
    ) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=norm is None)
        self.norm = norm
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's ``c2_xavier_fill``: Kaiming-uniform with ``a=1``, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _DeformableEncoder(nn.Module):
    def __init__(self, layers: Sequence[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _EncoderOnly(nn.Module):
    """Holds ``level_embed`` and ``encoder.layers`` (the reference's ``transformer`` child)."""

    def __init__(self, d_model: int, layers: Sequence[DeformableEncoderLayer], n_levels: int) -> None:
        super().__init__()
        self.encoder = _DeformableEncoder(layers)
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))


def reference_points(
    spatial_shapes: Sequence[tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The normalised pixel centres ``(x, y)`` of every level, one after the other: ``[1, S, 1, 2]`` (no
    padding: every level's valid ratio is 1)."""
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=dtype, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=dtype, device=device) + 0.5) / w
        refs.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2))
    return torch.cat(refs, 0)[None, :, None, :]


class MSDeformAttnPixelDecoder(nn.Module):
    """The multi-scale pixel decoder.

    ``in_channels`` are the widths of the backbone levels, finest first, with strides ``in_strides``;
    the ``num_levels`` coarsest go through the deformable encoder, the others through the FPN adapter
    (``adapter_1`` is the level just finer than the encoder's finest). ``forward(features)`` returns
    ``(mask_features [B, mask_dim, H/4, W/4], multi_scale [3 maps of conv_dim channels: strides 32, 16, 8])``
    (the first three maps, coarsest first, as the transformer decoder consumes them).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not 1 <= num_levels <= len(in_channels):
            raise ValueError(f"num_levels {num_levels} must be in [1, {len(in_channels)}] (the backbone's levels)")
        self.num_levels = num_levels
        self.num_fpn_levels = len(in_channels) - num_levels
        self.conv_dim = conv_dim
        # coarsest first, as the encoder reads them
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), GroupNorm32(conv_dim))
            for c in in_channels[self.num_fpn_levels :][::-1]
        )
        layers = [
            DeformableEncoderLayer(conv_dim, dim_feedforward, dropout, num_levels, num_heads, num_points)
            for _ in range(num_layers)
        ]
        self.transformer = _EncoderOnly(conv_dim, layers, num_levels)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        for j, c in enumerate(in_channels[: self.num_fpn_levels]):
            self.add_module(f"adapter_{j + 1}", ConvNorm(c, conv_dim, 1, GroupNorm32(conv_dim)))
            self.add_module(f"layer_{j + 1}", ConvNorm(conv_dim, conv_dim, 3, GroupNorm32(conv_dim), relu=True))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference initialisation: Xavier-uniform input projections and encoder matrices, the
        deformable attention's own scheme, a standard-normal level embedding, c2-Xavier convs."""
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        for p in self.transformer.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.transformer.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.transformer.level_embed)
        _c2_xavier_fill(self.mask_features)
        for j in range(self.num_fpn_levels):
            _c2_xavier_fill(getattr(self, f"adapter_{j + 1}"))
            _c2_xavier_fill(getattr(self, f"layer_{j + 1}"))

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        if len(features) != self.num_fpn_levels + self.num_levels:
            raise ValueError(f"expected {self.num_fpn_levels + self.num_levels} feature maps, got {len(features)}")
        device_type = features[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward(features)

    def _forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        features = [f if f.dtype in (torch.float32, torch.float64) else f.float() for f in features]
        coarse_first = list(features[self.num_fpn_levels :][::-1])
        shapes = [(f.shape[-2], f.shape[-1]) for f in coarse_first]  # traced values while exporting
        srcs, pos = [], []
        level_embed = self.transformer.level_embed
        for lvl, (x, proj) in enumerate(zip(coarse_first, self.input_proj)):
            srcs.append(proj(x).flatten(2).transpose(1, 2))
            pe = sine_position_embedding(*shapes[lvl], self.conv_dim // 2, x.device, x.dtype)
            pos.append(pe.flatten(1).t() + level_embed[lvl])
        src = torch.cat(srcs, 1)
        pos_all = torch.cat(pos, 0).unsqueeze(0)
        refs = reference_points(shapes, src.device, src.dtype).expand(src.shape[0], -1, self.num_levels, -1)
        for layer in self.transformer.encoder.layers:
            src = layer(src, pos_all, refs, shapes)
        b = src.shape[0]
        outs = [
            z.transpose(1, 2).reshape(b, -1, h, w)
            for z, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        # the FPN adapter: finer backbone levels, top-down
        for j in range(self.num_fpn_levels - 1, -1, -1):
            lateral = getattr(self, f"adapter_{j + 1}")(features[j])
            up = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(getattr(self, f"layer_{j + 1}")(lateral + up))
        return self.mask_features(outs[-1]), outs[:3]
