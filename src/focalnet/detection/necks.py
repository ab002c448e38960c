"""FPN necks on a FocalNet backbone: torchvision's ``FeaturePyramidNetwork`` with the extra levels each
detector's original config asks for.

* :class:`FocalNetFPN` (Mask/Faster/Cascade R-CNN): stages 0-3 + a max-pooled P6 (strides 4-64);
* :class:`SparseRCNNFPN`: stages 0-3, no extra level (mmdet ``num_outs=4``), Xavier init;
* :class:`FocalNetFPNP3P7` (ATSS): stages 1-3 + P6/P7 convs on the P5 output (strides 8-128), Xavier init.

Each ``forward(x)`` gives an ``OrderedDict`` of maps with ``out_channels`` channels; ``strides`` lists
their strides. State-dict keys: ``body.*`` (the FocalNet) and ``fpn.*`` (torchvision's names).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ..models.focalnet import FocalNetBackbone

__all__ = ["FocalNetFPN", "SparseRCNNFPN", "FocalNetFPNP3P7", "LastLevelP6P7OnOutput"]


class LastLevelP6P7OnOutput(ExtraFPNBlock):
    """P6 = conv3x3/2(P5 output), P7 = conv3x3/2(P6) (ReLU before P7 only if ``relu_before_extra_convs``):
    mmdet's ``add_extra_convs="on_output"``. torchvision's ``LastLevelP6P7`` always puts a ReLU there."""

    def __init__(self, channels: int, relu_before_extra_convs: bool = False) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.relu_before_extra_convs = relu_before_extra_convs

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(results[-1])
        p7 = self.p7(F.relu(p6) if self.relu_before_extra_convs else p6)
        return [*results, p6, p7], [*names, "p6", "p7"]


class FocalNetFPN(nn.Module):
    """FocalNet backbone + FPN: ``forward(x)`` gives ``OrderedDict`` ``"0".."3"`` (strides 4-32) and
    ``"pool"`` (stride 64, max-pooled top level), each with ``out_channels`` channels.

    ``extra_blocks`` replaces the max-pooled level (``None``: no extra level); ``extra_strides`` are the
    strides it adds; ``xavier_init`` initialises the FPN convs as mmdetection (Xavier uniform, zero bias)."""

    def __init__(
        self,
        body: FocalNetBackbone,
        out_channels: int = 256,
        *,
        extra_blocks: ExtraFPNBlock | None | str = "maxpool",
        extra_strides: tuple[int, ...] = (2,),
        xavier_init: bool = False,
    ) -> None:
        super().__init__()
        if extra_blocks == "maxpool":
            if len(body.out_indices) != 4:
                raise ValueError(
                    f"the FPN needs the 4 stages of a hierarchical FocalNet, got out_indices {body.out_indices}"
                )
            extra_blocks = LastLevelMaxPool()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), out_channels, extra_blocks=extra_blocks)
        if xavier_init:
            for m in self.fpn.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        self.out_channels = out_channels
        top = body.strides[-1]
        self.strides = [*body.strides, *(top * f for f in (extra_strides if extra_blocks is not None else ()))]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class SparseRCNNFPN(FocalNetFPN):
    """FocalNet + FPN with exactly one output per backbone stage (``"0".."3"``, strides 4-32), as mmdet's
    ``FPN(start_level=0, num_outs=4)``: with as many outputs as inputs no extra level is made."""

    def __init__(self, body: FocalNetBackbone, out_channels: int = 256) -> None:
        super().__init__(body, out_channels, extra_blocks=None, xavier_init=True)


class FocalNetFPNP3P7(FocalNetFPN):
    """FocalNet stages 1-3 + FPN + P6/P7 on the output: ``forward(x)`` gives ``OrderedDict`` ``"0", "1",
    "2", "p6", "p7"`` (strides 8-128), each with ``out_channels`` channels."""

    def __init__(self, body: FocalNetBackbone, out_channels: int = 256, relu_before_extra_convs: bool = False) -> None:
        extra = LastLevelP6P7OnOutput(out_channels, relu_before_extra_convs)
        super().__init__(body, out_channels, extra_blocks=extra, extra_strides=(2, 4), xavier_init=True)
