"""Mask2Former (Cheng et al., CVPR 2022) on a FocalNet backbone: the model, its configuration and builders.

The module tree follows detectron2's ``MaskFormer`` meta-architecture: ``backbone`` (a
:class:`~focalnet.models.focalnet.FocalNetBackbone`, strides 4-32), ``sem_seg_head.pixel_decoder``
(:class:`~.pixel_decoder.MSDeformAttnPixelDecoder`) and ``sem_seg_head.predictor``
(:class:`~.transformer_decoder.MultiScaleMaskedTransformerDecoder`), so a state dict's keys are those of
the released Mask2Former files (:mod:`.official` converts the rest: detectron2's ``criterion.empty_weight``).

``model(pixel_values)`` returns detectron2's output dict, ``{"pred_logits": [B, Q, K + 1], "pred_masks":
[B, Q, H/4, W/4], "aux_outputs": [{"pred_logits", "pred_masks"}, ...]}`` (one auxiliary entry per
prediction before the last: the learnable queries' and every layer's but the last);
``model.forward_logits(pixel_values)`` the last prediction's ``(class_logits, mask_logits)``. The input is a
normalised batch (ImageNet mean/std on the 0-255 scale, as UPerNet's). Losses and post-processing live in
the criterion and post-processing modules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import Tensor, nn

from ...bounds import Bound, check_bounds
from ...models.focalnet import FocalNetBackbone
from ..model import dense_backbone, dense_backbone_from_meta
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = [
    "MASK2FORMER_BACKBONE_DEFAULTS",
    "MASK2FORMER_BOUNDS",
    "MAX_CLASSES",
    "Mask2Former",
    "Mask2FormerConfig",
    "Mask2FormerHead",
    "default_num_queries",
    "mask2former",
    "mask2former_from_meta",
]

# what the reference Swin recipes set in the backbone (the variant's own focal windows are kept)
MASK2FORMER_BACKBONE_DEFAULTS: dict[str, Any] = {"drop_path_rate": 0.3}
MAX_CLASSES = 100_000
# the released recipes use 200 queries for the large backbones, 100 otherwise
_LARGE_PREFIXES = ("focalnet_large", "focalnet_xlarge", "focalnet_huge")

# the range of every count and width (focalnet.bounds), so that a file or a flag cannot ask for absurd sizes;
# widths must also divide into heads and GroupNorm's 32 groups (Mask2FormerConfig.validate)
MASK2FORMER_BOUNDS: dict[str, Bound] = {
    "hidden_dim": Bound(8, 4096),
    "num_queries": Bound(1, 5000),
    "dec_layers": Bound(1, 64),
    "nheads": Bound(1, 64),
    "dim_feedforward": Bound(1, 65536),
    "mask_dim": Bound(1, 4096),
    "conv_dim": Bound(32, 4096),
    "enc_layers": Bound(0, 64),
    "enc_heads": Bound(1, 64),
    "enc_points": Bound(1, 64),
    "enc_dim_feedforward": Bound(1, 65536),
}


@dataclass
class Mask2FormerConfig:
    """The head's sizes (defaults: the released COCO recipes).

    Transformer decoder: ``hidden_dim``, ``num_queries`` (200 for the large backbones), ``dec_layers``
    (transformer layers: 9; detectron2's ``DEC_LAYERS: 10`` counts the predictions, one more),
    ``nheads``, ``dim_feedforward``, ``pre_norm``, ``enforce_input_project``, ``mask_dim`` (the mask
    embedding width, also the pixel decoder's mask-feature conv). Pixel decoder: ``conv_dim``, the
    deformable encoder's ``enc_layers``, ``enc_heads``, ``enc_points``, ``enc_dim_feedforward``,
    ``enc_dropout`` (detectron2 shares ``NHEADS`` between encoder and decoder: both 8). The encoder reads
    backbone strides 8-32; stride 4 joins through the FPN adapter. The number of classes is the model's
    (``num_classes``), not part of this configuration.
    """

    hidden_dim: int = 256
    num_queries: int = 100
    dec_layers: int = 9
    nheads: int = 8
    dim_feedforward: int = 2048
    pre_norm: bool = False
    enforce_input_project: bool = False
    mask_dim: int = 256
    conv_dim: int = 256
    enc_layers: int = 6
    enc_heads: int = 8
    enc_points: int = 4
    enc_dim_feedforward: int = 1024
    enc_dropout: float = 0.0

    def validate(self) -> None:
        """Raise a one-line ``ValueError`` for a setting out of range (types, bounds, divisibility)."""
        for name in MASK2FORMER_BOUNDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"mask2former head: {name} must be an integer, got {v!r}")
        check_bounds(asdict(self), MASK2FORMER_BOUNDS, prefix="mask2former head: ")
        for name in ("pre_norm", "enforce_input_project"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"mask2former head: {name} must be true or false, got {getattr(self, name)!r}")
        d = self.enc_dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ValueError(f"mask2former head: enc_dropout must be in [0, 1), got {d!r}")
        if self.hidden_dim % 4 or self.hidden_dim % self.nheads:
            raise ValueError(
                f"mask2former head: hidden_dim ({self.hidden_dim}) must be a multiple of 4 and of nheads ({self.nheads})"
            )
        if self.conv_dim % 32 or self.conv_dim % self.enc_heads:
            raise ValueError(
                f"mask2former head: conv_dim ({self.conv_dim}) must be a multiple of 32 (GroupNorm) and of "
                f"enc_heads ({self.enc_heads})"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Mask2FormerConfig:
        """A validated configuration from a mapping of its fields (unknown keys are a ``ValueError``)."""
        if not isinstance(values, Mapping):
            raise ValueError(f"mask2former head settings must be a mapping, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise ValueError(f"unknown mask2former head setting(s) {unknown}; valid: {sorted(known)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be an integer in [1, {MAX_CLASSES}], got {num_classes!r}")
    return num_classes


class Mask2FormerHead(nn.Module):
    """detectron2's ``MaskFormerHead``: ``pixel_decoder`` then ``predictor``."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, cfg: Mask2FormerConfig) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels,
            conv_dim=cfg.conv_dim,
            mask_dim=cfg.mask_dim,
            num_layers=cfg.enc_layers,
            num_heads=cfg.enc_heads,
            num_points=cfg.enc_points,
            dim_feedforward=cfg.enc_dim_feedforward,
            dropout=cfg.enc_dropout,
            num_levels=3,
        )
        self.predictor = MultiScaleMaskedTransformerDecoder(
            cfg.conv_dim,
            num_classes=num_classes,
            hidden_dim=cfg.hidden_dim,
            num_queries=cfg.num_queries,
            nheads=cfg.nheads,
            dim_feedforward=cfg.dim_feedforward,
            num_layers=cfg.dec_layers,
            pre_norm=cfg.pre_norm,
            mask_dim=cfg.mask_dim,
            enforce_input_project=cfg.enforce_input_project,
        )

    def forward(self, features: Sequence[Tensor], all_classes: bool = True) -> tuple[list[Tensor | None], list[Tensor]]:
        """Class and mask logits of every prediction for the backbone ``features`` (finest first)."""
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.predictor(multi_scale, mask_features, all_classes)

    def forward_last(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The last prediction's ``(class_logits, mask_logits)`` only, with less work than :meth:`forward`
        (:meth:`~.transformer_decoder.MultiScaleMaskedTransformerDecoder.forward_last`; same values up to
        rounding)."""
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.predictor.forward_last(multi_scale, mask_features)


class Mask2Former(nn.Module):
    """Backbone + pixel decoder + masked-attention transformer decoder (see the module docstring).

    ``model.meta`` holds everything needed to rebuild the model from a saved file
    (:func:`mask2former_from_meta`)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: Mask2FormerConfig | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        head = head or Mask2FormerConfig()
        head.validate()
        self.num_classes = _check_num_classes(num_classes)
        in_channels = list(getattr(backbone, "out_channels", []))
        if len(in_channels) != 4:
            raise ValueError(
                f"Mask2Former needs a backbone with 4 output levels (strides 4-32), got {len(in_channels)}; "
                "the isotropic FocalNets have one"
            )
        self.backbone = backbone
        self.head_cfg = head
        self.sem_seg_head = Mask2FormerHead(in_channels, num_classes, head)
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [str(i) for i in range(self.num_classes)])

    def reset_classes(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        """A new (randomly initialised) ``class_embed`` for ``num_classes`` classes (fine-tuning on other
        classes); everything else is kept."""
        _check_num_classes(num_classes)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        old = self.sem_seg_head.predictor.class_embed
        new = nn.Linear(old.in_features, num_classes + 1).to(old.weight.device, old.weight.dtype)
        self.sem_seg_head.predictor.class_embed = new
        self.num_classes = num_classes
        self.meta["num_classes"] = int(num_classes)
        self.meta["class_names"] = list(class_names) if class_names is not None else None

    def forward(self, pixel_values: Tensor) -> dict[str, Any]:
        """detectron2's output dict: the last prediction and ``aux_outputs`` (the earlier ones)."""
        classes, masks = self.sem_seg_head(self.backbone(pixel_values))
        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])],
        }

    def forward_logits(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """The last prediction: ``(class_logits [B, Q, K + 1], mask_logits [B, Q, H/4, W/4])``. The earlier
        predictions, which only decide the attention masks, are computed at the attended scales
        (:meth:`Mask2FormerHead.forward_last`: the last entries of :meth:`forward` up to rounding)."""
        return self.sem_seg_head.forward_last(self.backbone(pixel_values))


def default_num_queries(backbone: str) -> int:
    """The released recipes' number of queries for a backbone variant: 200 for large and bigger, else 100."""
    return 200 if backbone.startswith(_LARGE_PREFIXES) else 100


def _head_config(head: Mask2FormerConfig | Mapping[str, Any] | None, backbone: str) -> Mask2FormerConfig:
    if isinstance(head, Mask2FormerConfig):
        head.validate()
        return head
    values = dict(head or {})
    values.setdefault("num_queries", default_num_queries(backbone))
    return Mask2FormerConfig.from_dict(values)


def mask2former(
    backbone: str = "focalnet_tiny_lrf",
    num_classes: int = 133,
    backbone_checkpoint: str | os.PathLike | None = None,
    *,
    pretrained: bool | str = False,
    class_names: Sequence[str] | None = None,
    head: Mask2FormerConfig | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Mask2Former:
    """A FocalNet Mask2Former (133 classes: COCO panoptic's 80 things and 53 stuff).

    ``backbone`` is a registered hierarchical variant; it gets ``drop_path_rate=0.3`` (the reference
    recipes) unless ``overrides`` change it (any :class:`~focalnet.FocalNetConfig` field, e.g.
    ``embed_dim=16, depths=(1, 1, 1, 1)`` for a toy model). ``backbone_checkpoint`` is any ImageNet or
    dense-prediction checkpoint (kernels resized as needed); ``pretrained`` downloads the variant's
    ImageNet weights. ``head`` sets :class:`Mask2FormerConfig` fields; ``num_queries`` defaults to
    :func:`default_num_queries` of the backbone.
    """
    _check_num_classes(num_classes)
    cfg = _head_config(head, backbone)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    bb, bb_meta = dense_backbone(backbone, MASK2FORMER_BACKBONE_DEFAULTS, backbone_checkpoint, pretrained, overrides)
    meta = {
        "segmentor": "mask2former",
        **bb_meta,
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names is not None else None,
        "head": cfg.to_dict(),
    }
    return Mask2Former(bb, num_classes, cfg, meta)


def mask2former_from_meta(meta: Mapping[str, Any], **backbone_overrides: Any) -> Mask2Former:
    """The (randomly initialised) :class:`Mask2Former` that a file's ``meta`` describes (backbone config,
    number of classes, head settings); ``drop_path_rate`` is 0 unless ``backbone_overrides`` set it.
    Invalid head settings are a one-line ``ValueError``."""
    bb: FocalNetBackbone = dense_backbone_from_meta(meta, **backbone_overrides)
    cfg = Mask2FormerConfig.from_dict(dict(meta.get("head") or {}))
    return Mask2Former(bb, _check_num_classes(meta["num_classes"]), cfg, meta)
