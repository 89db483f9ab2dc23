"""Per-class polygons as a GeoJSON FeatureCollection that QuPath imports as annotations.

Output structure (what QuPath >= 0.4 reads with *File > Import objects* or drag & drop)::

    {"type": "FeatureCollection", "features": [
      {"type": "Feature",
       "geometry": {"type": "Polygon", "coordinates": [exterior, hole, ...]},
       "properties": {"objectType": "annotation",
                      "classification": {"name": "Tumor", "color": [230, 159, 0]}}}, ...]}

* **One Feature per connected region** (a Polygon with its holes), not one MultiPolygon per
  class: QuPath turns each Feature into one annotation, so regions can be selected, measured,
  edited and deleted individually, and the file can be written while the ROI streams (a class
  MultiPolygon would have to be complete before anything is written). Regions are
  edge-connected; two regions meeting only at a pixel corner are separate Features. Merging per
  class is one command in QuPath (*Objects > Annotations > Merge selected*).
* **Pixel-edge-exact boundaries**: output pixel (x, y) covers the square [x, x+1] x [y, y+1], and
  every vertex lies on pixel corners, so rasterising the polygons at pixel centres gives back the
  mask exactly (before simplification) and neighbouring classes share edges without gaps.
  Coordinates are slide (level-0) pixels: ``origin + scale * (x, y)``, QuPath's convention.
* Exterior rings are counter-clockwise and holes clockwise (RFC 7946, computed on the
  coordinates as written).

How it scales: each band is vectorised on arrival (OpenCV contour tracing of a 2x nearest-
upsampled mask, whose traced pixels map exactly onto pixel corners; holes from the contour tree;
polygons valid by construction, so large regions with many holes never need a costly repair).
A region that touches neither the top nor the bottom edge of its band is complete and is written
at once to a temporary spool file. Only pieces on a band edge stay in memory; at ``close`` they
are merged per class (clusters of touching pieces found with an STRtree, each united with
``shapely.union_all``). Memory follows the band-crossing polygons, not the ROI size.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from .base import ExportContext, MaskSink, PathLike, PendingFile, labels_present, resolve_class_indices

__all__ = ["GeoJsonSink", "mask_to_polygons", "merge_touching", "orient_polygons", "trace_polygons"]


def _polygon_parts(geom: shapely.Geometry) -> List[Polygon]:
    """Non-empty polygons of any geometry (make_valid may return collections with lines)."""
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty and geom.area > 0 else []
    if hasattr(geom, "geoms"):
        return [part for sub in geom.geoms for part in _polygon_parts(sub)]
    return []


def _make_valid(geometry: shapely.Geometry) -> shapely.Geometry:
    """GEOS repair; the 'structure' method (shapely >= 2.1) is much faster on many holes."""
    try:
        return shapely.make_valid(geometry, method="structure")
    except TypeError:  # shapely 2.0: a single method
        return shapely.make_valid(geometry)


def orient_polygons(polygons: np.ndarray) -> np.ndarray:
    """Counter-clockwise exteriors, clockwise holes, as RFC 7946 asks of GeoJSON (vectorised where shapely
    >= 2.1 allows; one polygon at a time on shapely 2.0)."""
    if hasattr(shapely, "orient_polygons"):
        return shapely.orient_polygons(polygons)
    from shapely.geometry.polygon import orient

    return np.asarray([orient(polygon, 1.0) for polygon in polygons], dtype=object)


def mask_to_polygons(mask: np.ndarray, y_offset: int = 0) -> List[Polygon]:
    """Valid polygons (with holes) whose union is exactly the set of True pixels of ``mask``.

    Coordinates are pixel corners in the mask's frame, shifted down by ``y_offset`` rows. One
    polygon per edge-connected (4-connected) component; components that meet only at a pixel
    corner are separate polygons, as their shared point cannot be part of a valid polygon.
    """
    polygons: List[Polygon] = []
    for polygon in trace_polygons(mask, y_offset):
        if polygon.is_valid:  # always, by construction; kept as a cheap safety net
            polygons.append(polygon)
        else:
            polygons.extend(_polygon_parts(_make_valid(polygon)))
    return polygons


def trace_polygons(mask: np.ndarray, y_offset: int = 0) -> List[Polygon]:
    """Trace the pixel-edge outlines of ``mask`` as polygons (see :func:`mask_to_polygons`).

    How: OpenCV traces the *centres* of boundary pixels, with 8-connectivity for the traced
    value. So the *background* is traced (``mask`` inverted, in a 1-px background frame):
    the foreground is then 4-connected, and the contour tree (``RETR_TREE``) alternates
    background / foreground: contours at odd depth outline foreground components, their children
    outline the background components enclosed by them (the holes).
    The mask is first doubled in size (nearest), so original pixel x covers sub-pixels 2x and
    2x+1. A traced background sub-pixel next to the pixel edge at coordinate e is then either
    2e-1 (before the edge) or 2e (after it); in the frame-padded grid that is c = 2e or 2e+1,
    and ``c // 2 == e`` exactly: every vertex is a pixel corner. Where two foreground pixels
    touch diagonally and are joined elsewhere, the outline visits that corner twice; such rings
    are split into simple loops and the enclosed loops become holes touching the shell at that
    corner, which is valid.

    Rings are processed as whole arrays (one per mask, not one per ring): masks with many small
    regions or holes produce hundreds of thousands of rings.
    """
    h, w = mask.shape
    binary = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).astype(np.uint8)
    inverted = cv2.resize(binary, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)  # exact doubling
    np.bitwise_xor(inverted, 1, out=inverted)
    inverted = cv2.copyMakeBorder(inverted, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=1)
    contours, hierarchy = cv2.findContours(inverted, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or len(contours) < 2:
        return []
    parents = hierarchy[0][:, 3].astype(np.int64)
    depth = np.zeros(len(contours), dtype=np.int64)
    ancestor = parents.copy()
    while (ancestor >= 0).any():
        depth += ancestor >= 0
        ancestor = np.where(ancestor >= 0, parents[ancestor], -1)
    is_shell = depth % 2 == 1
    owner = np.where(is_shell, np.arange(len(contours)), parents)  # polygon (shell contour) of each ring
    owner[depth == 0] = -1  # the frame outline belongs to no polygon

    # all vertices in one array; ring = contour index
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64) // 2
    points[:, 1] += y_offset
    ring_of = np.repeat(np.arange(len(contours)), lengths)
    keep = owner[ring_of] >= 0
    starts = np.cumsum(lengths) - lengths
    previous = np.arange(len(points)) - 1
    previous[starts] = starts + lengths - 1  # cyclic: the first vertex follows the last
    keep &= np.any(points != points[previous], axis=1)  # collapsed diagonal steps repeat a vertex
    points, ring_of = points[keep], ring_of[keep]
    lengths = np.bincount(ring_of, minlength=len(contours))
    starts = np.cumsum(lengths) - lengths
    following = np.arange(len(points)) + 1
    ends = starts + lengths
    has_points = lengths > 0
    following[ends[has_points] - 1] = starts[has_points]
    cross = points[:, 0] * points[following, 1] - points[following, 0] * points[:, 1]
    twice_area = np.bincount(ring_of, weights=cross, minlength=len(contours))
    # rings that visit a vertex twice need splitting (rare)
    order = np.lexsort((points[:, 1], points[:, 0], ring_of))
    ordered = np.column_stack([ring_of, points])[order]
    repeats = np.all(ordered[1:] == ordered[:-1], axis=1)
    needs_split = np.zeros(len(contours), dtype=bool)
    needs_split[ordered[1:][repeats, 0]] = True

    simple = (lengths >= 3) & (twice_area != 0) & ~needs_split
    ring_ids = [np.flatnonzero(simple)]
    ring_owner = [owner[simple]]
    ring_kind = [np.where(is_shell[simple], 0, 1)]  # 0 shell, 1 hole: shells sort first
    extra_points: List[np.ndarray] = []
    irregular: Dict[int, List[Polygon]] = {}
    next_id = len(contours)
    for ring in np.flatnonzero(needs_split & (lengths >= 3)).tolist():
        loops = _simple_loops(points[starts[ring]:ends[ring]])
        if not loops:
            continue
        areas = [_twice_area(loop) for loop in loops]
        main = int(np.argmax(np.abs(areas)))
        for k, (loop, area) in enumerate(zip(loops, areas)):
            same_sense = (area > 0) == (areas[main] > 0)
            if is_shell[ring] and k != main and same_sense or not is_shell[ring] and not same_sense:
                # not produced by the tracing rules above; handled by GEOS below, just in case
                irregular.setdefault(int(owner[ring]), []).append(Polygon(loop))
                continue
            extra_points.append(loop)
            ring_ids.append(np.array([next_id]))
            ring_owner.append(np.array([owner[ring]]))
            ring_kind.append(np.array([0 if is_shell[ring] and k == main else 1]))
            next_id += 1

    ids, owners, kinds = (np.concatenate(a) for a in (ring_ids, ring_owner, ring_kind))
    has_shell = np.zeros(len(contours), dtype=bool)
    has_shell[owners[kinds == 0]] = True
    valid = has_shell[owners]
    ids, owners, kinds = ids[valid], owners[valid], kinds[valid]
    if not len(ids):
        return []
    # coordinates of the chosen rings, grouped by polygon with its shell first
    rank = np.lexsort((kinds, owners))
    ids, owners = ids[rank], owners[rank]
    if extra_points:
        points = np.concatenate([points] + extra_points)
        ring_of = np.concatenate([ring_of] + [np.full(len(p), next_id - len(extra_points) + i)
                                              for i, p in enumerate(extra_points)])
    position = np.full(next_id, -1, dtype=np.int64)
    position[ids] = np.arange(len(ids))
    chosen = position[ring_of] >= 0
    point_order = np.argsort(position[ring_of][chosen], kind="stable")
    coords = points[chosen][point_order].astype(np.float64)
    rings = shapely.linearrings(coords, indices=position[ring_of][chosen][point_order])
    polygon_index = np.cumsum(np.r_[True, owners[1:] != owners[:-1]]) - 1
    polygons = list(shapely.polygons(rings, indices=polygon_index))
    if irregular:
        first_owner = owners[np.r_[True, owners[1:] != owners[:-1]]].tolist()
        for k, polygon_owner in enumerate(first_owner):
            if polygon_owner in irregular:
                merged = shapely.MultiPolygon([polygons[k]] + irregular.pop(polygon_owner))
                polygons[k] = _make_valid(merged)
        polygons = [part for polygon in polygons for part in _polygon_parts(polygon)]
    return polygons


def _twice_area(ring: np.ndarray) -> int:
    """Twice the signed (shoelace) area of a closed ring given without its closing vertex."""
    x, y = ring[:, 0], ring[:, 1]
    return int(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _simple_loops(ring: np.ndarray) -> List[np.ndarray]:
    """Split a ring (no closing vertex, no consecutive duplicates) into simple loops.

    Walks the ring keeping the open path on a stack; returning to a vertex on the stack closes
    the loop since that vertex. Loops without area are dropped.
    """
    loops, stack, position = [], [], {}
    for point in ring.tolist():
        key = (point[0], point[1])
        if key in position:
            start = position[key]
            loops.append(np.array(stack[start:], dtype=np.int64))
            for dropped in stack[start + 1:]:
                del position[(dropped[0], dropped[1])]
            del stack[start + 1:]
        else:
            position[key] = len(stack)
            stack.append(point)
    loops.append(np.array(stack, dtype=np.int64))
    return [loop for loop in loops if len(loop) >= 3 and _twice_area(loop)]


def merge_touching(pieces: Sequence[Polygon]) -> List[Polygon]:
    """Union the pieces that touch each other; return the resulting regions.

    One ``union_all`` over all pieces would also merge the many pieces that touch nothing
    (slow: every overlay step grows); finding clusters of touching pieces first with an STRtree
    and uniting only inside each cluster keeps the work local.
    """
    if len(pieces) < 2:
        return list(pieces)
    tree = shapely.STRtree(pieces)
    first, second = tree.query(pieces, predicate="intersects")
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(first.tolist(), second.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    clusters: Dict[int, List[Polygon]] = {}
    for i, piece in enumerate(pieces):
        clusters.setdefault(root(i), []).append(piece)
    regions: List[Polygon] = []
    for members in clusters.values():
        regions.extend(members if len(members) == 1 else _polygon_parts(shapely.union_all(members)))
    return regions


class GeoJsonSink(MaskSink):
    """Vectorise the label mask into QuPath-compatible GeoJSON annotations.

    Args:
        path: output file (``.geojson`` or ``.json``).
        simplify_tolerance: Douglas-Peucker tolerance in *output* pixels (0 = exact pixel
            outlines), topology-preserving per region. Neighbouring regions are simplified
            independently, so their shared edges may no longer coincide exactly.
        min_area: drop regions smaller than this many *output* pixels (area with holes removed,
            measured before simplification).
        classes_to_export: names or indices; default every class except ``background_index``.
        background_index: class that is not exported by default (``None``: export all classes).
        chunk_pixels: vectorise at most this many pixels at a time (bounds the temporary
            upsampled masks, about 8 bytes per pixel); wide bands are split into row chunks.
    """

    def __init__(self, path: PathLike, simplify_tolerance: float = 0.0, min_area: float = 0,
                 classes_to_export: Optional[Sequence[Union[int, str]]] = None,
                 background_index: Optional[int] = 0, chunk_pixels: int = 1 << 22):
        super().__init__()
        self.path = Path(path)
        if self.path.suffix.lower() not in (".geojson", ".json"):
            raise ValueError(f"{self.path}: GeoJsonSink writes .geojson/.json files")
        if not simplify_tolerance >= 0:  # also refuses NaN
            raise ValueError(f"GeoJSON simplify_tolerance (--simplify) must be >= 0 pixels, got {simplify_tolerance}")
        if not min_area >= 0:
            raise ValueError(f"GeoJSON min_area must be >= 0 pixels, got {min_area}")
        self.simplify_tolerance = float(simplify_tolerance)
        self.min_area = float(min_area)
        self.classes_to_export = classes_to_export
        self.background_index = background_index
        self.chunk_pixels = int(chunk_pixels)
        self._file: Optional[PendingFile] = None
        self._spool: Optional[BinaryIO] = None
        self._pending: Dict[int, List[Polygon]] = {}
        self._properties: Dict[int, str] = {}
        self._count = 0

    @property
    def num_features(self) -> int:
        """Features written so far (all of them after ``close``)."""
        return self._count

    # ------------------------------------------------------------------ life cycle
    def _open(self, ctx: ExportContext) -> None:
        if self.background_index is not None and not 0 <= self.background_index < ctx.num_classes:
            raise ValueError(f"{self.path}: background_index {self.background_index} is not a class index")
        exclude = [] if self.background_index is None else [self.background_index]
        self._classes = resolve_class_indices(self.classes_to_export, ctx, exclude, str(self.path))
        self._export = np.zeros(256, dtype=bool)
        self._export[self._classes] = True
        for index in self._classes:
            self._pending[index] = []
            # properties are the same for every region of a class: serialise once
            self._properties[index] = json.dumps({
                "objectType": "annotation",
                "classification": {"name": ctx.classes[index], "color": list(ctx.palette[index])},
            }, ensure_ascii=False)
        self._file = PendingFile(self.path)
        self._spool = tempfile.TemporaryFile(prefix=".uniseg-geojson-", dir=self.path.parent)

    def _write_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray],
                    image: Optional[np.ndarray]) -> None:
        rows = max(1, self.chunk_pixels // labels.shape[1])
        for start in range(0, labels.shape[0], rows):
            self._vectorise(y0 + start, labels[start:start + rows])

    def _vectorise(self, top: int, labels: np.ndarray) -> None:
        bottom = top + labels.shape[0]
        present = np.flatnonzero(labels_present(labels) & self._export)
        for index in present.tolist():
            polygons = np.asarray(mask_to_polygons(labels == index, y_offset=top), dtype=object)
            if not len(polygons):
                continue
            bounds = shapely.bounds(polygons)  # minx, miny, maxx, maxy
            # pieces on a band edge may continue in the neighbouring band: merged at close
            open_edge = ((bounds[:, 1] == top) & (top > 0)) | ((bounds[:, 3] == bottom) & (bottom < self.ctx.height))
            self._pending[index].extend(polygons[open_edge].tolist())
            self._emit(index, polygons[~open_edge])

    def _finish(self) -> List[PendingFile]:
        for index, pieces in self._pending.items():
            self._emit(index, np.asarray(merge_touching(pieces), dtype=object))
            self._pending[index] = []
        with open(self._file.tmp, "wb") as fh:
            fh.write(b'{"type":"FeatureCollection","features":[\n')
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, fh)
            fh.write(b"\n]}\n")
        self._spool.close()
        return [self._file]

    def _abort(self) -> None:
        if self._spool is not None:
            self._spool.close()
        if self._file is not None:
            self._file.discard()
        self._pending.clear()

    # ------------------------------------------------------------------ features
    def _emit(self, index: int, polygons: np.ndarray) -> None:
        """Filter, simplify, map to slide space and append finished regions to the spool.

        Works on arrays of polygons (shapely's vectorised functions, GEOS's GeoJSON writer):
        a band can hold many thousands of small regions.
        """
        if not len(polygons):
            return
        if self.min_area > 0:
            polygons = polygons[shapely.area(polygons) >= self.min_area]
        if self.simplify_tolerance > 0:
            polygons = shapely.simplify(polygons, self.simplify_tolerance, preserve_topology=True)
            polygons = polygons[~shapely.is_empty(polygons)]
        if not len(polygons):
            return
        (ox, oy), scale = self.ctx.origin, self.ctx.scale
        if (ox, oy, scale) != (0.0, 0.0, 1.0):
            polygons = shapely.transform(polygons, lambda xy: xy * scale + (ox, oy))
        polygons = orient_polygons(polygons)  # exterior CCW, holes CW (RFC 7946)
        tail = ',"properties":' + self._properties[index] + "}"
        features = ['{"type":"Feature","geometry":' + geometry + tail for geometry in shapely.to_geojson(polygons)]
        text = ",\n".join(features)
        self._spool.write(((",\n" if self._count else "") + text).encode("utf-8"))
        self._count += len(features)
