"""Cells as objects: the one representation every instance-level part of uniseg agrees on.

A Mask2Former head predicts *overlapping* scored masks (one per query); annotations, metrics and
exports need *non-overlapping* objects. The common currency is an :class:`InstanceMap`: an integer
id image (0 = no object, ``k`` = object ``k``) plus one class and one score per id. Datasets build
it from their instance-id and class masks, the evaluator compares two of them, and the whole-slide
stitcher turns each window's predictions into one before deciding which cells to keep.

Ids are dense (``1 .. n``) so that per-object arrays are indexed by ``id - 1`` and per-object
statistics are one ``np.bincount`` over the id image, never a Python loop over objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["InstanceMap", "paint_instances", "instance_properties", "classes_from_semantic", "relabel_dense",
           "keep_objects"]


@dataclass
class InstanceMap:
    """Non-overlapping objects of one image.

    Attributes:
        ids: (H, W) ``int32``; 0 is background, ``k`` in ``1..n`` is object ``k``.
        labels: (n,) ``int64`` class of object ``k`` at ``labels[k - 1]`` (0-based *thing* classes).
        scores: (n,) ``float32`` confidence of each object (1.0 for ground truth).
    """

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.ids.ndim != 2:
            raise ValueError(f"InstanceMap.ids must be 2-D, got shape {self.ids.shape}")
        self.ids = self.ids.astype(np.int32, copy=False)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.labels) != len(self.scores):
            raise ValueError(f"InstanceMap: {len(self.labels)} labels but {len(self.scores)} scores")
        top = int(self.ids.max()) if self.ids.size else 0
        if top > len(self.labels) or (self.ids.size and int(self.ids.min()) < 0):
            raise ValueError(f"InstanceMap: ids range up to {top} but only {len(self.labels)} objects are described")

    @property
    def num_instances(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, height: int, width: int) -> "InstanceMap":
        return cls(np.zeros((height, width), np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def subset(self, keep: np.ndarray) -> "InstanceMap":
        """The objects where ``keep`` (one bool per object) is set, in their order, ids ``1..m``."""
        keep = np.asarray(keep, bool)
        if keep.all():
            return self
        return InstanceMap(keep_objects(self.ids, keep), self.labels[keep], self.scores[keep])


def keep_objects(ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Id map ``1..n`` -> the objects where ``keep`` (n bools) is set, renumbered ``1..m``; others become 0."""
    keep = np.asarray(keep, bool)
    new_id = np.zeros(len(keep) + 1, np.int32)
    new_id[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[ids]


def paint_instances(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, score_thr: float = 0.5,
                    min_visible: float = 0.5, max_instances: Optional[int] = None) -> InstanceMap:
    """Resolve overlapping scored masks into an :class:`InstanceMap`.

    Masks are painted from the most to the least confident; a pixel keeps the first object that
    claims it. A mask that loses more than ``1 - min_visible`` of its area to more confident ones is
    a duplicate of them (or mostly hidden) and is dropped, as in Mask2Former's panoptic inference,
    rather than surviving as a sliver that would count as an extra cell.

    Args:
        masks: (N, H, W) boolean masks.
        scores: (N,) confidences; masks below ``score_thr`` are ignored.
        labels: (N,) 0-based class of each mask.
        min_visible: fraction of a mask's own area that must remain unclaimed for it to be kept.
        max_instances: keep at most this many objects (the most confident).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"paint_instances: masks must be (N, H, W), got shape {masks.shape}")
    n, height, width = masks.shape
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(scores) != n or len(labels) != n:
        raise ValueError(f"paint_instances: {n} masks, {len(scores)} scores, {len(labels)} labels")
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"paint_instances: min_visible must be in (0, 1], got {min_visible}")
    ids = np.zeros((height, width), np.int32)
    kept_labels, kept_scores = [], []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] < score_thr or (max_instances is not None and len(kept_labels) >= max_instances):
            break
        mask = masks[i].astype(bool, copy=False)
        area = int(np.count_nonzero(mask))
        if area == 0:
            continue
        visible = mask & (ids == 0)
        if np.count_nonzero(visible) < min_visible * area:
            continue
        kept_labels.append(labels[i])
        kept_scores.append(scores[i])
        ids[visible] = len(kept_labels)
    return InstanceMap(ids, np.asarray(kept_labels, np.int64), np.asarray(kept_scores, np.float32))


def relabel_dense(ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Renumber arbitrary non-negative ids to ``1..n`` (0 stays 0); returns (dense ids, old id of each)."""
    ids = np.asarray(ids)
    if ids.size and ids.min() < 0:
        raise ValueError("relabel_dense: ids must be non-negative")
    old = np.unique(ids)
    old = old[old != 0]
    lookup = np.searchsorted(old, ids)  # position of each pixel's id among the present ids
    dense = np.where(ids == 0, 0, lookup + 1).astype(np.int32)
    return dense, old


def instance_properties(ids: np.ndarray, num_instances: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Area (pixels) and centroid (y, x, pixel-centre coordinates) of objects ``1..n``.

    Returns ``areas`` (n,) ``int64`` and ``centroids`` (n, 2) ``float64``; objects with no pixel get
    area 0 and a NaN centroid.
    """
    ids = np.asarray(ids)
    n = int(ids.max()) if num_instances is None and ids.size else int(num_instances or 0)
    flat = ids.reshape(-1).astype(np.int64)
    areas = np.bincount(flat, minlength=n + 1)[1:n + 1]
    rows, cols = np.indices(ids.shape, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=rows.reshape(-1), minlength=n + 1)[1:n + 1] / areas
        cx = np.bincount(flat, weights=cols.reshape(-1), minlength=n + 1)[1:n + 1] / areas
    return areas.astype(np.int64), np.stack([cy, cx], axis=1)


def classes_from_semantic(ids: np.ndarray, semantic: np.ndarray, num_instances: Optional[int] = None,
                          ignore_index: int = 255) -> Tuple[np.ndarray, np.ndarray]:
    """Class of each object from a per-pixel class mask: the most frequent non-ignored value under it.

    Returns ``classes`` (n,) ``int64`` (``-1`` for an object entirely under ``ignore_index``) and
    ``purity`` (n,) ``float64``: the fraction of the object's non-ignored pixels that carry that class.
    Datasets use purity to refuse annotations whose objects straddle two classes.
    """
    ids = np.asarray(ids)
    semantic = np.asarray(semantic)
    if ids.shape != semantic.shape:
        raise ValueError(f"classes_from_semantic: ids {ids.shape} and class mask {semantic.shape} differ in size")
    n = int(ids.max()) if num_instances is None and ids.size else int(num_instances or 0)
    classes = np.full(n, -1, np.int64)
    purity = np.zeros(n, np.float64)
    inside = (ids > 0) & (semantic != ignore_index)
    if n == 0 or not inside.any():
        return classes, purity
    obj = ids[inside].astype(np.int64)
    cls = semantic[inside].astype(np.int64)
    num_classes = int(cls.max()) + 1
    counts = np.bincount(obj * num_classes + cls, minlength=(n + 1) * num_classes).reshape(n + 1, num_classes)[1:]
    totals = counts.sum(axis=1)
    present = totals > 0
    classes[present] = counts[present].argmax(axis=1)
    purity[present] = counts[present].max(axis=1) / totals[present]
    return classes, purity
