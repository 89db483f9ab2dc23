"""Streaming export of whole-slide cells (see :mod:`uniseg.inference.cell_stitching`).

:class:`CellGeoJsonSink` (QuPath detections), :class:`CellTableSink` (one row per cell, CSV or
Parquet), :class:`CellLabelTiffSink` (pyramidal ``uint32`` id image); all share the ids and the
:class:`CellSink` life cycle; :func:`build_cell_sinks` creates them from format names.
"""
from .base import CellBatch, CellSink, slide_boxes, slide_centroids
from .build import CELL_SINK_FORMATS, build_cell_sinks
from .geojson import CellGeoJsonSink, cell_uuid
from .table import TABLE_COLUMNS, CellTableSink
from .tiff import CellLabelTiffSink

__all__ = [
    "CellBatch", "CellSink", "slide_boxes", "slide_centroids", "CELL_SINK_FORMATS", "build_cell_sinks",
    "CellGeoJsonSink", "cell_uuid", "TABLE_COLUMNS", "CellTableSink", "CellLabelTiffSink",
]
