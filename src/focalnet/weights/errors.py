"""The error types of checkpoint loading (all ``ValueError``: a bad file is bad input, one line, exit code 2).

Every loading path (classification, detection, segmentation, any layout) raises only these for a file
that is readable but wrong, besides ``FileNotFoundError`` and the one-line ``ValueError`` of a file that
is not a checkpoint at all (truncated, not a torch/safetensors file, pickled objects other than tensors).
"""

from __future__ import annotations

__all__ = ["CheckpointMismatchError", "MalformedCheckpointError", "ModelTooLargeError", "NonFiniteWeightsError"]


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model: lists missing/unexpected keys and shape differences (also: a
    tensor whose number of dimensions is not what the architecture has at that key)."""


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or infinite weights."""


class MalformedCheckpointError(ValueError):
    """A file whose content is not what its layout needs: entries that are not tensors, keys that are not
    strings, an expanded tensor (far more elements than the file stores), metadata of the wrong type."""


class ModelTooLargeError(ValueError):
    """A model, described by a file or a configuration, needs more memory than this machine has."""
