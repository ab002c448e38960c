"""What the training and full-resolution speed-ups change, checked on what they compute: the depth-wise
convolution's weight gradient (:mod:`focalnet.models.depthwise`) and glibc's reuse of freed memory
(:func:`focalnet.engine.keep_freed_memory`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from focalnet.models import FocalNet
from focalnet.models.depthwise import DepthwiseConv2d


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 6),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    k=st.sampled_from([1, 3, 5, 9]),
    channels_last=st.booleans(),
)
def test_depthwise_gradients_equal_the_float64_convolution(n, c, h, w, k, channels_last):
    torch.manual_seed(n * 1000 + c * 100 + h * 10 + w)
    conv = DepthwiseConv2d(c, k)
    x = torch.randn(n, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(n, c, h, w)
    conv(x).backward(grad)
    x64 = x.detach().double().requires_grad_()
    w64 = conv.weight.detach().double().requires_grad_()
    y64 = F.conv2d(x64, w64, padding=k // 2, groups=c)
    y64.backward(grad.double())
    torch.testing.assert_close(conv(x).double(), y64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad.double(), w64.grad, atol=1e-5, rtol=1e-5)


def test_focalnet_training_gradients_are_unchanged_by_the_depthwise_route():
    """Every parameter's gradient of a small FocalNet equals the one through plain ``F.conv2d``."""
    torch.manual_seed(0)
    model = FocalNet(
        embed_dim=8, depths=(1, 1), focal_levels=(2, 2), focal_windows=(3, 5), num_classes=4, drop_path_rate=0.0
    )
    x = torch.randn(2, 3, 40, 56)
    model(x).logsumexp(-1).sum().backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    plain = DepthwiseConv2d.__mro__[1].forward  # nn.Conv2d.forward
    convs = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    assert convs, "no focal convolution uses DepthwiseConv2d"
    for m in convs:
        m.forward = plain.__get__(m)
    model(x).logsumexp(-1).sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(ours[k], p.grad, atol=1e-5, rtol=1e-4, msg=k)


_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from focalnet.engine import keep_freed_memory
    applied = keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # warm up: 64 MiB allocated, touched, freed (glibc settles within a few rounds)
        torch.ones(64 * 2**20 // 4).sum()
    before = faults()
    for _ in range(5):
        torch.ones(64 * 2**20 // 4).sum()
    print(applied, faults() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.parametrize("mode", ["default", "system"])
def test_freed_memory_is_reused_without_page_faults(mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if mode == "system":
        env["FOCALNET_MALLOC"] = "system"
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    pages = 5 * 64 * 2**20 // 4096  # 81920 page faults if every block came fresh from the kernel
    if mode == "system":
        assert applied == "False"
        assert int(faults) > pages // 2, f"the system allocator already reuses memory ({faults} faults)"
    else:
        assert applied == "True"
        # at most 2 of the 5 blocks came fresh from the kernel (glibc may still move its heap top); the
        # system allocator faults in all 5
        assert int(faults) <= pages * 2 // 5, f"{faults} page faults for 5 reuses of a freed 64 MiB block"


def test_depthwise_weight_gradient_has_the_weight_layout():
    """DDP buckets gradients in the parameters' layout (``match_gradient_layout`` stores these weights
    channels-last); a gradient of another layout costs a copy and a warning on every step."""
    conv = DepthwiseConv2d(6, 5)
    for layout in (torch.contiguous_format, torch.channels_last):
        conv.weight.data = conv.weight.data.contiguous(memory_format=layout)
        conv.weight.grad = None
        x = torch.randn(2, 6, 9, 11).contiguous(memory_format=torch.channels_last).requires_grad_()
        conv(x).sum().backward()
        assert conv.weight.grad.stride() == conv.weight.stride()
