"""What the mmdetection 2.x checkpoint layouts share: where the state dict sits, the backbone / FPN /
RPN key names, the backbone read off the keys, class names, and the reverse direction (our state dict
as an mmdetection file, for ``convert --to original`` and tests).

Each detector module declares its own layout (:class:`~focalnet.detection.spec.Layout`) with these
helpers: the key rules are ``(mmdetection pattern, our name)`` pairs for
:func:`~focalnet.weights.convert.rename_key`; the reverse rules come from
:func:`~focalnet.weights.convert.invert_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..weights.convert import invert_rules, rename_key
from ..weights.infer import dense_backbone_config
from .classes import default_class_names

__all__ = [
    "BACKBONE_RULES",
    "FPN_RULES",
    "RPN_RULES",
    "backbone_fields",
    "count_indexed",
    "has_key",
    "mmdet_file",
    "mmdet_meta",
    "rename_keeping_unknown",
    "reverse_namer",
    "state_dict_of",
]

Rules = Sequence[tuple[str, str]]

BACKBONE_RULES = [(r"^backbone\.(.+)$", r"backbone.body.\1")]
FPN_RULES = [
    (r"^neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.layer_blocks.\1.0.\2"),
]
RPN_RULES = [
    (r"^rpn_head\.rpn_conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1"),
    (r"^rpn_head\.rpn_cls\.(weight|bias)$", r"rpn.head.cls_logits.\1"),
    (r"^rpn_head\.rpn_reg\.(weight|bias)$", r"rpn.head.bbox_pred.\1"),
]


def state_dict_of(obj: Any) -> Any:
    """The state dict of a loaded mmdetection file: ``obj["state_dict"]``, or ``obj`` itself (bare)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    return obj


def has_key(obj: Any, pattern: str) -> bool:
    """Whether the state dict of ``obj`` has a (string) key matching the regex ``pattern``."""
    sd = state_dict_of(obj)
    return isinstance(sd, Mapping) and any(isinstance(k, str) and re.match(pattern, k) for k in sd)


def count_indexed(sd: Mapping[str, Any], prefix: str) -> int:
    """``max(i) + 1`` over keys ``{prefix}{i}.*`` (0 if none)."""
    found = {int(m.group(1)) for k in sd if (m := re.match(rf"^{re.escape(prefix)}(\d+)\.", k))}
    return max(found) + 1 if found else 0


def rename_keeping_unknown(sd: Mapping[str, Any], rules: Rules) -> dict[str, Any]:
    """Every key renamed by the first matching rule; keys no rule knows keep their own names, so that
    the strict load names them as unexpected."""
    return {rename_key(k, rules) or k: v for k, v in sd.items()}


def reverse_namer(rules: Rules) -> Callable[[str], str]:
    """Our key -> the mmdetection key it comes from (itself where no rule applies)."""
    inverse = invert_rules(rules)
    return lambda key: rename_key(key, inverse) or key


def backbone_fields(sd: Mapping[str, Any]) -> dict[str, Any]:
    """``ModelConfig`` fields reproducing the FocalNet under ``backbone.`` (structure read off the keys;
    FPN width off the first lateral conv) of an mmdetection file."""
    name, bb = dense_backbone_config(sd)
    fields: dict[str, Any] = {
        "backbone": name,
        "backbone_overrides": bb,
        "focal_windows": list(bb["focal_windows"]),
        "drop_path_rate": 0.0,
    }
    lateral = sd.get("neck.lateral_convs.0.conv.weight")
    if lateral is not None:
        fields["fpn_channels"] = int(lateral.shape[0])
    return fields


def mmdet_meta(num_classes: int) -> dict[str, Any]:
    """``meta`` of an mmdetection file (which names no classes: COCO's for 81, else ``class_i``)."""
    names, ids = default_class_names(num_classes)
    return {"num_classes": num_classes, "class_names": names, "category_ids": ids, "source": "mmdetection"}


def mmdet_file(sd: Mapping[str, Any], rules: Rules, fix: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """Our state dict as an mmdetection file ``{"meta": {}, "state_dict": ...}``: keys renamed back with
    the inverse of ``rules``, values through ``fix(our_key, value)`` where the layouts differ."""
    name = reverse_namer(rules)
    out = {name(k): (fix(k, v) if fix is not None else v) for k, v in sd.items()}
    return {"meta": {}, "state_dict": out}
