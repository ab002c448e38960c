"""What a FocalNet attends to: gating maps, modulator, per-level contexts and focal kernels.

Everything is observed with forward hooks on the submodules of each ``FocalModulation`` (``f``,
``focal_layers[l]`` and ``h``). The hooks exist only inside :func:`capture_modulation` and are removed
when it exits, so a model used normally keeps no extra state and pays nothing.

>>> import torch, focalnet
>>> from focalnet.visualize import modulation_maps
>>> cfg = focalnet.FocalNetConfig(embed_dim=8, depths=(1, 1), focal_levels=(2, 2), focal_windows=(3, 3), num_classes=3)
>>> model = focalnet.FocalNet(cfg).eval()
>>> maps, logits = modulation_maps(model, torch.randn(2, 3, 32, 48))  # last block of the last stage
>>> tuple(maps.gates.shape), tuple(maps.modulator_norm.shape), logits.shape[-1]
((2, 3, 4, 6), (2, 4, 6), 3)

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models.focalnet import FocalModulation, FocalNetStage

__all__ = [
    "ModulationMaps",
    "ModulationCapture",
    "capture_modulation",
    "modulation_maps",
    "find_stages",
    "resolve_block",
    "focal_kernels",
    "kernel_grid",
    "upsample",
    "center_crop",
    "image_to_tensor",
    "to_display",
    "plot_gates",
    "plot_modulator",
    "plot_kernels",
    "plot_grid",
    "new_figure",
    "save_figure",
    "show_image",
    "maps_location",
    "draw_modulator",
    "heat_scale",
]

ImageLike = np.ndarray | torch.Tensor
PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------- capture


@dataclass
class ModulationMaps:
    """What one focal modulation computed for a batch (CPU float32 tensors, NCHW).

    ``gates``: the ``L + 1`` raw gates ``(B, L+1, h, w)`` (index ``L`` is the global level);
    ``modulator``: ``h(ctx_all)`` ``(B, C, h, w)``; ``contexts``: the context of each level
    ``(B, C, h, w)`` (empty when not captured).
    """

    stage: int
    block: int
    kernel_sizes: list[int]
    gates: torch.Tensor
    modulator: torch.Tensor
    contexts: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_levels(self) -> int:
        """Number of focal levels ``L`` (the gates have ``L + 1`` channels)."""
        return len(self.kernel_sizes)

    @property
    def modulator_norm(self) -> torch.Tensor:
        """L2 norm of the modulator over channels, ``(B, h, w)``."""
        return self.modulator.norm(dim=1)

    @property
    def name(self) -> str:
        return f"layers.{self.stage}.blocks.{self.block}"

    def to_numpy(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays keyed ``{prefix}gates``, ``modulator``, ``modulator_norm``, ``context{l}``."""
        out = {
            f"{prefix}gates": self.gates.numpy(),
            f"{prefix}modulator": self.modulator.numpy(),
            f"{prefix}modulator_norm": self.modulator_norm.numpy(),
        }
        for i, c in enumerate(self.contexts):
            out[f"{prefix}context{i}"] = c.numpy()
        return out


