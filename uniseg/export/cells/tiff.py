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
The file is an OME-TIFF (:mod:`uniseg.export.ome`): physical pixel size when known, and uniseg's JSON
(``"uniseg": "cell_ids"``, class names, palette, slide origin/scale, mpp) in the CommentAnnotation
``uniseg/metadata``; resolution tags carry the pixel size too. No class MapAnnotation: pixel values
are cell ids, not classes.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..base import ExportContext, PathLike
from ..ome import ome_metadata
from ..tiff import PyramidTiffOutput
from .base import CellSink

__all__ = ["CellLabelTiffSink"]


class CellLabelTiffSink(PyramidTiffOutput, CellSink):
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
        self._init_tiff(path, tile, levels, compression, bigtiff, maxworkers)

    def _open(self, ctx: ExportContext) -> None:
        meta = {key: value for key, value in ctx.metadata().items() if key != "ignore_index"}  # ids, not labels
        metadata = ome_metadata(
            name=f"{self.path.name}: cell ids", channel="cell id", uniseg={"uniseg": "cell_ids", **meta},
            description="uniseg cell-id image: pixel value = cell id of the cell table and GeoJSON, 0 = no cell")
        self._start_writer(ctx, metadata, dtype=np.uint32)

    def _write_band(self, y0: int, ids: np.ndarray) -> None:
        self._writer.write_rows(ids)
