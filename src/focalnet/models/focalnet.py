"""Focal Modulation Networks (Yang et al., NeurIPS 2022), in one file.

Tensors flow channels-last (``B, H, W, C``) through the network, so that every ``Linear`` and
``LayerNorm`` acts on the last dimension without permute copies; the depth-wise focal convolutions
see the same memory as an NCHW tensor in ``channels_last`` format.

The ``state_dict`` keys are those of the released checkpoints (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``, ``norm``, ``head``; ``norm{i}`` for the dense-prediction backbone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..bounds import FOCALNET_BOUNDS, check_bounds
from .depthwise import DepthwiseConv2d, eager_on_cpu

__all__ = [
    "FocalNetConfig",
    "FocalModulation",
    "FocalNetBlock",
    "PatchEmbed",
    "FocalNetStage",
    "FocalNet",
    "FocalNetBackbone",
    "FocalNetTrunk",
    "PretrainedCfg",
    "count_flops",
    "num_params",
]


@dataclass(frozen=True)
class FocalNetConfig:
    """Every architectural setting of a FocalNet. Per-stage values are tuples of ``len(depths)``."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    focal_levels: tuple[int, ...] = (2, 2, 2, 2)
    focal_windows: tuple[int, ...] = (3, 3, 3, 3)
    focal_factor: int = 2
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    use_conv_embed: bool = False
    use_layerscale: bool = False
    layerscale_value: float = 1e-4
    use_postln: bool = False
    use_postln_in_modulation: bool = False
    normalize_modulator: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    def __post_init__(self) -> None:
        # counts and sizes within their bounds before anything is derived from them (a file or flag saying
        # depths=[1000000, ...] is refused here, not after minutes of building)
        check_bounds({f: getattr(self, f) for f in FOCALNET_BOUNDS}, FOCALNET_BOUNDS)
        if isinstance(self.depths, int):
            raise ValueError(f"depths must be a list of blocks per stage, got {self.depths!r}")
        n = len(self.depths)
        for name in ("depths", "focal_levels", "focal_windows"):
            value = getattr(self, name)
            if isinstance(value, int):
                value = (value,) * n
            elif name != "depths" and len(value) != n and len(set(value)) == 1:
                value = (value[0],) * n  # a uniform setting fits any number of stages
            object.__setattr__(self, name, tuple(int(v) for v in value))
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries but depths has {n} stages")
        if n < 1 or any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be positive, got {self.depths}")
        if any(level < 1 for level in self.focal_levels):
            raise ValueError(f"focal_levels must be >= 1, got {self.focal_levels}")
        if any(w < 1 for w in self.focal_windows):
            raise ValueError(f"focal_windows must be >= 1, got {self.focal_windows}")
        if self.embed_dim < 1 or self.in_chans < 1 or self.patch_size < 1:
            raise ValueError("embed_dim, in_chans and patch_size must be positive")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.drop_path_rate < 1.0 or not 0.0 <= self.drop_rate < 1.0:
            raise ValueError("drop_rate and drop_path_rate must be in [0, 1)")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def dims(self) -> tuple[int, ...]:
        """Channel width of each stage (doubling after every downsampling)."""
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def num_features(self) -> int:
        return self.dims[-1]

    @property
    def stride(self) -> int:
        """Total stride of the last stage."""
        return self.patch_size * 2 ** (self.num_stages - 1)

    def kernel_sizes(self, stage: int) -> list[int]:
        """Kernel size of each focal level of ``stage``: ``focal_factor * l + focal_window``."""
        return [self.focal_factor * k + self.focal_windows[stage] for k in range(self.focal_levels[stage])]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("depths", "focal_levels", "focal_windows"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FocalNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FocalNet config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **overrides: Any) -> FocalNetConfig:
        known = set(self.__dataclass_fields__)
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown FocalNet option(s) {sorted(unknown)}; valid options: {sorted(known)}")
        return replace(self, **overrides)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (residual branch dropped with probability ``p``)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def _mkldnn_ok(x: torch.Tensor) -> bool:
    """Whether the fused oneDNN inference kernels may run on ``x`` (CPU fp32, no autograd, eager)."""
    return (
        x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and eager_on_cpu(x)
        and torch.backends.mkldnn.is_available()
    )


