"""Object detection and instance segmentation: FocalNet + FPN in torchvision Mask R-CNN / Faster R-CNN,
Cascade Mask R-CNN (:func:`cascade_mask_rcnn`) and ATSS (:func:`atss`).

>>> from focalnet.detection import mask_rcnn
>>> model = mask_rcnn("focalnet_tiny_lrf", num_classes=81)  # 80 COCO classes + background

Train / evaluate / predict on COCO-format data with :func:`train`, :func:`evaluate_detector`,
:func:`predict_images` (or ``focalnet detection ...``); load original mmdetection checkpoints with
:func:`load_detector`. FocalNet-DINO: :func:`dino` (see :mod:`focalnet.detection.dino`).
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): `import focalnet...` loads no torch
    from .atss import ATSS, atss
    from .cascade import CascadeMaskRCNN, CascadeRoIHeads, cascade_mask_rcnn, convert_mmdet_cascade_state_dict
    from .config import (
        DataConfig,
        DetectionConfig,
        ModelConfig,
        OptimConfig,
        config_path,
        list_configs,
        load_detection_config,
    )
    from .convert import coco_class_names, convert_mmdet_state_dict, is_mmdet_detector, load_detector
    from .data import CocoInstances, DataProblem, decode_segmentation, detection_collate
    from .dino import dino
    from .evaluate import STAT_NAMES, coco_evaluate, evaluate_detector, outputs_to_coco, run_inference
    from .model import (
        DETECTION_DEFAULTS,
        AlignedMultiScaleRoIAlign,
        DetectionTransform,
        FocalNetFPN,
        UnroundedAnchorGenerator,
        build_detector,
        faster_rcnn,
        mask_rcnn,
    )
    from .predict import draw_detections, predict_images
    from .sparse_rcnn import SPARSE_RCNN_DEFAULTS, SparseRCNN, sparse_rcnn
    from .train import build_datasets, build_model, detection_step, train
    from .transforms import RandomCropAbsoluteRange, eval_transforms, train_transforms

__all__ = [
    "DETECTION_DEFAULTS",
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
    "FocalNetFPN",
    "ModelConfig",
    "OptimConfig",
    "RandomCropAbsoluteRange",
    "SparseRCNN",
    "UnroundedAnchorGenerator",
    "atss",
    "build_datasets",
    "build_detector",
    "build_model",
    "cascade_mask_rcnn",
    "coco_class_names",
    "coco_evaluate",
    "config_path",
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
    "is_mmdet_detector",
    "list_configs",
    "load_detection_config",
    "load_detector",
    "mask_rcnn",
    "outputs_to_coco",
    "predict_images",
    "run_inference",
    "sparse_rcnn",
    "train",
    "train_transforms",
]

lazy_exports(__name__)
