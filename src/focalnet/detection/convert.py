"""Original (mmdetection 2.x) FocalNet Mask R-CNN checkpoints -> torchvision detectors; loading any
detection checkpoint (ours or mmdet's) for evaluation and prediction.

Key mapping (mmdet -> torchvision ``MaskRCNN``):

==========================================  ==================================================
``backbone.*``                              ``backbone.body.*`` (same FocalNetBackbone keys)
``neck.lateral_convs.{i}.conv.*``           ``backbone.fpn.inner_blocks.{i}.0.*``
``neck.fpn_convs.{i}.conv.*``               ``backbone.fpn.layer_blocks.{i}.0.*``
``rpn_head.rpn_conv.*``                     ``rpn.head.conv.0.0.*``
``rpn_head.rpn_cls.*`` (sigmoid, A=3)       ``rpn.head.cls_logits.*`` (same anchor order)
``rpn_head.rpn_reg.*``                      ``rpn.head.bbox_pred.*``
``roi_head.bbox_head.shared_fcs.{0,1}.*``   ``roi_heads.box_head.fc6/fc7.*``
``roi_head.bbox_head.fc_cls.*`` (K+1, bg last)  ``roi_heads.box_predictor.cls_score.*`` (bg first)
``roi_head.bbox_head.fc_reg.*`` (4K)        ``roi_heads.box_predictor.bbox_pred.*`` (4(K+1), zero bg rows)
``roi_head.mask_head.convs.{i}.conv.*``     ``roi_heads.mask_head.{i}.0.*``
``roi_head.mask_head.upsample.*``           ``roi_heads.mask_predictor.conv5_mask.*``
``roi_head.mask_head.conv_logits.*`` (K)    ``roi_heads.mask_predictor.mask_fcn_logits.*`` (zero bg row)
==========================================  ==================================================

Anchors: both libraries order the 3 anchors of a location by aspect ratio (0.5, 1, 2) and lay the RPN
channels out as ``anchor * 4 + coordinate``, so the RPN weights need no permutation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.config import build_config
from ..weights.convert import rename_key
from ..weights.infer import infer_config
from .atss import is_mmdet_atss

__all__ = [
    "convert_mmdet_state_dict",
    "is_mmdet_detector",
    "load_detector",
    "coco_class_names",
    "mmdet_backbone_config",
    "load_strict",
]

StateDict = dict[str, torch.Tensor]

_RULES = [
    (r"^backbone\.(.+)$", r"backbone.body.\1"),
    (r"^neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.inner_blocks.\1.0.\2"),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$", r"backbone.fpn.layer_blocks.\1.0.\2"),
    (r"^rpn_head\.rpn_conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1"),
    (r"^rpn_head\.rpn_cls\.(weight|bias)$", r"rpn.head.cls_logits.\1"),
    (r"^rpn_head\.rpn_reg\.(weight|bias)$", r"rpn.head.bbox_pred.\1"),
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)$", r"roi_heads.box_head.fc6.\1"),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)$", r"roi_heads.box_head.fc7.\1"),
    (r"^roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)$", r"roi_heads.mask_head.\1.0.\2"),
    (r"^roi_head\.mask_head\.upsample\.(weight|bias)$", r"roi_heads.mask_predictor.conv5_mask.\1"),
]


def is_mmdet_detector(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict is an mmdetection two-stage detector (``rpn_head.``/``roi_head.`` keys)."""
    return any(k.startswith("rpn_head.") for k in sd) and any(k.startswith("roi_head.") for k in sd)