def find_stages(model: nn.Module) -> nn.ModuleList:
    """The stages (``layers``) of a FocalNet, a FocalNetBackbone, or any module that contains one."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) and all(isinstance(s, FocalNetStage) for s in layers):
        return layers
    for _, m in model.named_modules():
        layers = getattr(m, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and all(isinstance(s, FocalNetStage) for s in layers):
            return layers
    raise ValueError(f"{type(model).__name__} contains no FocalNet stages (no `layers` of FocalNetStage)")


def resolve_block(model: nn.Module, stage: int = -1, block: int = -1) -> tuple[int, int]:
    """Non-negative ``(stage, block)`` indices (negative ones count from the end), validated."""
    stages = find_stages(model)
    n = len(stages)
    if not -n <= stage < n:
        raise ValueError(f"stage {stage} out of range: the model has {n} stage(s) (0..{n - 1})")
    s = stage % n
    nb = len(stages[s].blocks)
    if not -nb <= block < nb:
        raise ValueError(f"block {block} out of range: stage {s} has {nb} block(s) (0..{nb - 1})")
    return s, block % nb


def _modulation(model: nn.Module, stage: int, block: int) -> FocalModulation:
    return find_stages(model)[stage].blocks[block].modulation


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32).clone()


class ModulationCapture:
    """Filled by :func:`capture_modulation`; ``capture[stage, block]`` gives :class:`ModulationMaps`.

    Each forward pass overwrites the previous one's record (the last pass wins).
    """

    def __init__(self, blocks: Sequence[tuple[int, int]], kernel_sizes: Mapping[tuple[int, int], list[int]]) -> None:
        self.blocks = list(blocks)
        self._kernel_sizes = dict(kernel_sizes)
        self._raw: dict[tuple[int, int], dict[str, Any]] = {b: {} for b in self.blocks}

    def __getitem__(self, key: tuple[int, int]) -> ModulationMaps:
        if key not in self._raw:
            raise KeyError(f"block {key} was not hooked; hooked: {self.blocks}")
        raw = self._raw[key]
        if "gates" not in raw or "modulator" not in raw:
            raise RuntimeError(
                f"layers.{key[0]}.blocks.{key[1]} did not run: call the model inside the `with` block "
                "(a backbone whose out_indices stop before this stage never reaches it)"
            )
        ks = self._kernel_sizes[key]
        ctx = raw.get("contexts", {})
        contexts = [ctx[i] for i in range(len(ks))] if len(ctx) == len(ks) else []
        return ModulationMaps(key[0], key[1], list(ks), raw["gates"], raw["modulator"], contexts)

    def __contains__(self, key: object) -> bool:
        return key in self._raw and "modulator" in self._raw[key]  # type: ignore[index]

    def maps(self) -> dict[tuple[int, int], ModulationMaps]:
        """All hooked blocks that ran."""
        return {k: self[k] for k in self.blocks if k in self}

    def clear(self) -> None:
        """Drop the recorded tensors."""
        self._raw = {b: {} for b in self.blocks}


def _gate_hook(store: dict[str, Any], dim: int, levels: int):
    n = 2 * dim + levels + 1

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if out.shape[-1] == n:  # channels-last (B, H, W, 2C+L+1)
            g = out[..., 2 * dim :].permute(0, 3, 1, 2)
        elif out.ndim == 4 and out.shape[1] == n:  # NCHW
            g = out[:, 2 * dim :]
        else:
            raise RuntimeError(f"unexpected output shape {tuple(out.shape)} of modulation.f (expected {n} channels)")
        store["gates"] = _cpu(g)

    return hook


def _context_hook(store: dict[str, Any], level: int):
    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        store.setdefault("contexts", {})[level] = _cpu(out)

    return hook


def _modulator_hook(store: dict[str, Any]):
    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        store["modulator"] = _cpu(out)

    return hook


@contextmanager
def capture_modulation(
    model: nn.Module,
    blocks: Sequence[tuple[int, int]] | None = None,
    *,
    contexts: bool = True,
) -> Iterator[ModulationCapture]:
    """Hook the focal modulations of ``blocks`` (``(stage, block)`` pairs, negative indices allowed;
    default: the last block of the last stage) for the duration of the ``with`` block.

    >>> # with capture_modulation(model, [(0, 0), (-1, -1)]) as cap:
    >>> #     model(x)
    >>> # cap[0, 0].gates, cap[3, 1].modulator_norm
    """
    if blocks is None:
        blocks = [(-1, -1)]
    keys = [resolve_block(model, s, b) for s, b in blocks]
    keys = list(dict.fromkeys(keys))
    mods = {k: _modulation(model, *k) for k in keys}
    cap = ModulationCapture(keys, {k: list(m.kernel_sizes) for k, m in mods.items()})
    handles = []
    try:
        for k, m in mods.items():
            store = cap._raw[k]
            handles.append(m.f.register_forward_hook(_gate_hook(store, m.dim, m.focal_level)))
            handles.append(m.h.register_forward_hook(_modulator_hook(store)))
            if contexts:
                for lvl, layer in enumerate(m.focal_layers):
                    handles.append(layer.register_forward_hook(_context_hook(store, lvl)))
        yield cap
    finally:
        for h in handles:
            h.remove()


def modulation_maps(
    model: nn.Module, x: torch.Tensor, stage: int = -1, block: int = -1, *, contexts: bool = True
) -> tuple[ModulationMaps, Any]:
    """Run ``model(x)`` without gradients and return the maps of one block and the model's output.

    The model's train/eval mode is left as is (call ``model.eval()`` first for inference maps).
    """
    key = resolve_block(model, stage, block)
    with capture_modulation(model, [key], contexts=contexts) as cap, torch.no_grad():
        out = model(x)
    return cap[key], out


# --------------------------------------------------------------------------------------------- kernels


def focal_kernels(model: nn.Module, stage: int = -1, block: int = -1) -> list[np.ndarray]:
    """Channel mean of the depth-wise kernel of each focal level of one block: ``L`` arrays ``(k_l, k_l)``."""
    s, b = resolve_block(model, stage, block)
    mod = _modulation(model, s, b)
    return [layer[0].weight.detach().float().mean(dim=(0, 1)).cpu().numpy() for layer in mod.focal_layers]


def kernel_grid(model: nn.Module, block: int = -1) -> list[list[np.ndarray]]:
    """Stages x levels: ``grid[s][l]`` is the channel-mean kernel of level ``l`` of block ``block`` of stage ``s``."""
    return [focal_kernels(model, s, block) for s in range(len(find_stages(model)))]


# --------------------------------------------------------------------------------------------- figures


def to_display(image: ImageLike) -> np.ndarray:
    """An image as float ``[0, 1]`` ``(H, W)`` or ``(H, W, 3)``; accepts HWC/HW arrays (uint8 or float)
    and CHW/HW tensors (values min-max scaled when outside ``[0, 1]``)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        a = t.numpy()
    else:
        a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an image (H, W) or (H, W, 3), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        a = (a - lo) / max(hi - lo, 1e-12)
    return a


