"""What every ONNX export of the package shares, below the tasks: the checked, atomic write; the metadata
an exported file carries; reading and validating an exported file before running it on ONNX Runtime; the
comparison rules of the export check.

An exported file holds one metadata entry, ``focalnet`` (JSON): ``format`` (:data:`EXPORT_FORMAT`),
``format_version``, ``kind`` (``classification`` | ``detection`` | ``segmentation``), ``model`` (the
architecture), ``focalnet_version``, ``inputs`` / ``outputs`` (names, element types), ``input_format``,
``class_names``, ``category_ids`` (detection), ``mean`` / ``std``, ``size_rules``, ``source`` and
``source_sha256`` (the checkpoint it was exported from), ``dtype``.

The export check (:func:`write_checked`) writes to a temporary file next to the output, runs
``onnx.checker`` and the task's comparison with PyTorch on ONNX Runtime, and only then renames it over the
output; a failed check raises :class:`ExportCheckError` (one line naming the output that differed and by
how much) and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "EXPORT_FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "ExportCheckError",
    "Exported",
    "file_sha256",
    "sample_image",
    "export_metadata",
    "write_checked",
    "ort_session",
    "open_exported",
    "check_close",
    "check_label_maps",
    "check_detections",
]

EXPORT_FORMAT = "focalnet-export"
FORMAT_VERSION = 1
KINDS = ("classification", "detection", "segmentation")
META_KEY = "focalnet"


class ExportCheckError(ValueError):
    """The exported graph's outputs differ from PyTorch's beyond the task's rule (one line)."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (a folder: of its files, sorted by name)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sample_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, deterministic uint8 ``H x W x 3`` image (coloured blobs) for the export checks."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 8, generator=g) * 255
    img = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    return img[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("focalnet")
    except Exception:  # noqa: BLE001 - a source checkout without installed metadata
        return "unknown"


def export_metadata(
    kind: str,
    model: str,
    *,
    inputs: Sequence[tuple[str, str]],
    outputs: Sequence[tuple[str, str]],
    input_format: str,
    class_names: Sequence[str],
    source: str | os.PathLike | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``focalnet`` metadata entry of an exported file (``extra``: ``category_ids``, ``mean``, ``std``,
    ``size_rules``, ``dtype``, ...); ``source``: the checkpoint, hashed."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    src = Path(source) if source is not None else None
    return {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": model,
        "focalnet_version": _version(),
        "inputs": [list(i) for i in inputs],
        "outputs": [list(o) for o in outputs],
        "input_format": input_format,
        "class_names": list(class_names),
        "source": src.name if src is not None else None,
        "source_sha256": file_sha256(src) if src is not None and src.exists() else None,
        **extra,
    }


def ort_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session (``threads``: intra-op threads; default ONNX Runtime's)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _to_fp16(path: Path) -> None:
    """Weights and activations in float16, inputs and outputs kept (for GPU execution providers)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True, disable_shape_infer=False)
    _topological_order(model.graph)  # the converter appends the input casts after their consumers
    onnx.save(model, str(path))


def _topological_order(graph: Any) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs (in place)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("the float16 graph has nodes whose inputs nothing produces")
        for n in ready:
            known.update(n.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def write_checked(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    metadata: Mapping[str, Any],
    check: Callable[[Any], None] | None,
    opset: int = 17,
    fp16: bool = False,
) -> Path:
    """Trace ``module`` on ``args`` to ONNX at ``path``, atomically: a temporary file in the same folder gets
    the graph and ``metadata``, passes ``onnx.checker`` and ``check(session)`` (the task's comparison with
    PyTorch on ONNX Runtime; ``None``: none, as for ``fp16`` files, which are meant for GPU providers: here
    they are only loaded),
    then replaces ``path``. On any failure the temporary file is removed and ``path`` is untouched."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.MultiheadAttention's fused eval kernel has no ONNX form: trace the composite ops it computes
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(tmp),
                dynamo=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=opset,
                do_constant_folding=True,
            )
        if fp16:
            _to_fp16(tmp)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(dict(metadata), sort_keys=True)
        onnx.save(model, str(tmp))
        del model
        onnx.checker.check_model(str(tmp), full_check=True)
        session = ort_session(tmp)  # loads (a float16 file too: the CPU provider falls back where it must)
        if check is not None:
            check(session)
        os.replace(tmp, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class Exported:
    """An exported file opened for running: the ONNX Runtime ``session`` and its ``meta`` (checked)."""

    path: Path
    session: Any
    meta: dict[str, Any]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs by name."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feeds))))


_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(int64)": "int64"}


def open_exported(path: str | os.PathLike, kind: str, threads: int | None = None) -> Exported:
    """Open a file written by ``focalnet export`` for ``kind`` after checking, before anything runs, that
    it is one: its ``focalnet`` metadata (format, version, kind), and its inputs and outputs (names and
    element types) against what the metadata declares. One-line ``ValueError`` otherwise."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX file not found: {p}")
    try:
        session = ort_session(p, threads)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
        msg = " ".join(str(e).split())[:200]
        raise ValueError(f"{p} is not a readable ONNX file: {msg}") from e
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    not_ours = f"{p} was not written by `focalnet export` (no valid focalnet metadata); refusing to run it"
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(not_ours)
    if type(meta.get("format_version")) is not int or meta["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{p}: export format version {meta.get('format_version')!r}; this focalnet reads {FORMAT_VERSION}"
        )
    if meta.get("kind") != kind:
        raise ValueError(
            f"{p} is a {meta.get('kind')} export ({meta.get('model')}), not a {kind} model; "
            f"use `focalnet {meta.get('kind')} predict`"
        )
    declared_in, declared_out = _pairs(meta.get("inputs")), _pairs(meta.get("outputs"))
    found_in = [(i.name, _ORT_TYPES.get(i.type, i.type)) for i in session.get_inputs()]
    found_out = [(o.name, _ORT_TYPES.get(o.type, o.type)) for o in session.get_outputs()]
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{p}: the export's class_names must be a non-empty list of strings; refusing to run it")
    if found_in != declared_in or found_out != declared_out:
        raise ValueError(
            f"{p}: the graph's inputs and outputs {found_in} -> {found_out} do not match its metadata "
            f"({meta.get('inputs')!r:.80} -> {meta.get('outputs')!r:.80}); refusing to run it"
        )
    return Exported(p, session, meta)


def _pairs(value: Any) -> list[tuple[str, str]] | None:
    """``[[name, element type], ...]`` of the metadata as tuples; ``None`` for anything else."""
    if not isinstance(value, list) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in value
    ):
        return None
    return [(v[0], v[1]) for v in value]


# ------------------------------------------------------------------------------------- comparison rules
def check_close(name: str, ref: np.ndarray, got: np.ndarray, atol: float, where: str = "") -> float:
    """Max absolute difference of ``got`` from ``ref``; :class:`ExportCheckError` above ``atol``."""
    if ref.shape != got.shape:
        raise ExportCheckError(f"output {name!r}{where}: shape {got.shape} in ONNX Runtime, {ref.shape} in PyTorch")
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    if not diff <= atol:
        raise ExportCheckError(
            f"output {name!r}{where} differs from PyTorch by {diff:.3g} (max |difference|; limit {atol:g})"
        )
    return diff


def check_label_maps(name: str, ref: np.ndarray, got: np.ndarray, min_equal: float = 0.999, where: str = "") -> float:
    """Share of equal pixels of two label maps; :class:`ExportCheckError` below ``min_equal``."""
    if ref.shape != got.shape:
        raise ExportCheckError(f"output {name!r}{where}: shape {got.shape} in ONNX Runtime, {ref.shape} in PyTorch")
    equal = float((ref == got).mean()) if ref.size else 1.0
    if equal < min_equal:
        raise ExportCheckError(
            f"output {name!r}{where}: {100 * equal:.3f} % of pixels equal PyTorch's (limit {100 * min_equal:g} %)"
        )
    return equal


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def check_detections(
    ref: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    *,
    box_tol: float = 0.5,
    min_mask_iou: float = 0.99,
    score_tol: float = 1e-3,
    where: str = "",
) -> float:
    """Compare detections (``boxes`` x1y1x2y2, ``labels``, ``scores``, optional ``masks`` N x 1 x H x W
    probabilities): the same number (aside detections whose score ties the last one kept), matched one to
    one (same label, Hungarian on the largest coordinate difference), boxes within ``box_tol`` pixels,
    scores within ``score_tol``, binarised masks with IoU at least ``min_mask_iou``. Returns the largest box
    difference; :class:`ExportCheckError` naming the output otherwise."""
    from scipy.optimize import linear_sum_assignment

    n, m = len(ref["scores"]), len(got["scores"])
    if n != m:
        longer = ref["scores"] if n > m else got["scores"]
        k = min(n, m)
        tie = k > 0 and abs(float(np.sort(longer)[::-1][k]) - float(np.sort(longer)[::-1][k - 1])) <= score_tol
        if not tie:
            raise ExportCheckError(f"output 'scores'{where}: {m} detections in ONNX Runtime, {n} in PyTorch")
    if n == 0 or m == 0:
        return 0.0
    cost = np.abs(ref["boxes"][:, None, :].astype(np.float64) - got["boxes"][None, :, :]).max(-1)
    cost = cost + 1e6 * (ref["labels"][:, None] != got["labels"][None, :])
    rows, cols = linear_sum_assignment(cost)
    worst = float(cost[rows, cols].max())
    if worst >= 1e6:
        raise ExportCheckError(f"output 'labels'{where}: a detection's label differs from PyTorch's")
    if worst > box_tol:
        raise ExportCheckError(f"output 'boxes'{where} differs from PyTorch by {worst:.3g} px (limit {box_tol:g})")
    sd = float(np.abs(ref["scores"][rows] - got["scores"][cols]).max())
    if sd > score_tol:
        raise ExportCheckError(f"output 'scores'{where} differs from PyTorch by {sd:.3g} (limit {score_tol:g})")
    if "masks" in ref:
        ious = [_mask_iou(ref["masks"][r] > 0.5, got["masks"][c] > 0.5) for r, c in zip(rows, cols)]
        low = min(ious)
        if low < min_mask_iou:
            raise ExportCheckError(f"output 'masks'{where}: mask IoU with PyTorch {low:.4f} (limit {min_mask_iou:g})")
    return worst