def convert_mmdet_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Map an mmdetection 2.x Faster/Mask R-CNN state dict onto the torchvision detector of
    :func:`focalnet.detection.build_detector` (see the module docstring for the table). Raises
    ``ValueError`` naming the keys it does not know."""
    if not is_mmdet_detector(sd):
        raise ValueError("not an mmdetection two-stage detector state dict (no rpn_head./roi_head. keys)")
    out: StateDict = {}
    unknown = []
    for k, v in sd.items():
        if k.startswith("roi_head.bbox_head.fc_cls."):
            # mmdet: K classes then background; torchvision: background first
            out["roi_heads.box_predictor.cls_score." + k.rsplit(".", 1)[1]] = torch.cat([v[-1:], v[:-1]])
            continue
        if k.startswith("roi_head.bbox_head.fc_reg."):
            num_classes = sd["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
            if v.shape[0] == 4:  # class-agnostic regression: the same deltas for every class
                v = v.repeat(num_classes, *([1] * (v.dim() - 1)))
            elif v.shape[0] != 4 * num_classes:
                raise ValueError(f"{k} has {v.shape[0]} rows; expected 4 x {num_classes} classes or 4")
            out["roi_heads.box_predictor.bbox_pred." + k.rsplit(".", 1)[1]] = torch.cat([torch.zeros_like(v[:4]), v])
            continue
        if k.startswith("roi_head.mask_head.conv_logits."):
            out["roi_heads.mask_predictor.mask_fcn_logits." + k.rsplit(".", 1)[1]] = torch.cat(
                [torch.zeros_like(v[:1]), v]
            )
            continue
        new = rename_key(k, _RULES)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(f"unknown mmdetection keys (not a Faster/Mask R-CNN with FPN?): {unknown[:10]}")
    return out


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(sd)``, raising one ``ValueError`` that names the missing, unexpected and
    mis-shaped keys (``what`` starts the message)."""
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{what} do not fit: missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}, "
            f"mis-shaped {shapes[:8]}{' ...' if len(shapes) > 8 else ''}"
        )
    model.load_state_dict(sd)


