"""Whole-slide cells from overlapping windows: every cell exactly once, memory bounded by a window row.

Tiled instance segmentation has two failure modes at window seams: a cell cut by a window border
is reported as a fragment, and a cell seen by two overlapping windows is reported twice. Keeping
each cell only from the window whose core holds its centroid fixes both only when both windows
predict the same centroid; in practice they do not, and cells near the middle of an overlap are
then kept twice or dropped. Here the choice is made between the *predictions*:

1. **Candidates.** Every window predicts non-overlapping cells (an :class:`InstanceMap`). A cell
   reaching into the outermost ``edge_width`` pixels (default 1: touching) of an inner border of
   its window (a window edge that is not the ROI border) is *cut*: it may be a fragment. A cut
   cell is dropped as a *fragment* when another window that ran contains it entirely and
   predicted only complete cells (or nothing) on its pixels: that window saw all of it, with
   context. (Requiring complete predictions there means two cut views of one cell never drop
   each other.) Remaining cut cells (cells larger than the overlap) stay as last-resort
   candidates, or are dropped with ``border_cells='drop'``. Raise ``edge_width`` for models that
   stop a cut cell's mask a pixel or two short of the window edge.
2. **Duplicates.** Predictions of different windows that share pixels are linked; a linked
   cluster is one decision. Within it, candidates are taken greedily by priority, and a
   candidate is a *duplicate* (dropped) of an already kept cell it shares pixels with when
   either's centroid lies on the other's mask (scale-free: small cells seen a few pixels apart
   by two windows still match, two distinct neighbours never do), or the shared pixels are at
   least ``duplicate_overlap`` of the smaller of the two; also when kept cells together cover at
   least that fraction of it, and, for a cut candidate, as soon as it shares a pixel with a kept
   cell. Otherwise it is kept; pixels it shares with kept cells stay theirs.
3. **Priority.** Complete before cut; then the window in which the centroid lies *deepest*:
   per axis, the distance from the centroid to the nearer inner border of the window (ROI
   borders do not count), compared as (smaller axis depth, larger axis depth); then score, then
   window order. Depth is largest in the window whose *core* holds the centroid: the core of
   window ``i`` along an axis runs from the middle of its overlap with window ``i - 1`` to the
   middle of its overlap with window ``i + 1`` (``(start_i + tile + start_{i+1}) / 2``; the ROI
   border for the first and last window, whose last overlap is larger with mmseg's positions);
   cores tile the ROI exactly (:func:`axis_cores`). So when windows agree, each cell is kept by
   the window whose core holds its centroid; when they disagree (the centroid falls in both
   cores or in neither), still exactly one prediction is kept. With the overlap wider than the
   largest cell (plus ``2 * (edge_width - 1)``), the kept prediction is never cut; larger cells
   are counted (``CellStats.touching_border``).

Streaming: windows run one tile row at a time (positions from :class:`TileGrid`, as for semantic
inference). After a row, a cluster whose candidates all end above the next row's first pixel row
can no longer gain members: it is decided, its kept cells get ids (counting up) and go to the
sinks' ``write_cells``, and it is dropped. Rows of the id image above every undecided candidate
are final and go to ``write_band``. Memory is a band of ids (one tile high, full width) plus the
undecided candidates (about two window rows): set by the ROI width, never its height.
"""
from __future__ import annotations

import math
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..export.cells.base import CellBatch
from ..structures.instances import InstanceMap, instance_properties
from .inferencer import ImageSource, progress_bar
from .options import BORDER_CELLS, check_num_workers
from .ordered_writer import OrderedWriter
from .tiling import TileGrid, axis_starts
from .tissue import tissue_fraction
from .window_reader import PipelineTimes, RecentRows, WindowBatch, WindowReader

__all__ = ["CellPredictor", "CellStitcher", "CellStats", "axis_cores", "cell_summary", "BORDER_CELLS"]


class CellPredictor(Protocol):
    """Window-level instance segmentation: uint8 RGB tiles (B, h, w, 3) -> one InstanceMap (h, w) each."""

    def predict(self, tiles: np.ndarray) -> List[InstanceMap]: ...


