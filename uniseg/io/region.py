"""Regions of interest, resolution planning, and the region seen at the model's working resolution.

The model works at a fixed resolution (UNI: ~0.5 um/px), while users point at a region in
level-0 slide pixels and slides come at 0.25, 0.5 or 1 um/px with pyramids of varying depth.
:func:`plan_read` decides which pyramid level to read and how much to resample it;
:class:`RegionSource` then presents the region as a virtual image in *output* pixels that can be
read tile by tile, and maps output pixels back to level-0 slide coordinates for export.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .resample import resample_window, source_span
from .slide import SlideReader, white

__all__ = ["Region", "parse_region", "ReadPlan", "plan_read", "RegionSource", "MPP_TOLERANCE"]

#: Relative resolution difference treated as "the same resolution". It lets a 0.499 um/px scan
#: serve a 0.5 um/px model without an interpolation pass (which would only blur it), and lets a
#: level whose downsample is 4.0003 because of odd slide dimensions count as a 4x level.
MPP_TOLERANCE = 0.01
_EPS = 1e-9


@dataclass(frozen=True)
class Region:
    """An axis-aligned rectangle in level-0 pixels: top-left ``(x, y)``, size ``(w, h)``."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        for name in ("x", "y", "w", "h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"region {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.w <= 0 or self.h <= 0:
            raise ValueError(f"region {self} has a non-positive size (w={self.w}, h={self.h})")

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