def mmdet_backbone_config(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """(variant name, backbone overrides) reproducing the FocalNet backbone of an mmdet state dict."""
    from ..models.registry import match_variant

    body = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    cfg = infer_config(body, backbone=True, warn=False)
    variant = match_variant(cfg, ignore=("focal_windows",))
    fields = cfg.to_dict()
    fields.pop("num_classes")
    fields["drop_path_rate"] = 0.0
    return (variant.name if variant else "focalnet_tiny_srf"), fields


def coco_class_names() -> tuple[list[str], list[int]]:
    """The 80 COCO class names in category-id order and their (non-contiguous) category ids."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    cats = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    pairs = [(n, i) for i, n in enumerate(cats) if i > 0 and n != "N/A"]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _load(path: str | os.PathLike) -> Any:
    from ..weights.io import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return safe_torch_load(path)


def load_detector(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    mmdet_compat: bool | None = None,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build and load a detector from a checkpoint; returns ``(model in eval mode, meta)``.

    Accepts this package's ``model.pt`` and training checkpoints (``checkpoints/checkpoint-*.pt``), and
    original FocalNet-DINO files (``{"model": ...}`` / ``{"ema_model": ...}``, see
    :func:`focalnet.detection.dino.convert.load_dino`), and original mmdetection 2.x FocalNet Mask R-CNN /
    Faster R-CNN / Cascade Mask R-CNN / ATSS files
    (ATSS: ``bbox_head.atss_*`` keys, backbone stages 1-3, loaded strictly; R-CNN: ``state_dict`` with ``backbone.``,
    ``neck.``, ``rpn_head.``, ``roi_head.`` keys; converted on the fly, 80 COCO classes assumed when the
    head has 81 outputs). ``meta`` holds ``class_names``, ``category_ids`` and the config.
    ``overrides`` are :class:`~focalnet.detection.config.ModelConfig` fields (``score_thresh``,
    ``min_size``, ...). ``mmdet_compat`` (default: on for mmdet files) selects the original RoIAlign.
    """
    from ..weights.infer import check_buildable, check_finite
    from .config import DetectionConfig
    from .model import build_detector, detector_kwargs_from_config

    obj = _load(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    from .dino.convert import is_dino_checkpoint, load_dino

    if "detection_config" not in obj and is_dino_checkpoint(obj):  # original FocalNet-DINO file or ours
        return load_dino(obj, device, **overrides)
    from .sparse_rcnn import is_mmdet_sparse_rcnn, load_mmdet_sparse_rcnn

    if "detection_config" not in obj and is_mmdet_sparse_rcnn(obj.get("state_dict", obj)):
        sd = obj.get("state_dict", obj)
        check_finite(sd, str(path))
        model, fields = load_mmdet_sparse_rcnn(sd, path, **overrides)
        return _finish_mmdet(model, fields, model.num_classes, device)
    if "detection_config" in obj and "model" in obj:
        data = dict(obj["detection_config"])
        model_cfg = dict(data.get("model", {}))
        model_cfg["backbone_checkpoint"] = ""
        model_cfg.update(overrides)
        if mmdet_compat is not None:
            model_cfg["mmdet_compat"] = mmdet_compat
        data["model"] = model_cfg
        cfg = build_config(DetectionConfig, data)
        num_classes = obj.get("num_classes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"{path}: stored num_classes {num_classes!r} is not an integer >= 2")
        sd = obj["model"]
        if not isinstance(sd, Mapping):
            raise ValueError(f"{path}: 'model' is not a state dict")
        for key in ("class_names", "category_ids"):
            if not isinstance(obj.get(key), list) or len(obj[key]) != num_classes - 1:
                raise ValueError(f"{path}: stored {key} must be a list of {num_classes - 1} entries")
        kwargs = detector_kwargs_from_config(cfg.model, num_classes)
        # settings checked against the tensors on the meta device before anything is allocated
        check_buildable(lambda: build_detector(**kwargs), sd, str(path))
        check_finite(sd, str(path))
        model = build_detector(**kwargs)
        model.load_state_dict(sd)
        meta = {
            "class_names": list(obj["class_names"]),
            "category_ids": [int(c) for c in obj["category_ids"]],
            "detection_config": data,
            "source": "focalnet",
        }
    else:
        sd = obj.get("state_dict", obj)
        if isinstance(sd, Mapping) and is_mmdet_atss(sd):
            from .atss import load_mmdet_atss

            check_finite(sd, str(path))
            model, fields = load_mmdet_atss(sd, **overrides)
            return _finish_mmdet(model, fields, model.num_classes, device)
        if not isinstance(sd, Mapping) or not is_mmdet_detector(sd):
            raise ValueError(
                f"{path} is neither a focalnet detection checkpoint (model.pt / checkpoint-*.pt) nor an "
                "mmdetection Faster/Mask/Cascade Mask R-CNN or ATSS file (state_dict with rpn_head./roi_head. or "
                "bbox_head.atss_cls. keys)"
            )
        check_finite(sd, str(path))
        from .cascade import convert_mmdet_cascade_state_dict, is_mmdet_cascade, mmdet_cascade_num_classes

        if is_mmdet_cascade(sd):
            converted = convert_mmdet_cascade_state_dict(sd)
            num_classes = mmdet_cascade_num_classes(sd)
            detector = "cascade_mask_rcnn"
        else:
            converted = convert_mmdet_state_dict(sd)
            num_classes = int(sd["roi_head.bbox_head.fc_cls.weight"].shape[0])
            detector = "mask_rcnn" if any(k.startswith("roi_head.mask_head.") for k in sd) else "faster_rcnn"
        name, bb = mmdet_backbone_config(sd)
        from .config import ModelConfig

        mc = build_config(
            ModelConfig,
            {
                "detector": detector,
                "backbone": name,
                "backbone_overrides": bb,
                "focal_windows": list(bb["focal_windows"]),
                "mmdet_compat": True if mmdet_compat is None else mmdet_compat,
                **overrides,
            },
        )
        model = build_detector(**detector_kwargs_from_config(mc, num_classes))
        load_strict(model, converted, f"{path}: converted mmdetection weights")
        return _finish_mmdet(model, dict(vars(mc)), num_classes, device)
    model.class_names = meta["class_names"]
    model.category_ids = meta["category_ids"]
    return model.to(device).eval(), meta


def _finish_mmdet(
    model: nn.Module, fields: dict[str, Any], num_classes: int, device: str | torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """Class names (COCO's for 80 classes) and meta of a converted mmdetection detector."""
    if num_classes == 81:
        names, ids = coco_class_names()
    else:
        names, ids = [f"class_{i}" for i in range(1, num_classes)], list(range(1, num_classes))
    meta = {
        "class_names": names,
        "category_ids": ids,
        "source": "mmdetection",
        "detection_config": {"model": fields},
    }
    model.class_names = names
    model.category_ids = ids
    return model.to(device).eval(), meta
