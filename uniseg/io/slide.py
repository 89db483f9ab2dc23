"""The slide reader protocol: an image pyramid read by region, in level-0 coordinates.

Whole slides and large regions of interest do not fit in memory as one array, so every input the
large-ROI inferencer sees goes through a :class:`SlideReader`: an image pyramid that can be read
*by region*. Coordinates follow OpenSlide's convention so that a region noted in QuPath/OpenSlide
means the same thing here: ``x, y`` are level-0 pixels, ``w, h`` are pixels of the level read.
"""
from __future__ import annotations

import abc
import math
import operator
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.imageio import ImageReadError
from ..utils.typing_utils import PathLike

Mpp = Tuple[float, float]

__all__ = ["SlideReader", "Mpp", "normalize_mpp", "white"]

# Downsamples are floats; nudge before flooring so 2000 / 2.0 (exactly 1000) never becomes 999.
_FLOOR_EPS = 1e-9


def white(h: int, w: int) -> np.ndarray:
    """A white RGB canvas: the colour of glass, which is what lies outside a slide."""
    return np.full((h, w, 3), 255, np.uint8)


def normalize_mpp(mpp: Union[None, float, Sequence[float]], path: PathLike) -> Optional[Mpp]:
    """Turn a user or metadata value into ``(mpp_x, mpp_y)``, rejecting non-positive numbers."""
    if mpp is None:
        return None
    if isinstance(mpp, (int, float)):
        pair = (float(mpp), float(mpp))
    else:
        values = tuple(float(v) for v in mpp)
        if len(values) != 2:
            raise ValueError(f"{path}: mpp must be a number or an (x, y) pair, got {mpp!r}")
        pair = values
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"{path}: microns per pixel must be positive, got {mpp!r}")
    return pair


class SlideReader(abc.ABC):
    """A read-only image pyramid addressed in level-0 pixels.

    Subclasses describe their levels with :meth:`_init_levels` and implement
    :meth:`_read_inside`, which only ever receives requests that lie fully inside a level; the
    base class validates arguments and pads everything outside the image with white, so tiles
    at the border of a slide need no special handling by callers.
    """

    #: short backend name, used in messages and by :func:`uniseg.io.open_slide`
    backend: str = "?"

    path: Path
    level_count: int
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: Optional[Mpp]

    def _init_levels(self, path: PathLike, dimensions: Sequence[Tuple[int, int]],
                     mpp: Optional[Mpp], downsamples: Optional[Sequence[float]] = None) -> None:
        self.path = Path(path)
        self.level_dimensions = [(int(w), int(h)) for w, h in dimensions]
        if not self.level_dimensions or any(w <= 0 or h <= 0 for w, h in self.level_dimensions):
            raise ImageReadError(f"{self.path}: image has no pixels (levels {self.level_dimensions})")
        self.level_count = len(self.level_dimensions)
        if downsamples is None:
            # OpenSlide's definition: the mean of the width and height ratios to level 0.
            w0, h0 = self.level_dimensions[0]
            downsamples = [(w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions]
        self.level_downsamples = [float(d) for d in downsamples]
        self.mpp = mpp
        self._closed = False

    # ------------------------------------------------------------------ public API
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """Read ``(h, w, 3)`` uint8 RGB pixels of ``level`` whose top-left is level-0 ``(x, y)``.

        Areas outside the image are white. Only the tiles that intersect the request are decoded.
        """
        x, y = self._as_int(x, "x"), self._as_int(y, "y")
        level = self.check_level(level)
        ds = self.level_downsamples[level]
        lx = math.floor(x / ds + _FLOOR_EPS)
        ly = math.floor(y / ds + _FLOOR_EPS)
        return self.read_level(lx, ly, w, h, level)

    def read_level(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """Like :meth:`read_region` but with ``x, y`` in pixels of ``level`` itself.

        Resampling code works in the grid of the level it reads; going through level-0
        coordinates there would round twice.
        """
        x, y = self._as_int(x, "x"), self._as_int(y, "y")
        w, h = self._as_int(w, "w"), self._as_int(h, "h")
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.path}: region size must be positive, got w={w}, h={h}")
        level = self.check_level(level)
        if self._closed:
            raise ValueError(f"{self.path}: reader is closed")
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._read_inside(x, y, w, h, level)
        out = white(h, w)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read_inside(x0, y0, x1 - x0, y1 - y0, level)
        return out

    def close(self) -> None:
        """Release file handles; further reads raise. Safe to call twice."""
        self._closed = True

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, levels={self.level_dimensions}, "
                f"mpp={self.mpp})")

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _read_inside(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        """Return ``(h, w, 3)`` uint8 RGB for a request fully inside ``level`` (level pixels)."""

    def check_level(self, level: int) -> int:
        """Return ``level`` as an int, or raise a ValueError naming the file if it does not exist."""
        level = self._as_int(level, "level")
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} does not exist; the slide has "
                             f"{self.level_count} level(s) (0..{self.level_count - 1})")
        return level

    def _as_int(self, value: object, name: str) -> int:
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"{self.path}: {name} must be an integer, got {value!r}") from None
