"""Cells as QuPath detections: one GeoJSON Feature per cell, streamed as cells are decided.

Feature layout (what QuPath 0.4 / 0.5 read with *File > Import objects* or drag & drop)::

    {"type": "Feature", "id": "<uuid>",
     "geometry": {"type": "Polygon", "coordinates": [...]},
     "properties": {"objectType": "detection",
                    "classification": {"name": "Lymphocyte", "color": [r, g, b]},
                    "measurements": {"Cell ID": 17, "Score": 0.93, "Area µm^2": 41.5,
                                     "Centroid X µm": 1234.5, "Centroid Y µm": 987.25}}}

* ``objectType: detection``: QuPath's light-weight objects, meant for hundreds of thousands of
  cells (annotations are heavy, editable regions). ``cell`` would need a nucleus geometry too.
* ``measurements`` as an object (name -> number): what QuPath >= 0.4 writes; its reader accepts
  this and the older list of ``{"name", "value"}``. Names follow QuPath's own ("Area µm^2",
  "Centroid X µm"); without a known pixel size they are in level-0 pixels ("Area px^2",
  "Centroid X px"). Centroids are those of the cell's pixels, i.e. of its polygon.
* ``id``: QuPath keeps only UUIDs (other ids are silently replaced), so each cell's UUID is a
  fixed per-ROI prefix followed by the cell id in its last 8 hex digits; the integer id is also
  the "Cell ID" measurement, the value in the label TIFF and the ``id`` column of the table.
* Geometry: the pixel-exact outline traced by :func:`uniseg.export.geojson.trace_polygons`,
  in slide (level-0) pixels (``origin + scale * corner``), exterior rings counter-clockwise. A
  cell whose pixels are not edge-connected becomes a MultiPolygon, so the geometry's area is
  always the cell's pixel area.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import BinaryIO, List, Optional, Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon

from ..base import ExportContext, PathLike, PendingFile
from ..geojson import orient_polygons, trace_polygons
from .base import CellBatch, CellSink, slide_centroids

__all__ = ["CellGeoJsonSink", "cell_outlines", "cell_uuid"]


def cell_uuid(prefix: uuid.UUID, cell_id: int) -> str:
    """The QuPath object id of cell ``cell_id``: ``prefix`` with its low 32 bits replaced by the id."""
    return str(uuid.UUID(int=(prefix.int & ~0xFFFFFFFF) | int(cell_id)))


def _roi_uuid(ctx: ExportContext) -> uuid.UUID:
    """Deterministic per ROI (same inputs, same file); random-looking across ROIs and slides' regions."""
    key = json.dumps({"size": [ctx.width, ctx.height], **ctx.metadata()}, sort_keys=True)
    return uuid.uuid5(uuid.NAMESPACE_URL, "uniseg-cells:" + key)


def cell_outlines(masks: Sequence[np.ndarray], canvas_pixels: int = 1 << 20) -> np.ndarray:
    """Pixel-exact outline of each mask in its own frame: a Polygon, or a MultiPolygon when its
    pixels are not edge-connected (and an empty Polygon for an empty mask).

    Tracing one mask at a time costs about a millisecond of fixed overhead, more than the tracing
    itself for a cell-sized mask. So masks are laid side by side on shared canvases of about
    ``canvas_pixels`` pixels, one column of background between neighbours (outlines are
    edge-connected, so masks never merge), traced with one :func:`trace_polygons` call per
    canvas, and each polygon is returned to the mask whose slot holds it.
    """
    result = np.empty(len(masks), dtype=object)
    start = 0
    while start < len(masks):
        stop, width, height = start, 0, 0
        while stop < len(masks) and (stop == start or (width + masks[stop].shape[1] + 1) *
                                     max(height, masks[stop].shape[0]) <= canvas_pixels):
            width += masks[stop].shape[1] + 1
            height = max(height, masks[stop].shape[0])
            stop += 1
        canvas = np.zeros((height, width), np.uint8)
        slots = np.cumsum([0] + [m.shape[1] + 1 for m in masks[start:stop]])
        for k, mask in enumerate(masks[start:stop]):
            canvas[:mask.shape[0], slots[k]:slots[k] + mask.shape[1]] = mask
        polygons = np.asarray(trace_polygons(canvas), dtype=object)
        pieces: List[List[Polygon]] = [[] for _ in range(stop - start)]
        if len(polygons):
            slot_of = np.searchsorted(slots, shapely.bounds(polygons)[:, 0], side="right") - 1
            # back to each mask's own frame: subtract the slot's left edge
            coords, owner = shapely.get_coordinates(polygons, return_index=True)
            coords[:, 0] -= slots[slot_of][owner]
            polygons = shapely.set_coordinates(polygons, coords)
            for polygon, slot in zip(polygons.tolist(), slot_of.tolist()):
                pieces[slot].append(polygon)
        for k, parts in enumerate(pieces):
            result[start + k] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts) if parts else Polygon()
        start = stop
    return result


