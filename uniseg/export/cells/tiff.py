"""The instance-id image as a tiled pyramidal TIFF: ``uint32``, 0 = no cell, ``k`` = cell ``k``.

The ids are those of the cell table and the GeoJSON ("Cell ID"), so a pixel can be traced to its row.
Rows arrive from the stitcher top to bottom once no undecided cell can still touch them, and go
straight to :class:`~uniseg.export.pyramid.StreamingPyramidTiff` (memory: about two tile-high
strips of 4-byte pixels, never the ROI).

Reduced levels use :func:`~uniseg.export.pyramid.reduce_labels_2x`, the 2x2 *mode* with ties to
the top-left pixel. For ids this never invents a value (averaging would create ids of cells that
do not exist, or of unrelated ones), keeps a cell that fills most of a block, and lets background
win where a cell covers a single pixel of it, so small cells vanish gracefully at zoomed-out levels
instead of turning into noise. The function is dtype-generic, so ids above 65535 are preserved.
Level 0 carries a JSON ImageDescription (``"uniseg": "cell_ids"``, class names, palette, slide
origin/scale, mpp) and resolution tags when the pixel size is known.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..base import ExportContext, PathLike, PendingFile
from ..pyramid import StreamingPyramidTiff, normalize_compression, reduce_labels_2x
from ..tiff import TIFF_SUFFIXES
from .base import CellSink

__all__ = ["CellLabelTiffSink"]


class CellLabelTiffSink(CellSink):
    """Write the cell-id image as a tiled, pyramidal ``uint32`` TIFF.

    Args:
        path: output file (``.tif``/``.tiff``).
        tile: tile edge in pixels (multiple of 16).
        levels: pyramid levels including full resolution; ``None`` halves until one tile.
        compression: lossless codec (``'zlib'``, ``'lzw'``, ``'zstd'``, ...).
        bigtiff: ``None`` chooses from the image size.
        maxworkers: compression threads per strip.
    """

    def __init__(self, path: PathLike, tile: int = 512, levels: Optional[int] = None,
                 compression: Optional[str] = "zlib", bigtiff: Optional[bool] = None,
                 maxworkers: Optional[int] = 1):
        super().__init__()
        self.path = Path(path)
        if self.path.suffix.lower() not in TIFF_SUFFIXES:
            raise ValueError(f"{self.path}: CellLabelTiffSink writes {TIFF_SUFFIXES} files")
        self.tile, self.levels, self.bigtiff, self.maxworkers = tile, levels, bigtiff, maxworkers
        self.compression = normalize_compression(compression, str(self.path))
        self._writer: Optional[StreamingPyramidTiff] = None

    def describe(self) -> str:
        return str(self.path)

    def _open(self, ctx: ExportContext) -> None:
        meta = {key: value for key, value in ctx.metadata().items() if key != "ignore_index"}  # ids, not labels
        description = json.dumps({"uniseg": "cell_ids", **meta}, ensure_ascii=True)
        self._writer = StreamingPyramidTiff(
            self.path, ctx.height, ctx.width, reduce=reduce_labels_2x, dtype=np.uint32, tile=self.tile,
            levels=self.levels, compression=self.compression, description=description, mpp=ctx.mpp,
            bigtiff=self.bigtiff, maxworkers=self.maxworkers)
        self._writer.start()

    def _write_band(self, y0: int, ids: np.ndarray) -> None:
        self._writer.write_rows(ids)

    def _finish(self) -> List[PendingFile]:
        self._writer.finish()
        return [self._writer.pending]

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
