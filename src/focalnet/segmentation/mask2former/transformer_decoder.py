"""Mask2Former's transformer decoder: masked cross-attention -> self-attention -> FFN, cycling over three scales.

The semantics and parameter names are those of detectron2's ``MultiScaleMaskedTransformerDecoder`` (the
reference code), so that ``sem_seg_head.predictor.*`` keys of the released files load unchanged:
``transformer_{self,cross}_attention_layers.{i}`` (``nn.MultiheadAttention`` + LayerNorm),
``transformer_ffn_layers.{i}``, ``decoder_norm``, ``query_feat``, ``query_embed``, ``level_embed``,
``input_proj`` (identity unless the widths differ), ``class_embed`` (``K + 1`` logits, the last one "no
object") and ``mask_embed`` (a 3-layer MLP whose output meets the per-pixel mask features in
``einsum("bqc,bchw->bqhw")``).

``num_layers`` counts the transformer layers (9 in the released models). detectron2's config key
``DEC_LAYERS`` is one more (10): it counts the predictions, one from the learnable queries before the first
layer plus one after every layer. The attention mask of a layer is the previous prediction, resized
bilinearly to the scale the layer attends to, ``sigmoid < 0.5``; a query whose mask would hide every pixel
attends everywhere instead.

Queries are kept batch-first (``[B, Q, C]``); the parameters are those of the reference's sequence-first
modules (``nn.MultiheadAttention`` stores the same tensors either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pixel_decoder import sine_position_embedding

__all__ = ["MLP", "MultiScaleMaskedTransformerDecoder", "allowed_positions", "attention_mask"]


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among the queries (``self_attn``, ``norm``), the positions added to queries and keys."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        q = x + query_pos
        out = tgt + self.self_attn(q, q, x, need_weights=False)[0]
        return out if self.pre_norm else self.norm(out)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from the queries to one scale (``multihead_attn``, ``norm``)."""

    def __init__(self, d_model: int, nhead: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, tgt: Tensor, memory: Tensor, mask: Tensor | None, pos: Tensor, query_pos: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        attended = self.multihead_attn(x + query_pos, memory + pos, memory, attn_mask=mask, need_weights=False)[0]
        out = tgt + attended
        return out if self.pre_norm else self.norm(out)

    def attend(self, tgt: Tensor, memory: Tensor, allowed: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        """:meth:`forward` with the mask as ``allowed`` ``[B, 1, Q, S]`` (True: attend), one mask for all the
        heads (``nn.MultiheadAttention`` takes one copy per head): the module's projections, then
        ``F.scaled_dot_product_attention``. Same result up to rounding."""
        x = self.norm(tgt) if self.pre_norm else tgt
        mha = self.multihead_attn
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        (b, q_len, c), s_len, h = x.shape, memory.shape[1], mha.num_heads
        q = F.linear(x + query_pos, w_q, b_q).view(b, q_len, h, c // h).transpose(1, 2)
        k = F.linear(memory + pos, w_k, b_k).view(-1, s_len, h, c // h).transpose(1, 2)
        v = F.linear(memory, w_v, b_v).view(-1, s_len, h, c // h).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = tgt + mha.out_proj(attended.transpose(1, 2).reshape(b, q_len, c))
        return out if self.pre_norm else self.norm(out)


class FFNLayer(nn.Module):
    """ReLU feed-forward block (``linear1``, ``linear2``, ``norm``)."""

    def __init__(self, d_model: int, dim_feedforward: int, pre_norm: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, tgt: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        out = tgt + self.linear2(F.relu(self.linear1(x)))
        return out if self.pre_norm else self.norm(out)


class MLP(nn.Module):
    """``num_layers`` linear layers (``layers.{i}``) with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def attention_mask(mask_logits: Tensor, size: Sequence[int], num_heads: int) -> Tensor:
    """The cross-attention mask of the next layer: ``mask_logits`` ``[B, Q, h, w]`` resized bilinearly to
    ``size``, True (hidden) where ``sigmoid < 0.5``; rows that would hide every position are released (all
    False). Returns ``[B * num_heads, Q, size[0] * size[1]]`` (``nn.MultiheadAttention``'s layout), detached."""
    with torch.no_grad():
        resized = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
        hidden = resized.sigmoid().flatten(2) < 0.5
        hidden &= ~hidden.all(-1, keepdim=True)
        b, q, s = hidden.shape
        return hidden[:, None].expand(b, num_heads, q, s).reshape(b * num_heads, q, s)


def allowed_positions(mask_logits: Tensor) -> Tensor:
    """The cross-attention mask of :func:`attention_mask` from mask logits already at the attended scale
    ``[B, Q, h, w]``, for ``F.scaled_dot_product_attention``: ``[B, 1, Q, h * w]``, True where a query
    attends (``sigmoid >= 0.5``), every position of a query that would attend to none, one mask for all the
    heads. Detached."""
    with torch.no_grad():
        hidden = mask_logits.flatten(2).sigmoid() < 0.5
        return (~hidden | hidden.all(-1, keepdim=True)).unsqueeze(1)  # out of place: the ONNX exporter has no &=


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """The query decoder. ``forward(multi_scale, mask_features)`` takes the pixel decoder's three maps
    (coarsest first, ``in_channels`` wide) and its mask features ``[B, mask_dim, H, W]``, and returns the
    class logits ``[B, Q, K + 1]`` and mask logits ``[B, Q, H, W]`` of every prediction (``num_layers + 1``,
    the first from the learnable queries alone)."""

    num_feature_levels = 3

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_heads = nheads
        self.num_layers = num_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, pre_norm) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Identity())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def prediction_heads(
        self, output: Tensor, mask_features: Tensor, classes: bool = True
    ) -> tuple[Tensor | None, Tensor]:
        """``(class logits or None, mask logits)`` of the queries ``output`` ``[B, Q, C]``."""
        decoded = self.decoder_norm(output)
        logits = self.class_embed(decoded) if classes else None
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        return logits, masks

    def forward(
        self, multi_scale: Sequence[Tensor], mask_features: Tensor, all_classes: bool = True
    ) -> tuple[list[Tensor | None], list[Tensor]]:
        """``(class logits, mask logits)``, one entry per prediction; ``all_classes=False`` computes the
        class logits of the last prediction only (the others are ``None``)."""
        srcs, pos, sizes, query_pos, output = self._inputs(multi_scale)
        classes: list[Tensor | None] = []
        masks: list[Tensor] = []
        logits, mask = self.prediction_heads(output, mask_features, all_classes or self.num_layers == 0)
        classes.append(logits)
        masks.append(mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn = attention_mask(masks[-1], sizes[level], self.num_heads)
            output = self.transformer_cross_attention_layers[i](output, srcs[level], attn, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            last = i == self.num_layers - 1
            logits, mask = self.prediction_heads(output, mask_features, all_classes or last)
            classes.append(logits)
            masks.append(mask)
        return classes, masks

    def _inputs(
        self, multi_scale: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]], Tensor, Tensor]:
        """The memory ``[B, S_l, C]``, position embeddings ``[1, S_l, C]`` and size of every level, the query
        positions and the initial queries ``[B, Q, C]``."""
        if len(multi_scale) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature maps, got {len(multi_scale)}")
        srcs, pos, sizes = [], [], []
        for i, x in enumerate(multi_scale):
            h, w = x.shape[-2], x.shape[-1]  # traced values while exporting
            sizes.append((h, w))
            pe = sine_position_embedding(h, w, self.hidden_dim // 2, x.device, x.dtype).to(x.dtype)
            pos.append(pe.flatten(1).t().unsqueeze(0))
            srcs.append(self.input_proj[i](x).flatten(2).transpose(1, 2) + self.level_embed.weight[i])
        b = srcs[0].shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        return srcs, pos, sizes, query_pos, output

    def forward_last(self, multi_scale: Sequence[Tensor], mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """The last prediction only, ``(class logits [B, Q, K + 1], mask logits [B, Q, H, W])``: the same
        values as ``forward``'s last entries up to rounding, with less work. The earlier predictions only
        decide the attention masks, so they are computed at the scale each layer attends to, from the mask
        features resized once per scale (bilinear resizing is linear per channel: resizing the features and
        then taking the dot products with the mask embeddings equals resizing the dot products), and the
        mask is one ``[B, 1, Q, S]`` for all heads (:meth:`CrossAttentionLayer.attend`)."""
        srcs, pos, sizes, query_pos, output = self._inputs(multi_scale)
        full = tuple(mask_features.shape[-2:])
        small = [
            mask_features if s == full else F.interpolate(mask_features, size=s, mode="bilinear", align_corners=False)
            for s in sizes
        ]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            embed = self.mask_embed(self.decoder_norm(output))
            allowed = allowed_positions(torch.einsum("bqc,bchw->bqhw", embed, small[level]))
            output = self.transformer_cross_attention_layers[i].attend(
                output, srcs[level], allowed, pos[level], query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
        logits, masks = self.prediction_heads(output, mask_features)
        assert logits is not None
        return logits, masks
