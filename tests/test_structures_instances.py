"""InstanceMap helpers: painting overlapping scored masks, dense relabelling, per-object statistics."""
from __future__ import annotations

import numpy as np
import pytest

from uniseg.structures import InstanceMap, classes_from_semantic, instance_properties, paint_instances, relabel_dense


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_paint_keeps_confident_masks_first_and_drops_duplicates():
    a = _disk(20, 20, 5, 5, 3)
    dup = _disk(20, 20, 5, 6, 3)          # mostly covered by a: a duplicate query
    b = _disk(20, 20, 14, 14, 3)
    low = _disk(20, 20, 14, 3, 2)         # below the score threshold
    out = paint_instances(np.stack([dup, a, b, low]), scores=[0.8, 0.9, 0.7, 0.3], labels=[1, 0, 2, 1])
    assert out.num_instances == 2
    assert out.labels.tolist() == [0, 2] and np.allclose(out.scores, [0.9, 0.7])
    assert np.array_equal(out.ids == 1, a) and np.array_equal(out.ids == 2, b)


def test_paint_keeps_a_partly_hidden_mask_with_its_visible_pixels_only():
    a = np.zeros((4, 8), bool)
    a[:, :5] = True
    b = np.zeros((4, 8), bool)
    b[:, 3:] = True                        # 2 of 5 columns hidden by a: 60 % visible >= 50 %
    out = paint_instances(np.stack([a, b]), [0.9, 0.8], [0, 0])
    assert out.num_instances == 2
    assert (out.ids == 2).sum() == 4 * 3 and not ((out.ids == 2) & a).any()


def test_paint_respects_max_instances_and_validates_shapes():
    masks = np.stack([_disk(10, 10, 2, 2, 1), _disk(10, 10, 7, 7, 1)])
    assert paint_instances(masks, [0.9, 0.8], [0, 0], max_instances=1).num_instances == 1
    with pytest.raises(ValueError, match="masks"):
        paint_instances(masks, [0.9], [0, 0])


def test_instance_map_rejects_ids_without_labels():
    with pytest.raises(ValueError, match="only 1 objects"):
        InstanceMap(np.array([[0, 2]]), [0], [1.0])


def test_relabel_dense_and_properties():
    ids = np.array([[0, 7, 7], [40, 40, 0], [0, 0, 40]])
    dense, old = relabel_dense(ids)
    assert old.tolist() == [7, 40]
    assert dense.tolist() == [[0, 1, 1], [2, 2, 0], [0, 0, 2]]
    areas, centroids = instance_properties(dense)
    assert areas.tolist() == [2, 3]
    assert np.allclose(centroids[0], [0.0, 1.5]) and np.allclose(centroids[1], [(1 + 1 + 2) / 3, (0 + 1 + 2) / 3])


def test_classes_from_semantic_majority_and_purity():
    ids = np.array([[1, 1, 2, 2], [1, 1, 2, 3]])
    sem = np.array([[4, 4, 2, 255], [4, 1, 255, 255]])
    classes, purity = classes_from_semantic(ids, sem)
    assert classes.tolist() == [4, 2, -1]
    assert np.allclose(purity, [0.75, 1.0, 0.0])
