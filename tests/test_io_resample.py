"""Tests for uniseg.io.resample: OpenCV-equivalent kernels on a global grid, identical in every window."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from uniseg.io.resample import axis_taps, resample_window, source_span


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Smooth structure plus noise: interpolation errors show up, nothing is flat by accident."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:600, :600]
    base = 127 + 100 * np.sin(xx / 17.0)[..., None] * np.cos(yy / 23.0)[..., None]
    return np.clip(base + rng.normal(0, 20, (600, 600, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("step", [1.5, 2.0, 3.0, 1.25, 0.75, 0.5])
def test_whole_image_matches_opencv(image: np.ndarray, step: float) -> None:
    n = round(600 / step)
    mine = resample_window(image, (0, 0), (0.0, 0.0), step, (0, 0, n, n))
    interpolation = cv2.INTER_AREA if step >= 1 else cv2.INTER_LINEAR
    ref = cv2.resize(image, (n, n), interpolation=interpolation)
    diff = np.abs(mine.astype(int) - ref)
    assert diff.max() <= 1  # OpenCV rounds in fixed point on some paths
    assert (diff == 0).mean() > 0.8


@pytest.mark.parametrize("origin, step", [((3.3, 7.9), 1.37), ((2.0, 6.0), 2.0), ((10.25, 4.5), 0.7),
                                          ((1.0, 2.0), 4.6)])
def test_windows_agree_with_the_whole(image: np.ndarray, origin: tuple, step: float) -> None:
    n = int((600 - max(origin) - 2) / step) - 2
    whole = _window(image, origin, step, (0, 0, n, n))
    for box in [(0, 0, n // 2, n // 3), (n // 2, n // 3, n, n), (7, 11, 30, 29), (n - 5, 0, n, n)]:
        x0, y0, x1, y1 = box
        np.testing.assert_allclose(_window(image, origin, step, box), whole[y0:y1, x0:x1], atol=1)


def _window(image: np.ndarray, origin: tuple, step: float, box: tuple) -> np.ndarray:
    """Resample ``box`` from only the source pixels ``source_span`` asks for."""
    x0, y0, x1, y1 = box
    sx0, sx1 = source_span(origin[0], step, x0, x1)
    sy0, sy1 = source_span(origin[1], step, y0, y1)
    assert sx0 >= 0 and sy0 >= 0 and sx1 <= image.shape[1] and sy1 <= image.shape[0]
    return resample_window(image[sy0:sy1, sx0:sx1], (sx0, sy0), origin, step, box)


@pytest.mark.parametrize("step", [0.3, 0.999, 1.0, 1.001, 2.5, 7.0])
def test_taps_sum_to_one_and_stay_inside_the_span(step: float) -> None:
    rng = np.random.default_rng(5)
    for origin in rng.uniform(0, 50, size=5):
        start, stop = 3, 40
        lo, hi = source_span(origin, step, start, stop)
        index, weights = axis_taps(origin, step, start, stop, lo, hi - lo)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
        # Every source pixel with weight lies inside the span (seen from far away, nothing clips).
        shifted, far_weights = axis_taps(origin, step, start, stop, lo - 1000, 10 ** 9)
        used = far_weights > 0
        assert (shifted[used] - 1000).min() >= 0 and (shifted[used] - 1000).max() < hi - lo
        np.testing.assert_array_equal(index[used], shifted[used] - 1000)


def test_identity_step_with_integer_origin_is_a_copy(image: np.ndarray) -> None:
    out = resample_window(image, (0, 0), (5.0, 9.0), 1.0, (0, 0, 100, 80))
    np.testing.assert_array_equal(out, image[9:89, 5:105])
