"""Class names of detectors whose files carry none (original mmdetection and FocalNet-DINO files)."""

from __future__ import annotations

__all__ = ["coco_class_names", "coco91_class_names", "default_class_names"]


def coco_class_names() -> tuple[list[str], list[int]]:
    """The 80 COCO class names in category-id order and their (non-contiguous) category ids."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    cats = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    pairs = [(n, i) for i, n in enumerate(cats) if i > 0 and n != "N/A"]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def coco91_class_names() -> tuple[list[str], list[int]]:
    """Names and category ids of labels 1..90 of models whose label is the COCO category id (slot 0
    unused; ids without a category are named 'N/A'), in the ``class_names[label - 1]`` layout."""
    names, ids = coco_class_names()
    table = ["N/A"] * 91
    for n, i in zip(names, ids):
        table[i] = n
    return table[1:], list(range(1, 91))


def default_class_names(num_classes: int) -> tuple[list[str], list[int]]:
    """Names and ids for ``num_classes`` (with the background) when a file has none: COCO's for 81
    (80 classes) and 91 (labels = COCO ids), else ``class_1..``."""
    if num_classes == 81:
        return coco_class_names()
    if num_classes == 91:
        return coco91_class_names()
    return [f"class_{i}" for i in range(1, num_classes)], list(range(1, num_classes))
