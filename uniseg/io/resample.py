"""Seam-free resampling of a pyramid level onto the model's working grid.

Resizing each tile's source window with ``cv2.resize`` would place every tile's sample positions
relative to that window's own origin and size, so neighbouring tiles would disagree with each
other (and with a whole-image resize) by a fraction of a pixel: visible seams in a stitched
segmentation. Here every output pixel ``i`` is defined in *global* coordinates: it covers the
source interval ``[origin + i*step, origin + (i+1)*step)`` of the level it is read from, where
``step`` is the number of level pixels per output pixel. Its value depends only on that interval
and the source pixels around it, so any tile equals the same crop of the whole image up to
floating-point rounding.

The kernels are the ones OpenCV defines: an exact area average when shrinking (as
``INTER_AREA``; no aliasing of nuclei-scale texture) and bilinear interpolation with pixel-centre
alignment when enlarging (as ``INTER_LINEAR``). Both are separable: each output pixel is a
weighted sum of a few source pixels along y, then along x, with weights computed from global
coordinates, so the arithmetic for a pixel is identical in every window that contains it.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

__all__ = ["source_span", "axis_taps", "resample_axis", "resample_window"]

# Extra source pixels on each side of a span: absorbs floating-point error in the span ends.
_MARGIN = 1


def source_span(origin: float, step: float, start: int, stop: int) -> Tuple[int, int]:
    """Source pixels ``[a, b)`` that output pixels ``start .. stop-1`` depend on (with a margin)."""
    if step >= 1.0:  # area: the union of the covered intervals
        lo, hi = origin + start * step, origin + stop * step
    else:  # bilinear: the two neighbours of each sample position
        lo = origin + (start + 0.5) * step - 0.5
        hi = origin + (stop - 0.5) * step - 0.5 + 1.0
    return math.floor(lo) - _MARGIN, math.ceil(hi) + _MARGIN


def axis_taps(origin: float, step: float, start: int, stop: int, src_start: int,
              n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, both ``(stop - start, taps)``, for output pixels ``start..stop-1``.

    Indices are relative to ``src_start`` and clipped to ``[0, n)``; taps that fall outside the
    covered interval have zero weight. Each row sums to 1.
    """
    index = np.arange(start, stop, dtype=np.float64)
    if step >= 1.0:
        # Area average: the weight of source pixel j is the length of [a, b) ∩ [j, j + 1).
        a = origin + index * step - src_start
        b = origin + (index + 1.0) * step - src_start
        first = np.floor(a)
        taps = int(math.ceil(step)) + 1
        j = first[:, None] + np.arange(taps)[None, :]
        weights = np.clip(np.minimum(b[:, None], j + 1.0) - np.maximum(a[:, None], j), 0.0, None) / step
    else:
        # Bilinear between the two source pixels around each output pixel's centre.
        centre = origin + (index + 0.5) * step - 0.5 - src_start
        first = np.floor(centre)
        t = centre - first
        j = first[:, None] + np.arange(2)[None, :]
        weights = np.stack([1.0 - t, t], axis=1)
    return np.clip(j, 0, n - 1).astype(np.intp), weights


def resample_axis(src: np.ndarray, axis: int, src_start: int, origin: float, step: float,
                  start: int, stop: int) -> np.ndarray:
    """Resample ``src`` along ``axis`` to output pixels ``start .. stop-1`` (float32 result).

    ``src`` holds source pixels ``src_start ..`` along ``axis``; it must cover
    :func:`source_span` ``(origin, step, start, stop)``.
    """
    index, weights = axis_taps(origin, step, start, stop, src_start, src.shape[axis])
    shape = [1] * src.ndim
    shape[axis] = -1
    out: np.ndarray = np.zeros(
        tuple(stop - start if d == axis else s for d, s in enumerate(src.shape)), np.float32)
    for k in range(index.shape[1]):
        w = weights[:, k].astype(np.float32)
        if not w.any():
            continue
        out += np.take(src, index[:, k], axis=axis) * w.reshape(shape)
    return out


def resample_window(src: np.ndarray, src_xy: Tuple[int, int], origin: Tuple[float, float], step: float,
                    box: Tuple[int, int, int, int]) -> np.ndarray:
    """Output pixels ``box = (x0, y0, x1, y1)`` from a source window whose top-left is ``src_xy``.

    ``origin`` is the output grid's top-left in source pixels and ``step`` source pixels per
    output pixel (the same along both axes). Returns uint8 of shape ``(y1-y0, x1-x0, C)``.
    """
    x0, y0, x1, y1 = box
    # Rows first: gathering whole rows is contiguous and cheap, and it shrinks the x pass.
    rows = resample_axis(src, 0, src_xy[1], origin[1], step, y0, y1)
    out = resample_axis(rows, 1, src_xy[0], origin[0], step, x0, x1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
