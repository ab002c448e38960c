"""Hypothesis over every field of every task's typed run config: values at, inside and beyond the field's
bounds (``BOUNDS`` of its section, :mod:`focalnet.bounds`), huge and non-finite numbers and values of the
wrong type, given as a flag value or a ``--set`` string. Resolving the config must give a config or one
``ValueError`` line naming the key (never another exception type, a traceback or a hang), fast; a value
beyond a declared bound must be refused. ``FOCALNET_FUZZ_EXAMPLES`` sets the examples (default 80)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import typing
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from focalnet.bounds import Bound, count_bound
from focalnet.classification.config import ClassificationConfig, load_classification_config
from focalnet.detection.config import DetectionConfig, load_detection_config
from focalnet.segmentation.train import SegmentationConfig, load_segmentation_config

EXAMPLES = int(os.environ.get("FOCALNET_FUZZ_EXAMPLES", "80"))

TASKS: dict[str, tuple[type, Callable[..., Any], str]] = {
    "classification": (ClassificationConfig, load_classification_config, "focalnet_tiny_srf"),
    "detection": (DetectionConfig, load_detection_config, "mask_rcnn_focalnet_cpu_tiny"),
    "segmentation": (SegmentationConfig, load_segmentation_config, "upernet_focalnet_tiny_srf_ade20k_160k"),
}


def _fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Bound | None]]:
    """``(dotted key, type, bound)`` of every leaf field of a config dataclass, and of the FocalNet and
    DINO settings its mapping fields take."""
    out = []
    hints = typing.get_type_hints(cls)
    bounds = getattr(cls, "BOUNDS", {}) or {}
    for f in dataclasses.fields(cls):
        tp, key, bound = hints[f.name], prefix + f.name, bounds.get(f.name)
        if dataclasses.is_dataclass(tp):
            out += _fields(tp, key + ".")
        elif isinstance(bound, dict):  # a mapping of settings (model.overrides, backbone_overrides, dino)
            table = {k: b for k, b in bound.items() if isinstance(b, Bound)} or {k: count_bound(k) for k in NAMED}
            out += [(f"{key}.{sub}", Any, b) for sub, b in table.items()]
        else:
            out.append((key, tp, bound if isinstance(bound, Bound) else None))
    return out


# settings of mappings without a table (model.dino, model.detector_overrides, model.mask2former), bounded
# by their names
NAMED = ("enc_layers", "nheads", "num_queries", "hidden_dim", "rpn_post_nms_top_n_test", "num_proposals")

FIELDS = {task: _fields(cls) for task, (cls, _, _) in TASKS.items()}

HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 10**6, 10**9, 2**63, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, float("nan"), float("inf"), 0.5, 1e-300]),
    st.text(max_size=8),
    st.lists(st.integers(-(10**7), 10**7), max_size=6),
    st.lists(st.floats(), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _near(bound: Bound) -> st.SearchStrategy:
    lo, hi = bound.lo, bound.hi
    return st.sampled_from([lo, hi, lo - 1, hi + 1, hi * 10 + 1, (lo + hi) / 2, lo - 0.5, hi + 0.5]).map(
        lambda v: int(v) if float(v).is_integer() and abs(v) < 2**62 else v
    )


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, str, Any, Bound | None, bool]:
    task = draw(st.sampled_from(sorted(TASKS)))
    key, _, bound = draw(st.sampled_from(FIELDS[task]))
    value = draw(_near(bound) if bound is not None and draw(st.booleans()) else HOSTILE)
    if bound is not None and bound.max_len is not None and isinstance(value, (int, float)) and draw(st.booleans()):
        value = [value] * draw(st.integers(1, bound.max_len + 2))
    return task, key, value, bound, draw(st.booleans())


def _beyond(value: Any, bound: Bound | None) -> bool:
    """Whether ``value`` (a number or a list of them) is outside ``bound``."""
    if bound is None:
        return False
    vals = value if isinstance(value, list) else [value]
    if bound.max_len is not None and isinstance(value, list) and len(value) > bound.max_len:
        return True
    nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return (
        bool(nums)
        and len(nums) == len(vals)
        and any(not (math.isfinite(v) and bound.lo <= v <= bound.hi) for v in nums)
    )


def _yaml(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return (
        json.dumps(value, allow_nan=False) if not isinstance(value, list) else "[" + ", ".join(map(_yaml, value)) + "]"
    )


def check_edit(task: str, key: str, value: Any, bound: Bound | None, as_flag: bool) -> None:
    _, load, name = TASKS[task]
    t0 = time.perf_counter()
    try:
        if as_flag:
            load(name, values={key: value})
        else:
            load(name, [f"{key}={_yaml(value)}"])
    except ValueError as e:  # ConfigError, BoundsError: bad input, said in one line
        msg = str(e)
        assert msg and "\n" not in msg, msg
    else:
        # a value beyond its declared bound never resolves (the typed value: as a --set string it may be
        # read as another type and refused by its type, which the except branch covers)
        converted = _beyond(value, bound)
        assert not (converted and as_flag and not isinstance(value, bool)), (key, value)
    assert time.perf_counter() - t0 < 5.0, (key, value)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(edits())
def test_any_value_of_any_config_field_resolves_or_is_one_line(edit):
    check_edit(*edit)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_declared_bound_is_enforced_at_both_ends(task):
    """Each bounded field: its bounds themselves are not refused for being out of range, one step beyond
    each end is (named by the key)."""
    _, load, name = TASKS[task]
    checked = 0
    for key, _, bound in FIELDS[task]:
        if bound is None or key.startswith(("model.overrides.", "model.backbone_overrides.")):
            continue
        for value in (bound.lo - 1, bound.hi * 2 + 1):
            value = int(value) if float(value).is_integer() else value
            if bound.max_len is not None:
                value = [value]
            with pytest.raises(ValueError) as e:
                load(name, values={key: value})
            assert key.split(".")[-1] in str(e.value), (key, value, str(e.value))
        checked += 1
    assert checked >= 5
