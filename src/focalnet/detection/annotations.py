"""COCO instance files' validation layer: :mod:`focalnet.engine.coco` (below the tasks, since segmentation's
instance task reads COCO files too); re-exported here under its former name."""

from ..engine.coco import DataProblem, check_polygons, check_rle, max_pixels, read_coco, rle_string_counts

__all__ = ["DataProblem", "check_polygons", "check_rle", "max_pixels", "read_coco", "rle_string_counts"]
