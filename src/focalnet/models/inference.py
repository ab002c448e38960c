"""The inference path of any model holding FocalNet blocks (classifier, backbone, detector, segmentor).

:func:`inference_path` is what ``detection|segmentation predict|evaluate`` and the app run: the blocks
fused (:func:`~focalnet.models.focalnet.fuse_blocks`: folded affine maps, oneDNN kernels with fused
GELU, gating and residual adds), and on request the FocalNet trunks compiled by ``torch.compile`` with
dynamic shapes, so that a new image size does not recompile. Both give the regular path's outputs
within 1e-5 (``tests/test_dense_fast_path.py``).
"""

from __future__ import annotations

from torch import nn

from .focalnet import FocalNetTrunk, fuse_blocks

__all__ = ["compiled_modules", "inference_path"]


def inference_path(model: nn.Module, compile: bool = False, backend: str = "inductor") -> nn.Module:
    """Switch ``model`` (in place) to its fastest inference path and return it.

    ``compile``: also compile each FocalNet trunk inside ``model`` (``torch.compile(dynamic=True)`` with
    ``backend``; the rest of a detector stays eager: its box logic is data-dependent). The first call
    compiles (minutes on a small CPU); later calls at other image sizes reuse the compiled code (a first
    batch of 1 then one of several compiles once more: size 1 is specialised). For evaluation and
    prediction only: the folded weights are not the file's (do not save or train ``model`` afterwards).
    """
    fuse_blocks(model)
    if compile:
        for m in model.modules():
            if isinstance(m, FocalNetTrunk):  # a classifier or a dense backbone
                m.compile(dynamic=True, backend=backend)
    return model


def compiled_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules of ``model`` that :func:`inference_path` compiled (for tests and reports)."""
    return [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
