"""What kind of file a checkpoint is, told cheaply from its keys and metadata, for the one-line error a
loader gives when the file is of another task (``... is a detector checkpoint (mask_rcnn), not an image
classifier: use `focalnet detection ...```) or not a checkpoint at all (an image, a text file).

Each task's loading path asks :func:`wrong_kind` when none of its own layouts matches; the answer names the
file's kind and the command that reads it. Telling a kind apart never builds a model: a torch file is
loaded with ``weights_only=True`` and memory-mapped (tensors are not read), a safetensors file by its
header only. This module imports no task package (it sits in the weights layer, below them): the marks
it reads are those the tasks' files carry (``detection_config``, ``segmentation_meta``,
``focalnet_config``, the original heads' key prefixes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FileKind", "file_kind", "kind_of", "not_a_checkpoint", "wrong_kind"]

# the task a loader expects -> what it reads, for "... not <this>"
EXPECTED = {
    "classification": "an image classifier",
    "detection": "a detector",
    "segmentation": "a segmentation model",
    "focalnet": "a FocalNet classifier or backbone",  # read_checkpoint: info, classify, visualize, backbones
}


@dataclass(frozen=True)
class FileKind:
    """``task``: the package task whose commands read the file (``None``: none of them); ``what``: the
    kind in words (``"a detector checkpoint (mask_rcnn)"``); ``checkpoint``: ``False`` for a file that is
    not a checkpoint at all (an image, text)."""

    task: str | None
    what: str
    checkpoint: bool = True


def _prefixes(sd: Any) -> set[str]:
    if not isinstance(sd, Mapping):
        return set()
    keys = [k for k in sd if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k[len("module.") :] for k in keys]
    return {k.split(".")[0] for k in keys}


def _state_dict(obj: Mapping[str, Any]) -> Any:
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def _detector_name(obj: Mapping[str, Any]) -> str:
    cfg = obj.get("detection_config")
    model = cfg.get("model") if isinstance(cfg, Mapping) else None
    name = model.get("detector") if isinstance(model, Mapping) else None
    return name if isinstance(name, str) else "mask_rcnn"


def _segmentor_name(obj: Mapping[str, Any]) -> str:
    for key in ("meta", "segmentation_meta"):
        meta = obj.get(key)
        if isinstance(meta, Mapping) and isinstance(meta.get("segmentor"), str):
            return meta["segmentor"]
    return "UPerNet"


def kind_of(obj: Any, metadata: Mapping[str, str] | None = None) -> FileKind:
    """The kind of a loaded file: the object ``torch.load`` gave (or the tensors of a safetensors file
    with its ``metadata``). Never raises, whatever ``obj`` holds."""
    try:
        return _kind_of(obj, metadata or {})
    except Exception:  # noqa: BLE001 - a hostile file is simply of no known kind
        return FileKind(None, "a file of no known kind")


def _kind_of(obj: Any, metadata: Mapping[str, str]) -> FileKind:
    if not isinstance(obj, Mapping):
        return FileKind(None, f"a torch file holding a {type(obj).__name__}", False)
    if metadata.get("kind") in ("detector", "segmentor"):
        task = "detection" if metadata["kind"] == "detector" else "segmentation"
        return FileKind(task, f"a {metadata['kind']} checkpoint")
    if "detection_config" in obj or obj.get("format") == "focalnet-dino":
        name = "dino" if obj.get("format") == "focalnet-dino" else _detector_name(obj)
        return FileKind("detection", f"a detector checkpoint ({name})")
    if obj.get("format") == "focalnet-segmentation" or "segmentation_meta" in obj:
        return FileKind("segmentation", f"a segmentation checkpoint ({_segmentor_name(obj)})")
    sd = _state_dict(obj)
    top = _prefixes(sd)
    if "decode_head" in top:
        return FileKind("segmentation", "an mmsegmentation segmentor checkpoint (UPerNet)")
    if top & {"rpn_head", "roi_head", "bbox_head"}:
        return FileKind("detection", "an mmdetection detector checkpoint")
    if "transformer" in top and ("backbone" in top or "class_embed" in top):
        return FileKind("detection", "a detector checkpoint (FocalNet-DINO, original layout)")
    if "body" in top and top & {"rpn", "roi_heads", "head", "fpn", "neck"}:
        return FileKind("detection", "a detector's state dict")
    if top & {"patch_embed", "stem", "focalnet", "embeddings", "layers"}:
        head = top & {"head", "classifier"} or any(str(k).startswith("head.") for k in sd)
        if head or obj.get("focalnet_config") is not None or "focalnet_config" in metadata:
            return FileKind("classification", "an image classifier (FocalNet)")
        return FileKind("classification", "a FocalNet backbone without a classifier head")
    if "backbone" in top:
        return FileKind(None, "a backbone of a detector or segmentor (its heads are not in the file)")
    return FileKind(None, "a file of no known kind (no FocalNet keys)")


def _not_a_checkpoint(path: Path) -> FileKind:
    """What a file torch and safetensors cannot read is: an image (its format), text or other bytes."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return FileKind(None, f"a {im.format} image", False)
    except Exception:  # noqa: BLE001 - not an image either
        pass
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return FileKind(None, "an unreadable file", False)
    if not head:
        return FileKind(None, "an empty file", False)
    try:
        head.decode("utf-8")
        return FileKind(None, "a text file", False)
    except UnicodeDecodeError:
        return FileKind(None, "a file of other bytes (neither a torch file nor safetensors)", False)


