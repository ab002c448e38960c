"""Object detection and instance segmentation on FocalNet backbones: every detector of
:data:`DETECTORS` (Mask R-CNN, Faster R-CNN, Cascade Mask R-CNN, ATSS, Sparse R-CNN, FocalNet-DINO), each
declared once by a :class:`DetectorSpec` next to its builder.

>>> from focalnet.detection import mask_rcnn
>>> model = mask_rcnn("focalnet_tiny_lrf", num_classes=81)  # 80 COCO classes + background

Train / evaluate / predict on COCO-format data with :func:`train`, :func:`evaluate_detector`,
:func:`predict_images` (or ``focalnet detection ...``); load any checkpoint (ours, original mmdetection
and FocalNet-DINO files) with :func:`load_detector`. A detector defined elsewhere joins with
:func:`register_detector`.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): `import focalnet...` loads no torch
    from .atss import ATSS, atss
    from .backbone import build_backbone
    from .cascade import CascadeMaskRCNN, CascadeRoIHeads, cascade_mask_rcnn, convert_mmdet_cascade_state_dict
    from .classes import coco_class_names
    from .config import (
        DataConfig,
        DetectionConfig,
        ModelConfig,
        OptimConfig,
        config_path,
        list_configs,
        load_detection_config,
    )
    from .data import CocoInstances, DataProblem, decode_segmentation, detection_collate
    from .dino import dino
    from .evaluate import STAT_NAMES, coco_evaluate, evaluate_detector, outputs_to_coco, run_inference
    from .image_transform import DetectionTransform
    from .load import convert_detector, load_detector, save_detector
    from .necks import FocalNetFPN
    from .predict import draw_detections, predict_images
    from .rcnn import convert_mmdet_state_dict, faster_rcnn, is_mmdet_detector, mask_rcnn
    from .rcnn_parts import DETECTION_DEFAULTS, AlignedMultiScaleRoIAlign, UnroundedAnchorGenerator
    from .registry import DETECTORS, build_detector, build_from_config, get_detector, register_detector
    from .sparse_rcnn import SPARSE_RCNN_DEFAULTS, SparseRCNN, sparse_rcnn
    from .spec import DetectorSpec, Layout, LayoutRead
    from .train import build_datasets, build_model, detection_step, train
    from .transforms import RandomCropAbsoluteRange, eval_transforms, train_transforms

__all__ = [
    "DETECTION_DEFAULTS",
    "DETECTORS",
    "SPARSE_RCNN_DEFAULTS",
    "STAT_NAMES",
    "ATSS",
    "AlignedMultiScaleRoIAlign",
    "CascadeMaskRCNN",
    "CascadeRoIHeads",
    "CocoInstances",
    "DataConfig",
    "DataProblem",
    "DetectionConfig",
    "DetectionTransform",
    "DetectorSpec",
    "FocalNetFPN",
    "Layout",
    "LayoutRead",
    "ModelConfig",
    "OptimConfig",
    "RandomCropAbsoluteRange",
    "SparseRCNN",
    "UnroundedAnchorGenerator",
    "atss",
    "build_backbone",
    "build_datasets",
    "build_detector",
    "build_from_config",
    "build_model",
    "cascade_mask_rcnn",
    "coco_class_names",
    "coco_evaluate",
    "config_path",
    "convert_detector",
    "convert_mmdet_cascade_state_dict",
    "convert_mmdet_state_dict",
    "decode_segmentation",
    "detection_collate",
    "detection_step",
    "dino",
    "draw_detections",
    "eval_transforms",
    "evaluate_detector",
    "faster_rcnn",
    "get_detector",
    "is_mmdet_detector",
    "list_configs",
    "load_detection_config",
    "load_detector",
    "mask_rcnn",
    "outputs_to_coco",
    "predict_images",
    "register_detector",
    "run_inference",
    "save_detector",
    "sparse_rcnn",
    "train",
    "train_transforms",
]

lazy_exports(__name__)
