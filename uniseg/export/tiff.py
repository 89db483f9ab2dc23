"""Tiled pyramidal (Big)TIFF label mask, the format for ROIs of any size.

Level 0 holds the class index of every output pixel (uint8, ``ignore_index`` where there is no
prediction); reduced levels (factor 2 each, SubIFDs with ``subfiletype=1``) are built with the
label-preserving 2x2 mode of :func:`~uniseg.export.pyramid.reduce_labels_2x`, so zoomed-out views
never show blended, non-existent classes. The image is stored with photometric *palette* and a
ColorMap made from the class palette, so viewers show class colours directly.

The file is an OME-TIFF (:mod:`uniseg.export.ome`): OME-XML in the first IFD with the physical
pixel size (µm) when known, MapAnnotations ``uniseg/classes`` (label value -> class name) and
``uniseg/palette`` (label value -> colour), and uniseg's JSON (class names, palette, ignore index,
the ROI's slide origin/scale, mpp) in the CommentAnnotation ``uniseg/metadata``
(:func:`~uniseg.export.ome.read_uniseg_metadata` reads it back). Resolution tags carry the microns
per pixel too.

Reader compatibility: the reduced levels are SubIFDs of level 0, the pyramid layout of OME-TIFF
(Bio-Formats 6+, hence QuPath) that tifffile also reads as one multi-level series. Readers that
follow only the top-level IFD chain (OpenSlide's generic-TIFF driver, for example) see level 0
alone: the file still opens, tiled and with its mpp, only without fast zoomed-out views.

Streaming and memory behaviour: see :mod:`uniseg.export.pyramid`.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from .base import ExportContext, MaskSink, PathLike, PendingFile
from .ome import CLASSES_NAMESPACE, ome_metadata
from .pyramid import StreamingPyramidTiff, colormap_from_palette, normalize_compression, reduce_labels_2x

__all__ = ["PyramidTiffMaskSink", "PyramidTiffOutput", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff")


class PyramidTiffOutput:
    """What a sink writing one streamed pyramidal TIFF needs: its options, the writer thread, finish and abort.

    Shared by the class-label mask and the cell-id image, which differ only in sample type, colour map
    and OME metadata.
    """

    def _init_tiff(self, path: PathLike, tile: int, levels: Optional[int], compression: Optional[str],
                   bigtiff: Optional[bool], maxworkers: Optional[int]) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in TIFF_SUFFIXES:
            raise ValueError(f"{self.path}: {type(self).__name__} writes {TIFF_SUFFIXES} files")
        self.tile, self.levels, self.bigtiff, self.maxworkers = tile, levels, bigtiff, maxworkers
        self.compression = normalize_compression(compression, str(self.path))  # fail at construction
        self._writer: Optional[StreamingPyramidTiff] = None

    def _start_writer(self, ctx: ExportContext, metadata: dict, **options) -> None:
        self._writer = StreamingPyramidTiff(
            self.path, ctx.height, ctx.width, reduce=reduce_labels_2x, tile=self.tile, levels=self.levels,
            compression=self.compression, ome_metadata=metadata, mpp=ctx.mpp,
            bigtiff=self.bigtiff, maxworkers=self.maxworkers, **options)
        self._writer.start()

    def _finish(self) -> List[PendingFile]:
        self._writer.finish()
        return [self._writer.pending]

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


class PyramidTiffMaskSink(PyramidTiffOutput, MaskSink):
    """Write the label mask as a tiled, pyramidal, palette-coloured TIFF.

    Args:
        path: output file (``.tif``/``.tiff``; Bio-Formats finds the OME-XML by content, so
            ``.ome.tif`` is optional).
        tile: tile edge in pixels (multiple of 16).
        levels: number of pyramid levels including full resolution; ``None`` halves until the
            smallest level fits in one tile.
        compression: lossless codec (``'zlib'``, ``'lzw'``, ``'zstd'``, ``'packbits'``, ``'none'``...).
        bigtiff: ``None`` chooses automatically from the image size.
        maxworkers: compression threads per strip (``None``: tifffile's choice; more than one
            keeps one extra strip in memory).
    """

    def __init__(self, path: PathLike, tile: int = 512, levels: Optional[int] = None,
                 compression: Optional[str] = "zlib", bigtiff: Optional[bool] = None,
                 maxworkers: Optional[int] = 1):
        super().__init__()
        self._init_tiff(path, tile, levels, compression, bigtiff, maxworkers)

    def _open(self, ctx: ExportContext) -> None:
        metadata = ome_metadata(
            name=f"{self.path.name}: class labels", channel="class",
            description=f"uniseg label mask: pixel value = class index (MapAnnotation {CLASSES_NAMESPACE}), "
                        f"{ctx.ignore_index} = no prediction",
            uniseg={"uniseg": "label_mask", **ctx.metadata()}, class_names=ctx.classes, palette=ctx.palette)
        self._start_writer(ctx, metadata, photometric="palette", colormap=colormap_from_palette(ctx.palette))

    def _write_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray],
                    image: Optional[np.ndarray]) -> None:
        self._writer.write_rows(labels)
