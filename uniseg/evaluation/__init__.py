"""Evaluation of cells as objects: numpy scores (PQ, F1) and the registered metric that reports them."""
from .cell_stats import (CellImageStats, CellSummary, IoUMatching, image_cell_stats, match_instances, pair_centroids,
                         pq_from_counts, summarize_cell_stats)
from .metrics import CellInstanceMetric
from .semantic_instances import semantic_to_instances

__all__ = ["CellImageStats", "CellInstanceMetric", "CellSummary", "IoUMatching", "image_cell_stats", "match_instances",
           "pair_centroids", "pq_from_counts", "semantic_to_instances", "summarize_cell_stats"]
