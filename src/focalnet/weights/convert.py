"""State-dict layouts of the same FocalNet weights: original, timm and transformers.

The original layout (the released ``.pth`` files, and this library's own modules) is the hub: every
conversion goes through it. ``detect_layout`` tells the layouts apart by their key names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from .errors import CheckpointMismatchError, MalformedCheckpointError

__all__ = [
    "LAYOUTS",
    "detect_layout",
    "convert_state_dict",
    "unwrap_state_dict",
    "rename_key",
    "rename_keys",
    "invert_rules",
]

LAYOUTS = ("original", "timm", "transformers")
StateDict = dict[str, torch.Tensor]

# Linear layers stored as 1x1 convolutions in timm's NCHW model.
_TIMM_CONV_LINEARS = re.compile(r"\.(modulation\.f|modulation\.proj|mlp\.fc1|mlp\.fc2)\.weight$")


def unwrap_state_dict(obj: object) -> StateDict:
    """The tensor dict inside a loaded checkpoint: ``{"model": sd}``, ``{"state_dict": sd}``, bare ``sd``,
    with ``module.`` (DDP) prefixes removed. Raises :class:`MalformedCheckpointError` naming what was
    found otherwise (no mapping, keys that are not strings, entries that are not tensors)."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise MalformedCheckpointError(f"checkpoint holds no state dict (found {type(obj).__name__})")
    keys = [k for k in obj if not isinstance(k, str)]
    if keys:
        raise MalformedCheckpointError(
            f"checkpoint is not a state dict: keys {keys[:5]!r} are {type(keys[0]).__name__}, not strings"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise MalformedCheckpointError(
            f"checkpoint is not a state dict: entries {bad[:5]} are not tensors "
            f"({type(obj[bad[0]]).__name__}; expected a bare state dict or one under 'model' or 'state_dict')"
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def rename_key(key: str, rules: Sequence[tuple[str, str]]) -> str | None:
    """``key`` renamed by the first ``(pattern, replacement)`` rule whose regex matches it, else ``None``."""
    for pat, rep in rules:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    return None


def rename_keys(sd: Mapping[str, torch.Tensor], rules: Sequence[tuple[str, str]], what: str) -> dict[str, torch.Tensor]:
    """Every key of ``sd`` renamed by :func:`rename_key`; keys no rule knows are a ``ValueError`` naming
    them (``what``: the kind of file expected, for the message)."""
    out, unknown = {}, []
    for k, v in sd.items():
        new = rename_key(k, rules)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(f"unknown keys for {what}: {unknown[:10]}")
    return out


_GROUP = re.compile(r"\(((?:[^()\\]|\\.)*)\)")


def invert_rules(rules: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    r"""The ``(pattern, replacement)`` rules that map :func:`rename_key`'s output back to its input.

    Each pattern must be ``^literal(group)literal...$`` with flat groups, every group used once in its
    replacement (``r"^neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$"`` -> ``r"backbone.fpn.layer_blocks.\1.0.\2"``
    inverts to ``r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.(weight|bias)$"`` -> ``r"neck.fpn_convs.\1.conv.\2"``)."""
    out = []
    for pattern, template in rules:
        body = pattern[1:] if pattern.startswith("^") else pattern
        body = body[:-1] if body.endswith("$") else body
        segments = _GROUP.split(body)  # literal, group, literal, ..., literal
        groups = segments[1::2]
        parts = re.split(r"\\(\d+)", template)  # literal, group number, literal, ...
        order = [int(n) for n in parts[1::2]]
        if sorted(order) != list(range(1, len(groups) + 1)):
            raise ValueError(f"rule {pattern!r} -> {template!r} does not use each group once: cannot invert it")
        inv_pattern = "^" + "".join(
            re.escape(part) if i % 2 == 0 else f"({groups[int(part) - 1]})" for i, part in enumerate(parts)
        )
        inv_template = "".join(
            re.sub(r"\\(.)", r"\1", seg) if i % 2 == 0 else "\\" + str(order.index(i // 2 + 1) + 1)
            for i, seg in enumerate(segments)
        )
        out.append((inv_pattern + "$", inv_template))
    return out


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """``"original"``, ``"timm"`` or ``"transformers"``, from the key names; ``ValueError`` otherwise."""
    keys = list(sd)
    marks = {
        "transformers": next(
            (k for k in keys if k.startswith(("focalnet.embeddings", "embeddings.patch_embeddings"))), None
        ),
        "timm": next((k for k in keys if k.startswith("stem.proj")), None),
        "original": next((k for k in keys if k.startswith(("patch_embed.proj", "backbone.patch_embed.proj"))), None),
    }
    found = [name for name, key in marks.items() if key is not None]
    if len(found) > 1:  # one set would be loaded and the other ignored, silently
        both = " and ".join(f"{n} ({marks[n]!r})" for n in found)
        raise CheckpointMismatchError(
            f"the file holds the keys of several layouts, {both}; refusing to guess: keep one"
        )
    if found:
        return found[0]
    raise CheckpointMismatchError(
        "unrecognized checkpoint layout: expected FocalNet keys such as 'patch_embed.proj.weight' "
        f"(original), 'stem.proj.weight' (timm) or 'focalnet.embeddings...' (transformers); first keys: {keys[:5]}"
    )


def _num_stages(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    idx = [int(m.group(1)) for k in sd if (m := re.match(pattern, k))]
    return max(idx) + 1 if idx else 0


# ---------------------------------------------------------------- timm
def _timm_to_original(sd: Mapping[str, torch.Tensor]) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        k2 = k.replace("stem.", "patch_embed.", 1) if k.startswith("stem.") else k
        k2 = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k2)
        k2 = re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k2)
        k2 = re.sub(r"\.norm([12])_post\.", r".norm\1.", k2)
        k2 = k2.replace(".modulation.norm.", ".modulation.ln.")
        if k2.startswith("head.fc."):
            k2 = "head." + k2[len("head.fc.") :]
        if _TIMM_CONV_LINEARS.search(k2) and v.ndim == 4:
            v = v.flatten(1)
        out[k2] = v
    return _reorder_original(out)


def _original_to_timm(sd: Mapping[str, torch.Tensor], use_postln: bool) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        k2 = k.replace("patch_embed.", "stem.", 1) if k.startswith("patch_embed.") else k
        k2 = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k2)
        k2 = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k2)
        if use_postln:
            k2 = re.sub(r"\.norm([12])\.", r".norm\1_post.", k2)
        k2 = k2.replace(".modulation.ln.", ".modulation.norm.")
        if k2.startswith("head."):
            k2 = "head.fc." + k2[len("head.") :]
        if _TIMM_CONV_LINEARS.search(k2) and v.ndim == 2:
            v = v[:, :, None, None]
        out[k2] = v
    return out


# ---------------------------------------------------------------- transformers
_HF_BLOCK = [
    (".modulation.f.", ".modulation.projection_in."),
    (".modulation.h.", ".modulation.projection_context."),
    (".modulation.proj.", ".modulation.projection_out."),
    (".modulation.ln.", ".modulation.layernorm."),
]


def _original_to_hf(sd: Mapping[str, torch.Tensor]) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("patch_embed.proj."):
            k2 = "focalnet.embeddings.patch_embeddings.projection." + k.split(".")[-1]
        elif k.startswith("patch_embed.norm."):
            k2 = "focalnet.embeddings.norm." + k.split(".")[-1]
        elif k.startswith("norm."):
            k2 = "focalnet.layernorm." + k.split(".")[-1]
        elif k.startswith("head."):
            k2 = "classifier." + k.split(".")[-1]
        else:
            k2 = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.", r"focalnet.encoder.stages.\1.layers.\2.", k)
            k2 = re.sub(r"^layers\.(\d+)\.downsample\.proj\.", r"focalnet.encoder.stages.\1.downsample.projection.", k2)
            k2 = re.sub(r"^layers\.(\d+)\.downsample\.norm\.", r"focalnet.encoder.stages.\1.downsample.norm.", k2)
            for a, b in _HF_BLOCK:
                k2 = k2.replace(a, b)
        out[k2] = v
    return out


def _hf_to_original(sd: Mapping[str, torch.Tensor]) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        k2 = k[len("focalnet.") :] if k.startswith("focalnet.") else k
        if k2.startswith("embeddings.mask_token"):
            continue
        k2 = k2.replace("embeddings.patch_embeddings.projection.", "patch_embed.proj.")
        k2 = k2.replace("embeddings.norm.", "patch_embed.norm.")
        if k2.startswith("layernorm."):
            k2 = "norm." + k2[len("layernorm.") :]
        if k2.startswith("classifier."):
            k2 = "head." + k2[len("classifier.") :]
        k2 = re.sub(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"layers.\1.blocks.\2.", k2)
        k2 = re.sub(r"^encoder\.stages\.(\d+)\.downsample\.projection\.", r"layers.\1.downsample.proj.", k2)
        k2 = re.sub(r"^encoder\.stages\.(\d+)\.downsample\.norm\.", r"layers.\1.downsample.norm.", k2)
        for a, b in _HF_BLOCK:
            k2 = k2.replace(b, a)
        out[k2] = v
    return _reorder_original(out)


def _key_rank(k: str) -> tuple:
    """Sort key reproducing the original module order (stem, stages, norm, head)."""

    def sub(rest: str) -> int:  # conv before its norm, weight before bias
        return (0 if rest.startswith("proj.") else 1) * 2 + (0 if rest.endswith("weight") else 1)

    if k.startswith("patch_embed."):
        return (0, 0, 0, 0, sub(k[len("patch_embed.") :]), "")
    m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)", k)
    if m:
        rest = m.group(3)
        order = [
            "gamma_1",
            "gamma_2",
            "norm1.",
            "modulation.f.",
            "modulation.h.",
            "modulation.proj.",
            "modulation.focal_layers.",
            "modulation.ln.",
            "norm2.",
            "mlp.fc1.",
            "mlp.fc2.",
        ]
        pos = next((i for i, o in enumerate(order) if rest.startswith(o)), len(order))
        tail = rest[len(order[pos]) :] if pos < len(order) else rest
        return (1, int(m.group(1)), 0, int(m.group(2)), pos, "0" if tail == "weight" else tail)
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
    if m:
        return (1, int(m.group(1)), 1, 0, sub(m.group(2)), "")
    if k.startswith("norm."):
        return (2, 0, 0, 0, 0, "0" if k.endswith("weight") else k)
    if k.startswith("head."):
        return (3, 0, 0, 0, 0, "0" if k.endswith("weight") else k)
    return (4, 0, 0, 0, 0, k)


def _reorder_original(sd: StateDict) -> StateDict:
    return {k: sd[k] for k in sorted(sd, key=_key_rank)}


def convert_state_dict(
    sd: Mapping[str, torch.Tensor],
    to: str = "original",
    *,
    source: str | None = None,
    use_postln: bool | None = None,
) -> StateDict:
    """Convert ``sd`` between the ``"original"``, ``"timm"`` and ``"transformers"`` layouts.

    The source layout is detected from the keys unless ``source`` is given. Converting *to* timm needs
    to know whether the model is post-norm (timm renames those norms); by default this is read from the
    registered variant whose structure matches the weights.
    """
    if to not in LAYOUTS:
        raise ValueError(f"unknown layout {to!r}; choose one of {LAYOUTS}")
    sd = unwrap_state_dict(sd)
    source = source or detect_layout(sd)
    if source not in LAYOUTS:
        raise ValueError(f"unknown source layout {source!r}; choose one of {LAYOUTS}")
    if source == to:
        return dict(sd)
    if source == "timm":
        orig = _timm_to_original(sd)
        if use_postln is None:
            use_postln = any("_post." in k for k in sd)
    elif source == "transformers":
        orig = _hf_to_original(sd)
    else:
        orig = dict(sd)
    if to == "original":
        return orig
    if to == "transformers":
        return _original_to_hf(orig)
    if use_postln is None:
        from .infer import infer_config

        use_postln = infer_config(orig).use_postln
    return _original_to_timm(orig, use_postln)
