"""FocalNet-DINO: a FocalNet backbone under DINO's deformable transformer with two-stage query selection.

The module tree and parameter names are those of the original FocalNet-DINO code, so an original
``state_dict`` loads strictly as it is (``backbone.0.*`` the FocalNet, ``input_proj.*``, ``transformer.*``,
``label_enc``, and the class / box heads shared by the 6 decoder layers, reachable as ``class_embed.i``,
``bbox_embed.i`` and ``transformer.decoder.{class,bbox}_embed.i``: 12 names of one tensor each).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn
from torchvision.ops import box_convert

from ...bounds import FOCALNET_BOUNDS, SIDE, Bound, check_bounds, check_normalization
from ...models.focalnet import FocalNetBackbone
from ..backbone import BACKBONE_KEYWORDS, build_backbone, pop_backbone_options
from ..spec import resolve_options
from .transformer import MLP, DeformableTransformer, inverse_sigmoid

__all__ = [
    "BACKBONE_DEFAULTS",
    "DINO",
    "DINOConfig",
    "DINO_DEFAULTS",
    "PositionEmbeddingSine",
    "build_dino",
    "dino",
    "resized_size",
]

# the released DINO_5scale_focalnet_large_fl4 backbone; focal windows: the variant's own
BACKBONE_DEFAULTS: dict[str, Any] = {"backbone": "focalnet_large_fl4", "focal_windows": None, "drop_path_rate": 0.3}


# the bounds of every count and size of DINOConfig (from a file or model.dino; see focalnet.bounds)
DINO_BOUNDS: dict[str, Any] = {
    "backbone_overrides": FOCALNET_BOUNDS,
    "num_classes": Bound(1, 100_000),
    "num_feature_levels": Bound(1, 8),
    "hidden_dim": Bound(32, 4096),
    "nheads": Bound(1, 64),
    "num_queries": Bound(1, 10_000),
    "enc_layers": Bound(0, 32),
    "dec_layers": Bound(1, 32),
    "dim_feedforward": Bound(1, 65_536),
    "enc_n_points": Bound(1, 64),
    "dec_n_points": Bound(1, 64),
    "dn_number": Bound(0, 10_000),
    "dn_labelbook_size": Bound(1, 100_000),
    "num_select": Bound(1, 10_000),
    "min_size": SIDE,
    "max_size": SIDE,
    "out_indices": Bound(0, 7, max_len=8),
}


@dataclass
class DINOConfig:
    """Every setting of a FocalNet-DINO model (defaults: the released ``DINO_5scale_focalnet_large_fl4``)."""

    backbone: str = "focalnet_large_fl4"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 91
    num_feature_levels: int = 5
    out_indices: tuple[int, ...] | None = None  # default: the last num_feature_levels - 1 stages (at most 4)
    hidden_dim: int = 256
    nheads: int = 8
    num_queries: int = 900
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    enc_n_points: int = 4
    dec_n_points: int = 4
    pe_temperature: float = 20.0
    dn_number: int = 100
    dn_label_noise_ratio: float = 0.5
    dn_box_noise_scale: float = 0.4
    dn_labelbook_size: int | None = None  # default: num_classes
    aux_loss: bool = True
    num_select: int = 300
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    image_std: tuple[float, ...] = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        # counts from a file or a flag within bounds before anything is derived or built from them
        # (enc_layers=10**6 never finished building; nheads=0 divided by zero)
        check_bounds({k: getattr(self, k) for k in DINO_BOUNDS}, DINO_BOUNDS, "dino.")
        check_normalization(self.image_mean, self.image_std, "dino.image_mean/image_std")
        if self.out_indices is None:
            n = min(4, self.num_feature_levels - 1) if self.num_feature_levels > 1 else 1
            self.out_indices = tuple(range(4 - n, 4))
        self.out_indices = tuple(int(i) for i in self.out_indices)
        if self.dn_labelbook_size is None:
            self.dn_labelbook_size = self.num_classes
        if self.num_feature_levels < len(self.out_indices):
            raise ValueError(
                f"num_feature_levels ({self.num_feature_levels}) < number of backbone stages {self.out_indices}"
            )
        if self.num_classes < 1 or self.num_queries < 1 or self.num_select < 1:
            raise ValueError("num_classes, num_queries and num_select must be positive")
        if self.hidden_dim % 32 or self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be a multiple of 32 (GroupNorm) and of nheads")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out_indices", "image_mean", "image_std"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DINOConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown DINO config keys {sorted(unknown)}")
        d = dict(d)
        for k in ("out_indices", "image_mean", "image_std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def resized_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """DETR's test size: short side ``min_size`` unless the long side would pass ``max_size`` (then the
    short side shrinks to fit, rounded); the long side follows the aspect ratio, truncated."""
    short, long = min(h, w), max(h, w)
    size = min_size
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


class PositionEmbeddingSine(nn.Module):
    """DETR's normalised sine position embedding of a padding mask (``True`` on padding): the cumulative
    count of valid rows / columns, divided by the last one (``+1e-6``), times ``2 pi``, through
    ``num_pos_feats`` frequencies of ``temperature``; ``y`` features then ``x`` features."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 20.0) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, mask: Tensor) -> Tensor:
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
        eps, scale = 1e-6, 2 * math.pi
        y = y / (y[:, -1:, :] + eps) * scale
        x = x / (x[:, :, -1:] + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}"


