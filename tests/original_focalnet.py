"""Test oracle: a condensed transcription of the original FocalNet code (classification ``focalnet.py``
and the mmdetection backbone), token-sequence layout ``(B, L, C)`` with permutes, exactly as released.
Used only to check that ``focalnet.models`` computes the same function; not part of the package."""

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class FocalModulation(nn.Module):
    def __init__(
        self, dim, focal_window, focal_level, focal_factor=2, use_postln_in_modulation=False, normalize_modulator=False
    ):
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.normalize_modulator = normalize_modulator
        self.use_postln_in_modulation = use_postln_in_modulation
        self.f = nn.Linear(dim, 2 * dim + (focal_level + 1))
        self.h = nn.Conv2d(dim, dim, kernel_size=1, stride=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for k in range(focal_level):
            kernel_size = focal_factor * k + focal_window
            self.focal_layers.append(
                nn.Sequential(
                    nn.Conv2d(
                        dim, dim, kernel_size=kernel_size, stride=1, groups=dim, padding=kernel_size // 2, bias=False
                    ),
                    nn.GELU(),
                )
            )
        if use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        C = x.shape[-1]
        x = self.f(x).permute(0, 3, 1, 2).contiguous()
        q, ctx, self.gates = torch.split(x, (C, C, self.focal_level + 1), 1)
        ctx_all = 0
        for level in range(self.focal_level):
            ctx = self.focal_layers[level](ctx)
            ctx_all = ctx_all + ctx * self.gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(2, keepdim=True).mean(3, keepdim=True))
        ctx_all = ctx_all + ctx_global * self.gates[:, self.focal_level :]
        if self.normalize_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        self.modulator = self.h(ctx_all)
        x_out = q * self.modulator
        x_out = x_out.permute(0, 2, 3, 1).contiguous()
        if self.use_postln_in_modulation:
            x_out = self.ln(x_out)
        return self.proj(x_out)


class FocalNetBlock(nn.Module):
    def __init__(
        self,
        dim,
        focal_level,
        focal_window,
        use_layerscale=False,
        layerscale_value=1e-4,
        use_postln=False,
        use_postln_in_modulation=False,
        normalize_modulator=False,
    ):
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(
            dim, focal_window, focal_level, 2, use_postln_in_modulation, normalize_modulator
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)
        self.gamma_1 = 1.0
        self.gamma_2 = 1.0
        if use_layerscale:
            self.gamma_1 = nn.Parameter(layerscale_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layerscale_value * torch.ones(dim))
        self.H = self.W = None

    def forward(self, x):
        H, W = self.H, self.W
        B, L, C = x.shape
        shortcut = x
        x = x if self.use_postln else self.norm1(x)
        x = x.view(B, H, W, C)
        x = self.modulation(x).view(B, H * W, C)
        x = x if not self.use_postln else self.norm1(x)
        x = shortcut + self.gamma_1 * x
        x = x + self.gamma_2 * (self.norm2(self.mlp(x)) if self.use_postln else self.mlp(self.norm2(x)))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim, use_conv_embed=False, is_stem=False, pad=False):
        super().__init__()
        self.patch_size = patch_size
        self.pad = pad
        if use_conv_embed:
            kernel_size, padding, stride = (7, 2, 4) if is_stem else (3, 1, 2)
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        if self.pad:  # detection backbone
            _, _, H, W = x.size()
            if W % self.patch_size != 0:
                x = F.pad(x, (0, self.patch_size - W % self.patch_size))
            if H % self.patch_size != 0:
                x = F.pad(x, (0, 0, 0, self.patch_size - H % self.patch_size))
        x = self.proj(x)
        H, W = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x), H, W


class BasicLayer(nn.Module):
    def __init__(self, dim, out_dim, depth, focal_level, focal_window, downsample, use_conv_embed, pad, **kw):
        super().__init__()
        self.blocks = nn.ModuleList([FocalNetBlock(dim, focal_level, focal_window, **kw) for _ in range(depth)])
        self.downsample = PatchEmbed(2, dim, out_dim, use_conv_embed, False, pad) if downsample else None

    def forward(self, x, H, W):
        for blk in self.blocks:
            blk.H, blk.W = H, W
            x = blk(x)
        x_out = x
        if self.downsample is not None:
            x = x.transpose(1, 2).reshape(x.shape[0], -1, H, W)
            x, Ho, Wo = self.downsample(x)
        else:
            Ho, Wo = H, W
        return x_out, H, W, x, Ho, Wo


class OriginalFocalNet(nn.Module):
    """Classification model (``backbone=False``) or detection backbone (``backbone=True``)."""

    def __init__(
        self,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        focal_levels=(2, 2, 2, 2),
        focal_windows=(3, 3, 3, 3),
        use_conv_embed=False,
        use_layerscale=False,
        use_postln=False,
        use_postln_in_modulation=False,
        normalize_modulator=False,
        backbone=False,
        out_indices=(0, 1, 2, 3),
    ):
        super().__init__()
        n = len(depths)
        dims = [embed_dim * 2**i for i in range(n)]
        self.backbone = backbone
        self.out_indices = out_indices
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, use_conv_embed, True, backbone)
        kw = dict(
            use_layerscale=use_layerscale,
            use_postln=use_postln,
            use_postln_in_modulation=use_postln_in_modulation,
            normalize_modulator=normalize_modulator,
        )
        self.layers = nn.ModuleList(
            [
                BasicLayer(
                    dims[i],
                    dims[i + 1] if i < n - 1 else None,
                    depths[i],
                    focal_levels[i],
                    focal_windows[i],
                    i < n - 1,
                    use_conv_embed,
                    backbone,
                    **kw,
                )
                for i in range(n)
            ]
        )
        if backbone:
            for i in out_indices:
                self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        else:
            self.norm = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], num_classes)
        self.dims = dims

    def forward(self, x):
        x, H, W = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x_out, h, w, x, H, W = layer(x, H, W)
            if self.backbone and i in self.out_indices:
                o = getattr(self, f"norm{i}")(x_out)
                outs.append(o.view(-1, h, w, self.dims[i]).permute(0, 3, 1, 2).contiguous())
        if self.backbone:
            return outs
        x = self.norm(x)
        x = torch.flatten(F.adaptive_avg_pool1d(x.transpose(1, 2), 1), 1)
        return self.head(x)


HYPERPARAMETERS = (
    "embed_dim",
    "depths",
    "patch_size",
    "focal_levels",
    "focal_windows",
    "use_conv_embed",
    "use_layerscale",
    "use_postln",
    "use_postln_in_modulation",
    "normalize_modulator",
)


def original_like(model: nn.Module) -> OriginalFocalNet:
    """The original implementation with ``model``'s settings and weights (a FocalNet or FocalNetBackbone)."""
    cfg = model.cfg
    kw = {k: getattr(cfg, k) for k in HYPERPARAMETERS}
    out_indices = getattr(model, "out_indices", None)
    if out_indices is None:
        orig = OriginalFocalNet(**kw, num_classes=cfg.num_classes)
    else:
        orig = OriginalFocalNet(**kw, backbone=True, out_indices=out_indices)
    orig.load_state_dict(model.state_dict(), strict=True)
    return orig.eval()
