"""Inference throughput (images/s) measured like the paper's table: fixed batch, warm-up, median of runs."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import torch
from torch import nn

__all__ = ["PAPER_V100_THROUGHPUT", "measure_throughput"]

# The paper's table: images/s on one V100, batch 128, fp32, 224 px (README of the original project)
PAPER_V100_THROUGHPUT = {
    "focalnet_tiny_srf": 743,
    "focalnet_tiny_lrf": 696,
    "focalnet_small_srf": 434,
    "focalnet_small_lrf": 406,
    "focalnet_base_srf": 280,
    "focalnet_base_lrf": 269,
    "focalnet_tiny_iso": 2334,
    "focalnet_small_iso": 920,
    "focalnet_base_iso": 300,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_throughput(
    model: nn.Module | str,
    *,
    batch_size: int = 128,
    img_size: int = 224,
    device: str = "auto",
    warmup: int = 3,
    runs: int = 10,
    amp: str = "none",
    channels_last: bool = False,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Forward ``runs`` batches of random ``img_size`` images after ``warmup`` ones; report the median
    images/s (and min/max). ``model`` is a module or a registered name (``model_kwargs`` go to
    :func:`focalnet.create_model`). The paper used batch 128, fp32, 224 px on a V100."""
    from ..factory import create_model

    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ValueError("batch_size and runs must be >= 1, warmup >= 0")
    if amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    name = model if isinstance(model, str) else getattr(model, "variant_name", None) or type(model).__name__
    net = create_model(model, **model_kwargs) if isinstance(model, str) else model
    net = net.to(dev).eval()
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    times = []
    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(warmup + runs):
            _sync(dev)
            t0 = time.perf_counter()
            net(x)
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    rates = [batch_size / t for t in times]
    result = {
        "model": name,
        "batch_size": batch_size,
        "img_size": img_size,
        "amp": amp,
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "warmup": warmup,
        "runs": runs,
        "images_per_second": statistics.median(rates),
        "images_per_second_min": min(rates),
        "images_per_second_max": max(rates),
        "seconds_per_batch_median": statistics.median(times),
    }
    if isinstance(model, str) and model in PAPER_V100_THROUGHPUT and img_size == 224:
        result["paper_v100_images_per_second"] = PAPER_V100_THROUGHPUT[model]
    return result
