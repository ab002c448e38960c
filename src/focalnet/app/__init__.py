"""``focalnet app``: a local web app of the focal modulation and the three tasks (the ``[app]`` extra).

:mod:`focalnet.app.core` holds what each tab computes, as plain functions (no Gradio):
:func:`~focalnet.app.core.classify_image` (top-5, gating maps, modulator, kernels),
:func:`~focalnet.app.core.detect_image`, :func:`~focalnet.app.core.segment_image`;
:mod:`focalnet.app.ui` builds the Gradio page over them and :mod:`focalnet.app.cli` adds the command.
Gradio is imported only by :mod:`focalnet.app.ui`, when the app starts.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): `focalnet app --help` loads no torch
    from .core import (
        AppModels,
        LoadedModel,
        classify_image,
        detect_image,
        load_checkpoint,
        load_models,
        segment_image,
        write_examples,
    )

__all__ = [
    "AppModels",
    "LoadedModel",
    "classify_image",
    "detect_image",
    "load_checkpoint",
    "load_models",
    "segment_image",
    "write_examples",
]

lazy_exports(__name__)
