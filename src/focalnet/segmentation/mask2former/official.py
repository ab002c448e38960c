"""The official Mask2Former key layout (detectron2's ``MaskFormer``) <-> this package's Mask2Former.

A released Mask2Former state dict (the ``"model"`` entry of a ``.pth`` or model-zoo ``.pkl`` file) has
``backbone.*`` (here: the FocalNet as the original FocalNet detection and segmentation code names it, the
keys mmdetection and mmsegmentation files carry under ``backbone.``), ``sem_seg_head.pixel_decoder.*``,
``sem_seg_head.predictor.*`` and the criterion's class-weight buffer ``criterion.empty_weight`` (``K + 1``
values, 1 for every class and the no-object weight last). :class:`~.model.Mask2Former` uses the same
module names, so converting drops (or adds) that buffer and reads the configuration off the tensors:

* backbone: variant, depths, widths, focal levels and windows
  (:func:`focalnet.weights.infer.dense_backbone_config`);
* head: ``num_queries`` and ``hidden_dim`` (``query_feat``), classes (``class_embed``), transformer layers
  (``transformer_cross_attention_layers.{i}``), ``dim_feedforward``, ``mask_dim``, ``conv_dim`` (the input
  projections), ``enforce_input_project`` (whether the decoder has input projections), encoder layers and
  their FFN width; the heads from the deformable attention's ``attention_weights`` (``heads x 3 levels x
  4 points``, detectron2's fixed number of points), the decoder's being the same (detectron2's one
  ``NHEADS``). ``pre_norm`` leaves no trace in the tensors: False, as in every released model.

Reading files and building models is the segmentation loader's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ...models.focalnet import FocalNetConfig
from ...weights.errors import CheckpointMismatchError
from ...weights.infer import dense_backbone_config, tensor_shape
from .model import Mask2FormerConfig

__all__ = ["EMPTY_WEIGHT", "NO_OBJECT_WEIGHT", "is_official_mask2former", "official_to_ours", "ours_to_official"]

EMPTY_WEIGHT = "criterion.empty_weight"
NO_OBJECT_WEIGHT = 0.1  # the released recipes' weight of the no-object class
_PD = "sem_seg_head.pixel_decoder."
_PR = "sem_seg_head.predictor."
_ENCODER = _PD + "transformer.encoder.layers."
_POINTS = 4  # detectron2's deformable encoder samples 4 points per head and level
_LEVELS = 3


def is_official_mask2former(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict has Mask2Former's module layout (``sem_seg_head.pixel_decoder.`` and
    ``sem_seg_head.predictor.`` keys). Our own files have the same keys and tell themselves apart by
    their ``meta``."""
    keys = [k for k in sd if isinstance(k, str)]
    return any(k.startswith(_PD) for k in keys) and any(k.startswith(_PR) for k in keys)


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in sd if isinstance(k, str) and (m := pat.match(k))}
    if found and found != set(range(max(found) + 1)):
        raise CheckpointMismatchError(f"not a Mask2Former: the indices of {prefix}<i> are {sorted(found)}")
    return len(found)


def _head_fields(sd: Mapping[str, torch.Tensor]) -> tuple[int, dict[str, Any]]:
    num_queries, hidden_dim = tensor_shape(sd, _PR + "query_feat.weight", 2)
    classes = tensor_shape(sd, _PR + "class_embed.weight", 2)[0] - 1
    if classes < 1:
        raise CheckpointMismatchError(f"{_PR}class_embed.weight has {classes + 1} rows: no class besides no-object")
    dec_layers = _count(sd, _PR + "transformer_cross_attention_layers.")
    conv_dim = tensor_shape(sd, _PD + "input_proj.0.0.weight", 4)[0]
    levels = _count(sd, _PD + "input_proj.")
    if levels != _LEVELS:
        raise CheckpointMismatchError(f"{_PD}input_proj has {levels} levels; Mask2Former's encoder reads {_LEVELS}")
    enc_layers = _count(sd, _ENCODER)
    fields: dict[str, Any] = {
        "hidden_dim": hidden_dim,
        "num_queries": num_queries,
        "dec_layers": dec_layers,
        "dim_feedforward": tensor_shape(sd, _PR + "transformer_ffn_layers.0.linear1.weight", 2)[0]
        if dec_layers
        else Mask2FormerConfig.dim_feedforward,
        "pre_norm": False,
        "enforce_input_project": _PR + "input_proj.0.weight" in sd,
        "mask_dim": tensor_shape(sd, _PR + "mask_embed.layers.2.weight", 2)[0],
        "conv_dim": conv_dim,
        "enc_layers": enc_layers,
        "enc_points": _POINTS,
    }
    if enc_layers:
        key = _ENCODER + "0.self_attn.attention_weights.weight"
        rows = tensor_shape(sd, key, 2)[0]
        if rows % (_LEVELS * _POINTS):
            raise CheckpointMismatchError(
                f"{key!r} has {rows} rows: not heads x {_LEVELS} levels x {_POINTS} points (detectron2's encoder)"
            )
        fields["enc_heads"] = fields["nheads"] = rows // (_LEVELS * _POINTS)
        fields["enc_dim_feedforward"] = tensor_shape(sd, _ENCODER + "0.linear1.weight", 2)[0]
    try:
        cfg = Mask2FormerConfig.from_dict(fields)
    except ValueError as e:
        raise CheckpointMismatchError(
            f"the head's sizes read off the tensors are not a valid Mask2Former: {e}"
        ) from None
    return classes, cfg.to_dict()


def official_to_ours(sd: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, state_dict)``: the configuration of an official-layout state dict as a model ``meta``
    (``segmentor``, ``backbone``, ``backbone_overrides``, ``backbone_config``, ``num_classes``,
    ``class_names`` None, ``head``; what :func:`~.model.mask2former_from_meta` builds) and the state dict in
    our key names (the same tensors; ``criterion.empty_weight`` dropped, unknown keys kept for the strict
    load to name). Raises :class:`~focalnet.weights.errors.CheckpointMismatchError` (one line, naming the
    key) where a tensor the configuration is read from is missing or of the wrong rank."""
    if not is_official_mask2former(sd):
        raise CheckpointMismatchError("not a Mask2Former state dict (no sem_seg_head.pixel_decoder./predictor. keys)")
    num_classes, head = _head_fields(sd)
    variant, backbone_fields = dense_backbone_config(sd)
    cfg = FocalNetConfig.from_dict(backbone_fields)
    meta = {
        "segmentor": "mask2former",
        "backbone": variant,
        "backbone_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone_fields.items()},
        "backbone_config": cfg.to_dict(),
        "num_classes": num_classes,
        "class_names": None,
        "head": head,
        "source": "mask2former",
    }
    return meta, {k: v for k, v in sd.items() if k != EMPTY_WEIGHT}


def ours_to_official(sd: Mapping[str, torch.Tensor], no_object_weight: float = NO_OBJECT_WEIGHT) -> dict[str, Any]:
    """Our Mask2Former state dict in the official layout: the same tensors (the module order is
    detectron2's) plus ``criterion.empty_weight`` (ones, ``no_object_weight`` last), which detectron2's
    strict load expects."""
    classes = tensor_shape(sd, _PR + "class_embed.weight", 2)[0]
    out = {k: v for k, v in sd.items() if k != EMPTY_WEIGHT}
    empty = torch.ones(classes, dtype=torch.float32)
    empty[-1] = no_object_weight
    out[EMPTY_WEIGHT] = empty
    return out
