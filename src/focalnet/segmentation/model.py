"""UPerNet (mmseg's ``UPerHead``) with an auxiliary FCN head on a FocalNet backbone.

The decode head follows mmsegmentation's UPerNet: a pyramid pooling module (scales 1, 2, 3, 6) on the
last backbone level, FPN-style top-down fusion of the four levels, 3x3 conv-BN-ReLU modules of 512
channels, dropout 0.1 and a 1x1 classifier. The auxiliary ``FCNHead`` (one 3x3 conv-BN-ReLU of 256
channels on the stage-3 feature, loss weight 0.4) only runs in training.

The module tree, and so every state dict key, is that of the original mmsegmentation 0.x model, and in
eval mode the logits are the original's for the same weights. Files become models in
:mod:`focalnet.segmentation.load` (ours and the released mmseg files, see :mod:`focalnet.segmentation.mmseg`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..bounds import Bound, check_bounds
from ..factory import create_backbone
from ..models.focalnet import FocalNetBackbone

__all__ = [
    "ConvModule",
    "PPM",
    "UPerHead",
    "FCNHead",
    "UPerNet",
    "HeadConfig",
    "upernet",
    "upernet_from_meta",
    "dense_backbone",
    "dense_backbone_from_meta",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IGNORE_INDEX = 255
# mmseg's img_norm_cfg (RGB, 0-255 pixel scale)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# what the UPerNet configs of the original FocalNet segmentation code change in the backbone
UPERNET_BACKBONE_DEFAULTS: dict[str, Any] = {"focal_windows": (9, 9, 9, 9), "drop_path_rate": 0.3}


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


# ConvModule children were numbered (0, 1, 2) before they took mmcv's names; old files still load
_LEGACY_CONV_MODULE = {"0.": "conv.", "1.": "bn."}


class ConvModule(nn.Sequential):
    """Conv (no bias) -> BatchNorm (eps 1e-5, momentum 0.1) -> ReLU, as mmcv's ``ConvModule`` with
    ``norm_cfg=BN`` and the same child names (``conv``, ``bn``, ``activate``), so that the head's
    state dict keys are those of the original mmsegmentation files. State dicts with the earlier
    numbered names (``.0.weight``, ``.1.running_mean``) are renamed on load."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, padding: int = 0) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=False),
                bn=nn.BatchNorm2d(out_ch),
                activate=nn.ReLU(inplace=True),
            )
        )
        self._register_load_state_dict_pre_hook(_rename_legacy_conv_module)


def _rename_legacy_conv_module(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for old, new in _LEGACY_CONV_MODULE.items():
            if rest.startswith(old) and prefix + new + rest[len(old) :] not in state_dict:
                state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)


class PPM(nn.ModuleList):
    """Pyramid pooling: adaptive average pools at ``pool_scales``, each followed by a 1x1 ConvModule,
    upsampled back to the input size."""

    def __init__(self, pool_scales: Sequence[int], in_ch: int, channels: int, align_corners: bool = False) -> None:
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_ch, channels, 1)) for s in pool_scales)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return [_resize(m(x), x.shape[-2:], self.align_corners) for m in self]


class UPerHead(nn.Module):
    """mmseg ``UPerHead``: PPM on the last level, lateral 1x1 + top-down sum + 3x3 FPN convs, concat,
    3x3 fusion, dropout, 1x1 classifier. Returns logits at the resolution of the first level."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels, align_corners)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, 1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, 1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)]
        outs.append(laterals[-1])
        outs = [outs[0]] + [_resize(o, outs[0].shape[-2:], self.align_corners) for o in outs[1:]]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """mmseg ``FCNHead`` (``num_convs`` 3x3 ConvModules, no input concat), dropout, 1x1 classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *[ConvModule(in_channels if i == 0 else channels, channels, 3, 1) for i in range(num_convs)]
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


