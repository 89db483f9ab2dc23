"""A low-resolution overview of a slide (or a region of it), read in bounded memory.

Tissue detection and thumbnails need the whole slide at a few microns per pixel, never at full
resolution. :func:`read_overview` reads the coarsest pyramid level that is still at least as fine
as the requested downsample and shrinks it by an integer factor with an exact block average. A
single-level file (or one whose coarsest level is still too large) is therefore read in chunks of
at most ``chunk`` x ``chunk`` level pixels (or one block, if a block is larger), each reduced at
once: the full-resolution level is never held in memory.

Every overview pixel is the mean of the level pixels of its block that lie inside the level; a
block at the right or bottom edge is not diluted by padding, and blocks entirely outside the
slide (a region that overhangs it) are white, the colour of glass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .region import Region
from .slide import SlideReader

__all__ = ["Overview", "overview_level", "read_overview"]

#: Level pixels per chunk side: a chunk is at most 1024 x 1024 RGB (3 MiB) plus its block sums.
DEFAULT_CHUNK = 1024
# A level whose downsample exceeds the target by less than this still counts as fine enough
# (odd slide dimensions make a 4x level 4.0003).
_TOLERANCE = 0.01


@dataclass(frozen=True)
class Overview:
    """``rgb`` (h, w, 3) uint8; pixel ``(i, j)`` covers level-0 ``[origin + (j, i) * scale, ... + scale)``."""

    rgb: np.ndarray
    origin: Tuple[float, float]  # level-0 (x, y) of the top-left corner of pixel (0, 0)
    scale: Tuple[float, float]   # level-0 pixels per overview pixel, (x, y)
    level: int                   # the pyramid level that was read
    factor: int                  # level pixels per overview pixel (block side)


def overview_level(reader: SlideReader, downsample: float) -> Tuple[int, int]:
    """The level to read and the integer block factor for a target of ``downsample`` level-0 pixels per pixel.

    The level is the coarsest one that is not coarser than the target (so the overview never has
    less detail than asked for); the factor is the smallest integer at which that level reaches
    the target resolution or coarser (so the overview is never larger than asked for).
    """
    if not (math.isfinite(downsample) and downsample > 0):
        raise ValueError(f"{reader.path}: overview downsample must be positive, got {downsample!r}")
    downsamples = reader.level_downsamples
    usable = [i for i, ds in enumerate(downsamples) if ds <= downsample * (1.0 + _TOLERANCE)]
    level = max(usable, key=lambda i: downsamples[i]) if usable else int(np.argmin(downsamples))
    factor = max(1, math.ceil(downsample / downsamples[level] * (1.0 - _TOLERANCE)))
    return level, factor


def _block_counts(start: int, stop: int, lo: int, hi: int, factor: int) -> np.ndarray:
    """Per block of ``factor`` pixels from ``start`` to ``stop``: how many lie inside ``[lo, hi)``."""
    edges = np.arange(start, stop + 1, factor)
    a, b = np.clip(edges[:-1], lo, hi), np.clip(edges[1:], lo, hi)
    return (b - a).astype(np.int64)


def read_overview(reader: SlideReader, downsample: float, region: Optional[Region] = None,
                  chunk: int = DEFAULT_CHUNK) -> Overview:
    """The slide (or level-0 ``region``) at about ``downsample`` level-0 pixels per pixel, never finer.

    Memory: the result (3 bytes per overview pixel) plus one chunk of at most
    ``max(chunk, factor)**2`` level pixels, held about three times over (the read, its placement in
    whole blocks, row sums: under 10 bytes per level pixel, 10 MiB at the default ``chunk`` of
    1024); the level itself is never loaded whole.
    """
    w0, h0 = reader.dimensions
    region = Region(0, 0, w0, h0) if region is None else region
    level, factor = overview_level(reader, downsample)
    lw, lh = reader.level_dimensions[level]
    rx, ry = w0 / lw, h0 / lh  # level-0 pixels per level pixel, per axis (exact for the full extent)
    lx0, ly0 = math.floor(region.x / rx + 1e-9), math.floor(region.y / ry + 1e-9)
    lx1, ly1 = math.ceil(region.right / rx - 1e-9), math.ceil(region.bottom / ry - 1e-9)
    out_w, out_h = max(1, math.ceil((lx1 - lx0) / factor)), max(1, math.ceil((ly1 - ly0) / factor))
    rgb = np.empty((out_h, out_w, 3), np.uint8)
    step = max(1, chunk // factor)  # overview pixels per chunk side
    for oy in range(0, out_h, step):
        by = min(step, out_h - oy)
        ya = ly0 + oy * factor
        count_y = _block_counts(ya, ya + by * factor, 0, lh, factor)
        for ox in range(0, out_w, step):
            bx = min(step, out_w - ox)
            xa = lx0 + ox * factor
            count_x = _block_counts(xa, xa + bx * factor, 0, lw, factor)
            rgb[oy:oy + by, ox:ox + bx] = _reduce_chunk(reader, level, xa, ya, bx, by, factor,
                                                        count_x, count_y, lw, lh)
    return Overview(rgb=rgb, origin=(lx0 * rx, ly0 * ry), scale=(factor * rx, factor * ry),
                    level=level, factor=factor)


def _sum_type(count: int) -> type:
    """The narrowest unsigned type that holds a sum of ``count`` uint8 values."""
    for dtype in (np.uint16, np.uint32):
        if count * 255 <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def _reduce_chunk(reader: SlideReader, level: int, xa: int, ya: int, bx: int, by: int, factor: int,
                  count_x: np.ndarray, count_y: np.ndarray, lw: int, lh: int) -> np.ndarray:
    """Block means of the ``by`` x ``bx`` blocks whose top-left level pixel is ``(xa, ya)``."""
    out = np.full((by, bx, 3), 255, np.uint8)
    x0, y0 = max(xa, 0), max(ya, 0)
    x1, y1 = min(xa + bx * factor, lw), min(ya + by * factor, lh)
    if x1 <= x0 or y1 <= y0:  # entirely outside the slide: glass
        return out
    padded = np.zeros((by * factor, bx * factor, 3), np.uint8)
    padded[y0 - ya:y1 - ya, x0 - xa:x1 - xa] = reader.read_level(x0, y0, x1 - x0, y1 - y0, level)
    # One axis at a time: a sum over both at once may cast the whole chunk to uint64 (8x its size).
    rows = padded.reshape(by * factor, bx, factor, 3).sum(axis=2, dtype=_sum_type(factor))
    del padded
    means = rows.reshape(by, factor, bx, 3).sum(axis=1, dtype=_sum_type(factor * factor)).astype(np.float32)
    del rows
    counts = (count_y[:, None] * count_x[None, :]).astype(np.float32)
    inside = counts > 0
    means /= np.maximum(counts, 1.0)[..., None]
    np.rint(means, out=means)
    out[inside] = means[inside].astype(np.uint8)
    return out