def _has_hooks(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules) or bool(
        nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    )


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class FocalModulation(nn.Module):
    """Focal modulation on a channels-last map ``(B, H, W, C)``.

    ``f`` projects to query, context and ``L + 1`` gates; level ``l`` is a depth-wise conv
    (kernel ``focal_factor * l + focal_window``) plus GELU on the previous level's context; the gated
    sum of the levels and of a global level (GELU of the spatial mean) goes through ``h`` (1x1 conv)
    to give the modulator, which multiplies the query; ``proj`` maps the result back.
    The submodules ``f``, ``focal_layers[l]``, ``h`` and ``proj`` are called as modules so that
    forward hooks (see :mod:`focalnet.visualize`) can observe gates, contexts and the modulator.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        focal_factor: int = 2,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.focal_window = focal_window
        self.focal_factor = focal_factor
        self.normalize_modulator = normalize_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.kernel_sizes = [focal_factor * k + focal_window for k in range(focal_level)]
        self.focal_layers = nn.ModuleList(nn.Sequential(DepthwiseConv2d(dim, k), nn.GELU()) for k in self.kernel_sizes)
        self.ln = nn.LayerNorm(dim) if use_postln_in_modulation else None
        self.folded_normalize = False  # set when ``normalize_modulator`` is folded into ``h``

    def channels_last_parameters(self) -> list[nn.Parameter]:
        """The weights whose gradients come out channels-last (the convolutions run on channels-last views):
        DDP wants a parameter's memory layout to match its gradient's, see :meth:`match_gradient_layout`."""
        return [self.h.weight, *(layer[0].weight for layer in self.focal_layers)]

    def match_gradient_layout(self) -> None:
        """Store :meth:`channels_last_parameters` channels-last (same values), so that DDP's gradient buckets
        match the gradients (no "Grad strides do not match bucket view strides" and no extra copies)."""
        for p in self.channels_last_parameters():
            n, c, h, w = p.shape
            # explicit strides: .contiguous(channels_last) keeps these shapes as they are (size-1 dims)
            p.data = torch.empty_strided(p.shape, (h * w * c, 1, w * c, c), dtype=p.dtype, device=p.device).copy_(
                p.data
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = self.dim
        L = self.focal_level
        x = self.f(x)
        # NCHW views of channels-last memory: no copy
        q, ctx, gates = torch.split(x.permute(0, 3, 1, 2), (C, C, L + 1), dim=1)
        ctx_all = ctx  # placeholder, overwritten at level 0
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            if level == 0:
                ctx_all = ctx * gates[:, :1]
            else:
                ctx_all = ctx_all.addcmul_(ctx, gates[:, level : level + 1])
        ctx_global = self.act(ctx.mean((2, 3), keepdim=True))
        ctx_all = ctx_all.addcmul_(ctx_global, gates[:, L:])
        if self.normalize_modulator and not self.folded_normalize:
            ctx_all = ctx_all.mul_(1.0 / (L + 1))
        modulator = self.h(ctx_all)
        x = (q * modulator).permute(0, 2, 3, 1)
        if self.ln is not None:
            x = self.ln(x)
        return self.proj_drop(self.proj(x))

    def _forward_fused(self, x: torch.Tensor, shortcut: torch.Tensor | None) -> torch.Tensor:
        """Inference with oneDNN kernels: conv+GELU, ``h`` times the query, ``proj`` plus ``shortcut``."""
        C = self.dim
        L = self.focal_level
        x = torch.ops.mkldnn._linear_pointwise(x, self.f.weight, self.f.bias, "none", [], "")
        q, ctx, gates = torch.split(x, (C, C, L + 1), dim=-1)
        ctx = ctx.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        ctx_all = ctx  # placeholder, overwritten at level 0
        for level, layer in enumerate(self.focal_layers):
            conv = layer[0]
            ctx = torch.ops.mkldnn._convolution_pointwise(
                ctx, conv.weight, None, conv.padding, conv.stride, conv.dilation, conv.groups, "gelu", [], "none"
            )
            g = gates[..., level : level + 1].permute(0, 3, 1, 2)
            ctx_all = ctx * g if level == 0 else ctx_all.addcmul_(ctx, g)
        ctx_global = F.gelu(ctx.mean((2, 3), keepdim=True))
        ctx_all = ctx_all.addcmul_(ctx_global, gates[..., L:].permute(0, 3, 1, 2))
        if self.normalize_modulator and not self.folded_normalize:
            ctx_all = ctx_all.mul_(1.0 / (L + 1))
        hw = self.h.weight.view(C, C)
        x = torch.ops.mkldnn._linear_pointwise.binary(ctx_all.permute(0, 2, 3, 1), q, hw, self.h.bias, "mul")
        if self.ln is not None:
            x = self.ln(x)
        if shortcut is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.proj.weight, self.proj.bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, shortcut, self.proj.weight, self.proj.bias, "add")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, focal_level={self.focal_level}, kernel_sizes={self.kernel_sizes}"


class FocalNetBlock(nn.Module):
    """Pre-norm ``x + g1 * mod(norm1(x))`` or post-norm ``x + g1 * norm1(mod(x))`` block, then the MLP."""

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        focal_factor: int = 2,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_postln: bool = False,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.use_postln = use_postln
        if use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
        else:
            self.gamma_1 = None
            self.gamma_2 = None
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(
            dim,
            focal_level,
            focal_window,
            focal_factor,
            use_postln_in_modulation=use_postln_in_modulation,
            normalize_modulator=normalize_modulator,
            proj_drop=drop,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        # set by :meth:`fold_`; cleared when weights are loaded (see ``_on_load``)
        self.fused = False
        self._register_load_state_dict_pre_hook(_on_load, with_module=True)

    def _add(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        """``x + drop_path(gamma * y)`` in as few passes over memory as possible."""
        if self.training and self.drop_path.p > 0.0:
            return x + self.drop_path(y if gamma is None else gamma * y)
        return x + y if gamma is None else torch.addcmul(x, y, gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.fused
            and _mkldnn_ok(x)
            and not _has_hooks(self, self.modulation, *self.modulation.children(), *self.modulation.focal_layers)
        ):
            return self._forward_fused(x)
        if self.use_postln:
            y = self.norm1(self.modulation(x))
        else:
            y = self.modulation(self.norm1(x))
        x = self._add(x, y, self.gamma_1)
        y = self.norm2(self.mlp(x)) if self.use_postln else self.mlp(self.norm2(x))
        return self._add(x, y, self.gamma_2)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference path after :meth:`fold_` (oneDNN kernels with fused GELU, gating and residual adds)."""
        mod, mlp, C = self.modulation, self.mlp, self.dim
        n1, n2 = self.norm1, self.norm2
        if self.use_postln:
            y = F.layer_norm(mod._forward_fused(x, None), (C,), n1.weight, n1.bias, n1.eps)
            x = x + y  # layer scale folded into norm1
            y = torch.ops.mkldnn._linear_pointwise(x, mlp.fc1.weight, mlp.fc1.bias, "gelu", [], "none")
            y = torch.ops.mkldnn._linear_pointwise(y, mlp.fc2.weight, mlp.fc2.bias, "none", [], "")
            return x + F.layer_norm(y, (C,), n2.weight, n2.bias, n2.eps)
        # pre-norm: norm affines folded into f / fc1, layer scale into proj / fc2
        x = mod._forward_fused(F.layer_norm(x, (C,), None, None, n1.eps), x)
        y = torch.ops.mkldnn._linear_pointwise(
            F.layer_norm(x, (C,), None, None, n2.eps), mlp.fc1.weight, mlp.fc1.bias, "gelu", [], "none"
        )
        return torch.ops.mkldnn._linear_pointwise.binary(y, x, mlp.fc2.weight, mlp.fc2.bias, "add")

    @torch.no_grad()
    def fold_(self) -> None:
        """Fold affine maps into the neighbouring projections; the block computes the same function.

        Pre-norm: ``norm1``/``norm2`` affine into ``f``/``mlp.fc1``, layer scale into ``proj``/``mlp.fc2``.
        Post-norm: layer scale into the ``norm1``/``norm2`` affine. Both: ``modulation.ln`` affine into
        ``proj``, ``normalize_modulator`` into ``h``. Loading a state dict undoes it (exactly).
        """
        if self.fused:
            return
        mod, mlp = self.modulation, self.mlp
        if mod.ln is not None:
            _fold_norm_into_linear(mod.ln, mod.proj.weight, mod.proj.bias)
        if mod.normalize_modulator:
            mod.h.weight.mul_(1.0 / (mod.focal_level + 1))
            mod.folded_normalize = True
        if self.use_postln:
            for norm, gamma in ((self.norm1, self.gamma_1), (self.norm2, self.gamma_2)):
                if gamma is not None:
                    norm.weight.mul_(gamma)
                    norm.bias.mul_(gamma)
                    gamma.fill_(1.0)
        else:
            _fold_norm_into_linear(self.norm1, mod.f.weight, mod.f.bias)
            _fold_norm_into_linear(self.norm2, mlp.fc1.weight, mlp.fc1.bias)
            for lin, gamma in ((mod.proj, self.gamma_1), (mlp.fc2, self.gamma_2)):
                if gamma is not None:
                    lin.weight.mul_(gamma[:, None])
                    lin.bias.mul_(gamma)
                    gamma.fill_(1.0)
        self.fused = True


