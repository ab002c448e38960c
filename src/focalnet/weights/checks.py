"""The checks every checkpoint passes before a model is built from it, whatever the task or layout.

One loading path per task, each the same five steps::

    read (weights_only / safetensors) -> recognise the layout -> (configuration, canonical state dict)
    -> check_tensors: entries are tensors, none is expanded, the total fits the memory budget
    -> check_finite: no NaN / inf
    -> build on the meta device, compare keys and shapes, then build for real and load strictly

:func:`build_checked` runs the last three steps; :func:`check_config_size` bounds a model described
by a configuration alone (``--set model.fpn_channels=1000000``) before anything is allocated. Every
failure is one of the error types below (all ``ValueError``), with a one-line message naming the file
(or configuration) and the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import CheckpointMismatchError, MalformedCheckpointError, ModelTooLargeError, NonFiniteWeightsError
from .infer import check_finite, check_state_dict

__all__ = [
    "CheckpointMismatchError",
    "MalformedCheckpointError",
    "ModelTooLargeError",
    "NonFiniteWeightsError",
    "MAX_BYTES_ENV",
    "memory_budget",
    "check_tensors",
    "tensors_too_large",
    "check_config_size",
    "check_loadable",
    "build_checked",
    "check_one_task",
    "expect_mapping",
    "expect_names",
]

MAX_BYTES_ENV = "FOCALNET_MAX_MODEL_BYTES"
M = TypeVar("M", bound=nn.Module)


def memory_budget() -> int:
    """Bytes a model's weights may take: ``FOCALNET_MAX_MODEL_BYTES`` if set, else half of the memory
    available now (``/proc/meminfo``), else 8 GiB."""
    env = os.environ.get(MAX_BYTES_ENV, "").strip()
    if env:
        try:
            return max(1, int(float(env)))
        except ValueError as e:
            raise ValueError(f"{MAX_BYTES_ENV}={env!r} is not a number of bytes") from e
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 8 << 30


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _span_bytes(t: torch.Tensor) -> int:
    """Bytes of storage a tensor's view needs to be distinct elements (0 for empty tensors)."""
    return t.numel() * t.element_size()


def tensors_too_large(source: str, budget: int, key: str, shape: Sequence[int]) -> ModelTooLargeError:
    """The error for tensors that together exceed ``budget`` bytes, naming the key that crossed it."""
    return ModelTooLargeError(
        f"{source}: the tensors need more than {_gb(budget)} (this machine's budget, "
        f"{MAX_BYTES_ENV} to change it); {key!r} alone has shape {tuple(shape)}"
    )