def center_crop(img: Any, size: int | tuple[int, int], crop_pct: float = 1.0, interpolation: str = "bicubic") -> Any:
    """Evaluation preprocessing of a PIL image: resize the short side to ``size / crop_pct``, then
    centre-crop ``size`` (``(H, W)`` or an int)."""
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(
        interpolation, Image.BICUBIC
    )
    short = int(math.floor(min(h, w) / crop_pct))
    iw, ih = img.size
    scale = short / min(iw, ih)
    nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
    img = img.resize((nw, nh), resample)
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.crop((left, top, left + w, top + h))


def image_to_tensor(img: Any, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A PIL image (or HWC/HW uint8 array) as a normalised CHW float tensor."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    return (t - m) / s


def upsample(m: np.ndarray | torch.Tensor, size: tuple[int, int], mode: str = "auto") -> np.ndarray:
    """Resize a 2-D map to ``size = (H, W)``: bilinear, or nearest (blocks, one per token) for maps coarser
    than 8x8, where interpolation would invent detail between a handful of values (``mode="auto"``)."""
    t = torch.as_tensor(np.asarray(m), dtype=torch.float32)[None, None]
    if mode == "auto":
        mode = "nearest" if min(t.shape[-2:]) < 8 else "bilinear"
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy()
    return F.interpolate(t, size=size, mode=mode, align_corners=False)[0, 0].numpy()


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def new_figure(w: float, h: float):
    """A matplotlib figure of ``w`` x ``h`` inches on the Agg canvas (no pyplot state, thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: PathLike | BinaryIO | None, dpi: int = 110) -> Path | None:
    if path is None:
        return None
    if hasattr(path, "write"):  # a binary file object (e.g. io.BytesIO): the PNG bytes, no file
        fig.savefig(path, dpi=dpi, format="png")
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def show_image(ax, img: np.ndarray, title: str | None = None) -> None:
    """Draw an image in [0, 1] (grey or RGB) on ``ax`` without axes."""
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _level_titles(maps: ModulationMaps) -> list[str]:
    return [f"level {i + 1} ({k}x{k})" for i, k in enumerate(maps.kernel_sizes)] + ["global"]


def maps_location(maps: ModulationMaps) -> str:
    """Where ``maps`` come from, for titles: ``"stage 1, block 0 (0-based), 8x8 feature map"``."""
    h, w = maps.gates.shape[-2:]
    return f"stage {maps.stage}, block {maps.block} (0-based), {h}x{w} feature map"


def _draw_gates(fig, axes, img: np.ndarray, maps: ModulationMaps, index: int, colorbar: bool = True):
    g = maps.gates[index].numpy()
    vmax = float(np.abs(g).max()) or 1.0
    H, W = img.shape[:2]
    im = None
    for ax, gate, title in zip(axes, g, _level_titles(maps)):
        im = ax.imshow(gate, cmap="RdBu_r", vmin=-vmax, vmax=vmax, extent=(0, W, H, 0), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    if colorbar and im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="raw gate")
    return im


def draw_modulator(fig, ax, img: np.ndarray, maps: ModulationMaps, index: int, colorbar: bool = True):
    """Overlay the modulator norm of image ``index`` (min-max scaled) on ``img`` in ``ax``."""
    H, W = img.shape[:2]
    heat = _minmax(upsample(maps.modulator_norm[index], (H, W)))
    base = img if img.ndim == 2 else img.mean(-1)
    ax.imshow(base, cmap="gray", vmin=0, vmax=1)
    im = ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax.set_axis_off()
    if colorbar:
        fig.colorbar(heat_scale(), ax=ax, shrink=0.8, label="|modulator| (min-max)")
    return im


def heat_scale():
    """An opaque colour scale for the (semi-transparent) modulator overlays."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(0, 1), cmap="jet")


def plot_gates(
    image: ImageLike,
    maps: ModulationMaps,
    index: int = 0,
    path: PathLike | BinaryIO | None = None,
    title: str | None = None,
) -> Path | None:
    """Image | one raw gating map per focal level | the global gate (shared symmetric colour scale)."""
    img = to_display(image)
    n = maps.num_levels + 2
    fig = new_figure(2.3 * n + 0.8, 2.8)
    axes = fig.subplots(1, n)
    show_image(axes[0], img, "input")
    _draw_gates(fig, axes[1:], img, maps, index)
    fig.suptitle(title or f"Gating maps - {maps_location(maps)}", fontsize=10)
    return save_figure(fig, path)


def plot_modulator(
    image: ImageLike,
    maps: ModulationMaps,
    index: int = 0,
    path: PathLike | BinaryIO | None = None,
    title: str | None = None,
) -> Path | None:
    """Image | L2 norm of the modulator over channels, bilinearly upsampled to the image and
    min-max normalised per image, overlaid on it (with a colour bar)."""
    img = to_display(image)
    fig = new_figure(6.2, 3.0)
    axes = fig.subplots(1, 2)
    show_image(axes[0], img, "input")
    draw_modulator(fig, axes[1], img, maps, index)
    axes[1].set_title("modulator norm", fontsize=9)
    fig.suptitle(title or f"Modulator - {maps_location(maps)}", fontsize=10)
    return save_figure(fig, path)


def plot_kernels(
    model: nn.Module, block: int = -1, path: PathLike | BinaryIO | None = None, title: str | None = None
) -> Path | None:
    """Stages x levels grid of the channel-mean focal kernels of block ``block`` of each stage."""
    grid = kernel_grid(model, block)
    stages = find_stages(model)
    rows, cols = len(grid), max(len(r) for r in grid)
    fig = new_figure(1.9 * cols + 1.2, 1.8 * rows + 0.6)
    axes = np.atleast_2d(np.array(fig.subplots(rows, cols, squeeze=False)))
    for s, row in enumerate(grid):
        for lvl in range(cols):
            ax = axes[s, lvl]
            if lvl >= len(row):
                ax.set_axis_off()
                continue
            k = row[lvl]
            v = float(np.abs(k).max()) or 1.0
            im = ax.imshow(k, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"level {lvl + 1}: {k.shape[0]}x{k.shape[1]}", fontsize=8)
            if lvl == 0:
                dim = stages[s].blocks[0].dim
                ax.set_ylabel(f"stage {s}\n(C={dim})", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.7)
    which = "the last block" if block == -1 else f"block {block}"
    text = title or f"Focal kernels (mean over channels) of {which} of each stage"
    width = max(20, int(fig.get_figwidth() * 11))  # characters of 10 pt text across the figure
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.splitlines()), fontsize=10)
    return save_figure(fig, path)


def plot_grid(
    images: Sequence[ImageLike],
    maps: ModulationMaps | Sequence[ModulationMaps],
    labels: Sequence[str] | None = None,
    path: PathLike | BinaryIO | None = None,
    title: str | None = None,
) -> Path | None:
    """One row per image: image | modulator overlay | gating maps per level | global gate.

    ``maps`` is either one batch (row ``i`` uses sample ``i``) or one :class:`ModulationMaps` per image.
    """
    n = len(images)
    if n == 0:
        raise ValueError("plot_grid needs at least one image")
    per = [(maps, i) for i in range(n)] if isinstance(maps, ModulationMaps) else [(m, 0) for m in maps]
    if len(per) != n:
        raise ValueError(f"{n} images but {len(per)} maps")
    first = per[0][0]
    cols = first.num_levels + 3
    fig = new_figure(1.9 * cols + 1.0, 1.9 * n + 0.7)
    axes = np.array(fig.subplots(n, cols, squeeze=False))
    for r, (img_like, (m, i)) in enumerate(zip(images, per)):
        img = to_display(img_like)
        show_image(axes[r, 0], img, _fit_label(labels[r]) if labels else ("input" if r == 0 else None))
        draw_modulator(fig, axes[r, 1], img, m, i, colorbar=False)
        im = _draw_gates(fig, axes[r, 2:], img, m, i, colorbar=False)
        if im is not None:
            fig.colorbar(im, ax=list(axes[r, 2:]), shrink=0.8, label="raw gate")
        if r == 0:
            axes[r, 1].set_title("modulator norm", fontsize=9)
        else:
            for ax in axes[r, 2:]:
                ax.set_title("")
    for ax, t in zip(axes[0, 2:], _level_titles(first)):
        ax.set_title(f"gate: {t}", fontsize=9)
    fig.colorbar(heat_scale(), ax=list(axes[:, 1]), location="bottom", shrink=0.9, label="|modulator| (min-max)")
    what = "one image" if n == 1 else f"{n} images"
    fig.suptitle(title or f"Modulation of {what} - {maps_location(first)}", fontsize=10)
    return save_figure(fig, path, dpi=100)


def _fit_label(label: str, width: int = 22) -> str:
    """A label that fits over one grid column: at most two lines of ``width`` characters, the middle
    of longer ones elided (file names keep their start and their extension)."""
    if len(label) > 2 * width:
        label = label[: width - 1] + "..." + label[-(width - 2) :]
    return "\n".join(textwrap.wrap(label, width, break_long_words=True)) or label
