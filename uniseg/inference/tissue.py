"""Where the tissue is: a slide-level tissue mask, and the cheap per-window tissue test.

Whole-slide inference spends most of its time on windows of empty glass unless it knows where the
tissue is *before* reading them. :func:`detect_tissue` builds a :class:`TissueMask` from a
low-resolution overview of the slide (a coarse pyramid level, or a block-averaged read of a
single-level file; see :mod:`uniseg.io.overview`); :mod:`uniseg.inference.tissue_masks` builds one
from a user's binary image or GeoJSON regions instead. :meth:`TissueMask.window_selection` then
says which windows of a :class:`~uniseg.inference.tiling.TileGrid` touch tissue, so that the others
are never read.

Detection, and why this way:

* Channel: HSV saturation of the overview. Stains are coloured; glass is white or grey, whatever
  its brightness, so uneven illumination, vignetting, shadows and grey label areas (which brightness
  or optical density would call tissue) stay background. Near-black pixels (scanner padding outside
  the scanned area) get saturation 0, because there ``(max - min) / max`` is noise over a tiny max.
  Ink and pen marks are coloured too and count as tissue: exclude them with a user mask.
* Threshold: Otsu's (the split of the saturation histogram with the largest between-class
  variance), clamped to :data:`OTSU_BOUNDS`. The lower bound keeps a blank slide blank: with no
  tissue, Otsu would split the colour noise of the glass into two classes. The upper bound keeps a
  region that is all tissue whole: with no glass, Otsu would split pale eosin from hematoxylin.
  It also keeps pale stroma in on ordinary slides: on CMU-1-Small-Region Otsu says 0.19, and at
  0.15 the mask finds 97.9% of the blocks the full-resolution :func:`tissue_fraction` rule calls
  tissue, against 96.0% at 0.19.
* Morphology (scipy.ndimage): a closing joins tissue torn by the threshold, holes are filled (fat,
  lumens and tears inside tissue are segmented too: the model decides what they are), and objects
  below a minimum area are removed (dust, debris, bubble edges).

The overview is taken at about :data:`DEFAULT_MASK_MPP` um/px (8: a 512-px window at 0.5 um/px
spans 32 mask pixels) and never larger than :data:`DEFAULT_MAX_SIDE` pixels on its long side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

from ..io.overview import read_overview
from ..io.region import Region
from ..io.slide import Mpp, SlideReader

if TYPE_CHECKING:
    from ..io.region import RegionSource
    from .tiling import TileGrid

__all__ = ["tissue_fraction", "TissueMask", "detect_tissue", "selection_summary", "mask_downsample", "otsu_threshold",
           "saturation", "clean_mask", "DEFAULT_MASK_MPP", "DEFAULT_MAX_SIDE", "DEFAULT_MIN_FRACTION",
           "OTSU_BOUNDS"]

#: Resolution of the tissue mask in microns per pixel (about 1/16 of a 0.5 um/px scan).
DEFAULT_MASK_MPP = 8.0
#: The mask's long side never exceeds this (also the size used when the slide's mpp is unknown:
#: the mask then is ``DEFAULT_UNKNOWN_MPP_SIDE`` pixels on its long side).
DEFAULT_MAX_SIDE = 4096
DEFAULT_UNKNOWN_MPP_SIDE = 2048
#: A window runs when any of its mask pixels is tissue (see :meth:`TissueMask.window_selection`).
DEFAULT_MIN_FRACTION = 0.0
#: Otsu's saturation threshold is clamped to this range (see the module doc).
OTSU_BOUNDS = (0.05, 0.15)
#: Closing radius and smallest kept object, in microns (when the slide's mpp is known) ...
DEFAULT_CLOSING_UM = 16.0
DEFAULT_MIN_OBJECT_UM2 = 5000.0  # about a 70 x 70 um piece: a few cells across
#: ... and in mask pixels otherwise.
DEFAULT_CLOSING_PX = 2
DEFAULT_MIN_OBJECT_PX = 16
# Overview pixels whose brightest channel is below this have no meaningful hue (scanner padding).
_DARK = 0.1


def tissue_fraction(rgb: np.ndarray, saturation: float = 0.07, brightness: float = 0.92) -> float:
    """Fraction of pixels that look like tissue: HSV saturation above ``saturation`` or value below ``brightness``
    (dark pixels such as dense nuclei or pen marks count as tissue too).

    The per-window test of the inferencers' ``tissue_threshold``: it needs the window already read.
    """
    if rgb.size == 0:
        return 0.0
    arr = rgb.astype(np.float32) / 255.0
    mx = arr.max(axis=-1)
    mn = arr.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return float(np.mean((sat > saturation) | (mx < brightness)))


# ---------------------------------------------------------------------------- the mask
@dataclass
class TissueMask:
    """A boolean tissue mask at low resolution, placed on the slide's level-0 pixel grid.

    Mask pixel ``(i, j)`` covers level-0 ``x`` in ``[origin[0] + j * scale[0], ... + scale[0])``
    and ``y`` likewise with ``i``. ``mpp`` is the slide's level-0 resolution (None if unknown);
    ``source`` says where the mask came from (for the summary); ``overview`` is the RGB the mask
    was detected on (same grid), kept for the thumbnail so that it needs no second read.
    Treat ``mask`` as read-only: window counts come from a summed-area table computed once.
    """

    mask: np.ndarray
    origin: Tuple[float, float]
    scale: Tuple[float, float]
    mpp: Optional[Mpp] = None
    source: str = "detected"
    threshold: Optional[float] = None
    overview: Optional[np.ndarray] = field(default=None, repr=False)
    _table: Optional[np.ndarray] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 2:
            raise ValueError(f"tissue mask must be 2-D, got shape {self.mask.shape}")
        if not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError(f"tissue mask scale must be positive, got {self.scale}")

    @property
    def shape(self) -> Tuple[int, int]:
        return self.mask.shape  # type: ignore[return-value]

    def summed_area(self) -> np.ndarray:
        """Summed-area table: ``table[i, j]`` = tissue pixels in ``mask[:i, :j]`` (so one row/column longer)."""
        if self._table is None:
            h, w = self.mask.shape
            dtype = np.int32 if h * w < 2 ** 31 else np.int64
            table = np.zeros((h + 1, w + 1), dtype)
            np.cumsum(self.mask, axis=0, dtype=dtype, out=table[1:, 1:])
            np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
            self._table = table
        return self._table

    def _span(self, lo: np.ndarray, hi: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
        """Mask pixels ``[a, b)`` touched by level-0 intervals ``[lo, hi)`` along x (0) or y (1); may leave the mask."""
        a = np.floor((np.asarray(lo, np.float64) - self.origin[axis]) / self.scale[axis] + 1e-9).astype(np.int64)
        b = np.ceil((np.asarray(hi, np.float64) - self.origin[axis]) / self.scale[axis] - 1e-9).astype(np.int64)
        return a, np.maximum(b, a + 1)

    def _count(self, ya: np.ndarray, yb: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
        """Tissue pixels in mask boxes (broadcast arrays of bounds), clipped to the mask: O(1) per box."""
        h, w = self.mask.shape
        table = self.summed_area()
        ya, yb = np.clip(ya, 0, h), np.clip(yb, 0, h)
        xa, xb = np.clip(xa, 0, w), np.clip(xb, 0, w)
        return (table[yb, xb] - table[ya, xb] - table[yb, xa] + table[ya, xa]).astype(np.int64)

    def window_fractions(self, grid: "TileGrid", source: "RegionSource") -> Tuple[np.ndarray, np.ndarray]:
        """Per window of ``grid`` (output pixels of ``source``): tissue pixels and the fraction they make.

        A window's share of the mask is every mask pixel its level-0 rectangle touches, even
        partly; mask pixels beyond the mask (a region overhanging the slide) count as glass.
        Returns ``(counts, fractions)``, both ``(rows, cols)``.
        """
        rows = np.asarray(grid.row_starts, np.float64)
        cols = np.asarray(grid.col_starts, np.float64)
        (ox, oy), step = source.origin, source.scale
        xa, xb = self._span(ox + cols * step, ox + (cols + grid.tile_width) * step, 0)
        ya, yb = self._span(oy + rows * step, oy + (rows + grid.tile_height) * step, 1)
        counts = self._count(ya[:, None], yb[:, None], xa[None, :], xb[None, :])
        area = (yb - ya)[:, None] * (xb - xa)[None, :]
        return counts, counts / area

    def window_selection(self, grid: "TileGrid", source: "RegionSource",
                         min_fraction: float = DEFAULT_MIN_FRACTION) -> np.ndarray:
        """Which windows to run: ``(rows, cols)`` bool, True where the window touches tissue and at
        least ``min_fraction`` of the mask pixels it touches are tissue.

        A window without any tissue pixel is never selected, even with ``min_fraction=0``. The
        default 0 runs every window that touches tissue: a window's predictions cover all of it, so
        one skipped because its tissue is only a thin edge would leave that edge unsegmented when no
        neighbouring window covers it. Raise it to trade edge tissue for speed.
        """
        min_fraction = float(min_fraction)
        if not 0.0 <= min_fraction <= 1.0:
            raise ValueError(f"minimum tissue fraction per window must be in [0, 1], got {min_fraction}")
        counts, fractions = self.window_fractions(grid, source)
        return (counts > 0) & (fractions >= min_fraction)

    def tissue_pixels(self, region: Optional[Region] = None) -> float:
        """Level-0 pixels of tissue (mask pixels times their level-0 area), in ``region`` if given.

        Mask pixels partly inside ``region`` count in proportion to the part inside.
        """
        sx, sy = self.scale
        if region is None:
            return float(self.mask.sum()) * sx * sy
        h, w = self.mask.shape
        # Coverage of each mask column / row by the region, then a weighted sum.
        cx = _coverage(self.origin[0], sx, w, region.x, region.right)
        cy = _coverage(self.origin[1], sy, h, region.y, region.bottom)
        return float(cy @ self.mask.astype(np.float64) @ cx)

    def tissue_area_mm2(self, region: Optional[Region] = None) -> Optional[float]:
        """Tissue area in mm^2 (in level-0 ``region`` if given); None when the slide's mpp is unknown."""
        if self.mpp is None:
            return None
        return self.tissue_pixels(region) * self.mpp[0] * self.mpp[1] * 1e-6

    def describe(self) -> dict:
        """What a run summary records about the mask."""
        mpp = None if self.mpp is None else round(float(np.mean(self.scale) * np.mean(self.mpp)), 4)
        return {"source": self.source, "threshold": None if self.threshold is None else round(self.threshold, 4),
                "mask_size": [int(self.mask.shape[1]), int(self.mask.shape[0])], "mask_mpp": mpp,
                "tissue_fraction": round(float(self.mask.mean()), 6) if self.mask.size else 0.0}


