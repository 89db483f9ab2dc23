"""Tissue masks the user draws: a binary image, or GeoJSON regions (QuPath annotations).

Either replaces :func:`~uniseg.inference.tissue.detect_tissue` when the user knows better where to
segment (a pathologist's annotation, a mask from another tool, a slide with pen marks). Both give a
:class:`~uniseg.inference.tissue.TissueMask` on the slide's level-0 grid, so window selection and
the thumbnail treat them like a detected mask.

* Image: any size, stretched over the slide's level-0 extent; non-zero pixels (in any channel of
  an RGB image; palette *indices*, not colours) are regions to segment. Its aspect ratio must match
  the slide's: a mask of another slide, or of a region, would otherwise be stretched silently.
* GeoJSON: Polygon / MultiPolygon features in level-0 pixel coordinates, as QuPath exports
  annotations (a FeatureCollection, a list of features, one feature or a bare geometry). They are
  rasterised at the detection mask's resolution; every mask pixel a polygon touches is inside,
  so a region smaller than a mask pixel still selects the windows it lies in. Other geometry
  types (points, lines) are refused rather than dropped: they have no area to segment.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from ..io.slide import SlideReader
from ..utils.imageio import ImageReadError, open_image, read_label
from ..utils.typing_utils import PathLike
from .tissue import DEFAULT_MASK_MPP, DEFAULT_MAX_SIDE, TissueMask, mask_downsample

__all__ = ["tissue_from_image", "tissue_from_geojson", "load_tissue_mask"]

# Tolerated mismatch between the mask's and the slide's aspect ratio: one mask pixel of rounding,
# or 1% (masks exported at a rounded downsample).
_ASPECT_TOLERANCE = 0.01
# Fixed-point bits for cv2.fillPoly: polygon vertices keep 1/256 of a mask pixel.
_SHIFT = 8


def load_tissue_mask(path: PathLike, reader: SlideReader, target_mpp: Optional[float] = DEFAULT_MASK_MPP,
                     max_side: int = DEFAULT_MAX_SIDE) -> TissueMask:
    """A user mask by suffix: ``.geojson`` / ``.json`` regions, anything else a binary image."""
    if Path(path).suffix.lower() in (".geojson", ".json"):
        return tissue_from_geojson(path, reader, target_mpp, max_side)
    return tissue_from_image(path, reader, max_side)


# ---------------------------------------------------------------------------- binary image
def _read_binary(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with open_image(path, "a binary mask") as im:
            mode = im.mode
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: mask image is too large to read ({exc}); a mask needs no more than a few "
                             f"thousand pixels per side: save it downsampled") from exc
    if mode == "RGB":
        with open_image(path, "a binary mask") as im:
            try:
                return np.asarray(im.convert("RGB")).any(axis=-1)
            except (OSError, ValueError, SyntaxError) as exc:
                raise ImageReadError(f"{path}: cannot be read as a binary mask ({exc})") from exc
    if mode in ("1", "L", "P", "I") or mode.startswith("I;16"):
        return read_label(path) != 0
    raise ImageReadError(f"{path}: a binary mask must be greyscale, bilevel, palette or RGB (non-zero = "
                         f"segment), got Pillow mode {mode}")


def _check_aspect(path: Path, mask_size: tuple, slide_size: tuple) -> None:
    (mw, mh), (w0, h0) = mask_size, slide_size
    expected_h = h0 * mw / w0
    if abs(mh - expected_h) > max(1.0, _ASPECT_TOLERANCE * mh):
        raise ValueError(f"{path}: mask is {mw} x {mh} pixels, whose aspect ratio does not match the slide's "
                         f"{w0} x {h0} pixels (level 0); a mask must cover the whole slide")


def _any_pool(mask: np.ndarray, factor: int) -> np.ndarray:
    """Shrink by an integer factor; a block is inside when any of its pixels is (nothing drawn is lost)."""
    h, w = mask.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(mask, ((0, ph), (0, pw)))
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).any(axis=(1, 3))


def tissue_from_image(path: PathLike, reader: SlideReader, max_side: int = DEFAULT_MAX_SIDE) -> TissueMask:
    """A binary mask image stretched over the slide's level-0 extent (see the module doc).

    Masks larger than ``max_side`` on their long side are shrunk by an integer factor, keeping
    every block that has any masked pixel.
    """
    path = Path(path)
    mask = _read_binary(path)
    h, w = mask.shape
    w0, h0 = reader.dimensions
    _check_aspect(path, (w, h), (w0, h0))
    factor = max(1, math.ceil(max(h, w) / max_side))
    if factor > 1:
        mask = _any_pool(mask, factor)
    scale = (w0 / w * factor, h0 / h * factor)
    return TissueMask(mask=mask, origin=(0.0, 0.0), scale=scale, mpp=reader.mpp, source=f"image: {path}")


# ---------------------------------------------------------------------------- GeoJSON
def _geometries(doc: object, path: Path) -> Iterator[tuple]:
    """(label, geometry dict) for every feature or bare geometry of a GeoJSON document."""
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        items = doc.get("features")
        if not isinstance(items, list):
            raise ValueError(f"{path}: FeatureCollection without a 'features' list")
    elif isinstance(doc, list):
        items = doc
    else:
        items = [doc]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: feature {index} is not a JSON object")
        geometry = item.get("geometry") if item.get("type") == "Feature" else item
        if not isinstance(geometry, dict):
            raise ValueError(f"{path}: feature {index} has no geometry")
        yield f"feature {index}", geometry


def _polygons(path: Path) -> List:
    """The polygons of a GeoJSON file, validated (shapely), in level-0 pixel coordinates."""
    import shapely.geometry
    from shapely.validation import explain_validity

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (GeoJSON tissue mask)")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as GeoJSON ({exc})") from exc
    polygons = []
    for label, geometry in _geometries(doc, path):
        kind = geometry.get("type")
        if kind not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            raise ValueError(f"{path}: {label} is a {kind}; a tissue mask needs Polygon or MultiPolygon regions")
        try:
            shape = shapely.geometry.shape(geometry)
        except Exception as exc:  # shapely raises several types for malformed coordinates
            raise ValueError(f"{path}: {label} has invalid coordinates ({exc})") from exc
        parts = getattr(shape, "geoms", [shape])
        for part in parts:
            if part.geom_type not in ("Polygon", "MultiPolygon"):
                raise ValueError(f"{path}: {label} contains a {part.geom_type}; a tissue mask needs Polygon or "
                                 f"MultiPolygon regions")
            if not part.is_valid:
                raise ValueError(f"{path}: {label} is not a valid polygon ({explain_validity(part)})")
            if not part.is_empty:
                polygons.extend(getattr(part, "geoms", [part]))
    if not polygons:
        raise ValueError(f"{path}: contains no polygons; a tissue mask needs Polygon or MultiPolygon regions")
    return polygons


def _fixed_point(ring, scale: tuple, offset: tuple) -> np.ndarray:
    """Level-0 ring -> cv2 fixed-point vertices on a canvas whose pixel (0, 0) is mask pixel ``offset``
    (the mask starts at level-0 (0, 0) and has ``scale`` level-0 pixels per pixel).

    cv2 puts integer coordinates at pixel centres, so mask pixel ``j`` spans ``[j - 0.5, j + 0.5)``.
    """
    xy = np.asarray(ring.coords, np.float64)[:, :2]
    u = xy[:, 0] / scale[0] - 0.5 - offset[0]
    v = xy[:, 1] / scale[1] - 0.5 - offset[1]
    return np.round(np.stack([u, v], axis=1) * (1 << _SHIFT)).astype(np.int32)


def tissue_from_geojson(path: PathLike, reader: SlideReader, target_mpp: Optional[float] = DEFAULT_MASK_MPP,
                        max_side: int = DEFAULT_MAX_SIDE) -> TissueMask:
    """GeoJSON polygons (level-0 pixels) rasterised at :func:`mask_downsample` (see the module doc)."""
    import cv2

    path = Path(path)
    polygons = _polygons(path)
    w0, h0 = reader.dimensions
    downsample = mask_downsample(reader, target_mpp, max_side)
    w, h = max(1, math.ceil(w0 / downsample)), max(1, math.ceil(h0 / downsample))
    scale = (w0 / w, h0 / h)
    mask = np.zeros((h, w), np.uint8)
    for polygon in polygons:
        # Each polygon on its own canvas over its bounding box: its holes must not cut into another polygon.
        minx, miny, maxx, maxy = polygon.bounds
        j0, i0 = max(0, math.floor(minx / scale[0]) - 1), max(0, math.floor(miny / scale[1]) - 1)
        j1, i1 = min(w, math.ceil(maxx / scale[0]) + 1), min(h, math.ceil(maxy / scale[1]) + 1)
        if j1 <= j0 or i1 <= i0:
            continue  # entirely outside the slide
        canvas = np.zeros((i1 - i0, j1 - j0), np.uint8)
        cv2.fillPoly(canvas, [_fixed_point(polygon.exterior, scale, (j0, i0))], 1, cv2.LINE_8, _SHIFT)
        holes = [_fixed_point(r, scale, (j0, i0)) for r in polygon.interiors]
        if holes:
            cv2.fillPoly(canvas, holes, 0, cv2.LINE_8, _SHIFT)
            cv2.polylines(canvas, holes, True, 1, 1, cv2.LINE_8, _SHIFT)  # pixels a hole's edge crosses stay in
        mask[i0:i1, j0:j1] |= canvas
    if not mask.any():
        raise ValueError(f"{path}: no polygon lies inside the slide, which is {w0} x {h0} pixels (level 0); "
                         f"the coordinates must be level-0 pixels of this slide")
    return TissueMask(mask=mask.astype(bool), origin=(0.0, 0.0), scale=scale, mpp=reader.mpp,
                      source=f"geojson: {path}")