@dataclass
class HeadConfig:
    """Decode/auxiliary head settings (defaults: the UPerNet ADE20K recipe)."""

    channels: int = 512
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    align_corners: bool = False
    aux: bool = True
    aux_in_index: int = 2
    aux_channels: int = 256
    aux_num_convs: int = 1
    aux_weight: float = 0.4

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "channels": Bound(1, 8192),
        "pool_scales": Bound(1, 128, max_len=16),
        "aux_in_index": Bound(0, 7),
        "aux_channels": Bound(1, 8192),
        "aux_num_convs": Bound(0, 64),
    }

    def validate(self) -> None:
        check_bounds({k: getattr(self, k) for k in self.BOUNDS}, self.BOUNDS, "head.")
        if self.channels < 1 or self.aux_channels < 1:
            raise ValueError("channels and aux_channels must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.pool_scales or any(s < 1 for s in self.pool_scales):
            raise ValueError(f"pool_scales must be positive integers, got {self.pool_scales}")
        if self.aux_weight < 0:
            raise ValueError("aux_weight must be >= 0")


class UPerNet(nn.Module):
    """Backbone + UPerHead (+ FCN auxiliary head in training).

    ``model(images)`` returns per-pixel logits at the input size (``N x num_classes x H x W``);
    ``model(images, labels)`` returns a dict of losses (``loss`` = decode + ``aux_weight`` x aux,
    cross-entropy ignoring :data:`IGNORE_INDEX`) and the pixel accuracy of the decode head.
    ``model.meta`` holds everything needed to rebuild the model from a saved file.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: HeadConfig | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        head = head or HeadConfig()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        in_channels = list(backbone.out_channels)
        if len(in_channels) < 2:
            raise ValueError("UPerNet needs a multi-level backbone (at least two output levels)")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head_cfg = head
        self.decode_head = UPerHead(
            in_channels, num_classes, head.channels, head.pool_scales, head.dropout, head.align_corners
        )
        self.auxiliary_head: FCNHead | None = None
        if head.aux:
            if not 0 <= head.aux_in_index < len(in_channels):
                raise ValueError(
                    f"aux_in_index {head.aux_in_index} is not a backbone level (0..{len(in_channels) - 1})"
                )
            self.auxiliary_head = FCNHead(
                in_channels[head.aux_in_index], num_classes, head.aux_channels, head.aux_num_convs, head.dropout
            )
        self.meta: dict[str, Any] = dict(meta or {})

    def reset_classes(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        """New (randomly initialised) classifiers ``conv_seg`` of both heads for ``num_classes`` classes
        (fine-tuning a trained segmentor on other classes); everything else is kept."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        heads = [self.decode_head] + ([self.auxiliary_head] if self.auxiliary_head is not None else [])
        for h in heads:
            old = h.conv_seg
            h.conv_seg = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device, old.weight.dtype)
        self.num_classes = num_classes
        self.meta["num_classes"] = int(num_classes)
        self.meta["class_names"] = list(class_names) if class_names is not None else None

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [str(i) for i in range(self.num_classes)])

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the decode head, resized to the input size."""
        return _resize(self.decode_head(self.backbone(x)), x.shape[-2:], self.head_cfg.align_corners)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        if labels is None:
            return self.encode_decode(x)
        feats = self.backbone(x)
        out = _resize(self.decode_head(feats), labels.shape[-2:], self.head_cfg.align_corners)
        loss_decode = F.cross_entropy(out.float(), labels, ignore_index=IGNORE_INDEX)
        losses: dict[str, torch.Tensor] = {"loss_decode": loss_decode}
        loss = loss_decode
        if self.auxiliary_head is not None and self.head_cfg.aux_weight > 0:
            aux = _resize(
                self.auxiliary_head(feats[self.head_cfg.aux_in_index]), labels.shape[-2:], self.head_cfg.align_corners
            )
            loss_aux = F.cross_entropy(aux.float(), labels, ignore_index=IGNORE_INDEX)
            losses["loss_aux"] = loss_aux
            loss = loss + self.head_cfg.aux_weight * loss_aux
        with torch.no_grad():
            valid = labels != IGNORE_INDEX
            acc = (out.argmax(1)[valid] == labels[valid]).float().mean() if valid.any() else out.new_zeros(())
        losses["loss"] = loss
        losses["acc"] = acc
        return losses


def dense_backbone(
    backbone: str,
    defaults: Mapping[str, Any],
    backbone_checkpoint: str | os.PathLike | None,
    pretrained: bool | str,
    overrides: Mapping[str, Any],
) -> tuple[FocalNetBackbone, dict[str, Any]]:
    """A segmentor's FocalNet backbone (4 levels, strides 4-32) and the ``meta`` entries that rebuild it
    (``backbone``, ``backbone_overrides``, ``backbone_config``): ``defaults`` (the segmentor's recipe) under
    ``overrides``; a default ``focal_windows`` follows a ``depths`` override of another number of stages."""
    bb_over = {**defaults, **overrides}
    depths = bb_over.get("depths")
    if depths is not None and "focal_windows" in defaults and "focal_windows" not in overrides:
        windows = tuple(defaults["focal_windows"])
        if len(depths) != len(windows):
            bb_over["focal_windows"] = windows[:1] * len(depths)
    bb_over = {k: tuple(v) if isinstance(v, list) else v for k, v in bb_over.items()}
    bb: FocalNetBackbone = create_backbone(
        backbone, out_indices=(0, 1, 2, 3), checkpoint_path=backbone_checkpoint, pretrained=pretrained, **bb_over
    )
    meta = {
        "backbone": backbone,
        "backbone_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in bb_over.items()},
        "backbone_config": bb.cfg.to_dict(),
    }
    return bb, meta


def dense_backbone_from_meta(meta: Mapping[str, Any], **backbone_overrides: Any) -> FocalNetBackbone:
    """The (randomly initialised) backbone of a file's ``meta["backbone_config"]``, ``drop_path_rate`` 0
    unless ``backbone_overrides`` set it."""
    from ..models.focalnet import FocalNetConfig

    cfg = FocalNetConfig.from_dict(dict(meta["backbone_config"])).replace(
        **{"drop_path_rate": 0.0, **backbone_overrides}
    )
    return FocalNetBackbone(cfg, out_indices=(0, 1, 2, 3))


def upernet(
    backbone: str = "focalnet_tiny_srf",
    num_classes: int = 150,
    backbone_checkpoint: str | os.PathLike | None = None,
    *,
    pretrained: bool | str = False,
    class_names: Sequence[str] | None = None,
    head: HeadConfig | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> UPerNet:
    """A FocalNet UPerNet as in the released ADE20K models.

    ``backbone`` is a registered variant name; the backbone gets ``focal_windows=9`` and
    ``drop_path_rate=0.3`` (the original UPerNet configs) unless ``overrides`` change them (any
    :class:`~focalnet.FocalNetConfig` field, e.g. ``embed_dim=16, depths=(1, 1, 1, 1)`` for a toy model).
    ``backbone_checkpoint`` is any ImageNet (or segmentation) checkpoint; kernels are resized to the
    larger focal windows. ``head`` sets :class:`HeadConfig` fields (channels, aux head, ...).
    """
    if isinstance(head, Mapping):
        head = HeadConfig(**{k: tuple(v) if k == "pool_scales" else v for k, v in head.items()})
    head = head or HeadConfig()
    head.validate()
    bb, bb_meta = dense_backbone(backbone, UPERNET_BACKBONE_DEFAULTS, backbone_checkpoint, pretrained, overrides)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
    meta = {
        **bb_meta,
        "num_classes": int(num_classes),
        "class_names": list(class_names) if class_names is not None else None,
        "head": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(head).items()},
    }
    return UPerNet(bb, num_classes, head, meta)


def upernet_from_meta(meta: Mapping[str, Any], **backbone_overrides: Any) -> UPerNet:
    """The (randomly initialised) :class:`UPerNet` that a file's ``meta`` describes: backbone config,
    number of classes, head settings. ``drop_path_rate`` is 0 unless ``backbone_overrides`` set it.
    :func:`~focalnet.segmentation.load_segmentor` checks ``meta`` before it calls this."""
    bb = dense_backbone_from_meta(meta, **backbone_overrides)
    head = dict(meta.get("head") or {})
    head_cfg = HeadConfig(**{k: tuple(v) if k == "pool_scales" else v for k, v in head.items()})
    return UPerNet(bb, int(meta["num_classes"]), head_cfg, meta)
