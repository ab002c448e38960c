"""Output folders and JSON files: ``mkdir -p`` with one-line errors, strict JSON written atomically.

The lowest module of the engine: run folders (:mod:`.runs`), the training loop (:mod:`.trainer`) and the
task packages write through it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["RunFolderError", "finite_json", "json_default", "make_output_dir", "write_json"]


class RunFolderError(ValueError):
    """An output folder cannot be used as asked (another run's checkpoints, not a folder, ...)."""


def make_output_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """``mkdir -p`` with a one-line error where a part of ``path`` is a regular file."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = next((q for q in [p, *p.parents] if q.exists() and not q.is_dir()), p)
        raise RunFolderError(f"{what} {p}: {blocker} is a file, not a folder") from e
    except PermissionError as e:
        raise RunFolderError(f"{what} {p}: permission denied ({e.filename})") from e
    return p


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write strict JSON atomically (temp file, then rename): NaN and infinities become ``null``."""
    path = Path(path)
    make_output_dir(path.parent, "output folder")
    text = json.dumps(finite_json(data), indent=2, default=json_default, allow_nan=False)
    if path.is_dir():
        raise RunFolderError(f"{path} is a folder; give a file path for the JSON output")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write or rename leaves no temporary file


def finite_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by ``None``, so that it is valid JSON.

    Arrays and tensors (anything with ``tolist``) become lists."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    if hasattr(data, "tolist") and not isinstance(data, (str, bytes)):
        return finite_json(data.tolist())
    return data


def json_default(o: Any) -> Any:
    """``json.dumps`` default: arrays and tensors as lists, paths as strings."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
