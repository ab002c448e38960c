"""Reading and writing checkpoint files safely (``weights_only=True`` or safetensors, atomic writes)."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checks import check_tensors, memory_budget, tensors_too_large
from .convert import detect_layout, unwrap_state_dict
from .errors import CheckpointMismatchError, MalformedCheckpointError
from .infer import check_finite
from .kind import not_a_checkpoint, wrong_kind

__all__ = [
    "Checkpoint",
    "read_checkpoint",
    "checkpoint_from_object",
    "save_safetensors",
    "atomic_save",
    "load_error_reason",
    "safe_torch_load",
]

_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


@dataclass
class Checkpoint:
    """A state dict read from disk with what is known about it."""

    state_dict: dict[str, torch.Tensor]
    layout: str  # original | timm | transformers
    path: str
    file_format: str  # torch | safetensors | folder
    config: dict[str, Any] | None = None  # our own FocalNetConfig dict, or flags from a folder's config.json
    variant: str | None = None  # a registered variant named by the file (timm config.json)
    extra: dict[str, Any] = field(default_factory=dict)  # other metadata (class names, ...)
    backbone_prefix: bool = False  # detection/segmentation file: weights were under 'backbone.'


def _umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _disk_full(e: BaseException, folder: Path) -> bool:
    """Whether a failed write of a file in ``folder`` failed because its file system is full (torch's
    writer says "unexpected pos", safetensors "os error 28"; the free space tells)."""
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    msg = str(e)
    if "os error 28" in msg:
        return True
    if "unexpected pos" not in msg and "write" not in msg.lower():
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 16 * 2**20


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and _disk_full(e, path.parent)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise OSError(errno.ENOSPC, "no space left on device", str(path)) from None
        raise


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> None:
    """Write ``state_dict`` as safetensors (atomically), JSON-encoding non-string metadata values."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and _disk_full(e, path.parent)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            raise OSError(errno.ENOSPC, "no space left on device", str(path)) from None
        raise