def _safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, str]] | None:
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100 << 20:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.pop("__metadata__", None) or {}
    return header, meta if isinstance(meta, dict) else {}


def file_kind(path: str | os.PathLike) -> FileKind:
    """The kind of the file at ``path`` (a model folder counts as a classifier's), read cheaply: the
    safetensors header, or the torch file memory-mapped with ``weights_only=True``."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return FileKind("classification", "a model folder (timm/transformers classifier)")
        return FileKind(None, "a folder without config.json", False)
    header = _safetensors_header(p)
    if header is not None:
        return kind_of(header[0], header[1])
    import torch

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a zip torch file (or unsafe): try the legacy format
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not a torch file at all
            return _not_a_checkpoint(p)
    return kind_of(obj)


def _unreadable(source: str | os.PathLike, kind: FileKind) -> str:
    return f"{source} is not a readable checkpoint: it is {kind.what}"


def not_a_checkpoint(path: str | os.PathLike) -> str | None:
    """``"<path> is not a readable checkpoint: it is a JPEG image"`` (text, other bytes) for a file that neither torch
    (a zip archive or a pickle) nor safetensors (a JSON header) can have written; ``None`` otherwise."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith((b"PK\x03\x04", b"\x80")) or _safetensors_header(p) is not None:
        return None  # a torch or safetensors file: its loader says what is wrong with it
    return _unreadable(path, _not_a_checkpoint(p))


def wrong_kind(source: str | os.PathLike, expected: str, obj: Any = None, metadata: Any = None) -> str | None:
    """One line for a file that is of another kind than ``expected`` (a key of :data:`EXPECTED`): what it
    is and the command that reads it; ``None`` when the file is of the expected kind or of no known kind
    (the loader's own message says more then). ``obj``: the file as loaded already (else it is read)."""
    if expected not in EXPECTED:
        raise ValueError(f"expected must be one of {sorted(EXPECTED)}, got {expected!r}")
    kind = kind_of(obj, metadata) if obj is not None else file_kind(source)
    if not kind.checkpoint:
        return _unreadable(source, kind)
    if kind.task is None or kind.task == expected or (expected == "focalnet" and kind.task == "classification"):
        return None
    return f"{source} is {kind.what}, not {EXPECTED[expected]}: use `focalnet {kind.task} ...`"
