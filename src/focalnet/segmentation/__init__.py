"""Segmentation: FocalNet UPerNet (+ FCN auxiliary head) on ADE20K-format or folder data, and Mask2Former
(panoptic, semantic, instance; :mod:`focalnet.segmentation.mask2former`); one spec per segmentor in
:data:`SEGMENTORS`.

>>> from focalnet.segmentation import upernet
>>> model = upernet("focalnet_tiny_srf", num_classes=3, embed_dim=16, depths=(1, 1, 1, 1),
...                 head={"channels": 16, "aux_channels": 8})
>>> import torch
>>> model.eval()(torch.zeros(1, 3, 64, 48)).shape
torch.Size([1, 3, 64, 48])
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): `import focalnet...` loads no torch
    from .convert import convert_segmentor
    from .data import ADE20K_CLASSES, DataConfig, SegmentationDataset, build_dataset, load_class_names, map_label
    from .evaluate import (
        MS_RATIOS,
        TestConfig,
        confusion_matrix,
        evaluate,
        inference,
        metrics_from_confusion,
        predict_probs,
        slide_inference,
        whole_inference,
    )
    from .load import build_segmentor, check_segmentor, load_segmentor, read_segmentor, save_segmentor
    from .mmseg import focalnet_to_mmseg, is_mmseg_segmentor, mmseg_to_focalnet
    from .model import FCNHead, HeadConfig, UPerHead, UPerNet, upernet, upernet_from_meta
    from .predict import colorize, overlay, palette, predict_image, predict_images
    from .registry import SEGMENTORS, get_segmentor, register_segmentor
    from .spec import SegmentorSpec
    from .train import SegmentationConfig, load_segmentation_config, train
    from .transforms import TestTransform, TrainTransform

__all__ = [
    "ADE20K_CLASSES",
    "MS_RATIOS",
    "DataConfig",
    "FCNHead",
    "HeadConfig",
    "SEGMENTORS",
    "SegmentationConfig",
    "SegmentorSpec",
    "SegmentationDataset",
    "TestConfig",
    "TestTransform",
    "TrainTransform",
    "UPerHead",
    "UPerNet",
    "build_dataset",
    "build_segmentor",
    "check_segmentor",
    "convert_segmentor",
    "focalnet_to_mmseg",
    "get_segmentor",
    "is_mmseg_segmentor",
    "mmseg_to_focalnet",
    "read_segmentor",
    "register_segmentor",
    "colorize",
    "confusion_matrix",
    "evaluate",
    "inference",
    "load_class_names",
    "load_segmentation_config",
    "load_segmentor",
    "map_label",
    "metrics_from_confusion",
    "overlay",
    "palette",
    "predict_image",
    "predict_images",
    "predict_probs",
    "save_segmentor",
    "slide_inference",
    "train",
    "upernet",
    "upernet_from_meta",
    "whole_inference",
]

lazy_exports(__name__)
