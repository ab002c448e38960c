"""The deformable encoder-decoder of DINO with two-stage ("standard") query selection.

Semantics follow the original DINO code (parameter names included, so original state dicts load
as they are); tensors here are batch-first throughout:

- encoder: 6 post-norm layers of multi-scale deformable self-attention (reference point = centre of
  each token, scaled by the valid ratios) and a ReLU FFN; the query is ``src + pos + level_embed``;
- query selection: encoder memory masked (padding and proposals outside ``(0.01, 0.99)`` zeroed),
  ``enc_output`` + ``enc_output_norm``, ``enc_out_class_embed`` scores, top-``num_queries`` on the
  maximum class logit; their boxes (``enc_out_bbox_embed`` delta plus the unsigmoided grid proposal of
  size ``0.05 * 2**level``) become the detached reference boxes; the content queries are the learned
  ``tgt_embed`` (``embed_init_tgt``);
- decoder: 6 post-norm layers of self-attention, deformable cross-attention (reference boxes) and FFN;
  the positional query is ``ref_point_head`` (MLP 512-256-256) of the sine embedding of the reference
  box; after each layer the shared ``bbox_embed`` refines the box in inverse-sigmoid space
  (``eps=1e-3``); the next layer gets it detached, while the returned references keep the gradient
  (look forward twice). The outputs are ``decoder.norm`` of each layer's output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops.deformable_encoder import DeformableEncoderLayer
from ...ops.ms_deform_attn import MSDeformAttn

__all__ = [
    "MLP",
    "DeformableTransformer",
    "gen_encoder_output_proposals",
    "inverse_sigmoid",
    "sine_embed_for_position",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms to at least ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.{i}`` as in the original)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


def _sine(coord: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Interleaved sin/cos of ``coord * 2 pi / temperature ** (2 (i // 2) / num_feats)``; ``[..., num_feats]``."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coord.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = coord[..., None] * (2 * math.pi) / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_embed_for_position(boxes: Tensor, num_feats: int = 128) -> Tensor:
    """Sine embedding of normalised ``(cx, cy, w, h)`` boxes ``[..., 4]``: ``num_feats`` (the original:
    128, i.e. ``d_model / 2``) features each, ordered ``y, x, w, h`` as the original; ``[..., 4 * num_feats]``."""
    x = _sine(boxes[..., 0], num_feats)
    y = _sine(boxes[..., 1], num_feats)
    w = _sine(boxes[..., 2], num_feats)
    h = _sine(boxes[..., 3], num_feats)
    return torch.cat((y, x, w, h), dim=-1)


def gen_encoder_output_proposals(
    memory: Tensor, padding_mask: Tensor, spatial_shapes: Sequence[tuple[int, int]]
) -> tuple[Tensor, Tensor]:
    """One box proposal per encoder token: its cell centre (normalised by the valid size of the level)
    with width and height ``0.05 * 2**level``, unsigmoided; tokens on padding or with any coordinate
    outside ``(0.01, 0.99)`` get ``inf`` proposals and zeroed memory. Returns ``(memory, proposals)``."""
    N = memory.shape[0]
    proposals = []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        mask = padding_mask[:, start : start + h * w].view(N, h, w)
        start += h * w
        valid_h = (~mask[:, :, 0]).sum(1).to(torch.float32)
        valid_w = (~mask[:, 0, :]).sum(1).to(torch.float32)
        ys = torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device)
        xs = torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)  # h, w, 2
        scale = torch.stack([valid_w, valid_h], -1).view(N, 1, 1, 2)
        grid = (grid.unsqueeze(0) + 0.5) / scale
        wh = torch.full_like(grid, 0.05 * (2.0**level))
        proposals.append(torch.cat((grid, wh), -1).view(N, -1, 4))
    proposals_t = torch.cat(proposals, 1)
    valid = ((proposals_t > 0.01) & (proposals_t < 0.99)).all(-1, keepdim=True)
    proposals_t = torch.log(proposals_t / (1 - proposals_t))
    invalid = padding_mask.unsqueeze(-1) | ~valid
    proposals_t = proposals_t.masked_fill(invalid, float("inf"))
    memory = memory.masked_fill(invalid, 0.0)
    return memory, proposals_t


class DecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention to the memory, FFN (post-norm each)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        memory_padding_mask: Tensor | None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        q = tgt + query_pos
        sa = self.self_attn(q, q, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(sa))
        ca = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(ca))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class Encoder(nn.Module):
    def __init__(self, layers: list[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """Centre of every token of every level (normalised by the valid size), seen from every level:
        ``[N, S, L, 2]``."""
        refs = []
        device = valid_ratios.device
        for level, (h, w) in enumerate(spatial_shapes):
            ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device)
            xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device)
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        valid_ratios: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        reference_points = self.reference_points(spatial_shapes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, padding_mask)
        return out


class Decoder(nn.Module):
    """Decoder layers with iterative box refinement; ``bbox_embed`` / ``class_embed`` are the detector's
    (shared) heads, attached by :class:`~focalnet.detection.dino.DINO`."""

    def __init__(self, layers: list[DecoderLayer], d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.d_model = d_model
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        refpoints_unsigmoid: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        valid_ratios: Tensor,
        memory_padding_mask: Tensor | None,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Returns the normed output of each layer and the reference boxes (sigmoid): the initial ones,
        then each layer's refinement (with gradient)."""
        if self.bbox_embed is None:
            raise RuntimeError("the decoder needs its box head (set by DINO)")
        output = tgt
        intermediate: list[Tensor] = []
        reference = refpoints_unsigmoid.sigmoid()
        references = [reference]
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # N, 1, L, 4
        for layer_id, layer in enumerate(self.layers):
            reference_input = reference[:, :, None] * ratios  # N, Q, L, 4
            sine = sine_embed_for_position(reference_input[:, :, 0, :], self.d_model // 2)
            query_pos = self.ref_point_head(sine)
            output = layer(
                output, query_pos, reference_input, memory, spatial_shapes, memory_padding_mask, self_attn_mask
            )
            new_reference = (self.bbox_embed[layer_id](output) + inverse_sigmoid(reference)).sigmoid()
            reference = new_reference.detach()
            references.append(new_reference)
            intermediate.append(self.norm(output))
        return intermediate, references


class DeformableTransformer(nn.Module):
    """DINO's deformable transformer (two-stage "standard" query selection, ``embed_init_tgt``)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_queries: int = 900,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_decoder_layers = num_decoder_layers
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.encoder = Encoder(
            [
                DeformableEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
                for _ in range(num_encoder_layers)
            ]
        )
        self.decoder = Decoder(
            [
                DecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points)
                for _ in range(num_decoder_layers)
            ],
            d_model,
        )
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        # set by DINO (copies of the decoder heads, not shared)
        self.enc_out_class_embed: nn.Module | None = None
        self.enc_out_bbox_embed: nn.Module | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original initialisation: Xavier-uniform for every matrix, the deformable attention's own
        init, a standard normal level embedding."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def valid_ratios(mask: Tensor) -> Tensor:
        """Fraction of each padded level that holds image, ``[N, 2]`` as ``(w, h)``."""
        _, H, W = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float() / H
        valid_w = (~mask[:, 0, :]).sum(1).float() / W
        return torch.stack([valid_w, valid_h], -1)

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        dn_boxes: Tensor | None = None,
        dn_labels: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor, Tensor]:
        """``srcs``/``pos_embeds`` ``[N, C, H_l, W_l]``, ``masks`` ``[N, H_l, W_l]`` (True on padding);
        ``dn_boxes`` (unsigmoided) / ``dn_labels`` the denoising queries put before the matching queries.

        Returns ``(hs, references, hs_enc, ref_enc, init_box_proposal)`` as the original: the decoder
        outputs and references, the selected encoder features ``[1, N, Q, C]`` and their boxes
        (sigmoid) ``[1, N, Q, 4]``, and the selected grid proposals (sigmoid) ``[N, Q, 4]``.
        """
        if self.enc_out_class_embed is None or self.enc_out_bbox_embed is None:
            raise RuntimeError("the transformer needs its encoder heads (set by DINO)")
        spatial_shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]  # traced values while exporting
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)],
            1,
        )
        valid_ratios = torch.stack([self.valid_ratios(m) for m in masks], 1)

        memory = self.encoder(src_flat, pos_flat, spatial_shapes, valid_ratios, mask_flat)

        # two-stage query selection
        output_memory, output_proposals = gen_encoder_output_proposals(memory, mask_flat, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_class = self.enc_out_class_embed(output_memory)
        enc_coord = self.enc_out_bbox_embed(output_memory) + output_proposals  # unsigmoided
        topk = torch.topk(enc_class.max(-1)[0], self.num_queries, dim=1)[1]  # N, Q
        idx4 = topk.unsqueeze(-1).expand(-1, -1, 4)
        refpoint_undetach = torch.gather(enc_coord, 1, idx4)
        init_box_proposal = torch.gather(output_proposals, 1, idx4).sigmoid()
        tgt_undetach = torch.gather(output_memory, 1, topk.unsqueeze(-1).expand(-1, -1, self.d_model))
        N = src_flat.shape[0]
        refpoints = refpoint_undetach.detach()
        tgt = self.tgt_embed.weight.unsqueeze(0).expand(N, -1, -1)
        if dn_boxes is not None and dn_labels is not None:
            refpoints = torch.cat([dn_boxes, refpoints], 1)
            tgt = torch.cat([dn_labels, tgt], 1)

        hs, references = self.decoder(tgt, memory, refpoints, spatial_shapes, valid_ratios, mask_flat, attn_mask)
        return hs, references, tgt_undetach.unsqueeze(0), refpoint_undetach.sigmoid().unsqueeze(0), init_box_proposal
