"""focalnet: Focal Modulation Networks (NeurIPS 2022) as a library.

>>> import focalnet
>>> "focalnet_tiny_srf" in focalnet.list_models()
True
>>> model = focalnet.create_model("focalnet_tiny_srf", num_classes=10)
>>> focalnet.count_flops(focalnet.get_variant("focalnet_tiny_srf").cfg)
4412630784
"""

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): `import focalnet...` loads no torch
    from .factory import (
        adapt_to_backbone,
        create_backbone,
        create_model,
        load_weights,
        model_from_checkpoint,
        save_model,
    )
    from .models import (
        VARIANTS,
        FocalNet,
        FocalNetBackbone,
        FocalNetConfig,
        count_flops,
        get_variant,
        list_models,
        num_params,
    )
    from .weights import (
        CheckpointMismatchError,
        MalformedCheckpointError,
        ModelTooLargeError,
        NonFiniteWeightsError,
        PretrainedUnavailableError,
        convert_state_dict,
        detect_layout,
        download_pretrained,
        read_checkpoint,
    )

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "CheckpointMismatchError",
    "FocalNet",
    "FocalNetBackbone",
    "FocalNetConfig",
    "MalformedCheckpointError",
    "ModelTooLargeError",
    "NonFiniteWeightsError",
    "PretrainedUnavailableError",
    "adapt_to_backbone",
    "convert_state_dict",
    "count_flops",
    "create_backbone",
    "create_model",
    "detect_layout",
    "download_pretrained",
    "get_variant",
    "list_models",
    "load_weights",
    "model_from_checkpoint",
    "num_params",
    "read_checkpoint",
    "save_model",
]

lazy_exports(__name__)
