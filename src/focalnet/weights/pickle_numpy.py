"""Read detectron2 model-zoo ``.pkl`` files (numpy arrays in plain containers) without running their code.

The released Mask2Former (and every detectron2) model-zoo file is a pickle of
``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": ...}``. ``pickle.load`` would run
whatever callables such a file names; :func:`load_numpy_pickle` uses an unpickler whose ``find_class``
admits only what numpy arrays need (array reconstruction, ``dtype``, scalars, protocol-5 buffers, under
both the ``numpy.core`` and ``numpy._core`` names), ``bytes`` as protocol 2 writes them
(``_codecs.encode``) and ``collections.OrderedDict``. Anything else, object arrays, a reconstructed array
that claims elements before its data is read, or a file larger than the memory budget
(:func:`~focalnet.weights.checks.memory_budget`) is one :class:`~focalnet.weights.errors.MalformedCheckpointError`
(:class:`~focalnet.weights.errors.ModelTooLargeError` for the budget) naming the file; arrays come back as
tensors (``torch.from_numpy``, native byte order).
"""

from __future__ import annotations

import codecs
import collections
import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import memory_budget
from .errors import MalformedCheckpointError, ModelTooLargeError

__all__ = ["load_numpy_pickle"]

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")


class _ArrayClass:
    """What ``numpy.ndarray`` resolves to: only :func:`_reconstruct` takes it (calling the real class
    would allocate any shape the file asks for)."""


_ARRAY_CLASS = _ArrayClass()


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the only call numpy's own pickles make: an empty ndarray whose
    ``__setstate__`` then brings shape, dtype and data (so nothing is allocated ahead of the data)."""
    if cls is not _ARRAY_CLASS:
        raise MalformedCheckpointError("array reconstruction of something other than numpy.ndarray")
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims) or math.prod(dims) != 0:
        raise MalformedCheckpointError(f"array reconstruction with shape {shape!r} (numpy pickles use an empty one)")
    return np.ndarray.__new__(np.ndarray, dims, np.uint8)


def _dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise MalformedCheckpointError("an object dtype (arrays of Python objects)")
    return dtype


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise MalformedCheckpointError("a numpy scalar other than a number")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise MalformedCheckpointError("a protocol-5 array of objects")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise MalformedCheckpointError("_codecs.encode other than protocol 2's bytes")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): _dtype,
}
for _module in _NUMPY_MODULES:
    _ALLOWED[(_module, "_reconstruct")] = _reconstruct
    _ALLOWED[(_module, "scalar")] = _scalar
    _ALLOWED[(_module, "_frombuffer")] = _frombuffer
# numpy >= 1.25 pickles dtypes by their class (numpy.dtypes.Float32DType) in some protocols
for _name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType", "Int64DType",
              "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType"):  # fmt: skip
    if hasattr(np, "dtypes") and hasattr(np.dtypes, _name):
        _ALLOWED[("numpy.dtypes", _name)] = getattr(np.dtypes, _name)


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise MalformedCheckpointError(f"it names {module}.{name}, which a file of numpy arrays never needs")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise MalformedCheckpointError("it holds persistent references (not a file of numpy arrays)")


def _to_torch(obj: Any, where: str, depth: int = 0) -> Any:
    """Arrays -> tensors, numpy scalars -> Python numbers, containers -> dicts/lists; anything else refused."""
    if depth > 64:
        raise MalformedCheckpointError(f"{where} nests containers more than 64 deep")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise MalformedCheckpointError(f"{where} is an array of Python objects")
        if not obj.dtype.isnative:
            obj = obj.astype(obj.dtype.newbyteorder("="))
        try:
            return torch.from_numpy(obj if obj.flags.writeable else obj.copy())
        except TypeError as e:
            raise MalformedCheckpointError(f"{where} is a {obj.dtype} array, which torch cannot hold") from e
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise MalformedCheckpointError(f"{where} has a key of type {type(k).__name__}")
            out[k] = _to_torch(v, f"{where}[{k!r}]", depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_to_torch(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if obj is None or isinstance(obj, (str, bytes, bool, int, float)):
        return obj
    raise MalformedCheckpointError(f"{where} is a {type(obj).__name__}, not an array or a plain container")


def load_numpy_pickle(path: str | os.PathLike, *, budget: int | None = None) -> dict[Any, Any]:
    """The top-level dict of a detectron2-style ``.pkl`` file with every numpy array as a tensor.

    Raises ``FileNotFoundError``, :class:`MalformedCheckpointError` (not a pickle of numpy arrays and
    plain containers: truncated, corrupt, naming any other callable, object arrays) or
    :class:`ModelTooLargeError` (the file exceeds ``budget`` bytes, default
    :func:`~focalnet.weights.checks.memory_budget`) - one line each, naming the file. No code in the file runs.
    """
    path = Path(path)
    budget = memory_budget() if budget is None else budget
    size = path.stat().st_size
    if size > budget:
        raise ModelTooLargeError(
            f"{path}: the file has {size:,} bytes, more than this machine's budget of {budget:,} "
            "(FOCALNET_MAX_MODEL_BYTES to change it)"
        )
    data = path.read_bytes()
    try:
        obj = _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
        if not isinstance(obj, dict):
            raise MalformedCheckpointError(f"the pickle holds a {type(obj).__name__}, not a dict")
        out = _to_torch(obj, "the file")
    except MalformedCheckpointError as e:
        raise MalformedCheckpointError(f"{path}: not a pickle of numpy arrays: {e}") from None
    except (Exception, RecursionError) as e:  # whatever a corrupt pickle makes the unpickler raise
        msg = " ".join(str(e).split())[:200]
        raise MalformedCheckpointError(
            f"{path}: not a readable pickle of numpy arrays: {type(e).__name__}: {msg}"
        ) from None
    total = sum(t.numel() * t.element_size() for t in _tensors(out))
    if total > budget:
        raise ModelTooLargeError(f"{path}: the arrays need {total:,} bytes, more than the budget of {budget:,}")
    return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []
