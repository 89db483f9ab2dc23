"""seg_map_keys: the label maps that Albumentations and ResampleToMPP move with the image."""
from __future__ import annotations

import numpy as np
import pytest

from uniseg.datasets.transforms import Albumentations, ResampleToMPP
from uniseg.datasets.transforms.seg_fields import seg_map_keys


def test_listed_fields_in_order_without_repeats_then_unlisted_gt_seg_map():
    results = dict(gt_seg_map=0, gt_extra=0, seg_fields=["gt_extra", "gt_extra", "gt_seg_map"])
    assert seg_map_keys(results) == ["gt_extra", "gt_seg_map"]
    assert seg_map_keys(dict(gt_seg_map=0, seg_fields=[])) == ["gt_seg_map"]
    assert seg_map_keys(dict(gt_seg_map=0)) == ["gt_seg_map"]
    assert seg_map_keys(dict(img=0, seg_fields=[])) == []


def _sample(seg_fields):
    img = np.zeros((8, 12, 3), np.uint8)
    seg = np.arange(96, dtype=np.uint8).reshape(8, 12)
    return dict(img=img, gt_seg_map=seg, seg_fields=seg_fields, img_shape=(8, 12), ori_shape=(8, 12),
                img_path="tile.png", mpp=0.25)


@pytest.mark.parametrize("seg_fields", [["gt_seg_map"], []])
def test_both_transforms_move_an_unlisted_map_too(seg_fields):
    out = ResampleToMPP(target_mpp=0.5)(_sample(list(seg_fields)))
    assert out["img"].shape[:2] == out["gt_seg_map"].shape == (4, 6)
    flip = Albumentations(transforms=[dict(type="HorizontalFlip", p=1.0)])
    out = flip(_sample(list(seg_fields)))
    assert np.array_equal(out["gt_seg_map"], _sample([])["gt_seg_map"][:, ::-1])
