"""mmengine metrics registered in mmdet's and mmseg's METRICS (selected with ``test_evaluator = dict(type=...)``)."""
from .cell_metric import CellInstanceMetric

__all__ = ["CellInstanceMetric"]
