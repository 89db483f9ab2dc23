"""Which windows of a run are read: the slide-level tissue mask turned into the runners' ``select``.

:func:`~uniseg.inference.api.segment_file` plans a run before any window is read: it detects the
tissue on a low-resolution overview (or takes the user's mask), keeps the windows of the run's
:class:`~uniseg.inference.tiling.TileGrid` that touch enough of it, and hands that selection to
the sliding-window inferencer or the cell stitcher, which never read the other windows. The same
plan supplies the summary's tissue fields and the thumbnail written beside the outputs, so the
figures and the picture describe exactly the windows that ran.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..io.region import RegionSource
from ..io.slide import SlideReader
from ..utils.atomic import PendingFile
from .tiling import TileGrid
from .tissue import DEFAULT_MIN_FRACTION, TissueMask, detect_tissue, selection_summary
from .tissue_masks import load_tissue_mask
from .tissue_thumbnail import window_boxes, write_thumbnail

__all__ = ["TissueOptions", "WindowPlan", "plan_windows", "thumbnail_name"]


@dataclass(frozen=True)
class TissueOptions:
    """How a run finds its tissue: ``mask`` (a user's binary image or GeoJSON, replacing detection),
    ``detect`` (False: every window runs), ``min_fraction`` (share of a window the mask must cover)."""

    mask: Optional[str] = None
    detect: bool = True
    min_fraction: float = DEFAULT_MIN_FRACTION


def thumbnail_name(stem: str, task: str) -> str:
    """``<stem>_tissue.png`` (masks) or ``<stem>_cells_tissue.png`` (cells): the two sets of one slide keep theirs."""
    return f"{stem}_cells_tissue.png" if task == "cells" else f"{stem}_tissue.png"


@dataclass
class WindowPlan:
    """The windows of one run and, when a mask was used, why these."""

    grid: TileGrid
    select: Optional[np.ndarray]      # None: every window (no mask)
    tissue: Optional[TissueMask]
    note: Optional[str] = None        # why there is no mask

    def summary_fields(self, source: RegionSource) -> dict:
        """The tissue mask, its area (mm², None without mpp) in the region, and the windows it kept from running.

        (The runners count every window they skipped, these and any their own tissue test skipped.)
        """
        if self.tissue is None:
            return {"tissue_mask": {"source": self.note}, "windows_outside_tissue": 0}
        fields = selection_summary(self.tissue, self.select, source.plan.region)
        return {"tissue_mask": fields["tissue_mask"], "tissue_area_mm2": fields["tissue_area_mm2"],
                "windows_outside_tissue": fields["windows_skipped"]}

    def thumbnail(self, path: Path, reader: SlideReader, source: RegionSource) -> PendingFile:
        """The overview with the tissue outline and the windows run, as a pending PNG (see :func:`write_thumbnail`)."""
        boxes = window_boxes(self.grid, source, self.select)
        return write_thumbnail(path, reader, self.tissue, boxes, region=source.plan.region)


def plan_windows(reader: SlideReader, source: RegionSource, tile: Tuple[int, int], stride: Tuple[int, int],
                 options: TissueOptions) -> WindowPlan:
    """The grid the runners will walk over ``source`` and the windows of it that touch tissue.

    A user mask names its file in any error (see :func:`load_tissue_mask`); detection looks at the
    run's region only, so an ROI of a single-level file never reads the rest of the file.
    """
    grid = TileGrid(source.width, source.height, tuple(tile), tuple(stride))
    if options.mask is not None:
        tissue = load_tissue_mask(options.mask, reader)
    elif options.detect:
        tissue = detect_tissue(reader, region=source.plan.region)
        if _is_greyscale(tissue.overview):
            return WindowPlan(grid, None, None, GREYSCALE_NOTE)
    else:
        return WindowPlan(grid, None, None, "off (every window runs)")
    return WindowPlan(grid, tissue.window_selection(grid, source, options.min_fraction), tissue)


#: why a greyscale image runs every window
GREYSCALE_NOTE = ("not applied: the image is greyscale (e.g. fluorescence), and detection finds stained tissue "
                  "by its colour; every window runs (give --tissue-mask to restrict the run)")


def _is_greyscale(overview: Optional[np.ndarray]) -> bool:
    """Every pixel has R == G == B: no colour to find stain by (fluorescence, a grey export), not blank glass.

    Blank glass scanned in colour still carries colour noise, so it stays a case for detection (an
    empty mask), while an image stored grey has exactly equal channels.
    """
    if overview is None or overview.ndim != 3:
        return False
    return bool(np.array_equal(overview[..., 0], overview[..., 1]) and np.array_equal(overview[..., 1],
                                                                                      overview[..., 2]))
