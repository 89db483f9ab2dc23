"""Tests for uniseg.datasets.transforms.resample (ResampleToMPP)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import pytest
from mmseg.registry import TRANSFORMS

import uniseg.datasets.transforms  # noqa: F401  (registers the transforms)
from uniseg.datasets.transforms.resample import ResampleToMPP, resize_nearest


def _sample(mpp: Optional[float], h: int = 120, w: int = 200, with_mpp: bool = True) -> Dict[str, Any]:
    """Image and labels made of 2x2 constant blocks, so halving has one exact answer."""
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 7], np.uint8), size=(h // 2, w // 2))
    seg = np.kron(labels, np.ones((2, 2), np.uint8))
    img = np.kron(rng.integers(0, 256, size=(h // 2, w // 2, 3)), np.ones((2, 2, 1))).astype(np.uint8)
    results: Dict[str, Any] = dict(
        img=img, gt_seg_map=seg, seg_fields=["gt_seg_map"], img_shape=(h, w), ori_shape=(h, w), img_path="tile_7.png"
    )
    if with_mpp:
        results["mpp"] = mpp
    return results


def test_40x_to_20x_halves_the_size_and_keeps_labels() -> None:
    results = _sample(0.25)
    img, seg = results["img"].copy(), results["gt_seg_map"].copy()
    out = ResampleToMPP(target_mpp=0.5)(results)
    assert out["img"].shape == (60, 100, 3) and out["img"].dtype == np.uint8
    assert out["gt_seg_map"].shape == (60, 100)
    assert out["img_shape"] == (60, 100) and out["ori_shape"] == (120, 200)
    assert out["mpp"] == 0.5 and out["resample_factor"] == (0.5, 0.5)
    assert set(np.unique(out["gt_seg_map"])) <= set(np.unique(seg))
    # Every 2x2 block is constant, so area averaging and nearest picking are both exact.
    assert np.array_equal(out["gt_seg_map"], seg[::2, ::2])
    assert np.array_equal(out["img"], img[::2, ::2])


def test_odd_factor_keeps_labels_a_subset_and_rounds_the_size() -> None:
    results = _sample(0.3, h=102, w=78)
    labels_in = set(np.unique(results["gt_seg_map"]))
    out = ResampleToMPP(target_mpp=0.5)(results)
    assert out["img"].shape[:2] == (61, 47) == out["gt_seg_map"].shape == out["img_shape"]
    assert set(np.unique(out["gt_seg_map"])) <= labels_in
    assert out["resample_factor"] == pytest.approx((47 / 78, 61 / 102))


def test_upscaling_doubles_and_repeats_labels() -> None:
    results = _sample(1.0, h=40, w=60)
    seg = results["gt_seg_map"].copy()
    out = ResampleToMPP(target_mpp=0.5, upscale_interpolation="bilinear")(results)
    assert out["img"].shape == (80, 120, 3)
    assert np.array_equal(out["gt_seg_map"], np.kron(seg, np.ones((2, 2), np.uint8)))
    assert out["mpp"] == 0.5 and out["resample_factor"] == (2.0, 2.0)


def test_all_seg_fields_and_their_dtypes_follow() -> None:
    results = _sample(0.25)
    results["gt_instances"] = results["gt_seg_map"].astype(np.int64) * 100000
    results["seg_fields"].append("gt_instances")
    out = ResampleToMPP()(results)
    assert out["gt_instances"].dtype == np.int64 and out["gt_instances"].shape == (60, 100)
    assert np.array_equal(out["gt_instances"], out["gt_seg_map"].astype(np.int64) * 100000)


@pytest.mark.parametrize("shape", [(40, 60), (40, 60, 1)])
def test_single_channel_images_keep_their_dims(shape: tuple) -> None:
    results = _sample(0.25, h=40, w=60)
    results["img"] = np.full(shape, 9, np.uint8)
    out = ResampleToMPP()(results)
    assert out["img"].shape == (20, 30) + shape[2:]


@pytest.mark.parametrize("with_mpp", [True, False])
def test_missing_mpp_passes_through_unless_strict(with_mpp: bool) -> None:
    results = _sample(None, with_mpp=with_mpp)
    img = results["img"]
    out = ResampleToMPP()(results)
    assert out["img"] is img and out["img_shape"] == (120, 200)
    assert out.get("mpp") is None and out["resample_factor"] == (1.0, 1.0)
    with pytest.raises(ValueError, match="tile_7.png.*mpp"):
        ResampleToMPP(strict=True)(_sample(None, with_mpp=with_mpp))


def test_within_tolerance_is_left_alone() -> None:
    results = _sample(0.505)  # 1% off the target
    img = results["img"]
    out = ResampleToMPP(target_mpp=0.5, tolerance=0.02)(results)
    assert out["img"] is img and out["mpp"] == 0.505 and out["resample_factor"] == (1.0, 1.0)

    out = ResampleToMPP(target_mpp=0.5, tolerance=0.02)(_sample(0.52))  # 4% off: resampled
    assert out["img"].shape[:2] == (125, 208) and out["mpp"] == 0.5

    out = ResampleToMPP(target_mpp=0.5, tolerance=0.0)(_sample(0.505))
    assert out["img"].shape[:2] == (121, 202)


@pytest.mark.parametrize("bad", [0, -0.25, float("nan"), float("inf"), "0.25", True])
def test_invalid_mpp_is_an_error_naming_the_file(bad: Any) -> None:
    with pytest.raises(ValueError, match="tile_7.png"):
        ResampleToMPP()(_sample(bad))


def test_mismatched_seg_map_is_an_error() -> None:
    results = _sample(0.25)
    results["gt_seg_map"] = results["gt_seg_map"][:, :-2]
    with pytest.raises(ValueError, match="tile_7.png.*gt_seg_map"):
        ResampleToMPP()(results)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(target_mpp=0), "target_mpp"),
        (dict(tolerance=-0.1), "tolerance"),
        (dict(upscale_interpolation="lanczos"), "upscale_interpolation"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: Dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ResampleToMPP(**kwargs)


def test_registered_and_buildable_from_config() -> None:
    transform = TRANSFORMS.build(dict(type="ResampleToMPP", target_mpp=0.5, tolerance=0.05))
    assert isinstance(transform, ResampleToMPP) and transform.tolerance == 0.05
    assert "target_mpp=0.5" in repr(transform)


def test_resize_nearest_matches_pixel_centres() -> None:
    seg = np.arange(6, dtype=np.int64).reshape(1, 6)
    # Output pixel i samples input position (i + 0.5) * in / out: 1.0, 3.0, 5.0 when halving.
    assert resize_nearest(seg, (1, 3)).tolist() == [[1, 3, 5]]
    assert resize_nearest(seg[:, :3], (2, 6)).tolist() == [[0, 0, 1, 1, 2, 2]] * 2
    assert resize_nearest(seg, (1, 3)).dtype == np.int64
