"""One row per cell (CSV, or Parquet when pyarrow is installed), appended as cells are decided.

Columns, all positions in slide (level-0) pixel coordinates, QuPath's and OpenSlide's frame:

=====================  ==============================================================
``id``                 the cell id (also the label TIFF's pixel value and the GeoJSON "Cell ID")
``class``              class name; ``class_index`` its 0-based index
``score``              model confidence of the kept prediction
``centroid_x/y``       centroid of the cell's pixels: ``origin + scale * (mean index + 0.5)``
``area_pixels``        pixels of the cell at the working resolution (= pixels in the label TIFF)
``area_um2``           ``area_pixels * mpp**2``; empty (NaN in Parquet) when the pixel size is unknown
``bbox_x0 .. bbox_y1`` outer corners of the cell's pixels (``x1``/``y1`` exclusive edges)
``touches_border``     1 if the cell touched an inner border of its window (possibly truncated)
=====================  ==============================================================
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, TextIO

import numpy as np

from ..base import ExportContext, PathLike, PendingFile
from .base import CellBatch, CellSink, slide_boxes, slide_centroids

__all__ = ["CellTableSink", "TABLE_COLUMNS"]

TABLE_COLUMNS = ("id", "class", "class_index", "score", "centroid_x", "centroid_y", "area_pixels", "area_um2",
                 "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "touches_border")


class CellTableSink(CellSink):
    """Write the per-cell table; the format follows the suffix (``.csv``, or ``.parquet`` with pyarrow)."""

    def __init__(self, path: PathLike):
        super().__init__()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ValueError(f"{self.path}: CellTableSink writes .csv or .parquet files")
        self.format = suffix[1:]
        if self.format == "parquet":
            try:
                import pyarrow  # noqa: F401
                import pyarrow.parquet  # noqa: F401
            except ImportError as exc:
                raise ValueError(f"{self.path}: writing Parquet needs pyarrow, which is not installed "
                                 f"(pip install pyarrow, or write .csv)") from exc
        self._file: Optional[PendingFile] = None
        self._fh: Optional[TextIO] = None
        self._writer = None
        self._count = 0

    @property
    def num_rows(self) -> int:
        return self._count

    def _open(self, ctx: ExportContext) -> None:
        self._file = PendingFile(self.path)
        if self.format == "csv":
            self._fh = open(self._file.tmp, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(TABLE_COLUMNS)

    def columns(self, cells: CellBatch) -> dict:
        """The table's columns for a batch, as arrays (name -> values)."""
        ctx = self.ctx
        centroids = slide_centroids(cells, ctx)
        boxes = slide_boxes(cells, ctx)
        area_um2 = cells.areas * ctx.mpp ** 2 if ctx.mpp is not None else np.full(len(cells), np.nan)
        return {
            "id": cells.ids, "class": np.asarray(ctx.classes, dtype=object)[cells.labels],
            "class_index": cells.labels, "score": cells.scores.astype(np.float64),
            "centroid_x": centroids[:, 0], "centroid_y": centroids[:, 1], "area_pixels": cells.areas,
            "area_um2": area_um2, "bbox_x0": boxes[:, 0], "bbox_y0": boxes[:, 1], "bbox_x1": boxes[:, 2],
            "bbox_y1": boxes[:, 3], "touches_border": cells.touches_border.astype(np.int64),
        }

    def _write_cells(self, cells: CellBatch) -> None:
        columns = self.columns(cells)
        if self.format == "parquet":
            self._write_parquet(columns)
        else:
            text = {
                "score": [f"{v:.4f}" for v in columns["score"]],
                "area_um2": ["" if np.isnan(v) else f"{v:.4f}" for v in columns["area_um2"]],
            }
            for name in ("centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"):
                text[name] = [f"{v:.3f}" for v in columns[name]]
            self._writer.writerows(zip(*(text.get(name, columns[name].tolist()) for name in TABLE_COLUMNS)))
        self._count += len(cells)

    def _write_parquet(self, columns: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self._file.tmp), _parquet_schema())
        self._writer.write_table(pa.table({name: columns[name] for name in TABLE_COLUMNS}, schema=_parquet_schema()))

    def _finish(self) -> List[PendingFile]:
        if self.format == "csv":
            self._fh.close()
            return [self._file]
        if self._writer is None:  # no cell at all: still a valid, empty table
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(str(self._file.tmp), _parquet_schema())
        self._writer.close()
        return [self._file]

    def _abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        elif self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - abort must not raise; the temporary is removed below
                pass
        if self._file is not None:
            self._file.discard()


def _parquet_schema():
    import pyarrow as pa

    floats = {"score", "centroid_x", "centroid_y", "area_um2", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"}
    return pa.schema([(name, pa.string() if name == "class" else pa.float64() if name in floats else pa.int64())
                      for name in TABLE_COLUMNS])
