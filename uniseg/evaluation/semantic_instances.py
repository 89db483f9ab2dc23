"""Cells from a semantic model: connected components of each cell class, the baseline instance maps.

A semantic segmentor predicts a class per pixel and no object boundaries, so the objects it "finds"
are the connected regions of each cell class. Touching cells of one class merge into one object,
which is exactly what the cell metrics should charge it for when it is compared with an instance
model on the same ground truth.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from uniseg.structures import InstanceMap, relabel_dense

__all__ = ["semantic_to_instances"]


def semantic_to_instances(semantic: np.ndarray, thing_classes: Sequence[int], connectivity: int = 1,
                          min_area: int = 0) -> InstanceMap:
    """One object per connected region of each thing class of a per-pixel class map.

    Args:
        semantic: (H, W) integer class map (e.g. mmseg's ``pred_sem_seg``).
        thing_classes: the class values that are cells, in the order of the 0-based instance
            classes: an object of value ``thing_classes[k]`` gets label ``k``. Every other value
            (background, stroma, the ignore index) is not an object.
        connectivity: 1 joins pixels sharing an edge (4-neighbourhood), 2 also those sharing a
            corner (8-neighbourhood), as in ``scipy.ndimage.generate_binary_structure``.
        min_area: regions with fewer pixels are dropped (speckle); 0 keeps every region.
    """
    semantic = np.asarray(semantic)
    if semantic.ndim != 2:
        raise ValueError(f"semantic_to_instances: the class map must be 2-D, got shape {semantic.shape}")
    if connectivity not in (1, 2):
        raise ValueError(f"semantic_to_instances: connectivity must be 1 (edges) or 2 (edges and corners), "
                         f"got {connectivity}")
    thing_classes = [int(v) for v in thing_classes]
    if len(set(thing_classes)) != len(thing_classes):
        raise ValueError(f"semantic_to_instances: thing_classes repeat a value: {thing_classes}")
    structure = ndimage.generate_binary_structure(2, connectivity)
    ids = np.zeros(semantic.shape, np.int32)
    labels = []
    for k, value in enumerate(thing_classes):
        regions, count = ndimage.label(semantic == value, structure=structure)
        if count == 0:
            continue
        inside = regions > 0
        ids[inside] = regions[inside] + len(labels)
        labels.extend([k] * count)
    labels = np.asarray(labels, np.int64)
    if min_area > 0 and len(labels):
        areas = np.bincount(ids.reshape(-1), minlength=len(labels) + 1)
        ids[areas[ids] < min_area] = 0  # background's own count is irrelevant: 0 stays 0
        ids, old = relabel_dense(ids)
        labels = labels[old - 1]
    return InstanceMap(ids, labels, np.ones(len(labels), np.float32))
