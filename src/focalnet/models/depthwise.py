"""The depth-wise convolution of the focal levels, with a fast weight gradient on the CPU.

oneDNN computes the weight gradient of a large depth-wise kernel (9-13 at detection resolutions) 10-15x
slower than the convolution itself: at 800x1216 it was half of a FocalNet-T training step. The weight
gradient of a depth-wise convolution is, per channel, the correlation of the padded input with the
output gradient, i.e. a depth-wise convolution whose kernel is the output gradient; oneDNN runs that
form 3-10x faster (``docs/performance.md``). :class:`DepthwiseConv2d` is an ``nn.Conv2d`` (same
parameters, keys and forward) that takes this route in CPU training and the usual one elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DepthwiseConv2d", "depthwise_conv2d", "eager_on_cpu"]


def eager_on_cpu(x: Tensor) -> bool:
    """Whether ``x`` is on the CPU and the code runs eagerly (not compiled, traced or scripted): where
    this package's hand-picked CPU kernels and autograd functions may replace the plain operators."""
    return (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
    )


class _DepthwiseConv2dFunction(torch.autograd.Function):
    """Stride 1, "same" padding, no bias, no dilation; any batch size and memory format."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        p, channels = ctx.padding, x.shape[1]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], channels, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            padded = F.pad(x, (p, p, p, p))
            # per sample: correlate each padded input channel with its output gradient (the kernel)
            grad_w = sum(F.conv2d(padded[n : n + 1], grad[n].unsqueeze(1), groups=channels) for n in range(x.shape[0]))
            # (1, C, k, k) -> (C, 1, k, k), in the weight's own memory layout (DDP wants the two to match)
            grad_w = torch.empty_like(weight).copy_(grad_w.reshape(weight.shape))
        return grad_x, grad_w, None


def depthwise_conv2d(x: Tensor, weight: Tensor, padding: int) -> Tensor:
    """``F.conv2d(x, weight, padding=padding, groups=C)`` (stride 1) with the fast weight gradient."""
    return _DepthwiseConv2dFunction.apply(x, weight, padding)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False)``; on the CPU with autograd its
    weight gradient takes the fast route of :func:`depthwise_conv2d` (same values within float rounding)."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) and eager_on_cpu(x):
            return depthwise_conv2d(x, self.weight, self.kernel_size[0] // 2)
        return super().forward(x)