def _coverage(origin: float, step: float, n: int, lo: float, hi: float) -> np.ndarray:
    """Level-0 length of each of ``n`` mask pixels (along one axis) inside ``[lo, hi)``."""
    edges = origin + np.arange(n + 1, dtype=np.float64) * step
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)


# ---------------------------------------------------------------------------- detection
def mask_downsample(reader: SlideReader, target_mpp: Optional[float] = DEFAULT_MASK_MPP,
                    max_side: int = DEFAULT_MAX_SIDE, region: Optional[Region] = None) -> float:
    """Level-0 pixels per mask pixel: ``target_mpp`` / the slide's mpp, coarsened so the long side of
    the slide (or ``region``) fits ``max_side``; without a known mpp (or ``target_mpp=None``) the long
    side is ``min(max_side, 2048)``."""
    if max_side < 1:
        raise ValueError(f"{reader.path}: the tissue mask's maximum side must be positive, got {max_side}")
    longest = max(reader.dimensions) if region is None else max(region.w, region.h)
    if target_mpp is None or reader.mpp is None:
        downsample = longest / min(max_side, DEFAULT_UNKNOWN_MPP_SIDE)
    else:
        if not (math.isfinite(target_mpp) and target_mpp > 0):
            raise ValueError(f"{reader.path}: tissue mask resolution must be a positive number of microns per "
                             f"pixel, got {target_mpp!r}")
        downsample = max(target_mpp / ((reader.mpp[0] + reader.mpp[1]) / 2.0), longest / max_side)
    return max(1.0, downsample)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] as float32; 0 where the brightest channel is below 10% (no meaningful hue)."""
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)  # uint8: no float copy of the RGB (12 bytes per pixel)
    sat = (mx - mn).astype(np.float32)
    sat /= np.maximum(mx, 1)
    sat[mx < _DARK * 255] = 0.0
    return sat


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: Tuple[float, float] = (0.0, 1.0)) -> float:
    """Otsu's threshold of ``values``: the bin edge that maximises the between-class variance.

    Values ``> threshold`` are the upper class. A constant input (one occupied bin) returns the
    upper edge of that bin, so everything is in the lower class; callers clamp the result.
    """
    hist, edges = np.histogram(np.ravel(values), bins=bins, range=value_range)  # no float64 copy of a big mask
    total = hist.sum()
    if total == 0:
        return float(edges[-1])
    p = hist / total
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(p)[:-1]             # weight of the lower class when splitting after bin k
    m0 = np.cumsum(p * centres)[:-1]   # its first moment
    mean = float((p * centres).sum())
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - m0) ** 2 / (w0 * w1)
    between = np.where((w0 > 0) & (w1 > 0), between, -1.0)
    if between.max() <= 0:
        occupied = np.flatnonzero(hist)
        return float(edges[occupied[-1] + 1])
    # Several splits may tie (empty bins between the classes): take the middle of the tied run.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    k = best[len(best) // 2]
    return float(edges[k + 1])


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2


def clean_mask(mask: np.ndarray, closing_px: int, min_object_px: int) -> np.ndarray:
    """Close gaps (disk of radius ``closing_px``), fill holes, drop objects below ``min_object_px`` pixels."""
    from scipy import ndimage

    # Intermediates are dropped as soon as possible: this runs on masks of up to max_side**2 pixels.
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    if closing_px > 0:
        # Pad so that the closing does not treat the image border as tissue-free (it would erode there).
        pad = closing_px + 1
        closed = ndimage.binary_closing(np.pad(mask, pad, mode="edge"), structure=_disk(closing_px))
        mask = closed[pad:-pad, pad:-pad].copy()
        del closed
    mask = ndimage.binary_fill_holes(mask)
    if min_object_px > 1:
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        if n:
            keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_object_px
            keep[0] = False
            mask = keep[labels]
        del labels
    return mask


def detect_tissue(reader: SlideReader, target_mpp: Optional[float] = DEFAULT_MASK_MPP,
                  max_side: int = DEFAULT_MAX_SIDE, *, closing_um: float = DEFAULT_CLOSING_UM,
                  min_object_um2: float = DEFAULT_MIN_OBJECT_UM2, bounds: Tuple[float, float] = OTSU_BOUNDS,
                  keep_overview: bool = True, region: Optional[Region] = None) -> TissueMask:
    """Detect tissue on a low-resolution overview of the whole slide, or of level-0 ``region`` (see the module doc).

    Give ``region`` when only a region of interest is segmented: on a single-level file the
    overview of the whole slide means reading all of it. The threshold is then the region's own.

    Reads the coarsest level at least as fine as :func:`mask_downsample` (``target_mpp`` um/px, long
    side at most ``max_side``), shrinking it by block averages in chunks when it is finer. Level 0
    of a pyramid whose coarse levels suffice is never touched.

    Memory: at most about 16 bytes per mask pixel, at the morphology step (the overview RGB kept
    for the thumbnail, an int32 label image, a few boolean copies), plus one read chunk of under
    10 MiB (see :func:`~uniseg.io.overview.read_overview`): ~270 MB for the largest mask the default
    ``max_side`` of 4096 allows; measured 158 MB for a 100k x 100k px slide at 0.25 um/px (a
    3125 x 3125 mask). :meth:`TissueMask.window_selection` later adds a summed-area table of 4
    bytes per mask pixel.

    Without a known mpp, ``closing_um`` / ``min_object_um2`` are replaced by
    :data:`DEFAULT_CLOSING_PX` / :data:`DEFAULT_MIN_OBJECT_PX` mask pixels.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"saturation threshold bounds must satisfy 0 <= low <= high <= 1, got {bounds}")
    view = read_overview(reader, mask_downsample(reader, target_mpp, max_side, region), region)
    sat = saturation(view.rgb)
    threshold = float(np.clip(otsu_threshold(sat), lo, hi))
    tissue = sat > threshold
    del sat
    if reader.mpp is not None:
        mask_um = (view.scale[0] * reader.mpp[0], view.scale[1] * reader.mpp[1])
        closing_px = int(round(closing_um / max(mask_um)))
        min_object_px = int(math.ceil(min_object_um2 / (mask_um[0] * mask_um[1])))
    else:
        closing_px, min_object_px = DEFAULT_CLOSING_PX, DEFAULT_MIN_OBJECT_PX
    mask = clean_mask(tissue, closing_px, min_object_px)
    return TissueMask(mask=mask, origin=view.origin, scale=view.scale, mpp=reader.mpp,
                      source="detected: Otsu on HSV saturation", threshold=threshold,
                      overview=view.rgb if keep_overview else None)


def selection_summary(tissue: TissueMask, select: np.ndarray, region: Optional[Region] = None) -> dict:
    """What a run summary reports: the mask, the tissue area (in ``region``, level-0) and the windows skipped."""
    select = np.asarray(select, bool)
    area = tissue.tissue_area_mm2(region)
    return {"tissue_mask": tissue.describe(), "tissue_area_mm2": None if area is None else round(area, 6),
            "windows_total": int(select.size), "windows_run": int(select.sum()),
            "windows_skipped": int(select.size - select.sum())}