def _fold_norm_into_linear(norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """``W (n * w + b) + c == (W diag(w)) n + (W b + c)``; the norm's affine becomes the identity."""
    bias.add_(weight @ norm.bias)
    weight.mul_(norm.weight[None, :])
    norm.weight.fill_(1.0)
    norm.bias.zero_()


def _on_load(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
    """Loading this block's weights replaces the folded values: back to the plain path."""
    if any(k.startswith(prefix) for k in state_dict):
        module.fused = False
        module.modulation.folded_normalize = False


class PatchEmbed(nn.Module):
    """Conv (patchify, conv stem or downsampling) followed by LayerNorm; NCHW in, channels-last out.

    ``pad=True`` zero-pads the right/bottom to a multiple of ``stride`` first (dense-prediction
    semantics); ``pad=False`` lets the convolution floor odd sizes (classification semantics).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, use_conv_embed: bool, is_stem: bool) -> None:
        super().__init__()
        if use_conv_embed:
            kernel, stride, padding = (7, 4, 2) if is_stem else (3, 2, 1)
        else:
            kernel, stride, padding = patch_size, patch_size, 0
        self.stride = stride
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, pad: bool = False) -> torch.Tensor:
        if pad:
            H, W = x.shape[-2:]
            ph, pw = (-H) % self.stride, (-W) % self.stride
            # compiled: no guard on the size, no recompile; traced (ONNX): the pad stays in the graph for any size
            if torch.compiler.is_compiling() or torch.jit.is_tracing() or ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class FocalNetStage(nn.Module):
    """``depth`` FocalNet blocks, then (except in the last stage) a stride-2 downsampling."""

    def __init__(self, cfg: FocalNetConfig, index: int, drop_paths: Sequence[float]) -> None:
        super().__init__()
        dim = cfg.dims[index]
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            FocalNetBlock(
                dim,
                cfg.focal_levels[index],
                cfg.focal_windows[index],
                cfg.focal_factor,
                cfg.mlp_ratio,
                cfg.drop_rate,
                dp,
                cfg.use_layerscale,
                cfg.layerscale_value,
                cfg.use_postln,
                cfg.use_postln_in_modulation,
                cfg.normalize_modulator,
            )
            for dp in drop_paths
        )
        last = index == cfg.num_stages - 1
        self.downsample = None if last else PatchEmbed(dim, cfg.dims[index + 1], 2, cfg.use_conv_embed, False)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_downsample(self, x: torch.Tensor, pad: bool = False) -> torch.Tensor:
        if self.downsample is None:
            return x
        return self.downsample(x.permute(0, 3, 1, 2), pad=pad)

    def forward(self, x: torch.Tensor, pad: bool = False) -> torch.Tensor:
        return self.forward_downsample(self.forward_blocks(x), pad=pad)


def _build_trunk(module: nn.Module, cfg: FocalNetConfig) -> None:
    n = sum(cfg.depths)
    dpr = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
    module.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.use_conv_embed, True)
    module.pos_drop = nn.Dropout(cfg.drop_rate)
    stages = []
    start = 0
    for i, depth in enumerate(cfg.depths):
        stages.append(FocalNetStage(cfg, i, dpr[start : start + depth]))
        start += depth
    module.layers = nn.ModuleList(stages)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_size(x: torch.Tensor, name: str) -> None:
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"input is too small: the feature map became empty at {name}")


def fuse_blocks(model: nn.Module) -> nn.Module:
    """Switch every FocalNet block inside ``model`` (a classifier, a backbone, a detector, a segmentor) to
    the fused inference path (see :meth:`FocalNet.fuse`); returns ``model``. For evaluation and prediction
    only: the folded weights are not the file's (do not save or train ``model`` afterwards)."""
    for m in model.modules():
        if isinstance(m, FocalNetBlock):
            m.fold_()
    return model


_Trunk = TypeVar("_Trunk", bound="FocalNetTrunk")


class FocalNetTrunk(nn.Module):
    """What the classifier and the dense backbone share: the stages in ``layers``, gradient
    checkpointing and the fused inference path."""

    layers: nn.ModuleList

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30 % more time)."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def fuse(self: _Trunk) -> _Trunk:
        fuse_blocks(self)
        return self


_FUSE_DOC = """Fold what can be folded for inference and switch the blocks to fused oneDNN kernels.

        The model computes the same function (within float rounding) and keeps its ``state_dict`` keys;
        the *values* of the folded tensors change. ``load_state_dict`` of the original weights undoes
        it exactly. The fused kernels run on CPU fp32 without autograd and without forward hooks on
        the modulation submodules; elsewhere (training, GPU, hooks, ``torch.compile``, export) the
        blocks take the regular path with the folded weights. Returns ``self``.
        """
FocalNetTrunk.fuse.__doc__ = _FUSE_DOC


@dataclass
class PretrainedCfg:
    """Preprocessing of a released model (timm's ``pretrained_cfg`` fields)."""

    num_classes: int = 1000
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    first_conv: str = "patch_embed.proj"
    classifier: str = "head"
    tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FocalNet(FocalNetTrunk):
    """FocalNet image classifier (hierarchical with patch 4, or isotropic with one stage and patch 16)."""

    def __init__(self, cfg: FocalNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = (cfg or FocalNetConfig()).replace(**kwargs) if kwargs else (cfg or FocalNetConfig())
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_features = cfg.num_features
        _build_trunk(self, cfg)
        self.norm = nn.LayerNorm(cfg.num_features)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        self.pretrained_cfg = PretrainedCfg(num_classes=cfg.num_classes)

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm-style preprocessing config (mean, std, input size, crop pct, interpolation, classes)."""
        d = self.pretrained_cfg.to_dict()
        d["num_classes"] = self.num_classes
        return d

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0: no head)."""
        self.num_classes = num_classes
        self.cfg = self.cfg.replace(num_classes=num_classes)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm features, channels-last ``(B, H/32, W/32, C)`` (``H/16`` for isotropic)."""
        if not self.cfg.use_conv_embed and min(x.shape[-2:]) < self.cfg.stride:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is too small: this model needs at least {self.cfg.stride} pixels a side"
            )
        x = self.pos_drop(self.patch_embed(x))
        _check_size(x, "patch_embed")
        for i, stage in enumerate(self.layers):
            x = stage(x)
            _check_size(x, f"layers.{i}")
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output before its downsampling, as NCHW maps (no extra norm)."""
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for stage in self.layers:
            x = stage.forward_blocks(x)
            outs.append(x.permute(0, 3, 1, 2))
            x = stage.forward_downsample(x)
        return outs

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean((1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FocalNetBackbone(FocalNetTrunk):
    """Dense-prediction FocalNet with the original detection/segmentation semantics.

    The input is zero-padded to a multiple of the patch size, each downsampling pads odd sizes, and
    each stage ``i`` in ``out_indices`` returns its features *before* downsampling through its own
    LayerNorm ``norm{i}`` as an NCHW map (strides 4, 8, 16, 32 for the hierarchical models).
    ``frozen_stages``: -1 none, 0 the stem, k >= 2 the stem and stages ``0 .. k-2`` (original rule).
    """

    def __init__(
        self,
        cfg: FocalNetConfig | None = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        cfg = (cfg or FocalNetConfig()).replace(**kwargs) if kwargs else (cfg or FocalNetConfig())
        cfg = cfg.replace(num_classes=0)
        self.cfg = cfg
        out_indices = tuple(int(i) for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < cfg.num_stages]
        if bad or not out_indices:
            raise ValueError(f"out_indices {out_indices} must be non-empty stage indices in [0, {cfg.num_stages})")
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        _build_trunk(self, cfg)
        for i in out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(cfg.dims[i]))
        self.apply(_init_weights)
        self.out_channels = [cfg.dims[i] for i in out_indices]
        self.strides = [cfg.patch_size * 2**i for i in out_indices]
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.frozen_stages >= 0:
            mods.append(self.patch_embed)
        if self.frozen_stages >= 2:
            mods.append(self.pos_drop)
            mods.extend(self.layers[i] for i in range(self.frozen_stages - 1))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> FocalNetBackbone:
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x, pad=True))
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage.forward_blocks(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
            if i + 1 < len(self.layers) and i + 1 > max(self.out_indices):
                break
            x = stage.forward_downsample(x, pad=True)
        return outs


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module | FocalNetConfig, img_size: int | Sequence[int] = 224) -> int:
    """Multiply-adds as the original code counts them (the model-zoo table's FLOPs).

    Follows the original ``flops()`` methods: patch embeddings count ``patch_size**2`` per output
    (also for the conv stem), LayerNorms one op per element, each focal level ``k**2 + 1`` per
    element, the global level and gating ``1`` per element, the head ``num_features * num_classes``.
    """
    if isinstance(model, FocalNetConfig):
        cfg, head = model, model.num_classes
    else:
        cfg = model.cfg
        head = getattr(model, "num_classes", 0)
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    C = cfg.embed_dim
    ph, pw = h // cfg.patch_size, w // cfg.patch_size
    flops = ph * pw * C * cfg.in_chans * cfg.patch_size**2 + ph * pw * C
    for i, depth in enumerate(cfg.depths):
        dim = cfg.dims[i]
        n = ph * pw
        ks = cfg.kernel_sizes(i)
        lvl = cfg.focal_levels[i]
        mod = n * dim * (2 * dim + lvl + 1)
        mod += sum(n * (k * k + 1) * dim for k in ks)
        mod += n * dim  # global level
        mod += n * dim * (dim + 1)  # h
        mod += n * dim * dim  # proj
        block = 2 * n * dim + mod + int(2 * n * dim * dim * cfg.mlp_ratio)
        flops += depth * block
        if i + 1 < cfg.num_stages:
            ph, pw = ph // 2, pw // 2
            out = cfg.dims[i + 1]
            flops += ph * pw * out * dim * 4 + ph * pw * out
    # the original's pooling term, kept verbatim for identical totals
    flops += cfg.num_features * (h // cfg.patch_size) * (w // cfg.patch_size) // 2**cfg.num_stages
    flops += cfg.num_features * head
    return int(flops)
