"""Image classification with FocalNets: the paper's training recipe, evaluation, prediction, throughput.

>>> from focalnet.classification import load_classification_config
>>> cfg = load_classification_config(model="focalnet_tiny_srf", overrides=["train.epochs=5"])
>>> cfg.train.epochs, cfg.aug.auto_augment, cfg.model.drop_path_rate
(5, 'rand-m9-mstd0.5-inc1', 0.2)
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (focalnet.lazy): `import focalnet...` loads no torch
    from .config import (
        AugSection,
        ClassificationConfig,
        DataSection,
        EvalSection,
        ModelSection,
        TrainSection,
        config_path,
        list_configs,
        load_classification_config,
    )
    from .data import ImageFolder, build_mixup, build_transform, describe_wnid, find_classes, imagenet_indices
    from .evaluate import (
        IN22K_UNUSED_INDEX,
        LoadedClassifier,
        evaluate,
        evaluate_model,
        head_logits,
        load_classifier,
        target_indices,
    )
    from .predict import class_labels, collect_images, predict
    from .throughput import PAPER_V100_THROUGHPUT, measure_throughput
    from .train import TrainingRun, build_model, train

__all__ = [
    "IN22K_UNUSED_INDEX",
    "PAPER_V100_THROUGHPUT",
    "AugSection",
    "ClassificationConfig",
    "DataSection",
    "EvalSection",
    "ImageFolder",
    "LoadedClassifier",
    "ModelSection",
    "TrainSection",
    "TrainingRun",
    "build_mixup",
    "build_model",
    "build_transform",
    "class_labels",
    "collect_images",
    "config_path",
    "describe_wnid",
    "evaluate",
    "evaluate_model",
    "find_classes",
    "head_logits",
    "imagenet_indices",
    "list_configs",
    "load_classification_config",
    "load_classifier",
    "measure_throughput",
    "predict",
    "target_indices",
    "train",
]

lazy_exports(__name__)