class CellGeoJsonSink(CellSink):
    """Write every kept cell as a QuPath detection (see the module docstring).

    Args:
        path: output file (``.geojson`` or ``.json``).
    """

    def __init__(self, path: PathLike):
        super().__init__()
        self.path = Path(path)
        if self.path.suffix.lower() not in (".geojson", ".json"):
            raise ValueError(f"{self.path}: CellGeoJsonSink writes .geojson/.json files")
        self._file: Optional[PendingFile] = None
        self._fh: Optional[BinaryIO] = None
        self._count = 0

    @property
    def num_features(self) -> int:
        return self._count

    def _open(self, ctx: ExportContext) -> None:
        self._classification = [
            json.dumps({"name": name, "color": list(color)}, ensure_ascii=False)
            for name, color in zip(ctx.classes, ctx.palette)]
        self._prefix = _roi_uuid(ctx)
        if ctx.mpp is None:
            self._unit, self._per_level0_px, self._area_per_px = "px", 1.0, ctx.scale ** 2
        else:  # microns per level-0 pixel = microns per output pixel / level-0 pixels per output pixel
            self._unit, self._per_level0_px, self._area_per_px = "µm", ctx.mpp / ctx.scale, ctx.mpp ** 2
        self._file = PendingFile(self.path)
        self._fh = open(self._file.tmp, "wb")
        self._fh.write(b'{"type":"FeatureCollection","features":[\n')

    def _write_cells(self, cells: CellBatch) -> None:
        geometries = self._geometries(cells)
        centroids = slide_centroids(cells, self.ctx) * self._per_level0_px
        area_name = "Area µm^2" if self._unit == "µm" else "Area px^2"
        parts = []
        for k, geometry in enumerate(shapely.to_geojson(geometries).tolist()):
            measurements = {
                "Cell ID": int(cells.ids[k]),
                "Score": round(float(cells.scores[k]), 4),
                area_name: float(cells.areas[k]) * self._area_per_px,
                f"Centroid X {self._unit}": float(centroids[k, 0]),
                f"Centroid Y {self._unit}": float(centroids[k, 1]),
            }
            parts.append(
                '{"type":"Feature","id":"' + cell_uuid(self._prefix, cells.ids[k]) + '","geometry":' + geometry
                + ',"properties":{"objectType":"detection","classification":'
                + self._classification[cells.labels[k]] + ',"measurements":'
                + json.dumps(measurements, ensure_ascii=False) + "}}")
        self._fh.write(((",\n" if self._count else "") + ",\n".join(parts)).encode("utf-8"))
        self._count += len(parts)

    def _geometries(self, cells: CellBatch) -> np.ndarray:
        """Each cell's outline in slide coordinates (traced and transformed in bulk)."""
        geometries = cell_outlines(cells.masks)
        coords, owner = shapely.get_coordinates(geometries, return_index=True)
        (ox, oy), scale = self.ctx.origin, self.ctx.scale
        offset = np.stack([ox + scale * cells.boxes[:, 1], oy + scale * cells.boxes[:, 0]], axis=1)
        geometries = shapely.set_coordinates(geometries, coords * scale + offset[owner])
        return orient_polygons(geometries)  # exterior CCW, holes CW (RFC 7946)

    def _finish(self) -> List[PendingFile]:
        self._fh.write(b"\n]}\n")
        self._fh.close()
        return [self._file]

    def _abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._file is not None:
            self._file.discard()