def axis_cores(length: int, tile: int, stride: int) -> List[Tuple[float, float]]:
    """Core ``(lo, hi]`` of each window along one axis, in continuous coordinates (pixel ``x`` spans
    ``[x, x + 1)``, its centre is ``x + 0.5``): from the middle of the overlap with the previous window
    to the middle of the overlap with the next; ``-inf`` / ``inf`` at the ROI borders.

    A tie (a centre exactly on a boundary) goes to the earlier window, as in :class:`CellStitcher`.
    """
    starts = axis_starts(length, tile, stride)
    tile = min(tile, length)
    bounds = [(starts[i] + tile + starts[i + 1]) / 2 for i in range(len(starts) - 1)]
    lows = [-math.inf] + bounds
    highs = bounds + [math.inf]
    return list(zip(lows, highs))


@dataclass
class CellStats:
    """What happened while stitching (``cell_summary`` turns it into the JSON summary)."""

    windows: int = 0
    windows_skipped: int = 0      # below the tissue threshold: not run
    candidates: int = 0           # cells predicted by all windows together
    cells: int = 0                # cells kept
    duplicates: int = 0           # predictions dropped as another window's prediction of a kept cell
    fragments: int = 0            # cut predictions dropped because another window saw them whole
    touching_border: int = 0      # kept cells touching an inner border of their window (maybe truncated)
    border_dropped: int = 0       # cut predictions discarded (border_cells='drop')
    contested_pixels: int = 0     # pixels claimed by two kept cells, given to the one with priority
    class_counts: Dict[int, int] = field(default_factory=dict)
    tissue_pixels: int = 0        # ROI pixels passing the tissue test (see cell_summary)
    roi_pixels: int = 0
    peak_pending: int = 0         # most undecided candidates held at once
    peak_band_rows: int = 0       # most id-image rows held at once
    seconds: float = 0.0
    times: PipelineTimes = field(default_factory=PipelineTimes)


class _Candidate:
    """One window's prediction of one cell, in ROI coordinates."""

    __slots__ = ("window", "y0", "x0", "y1", "x1", "mask", "label", "score", "area", "centre", "priority", "cut",
                 "inside")

    def __init__(self, window, y0, x0, mask, label, score, area, centre, priority, cut, inside):
        self.window, self.y0, self.x0, self.mask, self.centre = window, y0, x0, mask, centre  # centre: (row, col) px
        self.y1, self.x1 = y0 + mask.shape[0], x0 + mask.shape[1]
        self.label, self.score, self.area, self.priority, self.cut = label, score, area, priority, cut
        self.inside = inside  # other windows that contain a cut candidate entirely


class _Window:
    """A window that still has undecided candidates (their keys and boxes, for overlap tests)."""

    __slots__ = ("y0", "x0", "y1", "x1", "keys", "boxes")

    def __init__(self, y0, x0, y1, x1, keys, boxes):
        self.y0, self.x0, self.y1, self.x1, self.keys, self.boxes = y0, x0, y1, x1, keys, boxes


class CellStitcher:
    """Stream a :class:`CellPredictor` over an :class:`ImageSource` into cell sinks (see module docstring).

    Args:
        predictor: window-level instance model (e.g. :class:`~uniseg.inference.cell_predictor.Mask2FormerCellPredictor`).
        tile, stride: window size and step (h, w) in working-resolution pixels. The overlap
            ``tile - stride`` should exceed the largest cell diameter.
        batch_size: windows per ``predict`` call.
        tissue_threshold: windows whose tissue fraction is below it are not run (no cells there).
        duplicate_overlap: fraction of a prediction covered by a kept cell (of the smaller of the
            two) from which it counts as a duplicate of it.
        edge_width: a prediction with pixels this close to an inner window border (1 = touching
            it) is cut.
        border_cells: ``'keep'`` cut predictions that no other window holds entirely as last
            resort, or ``'drop'`` every cut prediction.
        num_workers: reader threads that read windows ahead of the model, plus one thread that
            hands cells and finished rows to the sinks (see :mod:`~uniseg.inference.window_reader`);
            0 does everything in the calling thread. Results are the same either way.
    """

    def __init__(self, predictor: CellPredictor, tile: Tuple[int, int] = (512, 512),
                 stride: Optional[Tuple[int, int]] = None, batch_size: int = 4,
                 tissue_threshold: Optional[float] = None, duplicate_overlap: float = 0.5,
                 edge_width: int = 1, border_cells: str = "keep", num_workers: int = 0):
        check_num_workers(num_workers)
        self.num_workers = int(num_workers)
        self.predictor = predictor
        self.tile = tuple(int(t) for t in tile)
        self.stride = tuple(int(s) for s in stride) if stride is not None else tuple(
            max(1, t * 2 // 3) for t in self.tile)
        if len(self.tile) != 2 or len(self.stride) != 2 or min(self.tile + self.stride) < 1:
            raise ValueError(f"CellStitcher: tile {tile} and stride {stride} must be two positive ints each")
        if any(s > t for s, t in zip(self.stride, self.tile)):
            raise ValueError(f"CellStitcher: stride {self.stride} larger than the tile {self.tile} leaves gaps")
        if not 0.0 < duplicate_overlap <= 1.0:
            raise ValueError(f"CellStitcher: duplicate_overlap must be in (0, 1], got {duplicate_overlap}")
        if isinstance(edge_width, bool) or not isinstance(edge_width, int) or edge_width < 1:
            raise ValueError(f"CellStitcher: edge_width must be an int >= 1, got {edge_width!r}")
        if border_cells not in BORDER_CELLS:
            raise ValueError(f"CellStitcher: border_cells must be one of {BORDER_CELLS}, got {border_cells!r}")
        self.batch_size = max(1, int(batch_size))
        self.tissue_threshold = tissue_threshold
        self.duplicate_overlap = float(duplicate_overlap)
        self.edge_width = edge_width
        self.border_cells = border_cells

    def run(self, source: ImageSource, sinks: Sequence = (), progress: bool = False,
            select: Optional[np.ndarray] = None) -> CellStats:
        """Find the cells of ``source`` and stream them to ``sinks`` (already opened by the caller).

        ``select``: ``None`` or a bool array (tile rows, tile columns of the window grid); windows
        that are ``False`` are never read, hold no cells (as windows below ``tissue_threshold``)
        and count as skipped. Tissue pixels are counted once each over the pixels that selected
        windows read; pixels that no selected window read count as no tissue (with every window
        selected: the whole ROI, as before).
        """
        return _StitchRun(self, source, sinks, progress, select).run()


class _StitchRun:
    """The state of one :meth:`CellStitcher.run` (so a stitcher can be reused)."""

    def __init__(self, config: CellStitcher, source: ImageSource, sinks: Sequence, progress: bool,
                 select: Optional[np.ndarray] = None):
        self.cfg, self.source, self.sinks, self.progress = config, source, list(sinks), progress
        self.select = select
        self.writer: Optional[OrderedWriter] = None
        self.width, self.height = int(source.width), int(source.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"empty input ({self.width} x {self.height})")
        self.grid = TileGrid(self.width, self.height, config.tile, config.stride)
        self.stats = CellStats(roi_pixels=self.width * self.height)
        self.candidates: Dict[int, _Candidate] = {}
        self.links: Dict[int, Dict[int, int]] = {}   # key -> {linked key: shared pixels}
        self.parent: Dict[int, int] = {}             # union-find over linked candidates
        self.windows: List[_Window] = []
        self.skipped: set = set()                    # indices of windows the tissue test kept from running
        self.row_starts = np.asarray(self.grid.row_starts)
        self.col_starts = np.asarray(self.grid.col_starts)
        self.next_key = 1
        self.next_id = 1
        self.window_index = 0
        self.band = np.zeros((0, self.width), np.uint32)
        self.band_top = 0

    # ------------------------------------------------------------------ main loop
    def run(self) -> CellStats:
        grid, cfg = self.grid, self.cfg
        th, tw = grid.tile_height, grid.tile_width
        last_row = len(grid.row_starts) - 1
        reader = WindowReader(self.source, grid, cfg.batch_size, select=self.select, num_workers=cfg.num_workers)
        bar = progress_bar(len(grid), self.progress)
        start = time.perf_counter()
        times = self.stats.times
        recent = RecentRows(th)
        with OrderedWriter(background=cfg.num_workers > 0) as writer, closing(reader.rows()) as rows:
            self.writer = writer
            for row in rows:
                y0, finished = row.y0, row.finished
                model_start = time.perf_counter()
                self._count_tissue(recent.image(row, finished - y0))
                for batch in row.pop_batches():
                    for x, instances in zip(batch.xs, self._predict(batch)):
                        self._add_window(y0, x, th, tw, instances)
                    bar.update(len(batch.xs))
                self.stats.peak_pending = max(self.stats.peak_pending, len(self.candidates))
                last = row.row == last_row
                self._decide(finished, last)
                settled = self.height if last else min([finished] + [c.y0 for c in self.candidates.values()])
                self._emit_rows(settled)
                times.model += time.perf_counter() - model_start
        bar.close()
        self.stats.seconds = time.perf_counter() - start
        times.read, times.read_wait = reader.times.read, reader.times.read_wait
        times.write, times.write_wait = writer.seconds, writer.wait_seconds
        return self.stats

    def _predict(self, batch: WindowBatch) -> List[Optional[InstanceMap]]:
        """Predictions for a batch; ``None`` for windows not selected or skipped by the tissue test."""
        cfg = self.cfg
        keep, tiles = batch.to_run(cfg.tissue_threshold)
        results: List[Optional[InstanceMap]] = [None] * len(batch.xs)
        if keep.any():
            predicted = list(cfg.predictor.predict(tiles))
            if len(predicted) != int(keep.sum()):
                raise ValueError(f"{type(cfg.predictor).__name__}.predict returned {len(predicted)} results for "
                                 f"{int(keep.sum())} windows")
            for index, instances in zip(np.flatnonzero(keep).tolist(), predicted):
                if not isinstance(instances, InstanceMap) or instances.ids.shape != batch.shape:
                    raise ValueError(f"{type(cfg.predictor).__name__}.predict must return one InstanceMap of the "
                                     f"window size {batch.shape} per window, got "
                                     f"{getattr(getattr(instances, 'ids', None), 'shape', type(instances).__name__)}")
                results[index] = instances
        self.skipped.update((self.window_index + np.flatnonzero(~keep)).tolist())
        self.stats.windows += len(batch.xs)
        self.stats.windows_skipped += int((~keep).sum())
        return results

    def _count_tissue(self, rows: np.ndarray) -> None:
        """Tissue pixels of rows that no later tile row reads, in window-wide chunks (bounded temporaries).
        Pixels no selected window read are white there, which the tissue test never passes."""
        step = self.grid.tile_width
        for x in range(0, self.width, step):
            chunk = rows[:, x:x + step]
            self.stats.tissue_pixels += int(round(tissue_fraction(chunk) * chunk.shape[0] * chunk.shape[1]))

    # ------------------------------------------------------------------ candidates and links
    def _add_window(self, wy: int, wx: int, th: int, tw: int, instances: Optional[InstanceMap]) -> None:
        index, self.window_index = self.window_index, self.window_index + 1
        if instances is None or instances.num_instances == 0:
            return
        ids, n = instances.ids, instances.num_instances
        inner = (wy > 0, wy + th < self.height, wx > 0, wx + tw < self.width)  # top, bottom, left, right
        e = self.cfg.edge_width
        cut = np.zeros(n + 1, bool)
        for is_inner, edge in zip(inner, (ids[:e], ids[-e:], ids[:, :e], ids[:, -e:])):
            if is_inner:
                cut[edge] = True
        cut[0] = False
        areas, centroids = instance_properties(ids, n)
        depth = self._depths(centroids + 0.5, th, tw, inner)
        slices = ndimage.find_objects(ids, max_label=n)
        keys, boxes = [], []
        local_to_slot = np.zeros(n + 1, np.int64)  # local id -> 1 + position in `keys` (0: not a candidate)
        for k in range(1, n + 1):
            if areas[k - 1] == 0:
                continue
            self.stats.candidates += 1
            if cut[k] and self.cfg.border_cells == "drop":
                self.stats.border_dropped += 1
                continue
            sy, sx = slices[k - 1]
            mask = ids[sy, sx] == k
            low, high = depth[k - 1]
            priority = (bool(cut[k]), -low, -high, -float(instances.scores[k - 1]), index)
            y0, x0 = wy + sy.start, wx + sx.start
            inside = self._windows_holding(y0, x0, y0 + mask.shape[0], x0 + mask.shape[1], index) if cut[k] else ()
            centre = (wy + int(round(centroids[k - 1, 0])), wx + int(round(centroids[k - 1, 1])))
            candidate = _Candidate(index, y0, x0, mask, int(instances.labels[k - 1]), float(instances.scores[k - 1]),
                                   int(areas[k - 1]), centre, priority, bool(cut[k]), inside)
            key, self.next_key = self.next_key, self.next_key + 1
            self.candidates[key] = candidate
            self.parent[key] = key
            keys.append(key)
            boxes.append((candidate.y0, candidate.x0, candidate.y1, candidate.x1))
            local_to_slot[k] = len(keys)
        if not keys:
            return
        window = _Window(wy, wx, wy + th, wx + tw, keys, np.asarray(boxes, np.int64).reshape(-1, 4))
        slots = local_to_slot[ids]
        for other in self.windows:
            self._link(other, window, slots)
        self.windows.append(window)

    def _windows_holding(self, y0: int, x0: int, y1: int, x1: int, own: int) -> Tuple[int, ...]:
        """Indices of the windows other than ``own`` that contain the box entirely."""
        th, tw = self.grid.tile_height, self.grid.tile_width
        rows = np.flatnonzero((self.row_starts <= y0) & (self.row_starts + th >= y1))
        cols = np.flatnonzero((self.col_starts <= x0) & (self.col_starts + tw >= x1))
        windows = (rows[:, None] * len(self.col_starts) + cols[None, :]).ravel().tolist()
        return tuple(w for w in windows if w != own)

    @staticmethod
    def _depths(centres: np.ndarray, th: int, tw: int, inner: Tuple[bool, bool, bool, bool]) -> np.ndarray:
        """(n, 2) sorted (smaller, larger) per-axis distance of each centroid to the window's inner borders."""
        top, bottom, left, right = inner
        y, x = centres[:, 0], centres[:, 1]
        inf = np.full(len(centres), np.inf)
        dy = np.minimum(y if top else inf, th - y if bottom else inf)
        dx = np.minimum(x if left else inf, tw - x if right else inf)
        return np.sort(np.stack([dy, dx], axis=1), axis=1)

    def _link(self, old: _Window, new: _Window, new_slots: np.ndarray) -> None:
        """Link every candidate of ``new`` to the candidates of ``old`` it shares pixels with."""
        y0, x0 = max(old.y0, new.y0), max(old.x0, new.x0)
        y1, x1 = min(old.y1, new.y1), min(old.x1, new.x1)
        if y0 >= y1 or x0 >= x1:
            return
        b = old.boxes
        near = np.flatnonzero((b[:, 0] < y1) & (b[:, 2] > y0) & (b[:, 1] < x1) & (b[:, 3] > x0))
        if not len(near):
            return
        canvas = np.zeros((y1 - y0, x1 - x0), np.int64)  # old candidates painted: 1 + position in old.keys
        for j in near.tolist():
            c = self.candidates[old.keys[j]]
            cy0, cx0, cy1, cx1 = max(c.y0, y0), max(c.x0, x0), min(c.y1, y1), min(c.x1, x1)
            piece = c.mask[cy0 - c.y0:cy1 - c.y0, cx0 - c.x0:cx1 - c.x0]
            canvas[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0][piece] = j + 1
        theirs = new_slots[y0 - new.y0:y1 - new.y0, x0 - new.x0:x1 - new.x0]
        both = (canvas > 0) & (theirs > 0)
        if not both.any():
            return
        base = len(new.keys) + 1
        pairs, shared = np.unique(canvas[both] * base + theirs[both], return_counts=True)
        for pair, count in zip(pairs.tolist(), shared.tolist()):
            a, b_key = old.keys[pair // base - 1], new.keys[pair % base - 1]
            self.links.setdefault(a, {})[b_key] = count
            self.links.setdefault(b_key, {})[a] = count
            self._union(a, b_key)

    def _find(self, key: int) -> int:
        parent = self.parent
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    # ------------------------------------------------------------------ decisions
    def _decide(self, limit: int, final: bool) -> None:
        """Decide every cluster that no window below ``limit`` can join; emit its kept cells."""
        clusters: Dict[int, List[int]] = {}
        for key in self.candidates:
            clusters.setdefault(self._find(key), []).append(key)
        ready = [members for members in clusters.values()
                 if final or max(self.candidates[k].y1 for k in members) <= limit]
        if not ready:
            return
        kept: List[Tuple[_Candidate, np.ndarray]] = []
        for members in ready:
            kept.extend(self._resolve(members))
        for members in ready:
            for key in members:
                del self.candidates[key]
                del self.parent[key]
                self.links.pop(key, None)
        self._prune_windows()
        self._emit_cells(kept)

    def _resolve(self, members: List[int]) -> List[Tuple[_Candidate, np.ndarray]]:
        """Greedy choice within one cluster of linked predictions (rule in the module docstring)."""
        threshold = self.cfg.duplicate_overlap
        kept: Dict[int, np.ndarray] = {}
        for key in sorted(members, key=lambda k: (self.candidates[k].priority, k)):
            c = self.candidates[key]
            if c.cut and self._is_fragment(key, c):
                self.stats.fragments += 1
                continue
            neighbours = [(k, n) for k, n in self.links.get(key, {}).items() if k in kept]
            if neighbours and c.cut or any(_same_cell(c, self.candidates[k], n, threshold) for k, n in neighbours):
                self.stats.duplicates += 1
                continue
            mask = c.mask
            if neighbours:
                mask = mask.copy()
                for k, _ in neighbours:
                    other = self.candidates[k]
                    y0, x0, y1, x1 = max(c.y0, other.y0), max(c.x0, other.x0), min(c.y1, other.y1), min(c.x1, other.x1)
                    if y0 < y1 and x0 < x1:
                        mask[y0 - c.y0:y1 - c.y0, x0 - c.x0:x1 - c.x0] &= \
                            ~kept[k][y0 - other.y0:y1 - other.y0, x0 - other.x0:x1 - other.x0]
                lost = c.area - int(np.count_nonzero(mask))
                if lost >= threshold * c.area:
                    self.stats.duplicates += 1
                    continue
                self.stats.contested_pixels += lost
            kept[key] = mask
        return [(self.candidates[key], mask) for key, mask in kept.items()]

    def _is_fragment(self, key: int, c: _Candidate) -> bool:
        """Whether a window holding cut candidate ``c`` entirely ran and predicted only complete cells on it.

        Every window holding ``c`` has run by now (it starts above ``c``, so in this or an earlier
        window row), and its predictions sharing pixels with ``c`` are linked to it.
        """
        linked = [self.candidates[k] for k in self.links.get(key, {})]
        return any(window not in self.skipped and not any(o.cut for o in linked if o.window == window)
                   for window in c.inside)

    def _prune_windows(self) -> None:
        alive = []
        for window in self.windows:
            keep = [i for i, key in enumerate(window.keys) if key in self.candidates]
            if keep:
                window.keys = [window.keys[i] for i in keep]
                window.boxes = window.boxes[keep]
                alive.append(window)
        self.windows = alive

    # ------------------------------------------------------------------ output
    def _emit_cells(self, kept: List[Tuple[_Candidate, np.ndarray]]) -> None:
        """Give kept cells ids in reading order of their boxes, paint them into the band, hand them on."""
        kept.sort(key=lambda item: (item[0].y0, item[0].x0, item[0].window))
        n = len(kept)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        labels, scores, areas = np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.int64)
        boxes, centroids = np.empty((n, 4), np.int64), np.empty((n, 2), np.float64)
        touching, masks = np.empty(n, bool), []
        if kept and min(c.y0 for c, _ in kept) < self.band_top:  # would write into rows already handed on
            raise RuntimeError(f"cell stitching: a cell starts above row {self.band_top}, which was already emitted")
        self._ensure_band(max([c.y1 for c, _ in kept], default=0))
        for i, (c, mask) in enumerate(kept):
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            ty0, ty1, tx0, tx1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # shrink to what stayed
            mask = mask[ty0:ty1, tx0:tx1]
            y0, x0 = c.y0 + ty0, c.x0 + tx0
            area, (cy, cx) = _mask_moments(mask)
            boxes[i] = (y0, x0, y0 + mask.shape[0], x0 + mask.shape[1])
            centroids[i] = (y0 + cy, x0 + cx)
            labels[i], scores[i], areas[i], touching[i] = c.label, c.score, area, c.cut
            masks.append(mask)
            band_rows = self.band[y0 - self.band_top:y0 - self.band_top + mask.shape[0], x0:x0 + mask.shape[1]]
            band_rows[mask] = ids[i]
            self.stats.class_counts[c.label] = self.stats.class_counts.get(c.label, 0) + 1
        self.stats.cells += n
        self.stats.touching_border += int(touching.sum())
        if n:
            batch = CellBatch(ids, labels, scores, boxes, masks, areas, centroids, touching)
            for sink in self.sinks:
                self.writer.submit(sink.write_cells, batch)

    def _ensure_band(self, bottom: int) -> None:
        """Grow the id band so it reaches row ``bottom`` (exclusive)."""
        need = bottom - self.band_top
        if need > self.band.shape[0]:
            grown = np.zeros((need, self.width), np.uint32)
            grown[:self.band.shape[0]] = self.band
            self.band = grown
            self.stats.peak_band_rows = max(self.stats.peak_band_rows, need)

    def _emit_rows(self, settled: int) -> None:
        """Hand rows ``band_top .. settled`` (final) to the sinks and slide the band down."""
        n = settled - self.band_top
        if n <= 0:
            return
        self._ensure_band(settled)
        rows = self.band[:n].copy() if self.writer.background else self.band[:n]  # the band is reused below
        for sink in self.sinks:
            self.writer.submit(sink.write_band, self.band_top, rows)
        rest = self.band.shape[0] - n
        self.band[:rest] = self.band[n:]
        self.band[rest:] = 0
        self.band_top = settled


def _same_cell(a: _Candidate, b: _Candidate, shared: int, threshold: float) -> bool:
    """Whether two overlapping predictions from different windows show the same cell."""
    return shared >= threshold * min(a.area, b.area) or _on_mask(a.centre, b) or _on_mask(b.centre, a)


def _on_mask(point: Tuple[int, int], c: _Candidate) -> bool:
    y, x = point
    return c.y0 <= y < c.y1 and c.x0 <= x < c.x1 and bool(c.mask[y - c.y0, x - c.x0])


def _mask_moments(mask: np.ndarray) -> Tuple[int, Tuple[float, float]]:
    """Pixel count and mean (row, col) index of a boolean mask."""
    rows, cols = np.nonzero(mask)
    return len(rows), (float(rows.mean()), float(cols.mean()))


def cell_summary(stats: CellStats, classes: Sequence[str], mpp: Optional[float]) -> dict:
    """The JSON-ready summary of a stitched ROI.

    Tissue area: the ROI pixels that pass :func:`uniseg.inference.tissue.tissue_fraction`'s
    per-pixel test (HSV saturation above 0.07 or value below 0.92), each pixel counted once, times
    ``mpp**2``; densities are cells per mm^2 of that area (``None`` without a pixel size or tissue).
    """
    mm2_per_px = None if mpp is None else (float(mpp) / 1000.0) ** 2
    tissue_mm2 = None if mm2_per_px is None else stats.tissue_pixels * mm2_per_px

    def density(count: int) -> Optional[float]:
        return None if not tissue_mm2 else round(count / tissue_mm2, 3)

    per_class = {name: dict(cells=int(stats.class_counts.get(i, 0)),
                            cells_per_mm2_tissue=density(stats.class_counts.get(i, 0)))
                 for i, name in enumerate(classes)}
    return dict(
        cells=stats.cells, cells_per_mm2_tissue=density(stats.cells), classes=per_class,
        tissue_pixels=stats.tissue_pixels, tissue_area_mm2=None if tissue_mm2 is None else round(tissue_mm2, 6),
        roi_pixels=stats.roi_pixels, windows=stats.windows, windows_skipped=stats.windows_skipped,
        predicted=stats.candidates, duplicates_dropped=stats.duplicates, fragments_dropped=stats.fragments,
        touching_window_border=stats.touching_border, border_cells_dropped=stats.border_dropped,
        contested_pixels=stats.contested_pixels, seconds=round(stats.seconds, 3))
