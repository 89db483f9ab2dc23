"""Reading the windows of a sliding-window run ahead of the model, in reader threads.

Both runners (:class:`~uniseg.inference.inferencer.SlidingWindowInferencer` and
:class:`~uniseg.inference.cell_stitching.CellStitcher`) consume windows one tile row at a time, in
row-major order, in batches. :class:`WindowReader` produces exactly that sequence
(:class:`RowWindows`, each a list of :class:`WindowBatch`) while the model works on earlier rows.

Why threads and not DataLoader worker processes: the decoders release the GIL (OpenSlide's C
reader and tifffile's codecs; measured on ``data/wsi/CMU-1-Small-Region.svs``: 48 windows of
512 px read 1.6-2.2x faster by two threads than by one with OpenSlide), so threads overlap reading
with the model as well as processes would, without reopening file handles in each worker,
pickling the source, or copying every decoded window back through shared memory. The slide
readers are thread-safe (:class:`~uniseg.io.tiff.TiffSlideReader` locks its file handle;
OpenSlide's ``read_region`` is thread-safe). A read error raised in a reader thread reaches the
caller as the very same exception (an :class:`~uniseg.utils.imageio.ImageReadError` naming the file).

What is read: per tile row, the selected windows (``select``, a ``(rows, cols)`` bool array;
``None`` selects all) merged into contiguous horizontal *spans*, each read with one
``source.read``; windows are slices of their span. With every window selected a row is one span
of the full width, i.e. the same strip today's synchronous loop read, so results are identical.
Unselected windows are never read.

Batches hold up to ``batch_size`` *selected* windows; each unselected window travels with the
batch of the next selected window (or a batch of its own at the row's end) so that the runner
still sees every window in column order. With ``pin_memory`` (a CUDA model) a batch's pixels
are copied into page-locked memory in the reader thread, so the runner's host-to-device copy
can be asynchronous (``non_blocking=True``).

``num_workers=0`` reads in the calling thread, when asked for the row: no threads at all.
At most ``prefetch`` rows (default ``num_workers + 1``) are read ahead, so memory stays bounded by
a few strips (one tile high, the ROI's width; with pinning, plus their windows stacked).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..io.slide import white
from .tiling import TileGrid
from .tissue import tissue_fraction

__all__ = ["WindowBatch", "RowWindows", "RecentRows", "WindowReader", "PipelineTimes", "check_select"]


@dataclass
class PipelineTimes:
    """Where a run's time went (seconds). ``read`` is summed over reader threads (it may exceed the
    wall time); ``read_wait`` is how long the model waited for windows; ``write`` is the time spent
    in the sinks; ``write_wait`` how long the model waited for the writer (a full queue)."""

    read: float = 0.0
    read_wait: float = 0.0
    model: float = 0.0
    write: float = 0.0
    write_wait: float = 0.0


@dataclass
class WindowBatch:
    """Consecutive windows of one tile row: ``xs`` (column starts, in order), ``selected`` per
    window, and the selected windows' pixels: ``windows`` (views of the row's spans) or, when the
    reader pins, ``tensor`` (n_selected, th, tw, 3) in page-locked memory, stacked by the reader."""

    xs: List[int]
    selected: np.ndarray
    windows: List[np.ndarray]
    shape: Tuple[int, int]
    tensor: Optional[torch.Tensor] = None

    @property
    def tiles(self) -> np.ndarray:
        """The selected windows as one (n_selected, th, tw, 3) array (stacked now unless pinned:
        so that rows waiting in the queue hold their strip once, not once more as batches)."""
        if self.tensor is not None:
            return self.tensor.numpy()
        if not self.windows:
            return np.zeros((0, *self.shape, 3), np.uint8)
        return np.stack(self.windows)

    def to_run(self, tissue_threshold: Optional[float] = None) -> Tuple[np.ndarray, Union[np.ndarray, torch.Tensor]]:
        """Which of the batch's windows go to the model, and their pixels.

        ``keep`` (one per window of ``xs``): selected and, with a ``tissue_threshold``, holding at
        least that fraction of tissue by :func:`~uniseg.inference.tissue.tissue_fraction`. The
        pixels are those of the kept windows: the pinned tensor when every window read is kept,
        else a numpy array.
        """
        keep = self.selected.copy()
        tiles = self.tiles
        if tissue_threshold is not None:
            keep[keep] = [tissue_fraction(t) >= tissue_threshold for t in tiles]
        run = keep[self.selected]  # of the windows read, the ones to run
        if run.all():
            return keep, self.tensor if self.tensor is not None else tiles
        return keep, tiles[run]


@dataclass
class RowWindows:
    """One tile row: its top ``y0``, the end of the rows it finishes, its batches and the spans read
    (``(x0, pixels)``, non-overlapping, left to right)."""

    row: int
    y0: int
    finished: int
    batches: List[WindowBatch]
    spans: List[Tuple[int, np.ndarray]] = field(default_factory=list)
    width: int = 0

    def pop_batches(self) -> List[WindowBatch]:
        """The batches, handed over once: the row no longer holds them (an earlier row kept for
        :meth:`image` then holds only its strip)."""
        batches, self.batches = self.batches, []
        return batches

    def image(self, rows: int, earlier: Sequence["RowWindows"] = ()) -> np.ndarray:
        """The first ``rows`` rows of this tile row at full width, as read by this row's windows and by
        the ``earlier`` rows' windows that reach down into them; pixels no selected window read are white.

        With every window selected this is the strip the row read (no copy).
        """
        if len(self.spans) == 1 and self.spans[0][0] == 0 and self.spans[0][1].shape[1] == self.width:
            return self.spans[0][1][:rows]
        out = white(rows, self.width)
        for row in list(earlier) + [self]:  # this row last: its own reads win
            top = self.y0 - row.y0  # this row's first line, in the earlier row's strip
            for x0, pixels in row.spans:
                part = pixels[top:top + rows]
                out[:part.shape[0], x0:x0 + pixels.shape[1]] = part
        return out


class RecentRows:
    """The tile rows whose windows reach into the rows the next tile row finishes (for
    :meth:`RowWindows.image`): windows of a tile row reach one tile height down, past later row starts."""

    def __init__(self, tile_height: int):
        self.tile_height = tile_height
        self.rows: List[RowWindows] = []

    def image(self, row: RowWindows, rows: int) -> np.ndarray:
        self.rows = [r for r in self.rows if r.y0 + self.tile_height > row.y0]
        image = row.image(rows, self.rows)
        self.rows.append(row)
        return image


def check_select(select, grid: TileGrid) -> Optional[np.ndarray]:
    """``None`` or a bool array of shape ``(len(grid.row_starts), len(grid.col_starts))``."""
    if select is None:
        return None
    shape = (len(grid.row_starts), len(grid.col_starts))
    arr = np.asarray(select)
    if arr.dtype != bool or arr.shape != shape:
        raise ValueError(f"select must be a bool array of shape {shape} (tile rows, tile columns of the "
                         f"window grid), got {arr.dtype} {arr.shape}")
    return arr


def _spans(xs: List[int], tw: int) -> List[Tuple[int, int]]:
    """Merge windows starting at sorted ``xs`` into contiguous ``[x0, x1)`` spans (overlapping or touching)."""
    spans: List[Tuple[int, int]] = []
    for x in xs:
        if spans and x <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], x + tw))
        else:
            spans.append((x, x + tw))
    return spans


class WindowReader:
    """The windows of ``grid`` over ``source``, row by row, read ahead by ``num_workers`` threads.

    Iterate :meth:`rows` inside ``with contextlib.closing(reader.rows())`` (or exhaust it): closing
    cancels the reads not yet started and waits for the running ones, so no thread outlives an
    aborted run.
    """

    def __init__(self, source, grid: TileGrid, batch_size: int, select: Optional[np.ndarray] = None,
                 num_workers: int = 0, prefetch: Optional[int] = None, pin_memory: bool = False):
        self.source = source
        self.grid = grid
        self.batch_size = max(1, int(batch_size))
        self.select = check_select(select, grid)
        self.num_workers = int(num_workers)
        self.prefetch = max(1, int(prefetch) if prefetch is not None else self.num_workers + 1)
        self.pin_memory = bool(pin_memory)
        self.times = PipelineTimes()
        self._lock = threading.Lock()
        self._row_ends = list(grid.rows())

    def rows(self) -> Iterator[RowWindows]:
        n = len(self._row_ends)
        if self.num_workers <= 0:
            for r in range(n):
                start = time.perf_counter()
                row = self._read_row(r)
                self.times.read_wait += time.perf_counter() - start  # the model waits for every read
                yield row
            return
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="uniseg-read")
        pending: deque = deque()
        try:
            next_row = 0
            while pending or next_row < n:
                while next_row < n and len(pending) < self.prefetch:
                    pending.append(pool.submit(self._read_row, next_row))
                    next_row += 1
                start = time.perf_counter()
                row = pending.popleft().result()  # a reader's exception is raised here, unchanged
                self.times.read_wait += time.perf_counter() - start
                yield row
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)

    def _read_row(self, r: int) -> RowWindows:
        start = time.perf_counter()
        grid, source = self.grid, self.source
        th, tw, width = grid.tile_height, grid.tile_width, grid.width
        y0, finished = self._row_ends[r]
        cols = grid.col_starts
        selected = np.ones(len(cols), bool) if self.select is None else self.select[r]
        spans = []
        for x0, x1 in _spans([x for x, s in zip(cols, selected) if s], tw):
            pixels = source.read(x0, y0, x1 - x0, th)
            if not isinstance(pixels, np.ndarray) or pixels.shape != (th, x1 - x0, 3) or pixels.dtype != np.uint8:
                raise ValueError(f"image source returned {getattr(pixels, 'dtype', type(pixels).__name__)} "
                                 f"{getattr(pixels, 'shape', '')} for columns {x0}..{x1}, rows {y0}..{y0 + th}, "
                                 f"expected uint8 {(th, x1 - x0, 3)}")
            spans.append((x0, pixels))
        batches, first, chosen = [], 0, []
        span_iter = iter(spans)
        span = None
        for i, (x, s) in enumerate(zip(cols, selected)):
            if s:
                while span is None or x + tw > span[0] + span[1].shape[1]:
                    span = next(span_iter)
                chosen.append(span[1][:, x - span[0]:x - span[0] + tw])
            if len(chosen) == self.batch_size or i == len(cols) - 1:
                batches.append(self._batch(cols[first:i + 1], selected[first:i + 1], chosen))
                first, chosen = i + 1, []
        with self._lock:
            self.times.read += time.perf_counter() - start
        return RowWindows(r, y0, finished, batches, spans, width)

    def _batch(self, xs: List[int], selected: np.ndarray, chosen: List[np.ndarray]) -> WindowBatch:
        mask = np.array(selected, bool)
        th, tw = self.grid.tile_height, self.grid.tile_width
        if self.pin_memory and chosen:
            tensor = torch.empty((len(chosen), th, tw, 3), dtype=torch.uint8).pin_memory()
            tiles = tensor.numpy()
            for i, window in enumerate(chosen):
                tiles[i] = window
            return WindowBatch(list(xs), mask, [], (th, tw), tensor)
        return WindowBatch(list(xs), mask, list(chosen), (th, tw))
