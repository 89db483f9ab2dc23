"""Sliding-window inference over regions far larger than memory, streamed to disk band by band.

mmseg's ``slide_inference`` keeps a float32 (classes x H x W) score tensor, a count matrix and one
padded full-size copy per window: about 16 GB of scores alone for a 20,000-px ROI with 10 classes.
Here windows are processed one tile row at a time and accumulated into a band only one tile high;
rows that no later window touches are final, so they are turned into labels (and probabilities),
handed to the output sinks and dropped. Peak memory is set by the tile, the batch and the ROI
*width*, never by its height.

Window positions are mmseg's; with ``window='uniform'`` the averaging is too, so the labels equal
mmseg's. The default is the cosine window (see :data:`~uniseg.inference.tiling.DEFAULT_WINDOW`).
"""
from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import print_log
from torch import nn

from .options import check_num_workers, check_pair, check_window_options
from .ordered_writer import OrderedWriter
from .tiling import DEFAULT_WINDOW, TileGrid, blend_window
from .window_reader import PipelineTimes, RecentRows, WindowBatch, WindowReader

__all__ = ["SlidingWindowInferencer", "InferenceStats", "ImageSource", "ArraySource", "progress_bar"]


class ImageSource(Protocol):
    """What the inferencer reads: a virtual RGB image read by window (``uniseg.io.RegionSource`` fits)."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray: ...


class ArraySource:
    """An in-memory RGB array as an :class:`ImageSource` (tests, small images)."""

    def __init__(self, rgb: np.ndarray):
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}")
        self.rgb = rgb

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.rgb[y:y + h, x:x + w]


@dataclass
class InferenceStats:
    tiles: int = 0
    tiles_skipped: int = 0
    seconds: float = 0.0
    class_pixels: List[int] = field(default_factory=list)
    times: PipelineTimes = field(default_factory=PipelineTimes)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else float("nan")


class SlidingWindowInferencer:
    """Stream a segmentor over an :class:`ImageSource` into mask sinks (see :mod:`uniseg.export`).

    Args:
        model: an mmseg segmentor (``encode_decode``) with a ``data_preprocessor`` holding mean/std.
        num_classes: number of output channels.
        tile, stride: window size and step (h, w) in working-resolution pixels.
        batch_size: windows per forward pass.
        window: ``cosine`` (default), ``gaussian`` or ``uniform`` (mmseg's average) blending.
        tissue_threshold: a fraction in [0, 1]; if set, windows whose tissue fraction is below it are
            not run and count as ``background_index`` (certain background).
        amp: run the model under bf16 autocast (GPU, or CPU if asked).
        with_probs: also emit per-class probabilities (uint8, 0..255) per band.
        num_workers: reader threads that read windows ahead of the model, plus one thread that
            hands finished bands to the sinks (see :mod:`~uniseg.inference.window_reader`); 0 does
            everything in the calling thread. Results are the same either way.
    """

    def __init__(self, model: nn.Module, num_classes: int, tile: Tuple[int, int] = (512, 512),
                 stride: Optional[Tuple[int, int]] = None, batch_size: int = 4, window: str = DEFAULT_WINDOW,
                 tissue_threshold: Optional[float] = None, background_index: int = 0, amp: bool = False,
                 with_probs: bool = False, num_workers: int = 0):
        check_window_options(tile, stride, batch_size, window, tissue_threshold)
        check_num_workers(num_workers)
        self.num_workers = int(num_workers)
        self.model = model.eval()
        self.num_classes = num_classes
        self.tile = check_pair("tile", tile)
        self.stride = check_pair("stride", stride) or tuple(max(1, t * 2 // 3) for t in self.tile)
        self.batch_size = int(batch_size)
        self.window_kind = window
        self.tissue_threshold = tissue_threshold
        self.background_index = background_index
        self.amp = amp
        self.with_probs = with_probs
        device = next(model.parameters()).device
        self.device = device
        pre = model.data_preprocessor
        self.mean = pre.mean.to(device).view(1, 3, 1, 1)
        self.std = pre.std.to(device).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ model
    @torch.no_grad()
    def predict_tiles(self, tiles) -> torch.Tensor:
        """Per-class scores (B, C, h, w) for RGB uint8 windows (B, h, w, 3), as ``encode_decode`` returns them.

        ``tiles``: a numpy array or a uint8 tensor; a pinned tensor is copied to the GPU asynchronously.
        """
        if not isinstance(tiles, torch.Tensor):
            tiles = torch.from_numpy(np.ascontiguousarray(tiles))
        pinned = self.device.type == "cuda" and tiles.is_pinned()
        x = tiles.to(self.device, non_blocking=pinned).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        metas = [dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)) for _ in range(x.shape[0])]
        if self.amp:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                scores = self.model.encode_decode(x, metas)
        else:
            scores = self.model.encode_decode(x, metas)
        return scores.float()

    # ------------------------------------------------------------------ streaming
    def run(self, source: ImageSource, sinks: Sequence = (), progress: bool = True,
            on_band: Optional[Callable[[int, np.ndarray], None]] = None,
            select: Optional[np.ndarray] = None) -> InferenceStats:
        """Segment ``source`` and stream finished rows to ``sinks`` (already opened by the caller).

        ``select``: ``None`` or a bool array (tile rows, tile columns of the window grid); windows
        that are ``False`` are never read and count as certain background (``background_index``),
        as windows below ``tissue_threshold`` do, and as skipped in the stats. The ``image`` handed
        to the sinks (the overlay's background) is white where no selected window was read.
        ``on_band`` is called like a sink (in the writer thread when ``num_workers > 0``).
        """
        width, height = source.width, source.height
        if width <= 0 or height <= 0:
            raise ValueError(f"empty input ({width} x {height})")
        grid = TileGrid(width, height, self.tile, self.stride)
        th, tw = grid.tile_height, grid.tile_width
        weights = torch.from_numpy(blend_window(self.window_kind, th, tw)).to(self.device)
        classes = self.num_classes
        # The band spans at most one tile height: rows above the current tile row are already final.
        band_scores = torch.zeros(classes, th, width, device=self.device)
        band_weight = torch.zeros(th, width, device=self.device)
        stats = InferenceStats(class_pixels=[0] * classes)
        reader = WindowReader(source, grid, self.batch_size, select=select, num_workers=self.num_workers,
                              pin_memory=self.device.type == "cuda")
        recent = RecentRows(th)  # the sinks' image: what this and earlier tile rows read of the finished rows
        bar = progress_bar(len(grid), progress)
        start = time.perf_counter()
        with OrderedWriter(background=self.num_workers > 0) as writer, closing(reader.rows()) as rows:
            for row in rows:
                y0 = row.y0  # the band always starts at the current tile row (earlier rows were emitted)
                for batch in row.pop_batches():
                    model_start = time.perf_counter()
                    scores, skipped = self._scores_for(batch)
                    for x, s in zip(batch.xs, scores):
                        band_scores[:, :, x:x + tw] += s * weights
                        band_weight[:, x:x + tw] += weights
                    stats.tiles += len(batch.xs)
                    stats.tiles_skipped += skipped
                    stats.times.model += time.perf_counter() - model_start
                    bar.update(len(batch.xs))
                # Rows [y0, finished) are complete: emit them and slide the band down to the next tile row.
                n = row.finished - y0
                model_start = time.perf_counter()
                labels, probs = self._finish(band_scores[:, :n], band_weight[:n])
                stats.times.model += time.perf_counter() - model_start
                writer.submit(self._emit, y0, labels, probs, recent.image(row, n), sinks, stats, on_band)
                band_scores = torch.roll(band_scores, -n, dims=1)
                band_weight = torch.roll(band_weight, -n, dims=0)
                band_scores[:, th - n:] = 0
                band_weight[th - n:] = 0
        bar.close()
        stats.seconds = time.perf_counter() - start
        stats.times.read, stats.times.read_wait = reader.times.read, reader.times.read_wait
        stats.times.write, stats.times.write_wait = writer.seconds, writer.wait_seconds
        return stats

    def _scores_for(self, batch: WindowBatch) -> Tuple[torch.Tensor, int]:
        """Model scores for a batch of windows; unselected windows and windows without tissue get certain
        background."""
        keep, pixels = batch.to_run(self.tissue_threshold)
        scores = torch.zeros(len(batch.xs), self.num_classes, *batch.shape, device=self.device)
        scores[~torch.from_numpy(keep), self.background_index] = 1.0
        if keep.any():
            scores[torch.from_numpy(keep)] = self.predict_tiles(pixels)
        return scores, int((~keep).sum())

    def _finish(self, scores: torch.Tensor, weight: torch.Tensor) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Labels (and uint8 probabilities) of finished rows, on the host."""
        mean = scores / weight.clamp_min(1e-12)
        labels = mean.argmax(0).to(torch.uint8).cpu().numpy()
        probs = None
        if self.with_probs:
            # Mask2Former's semantic scores are non-negative per-class masses; normalise them over classes.
            norm = mean / mean.sum(0, keepdim=True).clamp_min(1e-12)
            probs = (norm * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return labels, probs

    def _emit(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray], image: np.ndarray, sinks: Sequence,
              stats: InferenceStats, on_band) -> None:
        # per class, not np.bincount: that would copy the band as int64 (8 bytes per pixel)
        for c in range(self.num_classes):
            stats.class_pixels[c] += int(np.count_nonzero(labels == c))
        for sink in sinks:
            sink.write_band(y0, labels, probs=probs, image=image)
        if on_band is not None:
            on_band(y0, labels)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool):
    """A tqdm bar over ``total`` windows, or a silent stand-in when ``enabled`` is false (or tqdm is missing)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print_log("tqdm is not installed: no progress bar", logger="current", level=logging.WARNING)
        return _NoBar()
    return tqdm(total=total, unit="tile", desc="inference", dynamic_ncols=True, smoothing=0.1)