def check_tensors(sd: Any, source: str, budget: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict as a plain dict after checking that it is a mapping of string keys to tensors,
    that no tensor claims more elements than the file stores (a one-element storage expanded to billions
    of elements), and that the tensors together fit :func:`memory_budget`."""
    if not isinstance(sd, Mapping):
        raise MalformedCheckpointError(f"{source}: expected a state dict (a mapping), got {type(sd).__name__}")
    budget = memory_budget() if budget is None else budget
    total = 0
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise MalformedCheckpointError(f"{source}: state dict key {k!r} is a {type(k).__name__}, not a string")
        if not isinstance(v, torch.Tensor):
            raise MalformedCheckpointError(f"{source}: {k!r} is a {type(v).__name__} where a tensor is expected")
        if v.layout != torch.strided or v.is_quantized:
            raise MalformedCheckpointError(f"{source}: {k!r} is a {v.layout} tensor; expected a dense one")
        need = _span_bytes(v)
        stored = v.untyped_storage().nbytes()
        if need > stored:
            raise MalformedCheckpointError(
                f"{source}: {k!r} has shape {tuple(v.shape)} ({v.numel():,} elements) but the file stores "
                f"{stored // max(1, v.element_size()):,} (an expanded tensor); refusing to materialise it"
            )
        total += need
        if total > budget:
            raise tensors_too_large(source, budget, k, v.shape)
        out[k] = v
    return out


def _largest(model: nn.Module) -> str:
    name, t = max(model.state_dict().items(), key=lambda kv: kv[1].numel(), default=("", torch.empty(0)))
    return f"{name} {tuple(t.shape)}" if name else "(no tensors)"


def check_config_size(ctor: Callable[[], M], source: str, *, training: bool = False, budget: int | None = None) -> M:
    """Build ``ctor()`` on the meta device (no memory) and raise :class:`ModelTooLargeError` when its
    weights (x4 when ``training``: gradients and two optimiser moments) exceed :func:`memory_budget`.
    Settings that cannot build a model at all are a ``ValueError`` naming ``source``. Returns the
    meta-device model (its parameters can be counted; it holds no memory)."""
    probe = _meta_build(ctor, source)
    _check_probe_size(probe, source, training, memory_budget() if budget is None else budget)
    return probe


def _meta_build(ctor: Callable[[], M], source: str, error: type[ValueError] = ValueError) -> M:
    """``ctor()`` on the meta device; settings that cannot build a model are one ``error`` naming ``source``
    (a plain ``ValueError`` for a configuration, :class:`MalformedCheckpointError` for a file's settings)."""
    try:
        with torch.device("meta"):
            return ctor()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, AssertionError) as e:
        msg = " ".join(str(e).split())[:300]
        raise error(f"{source}: the settings do not describe a buildable model: {type(e).__name__}: {msg}") from e


def _check_probe_size(probe: nn.Module, source: str, training: bool, budget: int) -> None:
    tensors = list(probe.state_dict().values())
    need = sum(t.numel() * t.element_size() for t in tensors) * (4 if training else 1)
    if need > budget:
        what = "training it needs" if training else "its weights need"
        raise ModelTooLargeError(
            f"{source}: the model has {sum(t.numel() for t in tensors):,} weights; {what} {_gb(need)}, more than "
            f"{_gb(budget)} ({MAX_BYTES_ENV} to change it); largest tensor {_largest(probe)}"
        )


def check_loadable(
    ctor: Callable[[], M],
    sd: Mapping[str, Any],
    source: str,
    *,
    budget: int | None = None,
    allow_nonfinite: bool | None = None,
    key_name: Callable[[str], str] | None = None,
) -> tuple[dict[str, torch.Tensor], M]:
    """Every check of :func:`build_checked` without the real build (what a converter needs before it
    writes): :func:`check_tensors`, the finite check, ``ctor()`` on the meta device, its size against the
    budget, keys and shapes against ``sd``. Returns the checked tensors and the meta-device model."""
    budget = memory_budget() if budget is None else budget
    tensors = check_tensors(sd, source, budget)
    check_finite(tensors, source, allow_nonfinite)
    probe = _meta_build(ctor, source, MalformedCheckpointError)
    probe_sd = probe.state_dict()
    try:  # settings that disagree with the tensors are a mismatch, whatever size they describe
        check_state_dict(probe_sd, tensors)
    except CheckpointMismatchError as err:
        message = str(err)
        if key_name is not None:  # the same comparison in the file's own key names
            try:
                check_state_dict(
                    {key_name(k): v for k, v in probe_sd.items()}, {key_name(k): v for k, v in tensors.items()}
                )
            except CheckpointMismatchError as named:
                message = str(named)
        raise CheckpointMismatchError(f"{source}: " + " ".join(message.split())) from None
    _check_shared(probe, tensors, source, key_name or str)
    _check_probe_size(probe, source, False, budget)
    return tensors, probe


def _check_shared(
    probe: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, name: Callable[[str], str]
) -> None:
    """Names of one shared tensor of the model (e.g. decoder heads reachable under several paths) must
    hold one value in the file, else a strict load would keep whichever came last."""
    groups: dict[int, list[str]] = {}
    for k, t in probe.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(k)
    for keys in groups.values():
        first = tensors[keys[0]]
        for k in keys[1:]:
            t = tensors[k]
            same = t.data_ptr() == first.data_ptr() and t.shape == first.shape and t.stride() == first.stride()
            if not same and not torch.equal(t, first):
                raise CheckpointMismatchError(
                    f"{source}: {name(k)!r} differs from {name(keys[0])!r} (one tensor shared under both names)"
                )


def _adopt(probe: M, tensors: Mapping[str, torch.Tensor]) -> M | None:
    """``probe`` (built on the meta device) holding ``tensors`` (cast to its dtypes, one storage each),
    or ``None`` where that would not give the model ``ctor()`` builds: tied weights (one parameter under
    two names), or something left on the meta device (a buffer no state dict holds)."""
    for named in (probe.named_parameters, probe.named_buffers):
        if len(list(named(remove_duplicate=False))) != len(list(named())):
            return None
    target = probe.state_dict()
    seen: set[int] = set()
    own = {}
    for k, v in tensors.items():
        v = v.to(target[k].dtype) if v.dtype != target[k].dtype else v
        v = v.contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():
            v = v.clone()
        seen.add(ptr)
        own[k] = v
    probe.load_state_dict(own, strict=True, assign=True)
    if any(t.is_meta for t in (*probe.parameters(), *probe.buffers())):
        return None
    return probe


def build_checked(
    ctor: Callable[[], M],
    sd: Mapping[str, Any],
    source: str,
    *,
    budget: int | None = None,
    allow_nonfinite: bool | None = None,
    assign: bool = False,
    key_name: Callable[[str], str] | None = None,
) -> M:
    """The last steps of every loading path: :func:`check_tensors`, the finite check, ``ctor()`` on the
    meta device compared key by key and shape by shape with ``sd``, then ``ctor()`` for real with ``sd``
    loaded strictly. Nothing of the model's size is allocated before every check passed.

    ``assign=True`` skips the random initialisation: the meta-device model takes the checked tensors
    (as its own dtypes) instead; models with tied weights or buffers outside the state dict are built
    for real as without it. ``key_name`` maps the model's key names to the file's own in messages (a
    converted layout)."""
    tensors, probe = check_loadable(ctor, sd, source, budget=budget, allow_nonfinite=allow_nonfinite, key_name=key_name)
    if assign and (model := _adopt(probe, tensors)) is not None:
        return model
    model = ctor()
    model.load_state_dict(tensors, strict=True)
    return model


def expect_mapping(obj: Any, key: str, source: str) -> dict[str, Any]:
    """``obj[key]`` as a dict, or :class:`MalformedCheckpointError` naming the key and what it holds."""
    value = obj.get(key) if isinstance(obj, Mapping) else None
    if not isinstance(value, Mapping):
        raise MalformedCheckpointError(f"{source}: stored {key!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


def expect_names(names: Any, count: int, source: str, key: str = "class_names") -> list[str]:
    """A list of ``count`` strings, or :class:`MalformedCheckpointError` naming ``key``."""
    if not isinstance(names, Sequence) or isinstance(names, (str, bytes)) or len(names) != count:
        got = (
            f"{len(names)} entries" if isinstance(names, Sequence) and not isinstance(names, str) else repr(names)[:40]
        )
        raise MalformedCheckpointError(f"{source}: stored {key} must be a list of {count} names, got {got}")
    if not all(isinstance(n, str) for n in names):
        raise MalformedCheckpointError(f"{source}: stored {key} must hold strings only")
    return list(names)


def _task_marks(obj: Mapping[str, Any]) -> dict[str, str]:
    """``{task: the mark}`` of every task whose file marks ``obj`` carries (a segmentor's format or meta,
    a detector's config or heads), read from the top level and the state dicts it holds."""
    marks: dict[str, str] = {}
    if "detection_config" in obj or obj.get("format") == "focalnet-dino":
        marks["detection"] = "detection_config" if "detection_config" in obj else "format focalnet-dino"
    if obj.get("format") == "focalnet-segmentation" or "segmentation_meta" in obj:
        marks["segmentation"] = "segmentation_meta" if "segmentation_meta" in obj else "format focalnet-segmentation"
    for key in ("model", "state_dict", "model_state_dict"):
        sd = obj.get(key)
        if not isinstance(sd, Mapping):
            continue
        top = {k.split(".")[0] for k in list(sd)[:100_000] if isinstance(k, str)}
        if "decode_head" in top:
            marks.setdefault("segmentation", f"{key}.decode_head")
        for head in ("rpn_head", "roi_head", "bbox_head", "roi_heads", "rpn"):
            if head in top:
                marks.setdefault("detection", f"{key}.{head}")
    return marks


def check_one_task(obj: Any, task: str, source: str) -> None:
    """:class:`CheckpointMismatchError` (one line) where a loaded file carries the marks of another task's
    model besides ``task``'s (a dict holding both a segmentor and a detector would otherwise be read by
    either task, each taking its part silently). Each task's loading path calls it on the loaded object."""
    if not isinstance(obj, Mapping):
        return
    marks = _task_marks(obj)
    other = {t: m for t, m in marks.items() if t != task}
    if other and task in marks:
        ((t, m),) = list(other.items())[:1]
        raise CheckpointMismatchError(
            f"{source} holds a {task} model ({marks[task]}) and a {t} model ({m}); refusing to guess which "
            "one to load: keep one per file"
        )
