"""The released FocalNet variants, declared as data, and the functions that build them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .focalnet import FocalNetConfig

__all__ = ["Variant", "VARIANTS", "list_models", "get_variant", "imagenet_class_names", "match_variant"]

_BLOB = "https://projects4jw.blob.core.windows.net/focalnet/release/classification/"


@dataclass(frozen=True)
class Source:
    """Where a pretrained checkpoint can be fetched: the original URL and public hub mirrors."""

    url: str
    timm_repo: str | None = None
    hf_repo: str | None = None
    sha256: str | None = None  # verified when known


@dataclass(frozen=True)
class Variant:
    name: str
    cfg: FocalNetConfig
    input_size: int = 224
    top1: float | None = None
    params_m: float | None = None
    flops_g: float | None = None
    tags: dict[str, Source] = field(default_factory=dict)

    @property
    def default_tag(self) -> str | None:
        return next(iter(self.tags), None)


def _c(embed_dim: int, depths: tuple[int, ...], levels: int, windows: int, **kw: Any) -> FocalNetConfig:
    n = len(depths)
    return FocalNetConfig(
        embed_dim=embed_dim, depths=depths, focal_levels=(levels,) * n, focal_windows=(windows,) * n, **kw
    )


_T, _S = (2, 2, 6, 2), (2, 2, 18, 2)
_ISO = (12,)
_BIG = dict(use_conv_embed=True, use_layerscale=True, use_postln=True, num_classes=21842)


def _in1k(name: str, file: str, hf: str | None = None) -> dict[str, Source]:
    return {
        "ms_in1k": Source(
            _BLOB + file, timm_repo=f"timm/{name}.ms_in1k" if hf != "iso" else None, hf_repo=hf if hf != "iso" else None
        )
    }


def _in22k(name: str, file: str) -> dict[str, Source]:
    return {"ms_in22k": Source(_BLOB + file, timm_repo=f"timm/{name}.ms_in22k")}


_VARIANTS = [
    Variant(
        "focalnet_tiny_srf",
        _c(96, _T, 2, 3),
        224,
        82.1,
        28.4,
        4.4,
        _in1k("focalnet_tiny_srf", "focalnet_tiny_srf.pth", "microsoft/focalnet-tiny"),
    ),
    Variant(
        "focalnet_tiny_lrf",
        _c(96, _T, 3, 3),
        224,
        82.3,
        28.6,
        4.5,
        _in1k("focalnet_tiny_lrf", "focalnet_tiny_lrf.pth", "microsoft/focalnet-tiny-lrf"),
    ),
    Variant(
        "focalnet_small_srf",
        _c(96, _S, 2, 3),
        224,
        83.4,
        49.9,
        8.6,
        _in1k("focalnet_small_srf", "focalnet_small_srf.pth", "microsoft/focalnet-small"),
    ),
    Variant(
        "focalnet_small_lrf",
        _c(96, _S, 3, 3),
        224,
        83.5,
        50.3,
        8.7,
        _in1k("focalnet_small_lrf", "focalnet_small_lrf.pth", "microsoft/focalnet-small-lrf"),
    ),
    Variant(
        "focalnet_base_srf",
        _c(128, _S, 2, 3),
        224,
        83.7,
        88.1,
        15.3,
        _in1k("focalnet_base_srf", "focalnet_base_srf.pth", "microsoft/focalnet-base"),
    ),
    Variant(
        "focalnet_base_lrf",
        _c(128, _S, 3, 3),
        224,
        83.9,
        88.7,
        15.4,
        _in1k("focalnet_base_lrf", "focalnet_base_lrf.pth", "microsoft/focalnet-base-lrf"),
    ),
    Variant(
        "focalnet_tiny_iso",
        _c(192, _ISO, 3, 3, patch_size=16),
        224,
        74.1,
        5.9,
        1.1,
        _in1k("focalnet_tiny_iso", "focalnet_tiny_iso_16.pth", "iso"),
    ),
    Variant(
        "focalnet_small_iso",
        _c(384, _ISO, 3, 3, patch_size=16),
        224,
        80.9,
        22.4,
        4.3,
        _in1k("focalnet_small_iso", "focalnet_small_iso_16.pth", "iso"),
    ),
    Variant(
        "focalnet_base_iso",
        _c(768, _ISO, 3, 3, patch_size=16, use_layerscale=True, use_postln=True, use_postln_in_modulation=True),
        224,
        82.4,
        87.2,
        16.9,
        _in1k("focalnet_base_iso", "focalnet_base_iso_16.pth", "iso"),
    ),
    Variant(
        "focalnet_large_fl3",
        _c(192, _S, 3, 5, **_BIG),
        384,
        None,
        None,
        None,
        _in22k("focalnet_large_fl3", "focalnet_large_lrf_384.pth"),
    ),
    Variant(
        "focalnet_large_fl4",
        _c(192, _S, 4, 3, normalize_modulator=True, **_BIG),
        384,
        None,
        None,
        None,
        _in22k("focalnet_large_fl4", "focalnet_large_lrf_384_fl4.pth"),
    ),
    Variant(
        "focalnet_xlarge_fl3",
        _c(256, _S, 3, 5, **_BIG),
        384,
        None,
        None,
        None,
        _in22k("focalnet_xlarge_fl3", "focalnet_xlarge_lrf_384.pth"),
    ),
    Variant(
        "focalnet_xlarge_fl4",
        _c(256, _S, 4, 3, **_BIG),
        384,
        None,
        None,
        None,
        _in22k("focalnet_xlarge_fl4", "focalnet_xlarge_lrf_384_fl4.pth"),
    ),
    Variant(
        "focalnet_huge_fl3",
        _c(352, _S, 3, 3, use_postln_in_modulation=True, **_BIG),
        224,
        None,
        None,
        None,
        _in22k("focalnet_huge_fl3", "focalnet_huge_lrf_224.pth"),
    ),
    Variant(
        "focalnet_huge_fl4",
        _c(352, _S, 4, 3, use_postln_in_modulation=True, **_BIG),
        224,
        None,
        None,
        None,
        _in22k("focalnet_huge_fl4", "focalnet_huge_lrf_224_fl4.pth"),
    ),
]

VARIANTS: dict[str, Variant] = {v.name: v for v in _VARIANTS}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered variants, optionally filtered by a shell-style ``pattern``."""
    import fnmatch

    return [n for n in VARIANTS if fnmatch.fnmatch(n, pattern)]


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, VARIANTS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(VARIANTS)}") from None


# Fields that a state_dict shows (the others, post-norm and normalize_modulator, it cannot).
STRUCTURAL = (
    "embed_dim",
    "depths",
    "focal_levels",
    "focal_windows",
    "focal_factor",
    "patch_size",
    "use_conv_embed",
    "use_layerscale",
    "use_postln_in_modulation",
    "mlp_ratio",
)


def match_variant(cfg: FocalNetConfig, ignore: tuple[str, ...] = ()) -> Variant | None:
    """The registered variant whose structure (everything a state_dict shows, except the fields in
    ``ignore``) equals ``cfg``'s."""
    fields = [f for f in STRUCTURAL if f not in ignore]
    for v in VARIANTS.values():
        if all(getattr(v.cfg, f) == getattr(cfg, f) for f in fields):
            return v
    return None


def imagenet_class_names(num_classes: int) -> list[str] | None:
    """Readable names of the outputs of a released head: ImageNet-1K (1000) or -22K (21842) descriptions
    (timm's tables), else ``None``."""
    try:
        from timm.data import ImageNetInfo

        if num_classes == 1000:
            return ImageNetInfo().label_descriptions()
        if num_classes == 21842:
            return ImageNetInfo("imagenet-22k-ms").label_descriptions()
    except Exception:
        return None
    return None