def parse_region(text: str) -> Region:
    """Parse ``"x,y,w,h"`` (level-0 pixels, as on the command line) into a :class:`Region`."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 4:
            raise ValueError
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"invalid region {text!r}: expected 'x,y,w,h' as four integers "
                         f"(level-0 pixels), e.g. '1000,2000,4096,4096'") from None
    return Region(x, y, w, h)


@dataclass(frozen=True)
class ReadPlan:
    """How to produce a level-0 region at the working resolution.

    Output pixel ``(i, j)`` covers level-0 ``[origin + (i, j) * scale, ... + scale)``, read from
    pyramid ``level``; ``level_origin`` is ``origin`` in pixels of that level. Without
    resampling the output *is* the level's pixel grid, so ``origin`` is snapped to it and the
    output covers the region completely.
    """

    region: Region
    level: int
    level_downsample: float
    scale: float  # level-0 pixels per output pixel
    origin: Tuple[float, float]
    level_origin: Tuple[float, float]
    size: Tuple[int, int]  # output (width, height)
    resample: bool
    mpp: Optional[float]  # output microns per pixel, None if the slide's resolution is unknown

    @property
    def read_scale(self) -> float:
        """Level pixels per output pixel: > 1 shrinks, < 1 enlarges, exactly 1 reads as is."""
        return self.scale / self.level_downsample

    def to_slide(self, x: float, y: float) -> Tuple[float, float]:
        """Output pixel coordinates -> level-0 slide coordinates (scalars or numpy arrays)."""
        return self.origin[0] + x * self.scale, self.origin[1] + y * self.scale

    def from_slide(self, x0: float, y0: float) -> Tuple[float, float]:
        """Level-0 slide coordinates -> output pixel coordinates."""
        return (x0 - self.origin[0]) / self.scale, (y0 - self.origin[1]) / self.scale


def mean_mpp(reader: SlideReader) -> Optional[float]:
    return None if reader.mpp is None else (reader.mpp[0] + reader.mpp[1]) / 2.0


def _check_region(reader: SlideReader, region: Region, allow_partial: bool) -> None:
    w0, h0 = reader.dimensions
    inside = region.x >= 0 and region.y >= 0 and region.right <= w0 and region.bottom <= h0
    if inside:
        return
    overlaps = region.x < w0 and region.y < h0 and region.right > 0 and region.bottom > 0
    where = (f"{reader.path}: region x,y,w,h = {region} (level-0 pixels) {{}} the slide, "
             f"which is {w0} x {h0} pixels")
    if not overlaps:
        raise ValueError(where.format("lies entirely outside"))
    if not allow_partial:
        raise ValueError(where.format("extends beyond") + "; use --allow-partial (allow_partial=True) to pad the "
                         "outside with white")


def _choose_level(reader: SlideReader, scale: float, tolerance: float) -> int:
    """The coarsest level that is still at least as fine as ``scale`` (never upsample needlessly)."""
    usable = [i for i, ds in enumerate(reader.level_downsamples) if ds <= scale * (1.0 + tolerance)]
    if not usable:  # the target is finer than level 0: enlarge level 0
        return int(np.argmin(reader.level_downsamples))
    return max(usable, key=lambda i: reader.level_downsamples[i])


def plan_read(reader: SlideReader, region: Optional[Region] = None, target_mpp: Optional[float] = None,
              level: Optional[int] = None, *, allow_partial: bool = False,
              tolerance: float = MPP_TOLERANCE) -> ReadPlan:
    """Plan reading ``region`` (default: the whole slide) at ``target_mpp`` and/or from ``level``.

    - ``target_mpp`` only: read the coarsest level whose resolution is at least ``target_mpp``
      and resample it to exactly ``target_mpp`` (within ``tolerance``, the level is used as is).
    - ``level`` only: the output is that level's pixel grid.
    - both: read ``level`` and resample it to ``target_mpp``.
    - neither: level 0 as is.
    """
    if region is None:
        region = Region(0, 0, *reader.dimensions)
    _check_region(reader, region, allow_partial)
    if level is not None:
        level = reader.check_level(level)
    mpp0 = mean_mpp(reader)
    if target_mpp is not None:
        try:
            target = float(target_mpp)
        except (TypeError, ValueError):
            target = float("nan")
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"{reader.path}: target resolution must be a positive number of microns per "
                             f"pixel (--mpp, target_mpp), got {target_mpp!r}")
        if mpp0 is None:
            raise ValueError(f"{reader.path}: the slide does not record its resolution (microns per pixel), "
                             f"so a target resolution of {target_mpp} um/px cannot be planned; give the "
                             f"slide's resolution (--slide-mpp; open_slide(path, mpp=...) or "
                             f"segment_file(slide_mpp=...)) or choose a pyramid level (--level, level=)")
        scale = target / mpp0
        if level is None:
            level = _choose_level(reader, scale, tolerance)
        resample = abs(scale / reader.level_downsamples[level] - 1.0) > tolerance
    else:
        level = 0 if level is None else level
        resample = False
    ds = reader.level_downsamples[level]
    if resample:
        level_origin = (region.x / ds, region.y / ds)
        origin = (float(region.x), float(region.y))
        size = (max(1, round(region.w / scale)), max(1, round(region.h / scale)))
    else:
        scale = ds
        lx, ly = math.floor(region.x / ds + _EPS), math.floor(region.y / ds + _EPS)
        rx, ry = math.ceil(region.right / ds - _EPS), math.ceil(region.bottom / ds - _EPS)
        level_origin = (float(lx), float(ly))
        origin = (lx * ds, ly * ds)
        size = (max(1, rx - lx), max(1, ry - ly))
    return ReadPlan(region=region, level=level, level_downsample=ds, scale=scale, origin=origin,
                    level_origin=level_origin, size=size, resample=resample,
                    mpp=None if mpp0 is None else mpp0 * scale)


class RegionSource:
    """A planned region presented as a virtual RGB image in output (working-resolution) pixels.

    ``read(x, y, w, h)`` returns any window of it, decoding only the source tiles it needs;
    windows read separately agree with one whole read (exactly without resampling, to within
    rounding with it), so tiled inference has no seams. Pixels outside the virtual image, and
    outside the slide when the region was allowed to overhang it, are white.
    """

    def __init__(self, reader: SlideReader, plan: ReadPlan) -> None:
        self.reader = reader
        self.plan = plan

    @classmethod
    def open(cls, reader: SlideReader, region: Optional[Region] = None, target_mpp: Optional[float] = None,
             level: Optional[int] = None, *, allow_partial: bool = False) -> "RegionSource":
        """:func:`plan_read` and wrap the result."""
        return cls(reader, plan_read(reader, region, target_mpp, level, allow_partial=allow_partial))

    @property
    def size(self) -> Tuple[int, int]:
        """Output ``(width, height)``."""
        return self.plan.size

    @property
    def width(self) -> int:
        return self.plan.size[0]

    @property
    def height(self) -> int:
        return self.plan.size[1]

    @property
    def origin(self) -> Tuple[float, float]:
        """Level-0 coordinates of the top-left corner of output pixel (0, 0)."""
        return self.plan.origin

    @property
    def scale(self) -> float:
        """Level-0 pixels per output pixel."""
        return self.plan.scale

    @property
    def mpp(self) -> Optional[float]:
        return self.plan.mpp

    def to_slide(self, x: float, y: float) -> Tuple[float, float]:
        """Output pixel coordinates -> level-0 slide coordinates."""
        return self.plan.to_slide(x, y)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``(h, w, 3)`` uint8 RGB of the virtual image with top-left output pixel ``(x, y)``."""
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.reader.path}: window size must be positive, got w={w}, h={h}")
        width, height = self.size
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        out = white(h, w)
        if x1 <= x0 or y1 <= y0:
            return out
        plan, (ox, oy) = self.plan, self.plan.level_origin
        if not plan.resample:
            tile = self.reader.read_level(int(ox) + x0, int(oy) + y0, x1 - x0, y1 - y0, plan.level)
        else:
            step = plan.read_scale
            sx0, sx1 = source_span(ox, step, x0, x1)
            sy0, sy1 = source_span(oy, step, y0, y1)
            src = self.reader.read_level(sx0, sy0, sx1 - sx0, sy1 - sy0, plan.level)
            tile = resample_window(src, (sx0, sy0), (ox, oy), step, (x0, y0, x1, y1))
        out[y0 - y:y1 - y, x0 - x:x1 - x] = tile
        return out

    def read_all(self) -> np.ndarray:
        """The whole virtual image (only sensible for regions that fit in memory)."""
        return self.read(0, 0, *self.size)
