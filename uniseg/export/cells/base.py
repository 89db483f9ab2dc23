"""The contract between the whole-slide cell stitcher and the files it produces.

Cells leave the stitcher in two streams, both top to bottom:

* :class:`CellBatch`: cells whose fate is decided (kept, with final pixels and a slide-unique id),
  as soon as no later window can still produce a duplicate of them. Object formats (GeoJSON,
  tables) write them and forget them.
* id bands: full-width ``uint32`` rows of the instance-id image (0 = no cell), handed over only
  once no undecided cell can still touch them. Raster formats (the label TIFF) consume these.

:class:`CellSink` mirrors :class:`uniseg.export.base.MaskSink`'s life cycle: ``open(ctx)``, any
number of ``write_cells`` / ``write_band`` calls, then ``finish()`` (all the writing; returns the
complete temporaries) and ``commit()`` (renames them), or ``close()`` for both, and ``abort()`` on any
error; files appear under their final names only when committed. As for mask sinks, the files that
``finish()`` returns can instead be published together with other outputs by
:func:`uniseg.utils.atomic.publish_together` (what :func:`uniseg.inference.api.segment_file` does).
Geometry and classes come from the same :class:`~uniseg.export.base.ExportContext` as the semantic sinks: coordinates in a batch are ROI
(output) pixels, and each sink maps them to slide coordinates with ``ctx.origin`` / ``ctx.scale``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..base import ExportContext, OutputSink

__all__ = ["CellBatch", "CellSink", "slide_centroids", "slide_boxes"]


@dataclass
class CellBatch:
    """Finished cells, in ROI (output) pixel coordinates.

    Attributes:
        ids: (n,) ``int64`` slide-unique ids (1 .. 2**32 - 1), the values of the id image.
        labels: (n,) ``int64`` 0-based cell class (index into ``ctx.classes``).
        scores: (n,) ``float32`` model confidence.
        boxes: (n, 4) ``int64`` ``(y0, x0, y1, x1)``, half-open pixel ranges of each mask.
        masks: n boolean arrays, mask ``i`` of shape ``(y1 - y0, x1 - x0)`` of box ``i``.
        areas: (n,) ``int64`` pixels of each mask.
        centroids: (n, 2) ``float64`` ``(y, x)`` mean pixel index (pixel ``x`` spans ``[x, x + 1)``,
            so the geometric centroid is ``x + 0.5``).
        touches_border: (n,) ``bool``: the cell touched an inner border of the window that kept
            it (larger than half the overlap, so possibly truncated there).
    """

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    masks: Sequence[np.ndarray]
    areas: np.ndarray
    centroids: np.ndarray
    touches_border: np.ndarray

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, np.int64).reshape(-1)
        n = len(self.ids)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.int64).reshape(-1, 4)
        self.areas = np.asarray(self.areas, np.int64).reshape(-1)
        self.centroids = np.asarray(self.centroids, np.float64).reshape(-1, 2)
        self.touches_border = np.asarray(self.touches_border, bool).reshape(-1)
        self.masks = list(self.masks)
        sizes = {name: len(getattr(self, name)) for name in
                 ("labels", "scores", "boxes", "masks", "areas", "centroids", "touches_border")}
        wrong = {name: size for name, size in sizes.items() if size != n}
        if wrong:
            raise ValueError(f"CellBatch: {n} ids but {wrong}")
        for mask, (y0, x0, y1, x1) in zip(self.masks, self.boxes.tolist()):
            if mask.shape != (y1 - y0, x1 - x0) or mask.dtype != bool:
                raise ValueError(f"CellBatch: a mask of shape {mask.shape} {mask.dtype} does not fill its box "
                                 f"{(y0, x0, y1, x1)} as bool")

    def __len__(self) -> int:
        return len(self.ids)


def slide_centroids(cells: CellBatch, ctx: ExportContext) -> np.ndarray:
    """(n, 2) ``(x, y)`` centroids in slide (level-0) pixels: ``origin + scale * (index + 0.5)``."""
    (ox, oy), scale = ctx.origin, ctx.scale
    return np.stack([ox + scale * (cells.centroids[:, 1] + 0.5), oy + scale * (cells.centroids[:, 0] + 0.5)], axis=1)


def slide_boxes(cells: CellBatch, ctx: ExportContext) -> np.ndarray:
    """(n, 4) ``(x0, y0, x1, y1)`` outer pixel corners of each box in slide (level-0) pixels."""
    (ox, oy), scale = ctx.origin, ctx.scale
    y0, x0, y1, x1 = cells.boxes.T.astype(np.float64)
    return np.stack([ox + scale * x0, oy + scale * y0, ox + scale * x1, oy + scale * y1], axis=1)


class CellSink(OutputSink):
    """One cell output fed by the stitcher (life cycle: :class:`~uniseg.export.base.OutputSink`).

    The template checks what every format relies on (band order and shape, class indices, ids that
    never repeat across batches) so formats implement only ``_open`` / ``_write_cells`` /
    ``_write_band`` / ``_finish`` / ``_abort``. ``write_band`` receives a view into the stitcher's
    buffer: a sink must copy what it keeps.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_id = 0

    def write_cells(self, cells: CellBatch) -> None:
        """Consume finished cells; their ids must exceed every id written before (the stitcher counts up)."""
        self._require("open", "write_cells()")
        if not isinstance(cells, CellBatch):
            raise TypeError(f"{self.describe()}: write_cells() needs a CellBatch, got {type(cells).__name__}")
        if not len(cells):
            return
        where, ctx = self.describe(), self.ctx
        if cells.labels.min() < 0 or cells.labels.max() >= ctx.num_classes:
            raise ValueError(f"{where}: cell classes {np.unique(cells.labels).tolist()} outside the "
                             f"{ctx.num_classes} classes {list(ctx.classes)}")
        if cells.ids[0] <= self._last_id or np.any(np.diff(cells.ids) <= 0) or cells.ids[-1] > 0xFFFFFFFF:
            raise ValueError(f"{where}: cell ids must increase across batches and fit uint32 (last written "
                             f"{self._last_id}, got {cells.ids[:3].tolist()}...)")
        y0, x0, y1, x1 = cells.boxes.T
        if y0.min() < 0 or x0.min() < 0 or y1.max() > ctx.height or x1.max() > ctx.width:
            raise ValueError(f"{where}: cell boxes reach outside the {ctx.width} x {ctx.height} ROI")
        with self._naming_write_errors():
            self._write_cells(cells)
        self._last_id = int(cells.ids[-1])

    def write_band(self, y0: int, ids: np.ndarray) -> None:
        """Consume rows ``y0 .. y0 + ids.shape[0]`` of the ``uint32`` id image (full width, in order)."""
        self._require("open", "write_band()")
        if not isinstance(ids, np.ndarray) or ids.ndim != 2 or ids.dtype != np.uint32:
            raise ValueError(f"{self.describe()}: an id band must be a 2-D uint32 array, got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {getattr(ids, 'shape', '')}")
        self._check_band_rows(y0, *ids.shape)
        with self._naming_write_errors():
            self._write_band(int(y0), ids)
        self._next_row = int(y0) + ids.shape[0]

    # ------------------------------------------------------------------ for subclasses
    def _write_cells(self, cells: CellBatch) -> None:
        """Consume validated cells (object formats)."""

    def _write_band(self, y0: int, ids: np.ndarray) -> None:
        """Consume a validated id band (raster formats)."""
