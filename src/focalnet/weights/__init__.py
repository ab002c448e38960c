"""Checkpoint files, layouts (original, timm, transformers), architecture inference and downloads."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): the error types and layouts load no torch
    from .convert import LAYOUTS, convert_state_dict, detect_layout, unwrap_state_dict
    from .errors import CheckpointMismatchError, MalformedCheckpointError, ModelTooLargeError, NonFiniteWeightsError
    from .hub import PretrainedUnavailableError, download_pretrained
    from .infer import check_state_dict, infer_config, infer_structure
    from .io import Checkpoint, atomic_save, read_checkpoint, save_safetensors

__all__ = [
    "LAYOUTS",
    "Checkpoint",
    "CheckpointMismatchError",
    "MalformedCheckpointError",
    "ModelTooLargeError",
    "NonFiniteWeightsError",
    "PretrainedUnavailableError",
    "atomic_save",
    "check_state_dict",
    "convert_state_dict",
    "detect_layout",
    "download_pretrained",
    "infer_config",
    "infer_structure",
    "read_checkpoint",
    "save_safetensors",
    "unwrap_state_dict",
]

lazy_exports(__name__)