def load_error_reason(e: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, without torch's advice to retry with
    ``weights_only=False`` (that would run arbitrary code from the file: never do it for untrusted files)."""
    msg = str(e)
    if "Weights only load failed" in msg:
        m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", msg, re.S)
        detail = " ".join(m.group(1).split()) if m else ""
        return f"the file holds objects other than tensors and plain containers ({detail or 'unsupported pickle'})"
    if "PytorchStreamReader" in msg or "zip archive" in msg:
        return "not a complete torch file (truncated or corrupt)"
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return f"{type(e).__name__}: {first}"[:300]


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a one-line ``ValueError`` if it fails."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, unsafe globals
        other = not_a_checkpoint(path)  # an image, text: say so rather than what the unpickler tripped on
        raise ValueError(
            other
            or f"{path} is not a readable {what}: {load_error_reason(e)} (files are loaded safely, with weights_only=True)"
        ) from e


def _load_torch(path: Path) -> Any:
    return safe_torch_load(path)


def _safetensors_bytes(dtype: str, shape: list[int]) -> int:
    bits = re.search(r"\d+", dtype)
    n = 1
    for d in shape:
        n *= int(d)
    return n * max(1, (int(bits.group()) if bits else 8) // 8)


def _safetensors_sizes(path: Path) -> list[tuple[str, list[int], int]]:
    """``(key, shape, bytes)`` of each tensor a safetensors header declares, read without mapping the file
    (a sparse file can declare terabytes, more than the address space allows to map); ``[]`` where the
    header is not well-formed (safetensors then says why)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n <= 100 << 20 else {}
        out = []
        for k, v in header.items():
            if k != "__metadata__":
                shape = [int(d) for d in v["shape"]]
                out.append((k, shape, _safetensors_bytes(str(v["dtype"]), shape)))
        return out
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; the sizes its header declares are checked against the
    memory budget before the file is opened."""
    from safetensors import safe_open

    budget, total = memory_budget(), 0
    for k, shape, nbytes in _safetensors_sizes(path):
        total += nbytes
        if total > budget:
            raise tensors_too_large(str(path), budget, k, shape)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"cannot read safetensors file {path}: {e}") from e
    return sd, meta


def _names(value: Any, source: str, key: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise MalformedCheckpointError(f"{source}: {key} must be a list of class names, got {type(value).__name__}")
    return list(value)


def _folder_config(config: Any, source: str) -> tuple[dict[str, Any] | None, str | None, dict[str, Any]]:
    """(flags, variant, extra) from a transformers or timm ``config.json``; class names are kept as
    found (checked against the head when the model is built)."""
    if not isinstance(config, Mapping):
        raise MalformedCheckpointError(f"{source} must hold a JSON object, got {type(config).__name__}")
    extra: dict[str, Any] = {}
    if config.get("model_type") == "focalnet":  # transformers
        try:
            flags = {
                "use_postln": bool(config.get("use_post_layernorm", False)),
                "normalize_modulator": bool(config.get("normalize_modulator", False)),
                "layerscale_value": float(config.get("layerscale_value", 1e-4)),
            }
        except (TypeError, ValueError):
            raise MalformedCheckpointError(f"{source}: layerscale_value must be a number") from None
        id2label = config.get("id2label")
        if id2label is not None and not isinstance(id2label, Mapping):
            raise MalformedCheckpointError(f"{source}: id2label must be an object, got {type(id2label).__name__}")
        if id2label and len(id2label) > 2:
            missing = [i for i in range(len(id2label)) if str(i) not in id2label and i not in id2label]
            if missing:
                raise MalformedCheckpointError(f"{source}: id2label has no entry {missing[0]} (0..{len(id2label) - 1})")
            extra["class_names"] = [
                id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(len(id2label))
            ]
        return flags, None, extra
    arch = config.get("architecture")
    if arch:
        if not isinstance(arch, str):
            raise MalformedCheckpointError(f"{source}: architecture must be a name, got {type(arch).__name__}")
        pc = config.get("pretrained_cfg", {})
        if not isinstance(pc, Mapping):
            raise MalformedCheckpointError(f"{source}: pretrained_cfg must be an object, got {type(pc).__name__}")
        extra["pretrained_cfg"] = dict(pc)
        if "label_names" in config:
            extra["class_names"] = _names(config["label_names"], source, "label_names")
        return None, arch, extra
    return None, None, extra


def _stored_mapping(value: Any, source: str, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedCheckpointError(f"{source}: stored {key!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


def checkpoint_from_object(
    obj: Any,
    source: str,
    file_format: str = "torch",
    *,
    metadata: Mapping[str, str] | None = None,
    weights_key: str | None = None,
    allow_nonfinite: bool | None = None,
) -> Checkpoint:
    """A :class:`Checkpoint` from what a file held: a loaded torch object (or the tensors of a
    safetensors file with its ``metadata``). ``weights_key`` takes the state dict from that entry (a
    training checkpoint's ``"ema"``). The tensors are checked (:func:`~focalnet.weights.checks.check_tensors`:
    string keys, tensors, no expanded storage, within the memory budget) before anything else touches
    them, then for NaN/inf unless ``allow_nonfinite``; stored metadata of the wrong type is a
    :class:`MalformedCheckpointError` naming the key."""
    config: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    raw = obj
    if metadata is not None:  # safetensors: every value is a string, JSON for ours
        for k, v in metadata.items():
            if k == "focalnet_config":
                try:
                    config = _stored_mapping(json.loads(v), source, k)
                except json.JSONDecodeError:
                    raise MalformedCheckpointError(f"{source}: stored {k!r} is not JSON") from None
            elif k != "format":
                try:
                    extra[k] = json.loads(v)
                except json.JSONDecodeError:
                    extra[k] = v
    elif isinstance(obj, Mapping):
        if obj.get("focalnet_config") is not None:
            config = _stored_mapping(obj["focalnet_config"], source, "focalnet_config")
        if obj.get("class_names") is not None:
            extra["class_names"] = _names(obj["class_names"], source, "class_names")
    if weights_key is not None:
        if not isinstance(obj, Mapping) or weights_key not in obj:
            raise MalformedCheckpointError(f"{source}: no {weights_key!r} weights in the file")
        obj = obj[weights_key]
    try:
        sd = check_tensors(unwrap_state_dict(obj), source)
    except MalformedCheckpointError as e:  # the message names the file
        raise MalformedCheckpointError(e if str(e).startswith(source) else f"{source}: {e}") from None
    backbone = False
    if any(k.startswith("backbone.") for k in sd):
        # mmdetection / mmsegmentation file: keep the backbone, ignore neck/heads
        extra["ignored_prefixes"] = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
        backbone = True
    check_finite(sd, source, allow_nonfinite)
    try:
        layout = detect_layout(sd)
    except CheckpointMismatchError as e:  # a detector's or segmentor's own file: say so and which command reads it
        other = wrong_kind(source, "focalnet", raw, metadata)
        if other is None:
            raise CheckpointMismatchError(f"{source}: {e}") from None
        raise CheckpointMismatchError(other) from None
    return Checkpoint(sd, layout, source, file_format, config, None, extra, backbone)


def read_checkpoint(path: str | os.PathLike, allow_nonfinite: bool | None = None) -> Checkpoint:
    """Read a FocalNet checkpoint in any supported container and layout.

    ``path`` may be a ``.pth``/``.pt``/``.bin`` file (``{"model": sd}``, ``{"state_dict": sd}`` with
    ``backbone.`` prefixes, or bare, possibly with ``module.`` prefixes), a ``.safetensors`` file (ours
    carries the model config in its metadata), or a model folder with ``config.json`` and weights
    (timm or transformers hub layout). The tensors are checked before anything else (see
    :func:`checkpoint_from_object`); weights holding NaN/inf are refused
    (:class:`~focalnet.weights.errors.NonFiniteWeightsError`) unless ``allow_nonfinite`` (default: the
    ``FOCALNET_ALLOW_NONFINITE`` environment variable).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        weights = next((path / n for n in _FOLDER_WEIGHTS if (path / n).exists()), None)
        if weights is None:
            raise FileNotFoundError(f"model folder {path} has none of {', '.join(_FOLDER_WEIGHTS)}")
        cfg_file = path / "config.json"
        config: dict[str, Any] | None = None
        variant: str | None = None
        extra: dict[str, Any] = {}
        if cfg_file.exists():
            try:
                config_json = json.loads(cfg_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{cfg_file} is not valid JSON: {e}") from e
            config, variant, extra = _folder_config(config_json, str(cfg_file))
        inner = read_checkpoint(weights, allow_nonfinite)
        return Checkpoint(
            inner.state_dict,
            inner.layout,
            str(path),
            "folder",
            config or inner.config,
            variant or inner.variant,
            {**inner.extra, **extra},
        )
    if path.suffix == ".safetensors":
        raw, meta = _load_safetensors(path)
        return checkpoint_from_object(raw, str(path), "safetensors", metadata=meta, allow_nonfinite=allow_nonfinite)
    return checkpoint_from_object(_load_torch(path), str(path), "torch", allow_nonfinite=allow_nonfinite)