class Joiner(nn.Sequential):
    """``[FocalNetBackbone, PositionEmbeddingSine]`` (so the backbone's keys are ``backbone.0.*``)."""


def _interp_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


class DINO(nn.Module):
    """FocalNet-DINO.

    - ``model(x)`` with ``x`` a normalised float batch ``[B, 3, H, W]`` (no padding; ``mask=`` may give
      the padding, True on padded pixels) returns the original output dict: ``pred_logits [B, Q, C]``,
      ``pred_boxes [B, Q, 4]`` (sigmoid ``cx, cy, w, h`` relative to the unpadded image),
      ``aux_outputs`` (the 5 earlier decoder layers), ``interm_outputs`` and
      ``interm_outputs_for_matching_pre`` (the selected encoder proposals) and ``dn_meta``. In training,
      ``targets`` (``labels`` in ``0..C-1``, ``boxes`` normalised ``cx, cy, w, h``) add the contrastive
      denoising queries (:mod:`~focalnet.detection.dino.denoising`).
    - ``model(images)`` with a list of ``[3, H, W]`` images in ``0..1`` (torchvision style) normalises,
      resizes (``min_size``/``max_size``), pads with a mask and returns, in eval mode, one dict per image
      with the top ``num_select`` (query, class) pairs: ``boxes`` (absolute ``x1, y1, x2, y2`` of the input
      image), ``scores`` (sigmoid) and ``labels``; in training, with ``targets`` (``boxes`` absolute
      ``x1, y1, x2, y2``, ``labels``), the weighted losses of :attr:`criterion` (their sum is the loss).
    """

    def __init__(self, cfg: DINOConfig, backbone: FocalNetBackbone) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_dim
        self.num_queries = cfg.num_queries
        self.num_classes = cfg.num_classes
        self.hidden_dim = hidden
        self.num_feature_levels = cfg.num_feature_levels
        self.aux_loss = cfg.aux_loss
        self.dn_number = cfg.dn_number
        self.dn_label_noise_ratio = cfg.dn_label_noise_ratio
        self.dn_box_noise_scale = cfg.dn_box_noise_scale

        self.transformer = DeformableTransformer(
            d_model=hidden,
            nhead=cfg.nheads,
            num_queries=cfg.num_queries,
            num_encoder_layers=cfg.enc_layers,
            num_decoder_layers=cfg.dec_layers,
            dim_feedforward=cfg.dim_feedforward,
            dropout=cfg.dropout,
            num_feature_levels=cfg.num_feature_levels,
            enc_n_points=cfg.enc_n_points,
            dec_n_points=cfg.dec_n_points,
        )
        self.label_enc = nn.Embedding(cfg.dn_labelbook_size + 1, hidden)

        channels = list(backbone.out_channels)
        projs = [nn.Sequential(nn.Conv2d(c, hidden, kernel_size=1), nn.GroupNorm(32, hidden)) for c in channels]
        in_ch = channels[-1]
        for _ in range(cfg.num_feature_levels - len(channels)):
            projs.append(
                nn.Sequential(nn.Conv2d(in_ch, hidden, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, hidden))
            )
            in_ch = hidden
        self.input_proj = nn.ModuleList(projs)
        self.backbone = Joiner(backbone, PositionEmbeddingSine(hidden // 2, cfg.pe_temperature))

        # heads shared by every decoder layer (one module under 6 + 6 names), encoder heads copied
        class_embed = nn.Linear(hidden, cfg.num_classes)
        bbox_embed = MLP(hidden, hidden, 4, 3)
        with torch.no_grad():
            class_embed.bias.fill_(-math.log((1 - 0.01) / 0.01))
            nn.init.zeros_(bbox_embed.layers[-1].weight)
            nn.init.zeros_(bbox_embed.layers[-1].bias)
        self.bbox_embed = nn.ModuleList([bbox_embed] * cfg.dec_layers)
        self.class_embed = nn.ModuleList([class_embed] * cfg.dec_layers)
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed
        self.transformer.enc_out_bbox_embed = copy.deepcopy(bbox_embed)
        self.transformer.enc_out_class_embed = copy.deepcopy(class_embed)

        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        # not a submodule: no parameters and no state; built on first use in training
        object.__setattr__(self, "_criterion", None)
        self.class_names: list[str] | None = None
        self.category_ids: list[int] | None = None

    # ------------------------------------------------------------------ raw model
    def forward_raw(
        self, x: Tensor, mask: Tensor | None = None, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Any]:
        """The original ``DINO.forward`` on a normalised batch ``x`` with padding ``mask`` ``[B, H, W]``."""
        if mask is None:
            mask = torch.zeros((x.shape[0], x.shape[2], x.shape[3]), dtype=torch.bool, device=x.device)
        body, pos_embed = self.backbone[0], self.backbone[1]
        feats = body(x)
        srcs, masks, poss = [], [], []
        for level, feat in enumerate(feats):
            m = _interp_mask(mask, feat.shape[-2:])
            srcs.append(self.input_proj[level](feat))
            masks.append(m)
            poss.append(pos_embed(m).to(feat.dtype))
        for level in range(len(feats), self.num_feature_levels):
            src = self.input_proj[level](feats[-1] if level == len(feats) else srcs[-1])
            m = _interp_mask(mask, src.shape[-2:])
            srcs.append(src)
            masks.append(m)
            poss.append(pos_embed(m).to(src.dtype))

        dn_labels = dn_boxes = attn_mask = dn_meta = None
        if self.training and targets is not None and self.dn_number > 0:
            from .denoising import prepare_for_cdn

            dn_labels, dn_boxes, attn_mask, dn_meta = prepare_for_cdn(
                dn_args=(targets, self.dn_number, self.dn_label_noise_ratio, self.dn_box_noise_scale),
                training=True,
                num_queries=self.num_queries,
                num_classes=self.num_classes,
                hidden_dim=self.hidden_dim,
                label_enc=self.label_enc,
            )

        hs, reference, hs_enc, ref_enc, init_box_proposal = self.transformer(
            srcs, masks, poss, dn_boxes, dn_labels, attn_mask
        )
        if self.training:
            # keeps label_enc in the graph when no denoising query was made (DDP)
            hs[0] = hs[0] + self.label_enc.weight[0, 0] * 0.0
        coords = torch.stack(
            [(head(h) + inverse_sigmoid(ref)).sigmoid() for ref, head, h in zip(reference[:-1], self.bbox_embed, hs)]
        )
        logits = torch.stack([head(h) for head, h in zip(self.class_embed, hs)])
        if dn_meta is not None:
            from .denoising import dn_post_process

            logits, coords = dn_post_process(logits, coords, dn_meta, self.aux_loss, self._set_aux_loss)
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": coords[-1]}
        if self.aux_loss:
            out["aux_outputs"] = self._set_aux_loss(logits, coords)
        interm_class = self.transformer.enc_out_class_embed(hs_enc[-1])
        out["interm_outputs"] = {"pred_logits": interm_class, "pred_boxes": ref_enc[-1]}
        out["interm_outputs_for_matching_pre"] = {"pred_logits": interm_class, "pred_boxes": init_box_proposal}
        out["dn_meta"] = dn_meta
        return out

    @staticmethod
    def _set_aux_loss(logits: Tensor, coords: Tensor) -> list[dict[str, Tensor]]:
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], coords[:-1])]

    # ------------------------------------------------------------------ image-list interface
    @property
    def criterion(self) -> nn.Module:
        """The training loss (:class:`~focalnet.detection.dino.criterion.DINOCriterion`), built on first use."""
        if self._criterion is None:
            try:
                from ...ops.matching import HungarianMatcher
                from .criterion import DINOCriterion
            except ImportError as e:
                raise NotImplementedError(f"DINO training needs the DINO criterion and matcher ({e})") from e
            object.__setattr__(self, "_criterion", DINOCriterion(self.num_classes, HungarianMatcher()))
        return self._criterion

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """Normalise, resize (eval mode; training keeps the sizes the data pipeline made) and pad a list
        of ``[3, H, W]`` images in ``0..1``: ``(batch, padding mask, resized sizes)``."""
        if not images:
            raise ValueError("empty image list")
        mean = torch.tensor(self.cfg.image_mean, device=images[0].device).view(-1, 1, 1)
        std = torch.tensor(self.cfg.image_std, device=images[0].device).view(-1, 1, 1)
        out = []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected [3, H, W] images, got shape {tuple(img.shape)}")
            img = (img.float() - mean) / std
            if not self.training:
                size = resized_size(int(img.shape[-2]), int(img.shape[-1]), self.cfg.min_size, self.cfg.max_size)
                if size != tuple(img.shape[-2:]):
                    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            out.append(img)
        sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in out]
        H = max(s[0] for s in sizes)
        W = max(s[1] for s in sizes)
        batch = out[0].new_zeros(len(out), 3, H, W)
        mask = torch.ones(len(out), H, W, dtype=torch.bool, device=batch.device)
        for i, (img, (h, w)) in enumerate(zip(out, sizes)):
            batch[i, :, :h, :w] = img
            mask[i, :h, :w] = False
        return batch, mask, sizes

    @torch.no_grad()
    def postprocess(self, out: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Top ``num_select`` (query, class) pairs by sigmoid score, boxes scaled to ``image_sizes``."""
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        B, Q, C = logits.shape
        scores, idx = logits.sigmoid().view(B, -1).topk(min(self.cfg.num_select, Q * C), dim=1)
        query = idx // C
        labels = idx % C
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        results = []
        for b, (h, w) in enumerate(image_sizes):
            scale = torch.tensor([w, h, w, h], dtype=xyxy.dtype, device=xyxy.device)
            results.append({"boxes": xyxy[b, query[b]] * scale, "scores": scores[b], "labels": labels[b]})
        return results

    def forward(
        self,
        images: Tensor | list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        mask: Tensor | None = None,
    ) -> Any:
        if isinstance(images, Tensor):
            return self.forward_raw(images, mask, targets)
        if not isinstance(images, (list, tuple)):
            raise TypeError(
                f"expected a [B, 3, H, W] tensor or a list of [3, H, W] images, got {type(images).__name__}"
            )
        originals = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        batch, pad_mask, sizes = self.preprocess(list(images))
        if self.training:
            if targets is None:
                raise ValueError("training needs targets (boxes as absolute x1, y1, x2, y2, and labels)")
            if len(targets) != len(images):
                raise ValueError(f"{len(targets)} targets for {len(images)} images")
            criterion = self.criterion
            dino_targets = []
            for t, (h, w) in zip(targets, sizes):
                scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=batch.device)
                boxes = box_convert(t["boxes"].to(batch.device).float(), "xyxy", "cxcywh") / scale
                dino_targets.append({"labels": t["labels"].to(batch.device), "boxes": boxes})
            out = self.forward_raw(batch, pad_mask, dino_targets)
            return criterion(out, dino_targets)
        out = self.forward_raw(batch, pad_mask)
        return self.postprocess(out, originals)


# every DINOConfig field a builder option may set (``model.dino`` in a run config), with its default
DINO_DEFAULTS: dict[str, Any] = {
    k: DINOConfig.__dataclass_fields__[k].default
    for k in DINOConfig.__dataclass_fields__
    if k not in ("backbone", "backbone_overrides", "num_classes")
}


def dino(
    backbone: str | None = None,
    num_feature_levels: int = 5,
    num_classes: int = 91,
    **options: Any,
) -> DINO:
    """Build FocalNet-DINO on any FocalNet variant.

    Defaults are the released ``DINO_5scale_focalnet_large_fl4`` (FocalNet-L, 4 focal levels, kernels
    3/5/7/9, stages 0-3 + 1 extra level); ``dino("focalnet_large_fl3", 4)`` is ``DINO_4scale_focalnet_large_fl3``
    (kernels 5/7/9, stages 1-3 + 1). ``options``: :class:`DINOConfig` fields (``num_queries=300``,
    ``enc_layers=2``, ...) and backbone keywords (``backbone_checkpoint``, ``frozen_stages``,
    ``grad_checkpointing``, ``backbone_overrides`` or any :class:`~focalnet.FocalNetConfig` field; default
    ``drop_path_rate=0.3`` as the original and the variant's focal windows). ``backbone_checkpoint`` loads
    ImageNet or detection weights into the backbone (see :func:`focalnet.create_backbone`).
    """
    bb = pop_backbone_options(options)
    fields = {k: bb.pop(k) for k in list(bb) if k not in BACKBONE_KEYWORDS}
    overrides = {**(bb.pop("backbone_overrides", None) or {}), **fields}
    settings = resolve_options("DINO", DINO_DEFAULTS, {"num_feature_levels": num_feature_levels, **options})
    cfg = DINOConfig(
        backbone=backbone or BACKBONE_DEFAULTS["backbone"],
        num_classes=num_classes,
        backbone_overrides=overrides,
        **settings,
    )
    return build_dino(cfg, **bb)


def build_dino(
    cfg: DINOConfig,
    *,
    backbone_checkpoint: str | None = None,
    frozen_stages: int = -1,
    grad_checkpointing: bool = False,
) -> DINO:
    """:class:`DINO` from a :class:`DINOConfig`."""
    body = build_backbone(
        cfg.backbone,
        BACKBONE_DEFAULTS,
        out_indices=cfg.out_indices,
        backbone_checkpoint=backbone_checkpoint,
        frozen_stages=frozen_stages,
        grad_checkpointing=grad_checkpointing,
        backbone_overrides=cfg.backbone_overrides,
    )
    return DINO(cfg, body)
