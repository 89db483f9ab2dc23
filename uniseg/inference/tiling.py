"""Where the windows of sliding-window inference go, and how their predictions are blended.

Window positions follow mmseg's ``slide_inference`` exactly (start at ``i * stride``, the last window
pushed back inside the image), so that with the uniform window uniseg's streamed result equals
mmseg's. Tapered windows (cosine, gaussian) down-weight window borders, where a model sees the least
context, and remove the seams a uniform average leaves between windows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np

__all__ = ["axis_starts", "TileGrid", "blend_window", "WINDOWS", "DEFAULT_WINDOW"]

WINDOWS = ("uniform", "cosine", "gaussian")

#: The blending window of every entry point (``tools/infer.py``, ``segment_file``,
#: ``SlidingWindowInferencer``). Cosine, because a window's predictions are least reliable at its
#: borders (the model saw no context beyond them) and a uniform average gives those border pixels
#: as much say as the centre of the neighbouring window, which is what makes seams visible along
#: window edges. A raised-cosine (Hann) taper gives each pixel mostly to the window that sees it
#: centrally, and sums smoothly across overlaps, so no edge of a window stands out. ``uniform``
#: remains available: it equals mmseg's ``slide_inference`` (and so ``tools/test.py``) exactly.
DEFAULT_WINDOW = "cosine"


def axis_starts(length: int, tile: int, stride: int) -> List[int]:
    """Window starts along one axis, as mmseg places them (the last one flush with the end)."""
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    if stride > tile:
        raise ValueError(f"stride {stride} larger than the tile {tile} would leave gaps")
    count = max(length - tile + stride - 1, 0) // stride + 1
    starts = []
    for i in range(count):
        end = min(i * stride + tile, length)
        starts.append(max(end - tile, 0))
    return starts


@dataclass(frozen=True)
class TileGrid:
    """All windows over a ``width`` x ``height`` image, in row-major order."""

    width: int
    height: int
    tile: Tuple[int, int]     # (h, w)
    stride: Tuple[int, int]   # (h, w)

    @property
    def row_starts(self) -> List[int]:
        return axis_starts(self.height, self.tile[0], self.stride[0])

    @property
    def col_starts(self) -> List[int]:
        return axis_starts(self.width, self.tile[1], self.stride[1])

    @property
    def tile_height(self) -> int:
        return min(self.tile[0], self.height)

    @property
    def tile_width(self) -> int:
        return min(self.tile[1], self.width)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def rows(self) -> Iterator[Tuple[int, int]]:
        """(y0, y_end of finished rows once this tile row is accumulated) for each tile row."""
        starts = self.row_starts
        for i, y0 in enumerate(starts):
            finished = starts[i + 1] if i + 1 < len(starts) else self.height
            yield y0, finished


def blend_window(kind: str, height: int, width: int) -> np.ndarray:
    """A (height, width) float32 weight map; all weights are positive so every pixel is covered."""
    if kind not in WINDOWS:
        raise ValueError(f"unknown blending window {kind!r}; choose one of {', '.join(WINDOWS)}")
    if kind == "uniform":
        return np.ones((height, width), np.float32)

    def profile(n: int) -> np.ndarray:
        pos = (np.arange(n, dtype=np.float64) + 0.5) / n  # pixel centres in (0, 1)
        if kind == "cosine":
            w = np.sin(math.pi * pos) ** 2
        else:  # gaussian, sigma = 1/8 of the tile as in nnU-Net-style blending
            w = np.exp(-0.5 * ((pos - 0.5) / 0.125) ** 2)
        return np.maximum(w, 1e-3)  # the image border is covered by one window only: keep it weighted

    return np.outer(profile(height), profile(width)).astype(np.float32)
