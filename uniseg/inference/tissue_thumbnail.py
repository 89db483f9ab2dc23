"""A thumbnail of what a run looked at: the slide, the tissue outline, and the windows it ran.

One glance tells whether the tissue mask missed tissue (a fragment outside the green outline) or
the run wasted time on glass (blue windows over empty slide), which no summary number shows. The
thumbnail is written as a :class:`~uniseg.utils.atomic.PendingFile`, so it can join the other
outputs of the run in :func:`~uniseg.utils.atomic.publish_together` (or be committed alone).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..io.overview import read_overview
from ..io.region import Region
from ..io.slide import SlideReader
from ..utils.atomic import OutputWriteError, PendingFile
from ..utils.typing_utils import PathLike
from .tissue import TissueMask

if TYPE_CHECKING:
    from ..io.region import RegionSource
    from .tiling import TileGrid

__all__ = ["window_boxes", "render_thumbnail", "write_thumbnail", "OUTLINE_RGB", "WINDOW_RGB",
           "DEFAULT_THUMBNAIL_SIDE"]

#: Colours that do not occur in H&E or IHC: pure green for the tissue outline, pure blue for windows.
OUTLINE_RGB = (0, 255, 0)
WINDOW_RGB = (0, 0, 255)
DEFAULT_THUMBNAIL_SIDE = 1024


def window_boxes(grid: "TileGrid", source: "RegionSource", select: Optional[np.ndarray] = None) -> np.ndarray:
    """Level-0 ``(x0, y0, x1, y1)`` of the windows of ``grid`` over ``source`` (only the selected ones), ``(n, 4)``."""
    rows = np.asarray(grid.row_starts, np.float64)
    cols = np.asarray(grid.col_starts, np.float64)
    if select is None:
        select = np.ones((len(rows), len(cols)), bool)
    select = np.asarray(select, bool)
    if select.shape != (len(rows), len(cols)):
        raise ValueError(f"window selection has shape {select.shape}, the grid has {len(rows)} x {len(cols)} windows")
    r, c = np.nonzero(select)
    (ox, oy), step = source.origin, source.scale
    x0, y0 = ox + cols[c] * step, oy + rows[r] * step
    return np.stack([x0, y0, x0 + grid.tile_width * step, y0 + grid.tile_height * step], axis=1).reshape(-1, 4)


def _background(reader: SlideReader, tissue: Optional[TissueMask], extent: Region, size: tuple) -> np.ndarray:
    """The slide under ``extent`` resized to ``size`` (w, h): from the mask's overview when it is fine enough."""
    import cv2

    w, h = size
    ds = max(1.0, max(extent.w / w, extent.h / h))
    if tissue is not None and tissue.overview is not None and max(tissue.scale) <= ds * 1.01:
        rgb, origin, scale = tissue.overview, tissue.origin, tissue.scale  # fine enough: no second read
    else:
        view = read_overview(reader, ds, extent)
        rgb, origin, scale = view.rgb, view.origin, view.scale
    oh, ow = rgb.shape[:2]
    j0 = min(max(0, math.floor((extent.x - origin[0]) / scale[0])), ow - 1)
    i0 = min(max(0, math.floor((extent.y - origin[1]) / scale[1])), oh - 1)
    j1 = max(j0 + 1, min(ow, math.ceil((extent.right - origin[0]) / scale[0])))
    i1 = max(i0 + 1, min(oh, math.ceil((extent.bottom - origin[1]) / scale[1])))
    crop = np.ascontiguousarray(rgb[i0:i1, j0:j1])
    interpolation = cv2.INTER_AREA if crop.shape[1] >= w else cv2.INTER_LINEAR
    return cv2.resize(crop, (w, h), interpolation=interpolation)


def _mask_on_grid(tissue: TissueMask, extent: Region, size: tuple) -> np.ndarray:
    """The tissue mask sampled at the centres of the thumbnail's pixels (uint8 0/1)."""
    w, h = size
    xs = extent.x + (np.arange(w) + 0.5) * extent.w / w
    ys = extent.y + (np.arange(h) + 0.5) * extent.h / h
    j = np.floor((xs - tissue.origin[0]) / tissue.scale[0]).astype(np.int64)
    i = np.floor((ys - tissue.origin[1]) / tissue.scale[1]).astype(np.int64)
    mh, mw = tissue.mask.shape
    inside = ((i >= 0) & (i < mh))[:, None] & ((j >= 0) & (j < mw))[None, :]
    sampled = tissue.mask[np.clip(i, 0, mh - 1)[:, None], np.clip(j, 0, mw - 1)[None, :]]
    return (sampled & inside).astype(np.uint8)


def render_thumbnail(reader: SlideReader, tissue: Optional[TissueMask] = None,
                     boxes: Optional[Sequence[Sequence[float]]] = None, region: Optional[Region] = None,
                     max_side: int = DEFAULT_THUMBNAIL_SIDE) -> np.ndarray:
    """RGB thumbnail of ``region`` (default: the slide), long side ``max_side`` at most: the tissue
    outline in :data:`OUTLINE_RGB` over the level-0 window ``boxes`` in :data:`WINDOW_RGB`."""
    import cv2

    if max_side < 1:
        raise ValueError(f"thumbnail size must be positive, got {max_side}")
    extent = Region(0, 0, *reader.dimensions) if region is None else region
    ds = max(1.0, max(extent.w, extent.h) / max_side)
    size = (max(1, round(extent.w / ds)), max(1, round(extent.h / ds)))
    image = np.ascontiguousarray(_background(reader, tissue, extent, size))
    sx, sy = extent.w / size[0], extent.h / size[1]
    for x0, y0, x1, y1 in ([] if boxes is None else np.asarray(boxes, np.float64).reshape(-1, 4)):
        top_left = (int(math.floor((x0 - extent.x) / sx)), int(math.floor((y0 - extent.y) / sy)))
        bottom_right = (int(math.ceil((x1 - extent.x) / sx)) - 1, int(math.ceil((y1 - extent.y) / sy)) - 1)
        cv2.rectangle(image, top_left, bottom_right, WINDOW_RGB, 1)
    if tissue is not None:
        contours, _ = cv2.findContours(_mask_on_grid(tissue, extent, size), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(image, contours, -1, OUTLINE_RGB, 1)
    return image


def write_thumbnail(path: PathLike, reader: SlideReader, tissue: Optional[TissueMask] = None,
                    boxes: Optional[Sequence[Sequence[float]]] = None, region: Optional[Region] = None,
                    max_side: int = DEFAULT_THUMBNAIL_SIDE) -> PendingFile:
    """:func:`render_thumbnail` written as a PNG under a temporary name: commit or publish the result.

    Nothing appears at ``path`` until the caller commits; on any error the temporary is removed.
    """
    import cv2

    pending = PendingFile(path)
    try:
        if pending.path.suffix.lower() != ".png":
            raise ValueError(f"{pending.path}: the thumbnail is written as .png")
        image = render_thumbnail(reader, tissue, boxes, region, max_side)
        ok, data = cv2.imencode(".png", image[..., ::-1])
        if not ok:
            raise OutputWriteError(f"{pending.path}: could not encode the thumbnail as PNG")
        try:
            with open(pending.tmp, "wb") as fh:
                fh.write(data.tobytes())
        except OSError as exc:
            raise OutputWriteError(f"{pending.path}: cannot write the thumbnail ({exc})") from exc
    except BaseException:
        pending.discard()
        raise
    return pending
