"""Streaming writer for tiled, pyramidal TIFFs whose rows arrive top to bottom.

Why this design: a 100k x 100k mask must be written without ever being in memory, yet TIFF
readers (QuPath, tifffile, OpenSlide-style viewers) want a tiled level 0 followed by reduced
levels. ``tifffile.TiffWriter.write`` accepts an *iterator* of tiles, so it pulls data; the
inferencer pushes bands. The two meet through a background thread:

* level 0: incoming rows fill one tile-high *strip* (tile rows x W); each full strip is handed
  (rendezvous, no queue) to a thread that runs ``TiffWriter.write(tile_iterator, ...)``, which
  cuts it into tiles, compresses and writes them while the next strip fills. About two strips are
  alive at once (one more with ``maxworkers > 1``), so memory is ~ 2 x tile x W bytes plus a
  band, independent of the ROI height.
* reduced levels (factor 2 each, down to about one tile): every band is also reduced on arrival
  (label-preserving mode for masks, mean for probabilities) and the result cascades down the
  levels. Each level's rows are grouped into small chunks, zlib-compressed and appended to an
  anonymous temporary file in the output directory (removed by the OS even after a crash). After
  level 0 is complete the thread writes each level from its spool as a SubIFD of level 0 with
  ``subfiletype=1`` (reduced image), the layout tifffile and OME-style readers present as one
  pyramid series.

The file is an OME-TIFF (``TiffWriter(ome=True)``): tifffile reserves the first ImageDescription
and writes the OME-XML there when the file is closed, so Bio-Formats/QuPath read the SubIFDs as one
calibrated pyramid (see :mod:`uniseg.export.ome` for what the XML holds). The resolution tags stay
as well, for readers that ignore OME-XML (OpenSlide's generic-TIFF driver takes its mpp from them).

The output appears under its final name only after :meth:`StreamingPyramidTiff.commit`;
:meth:`StreamingPyramidTiff.abort` stops the thread and removes the temporary file.
"""
from __future__ import annotations

import math
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.atomic import OutputWriteError
from .base import PathLike, PendingFile

__all__ = [
    "StreamingPyramidTiff", "reduce_labels_2x", "reduce_mean_2x", "pyramid_shapes",
    "normalize_compression", "colormap_from_palette", "LOSSLESS_COMPRESSIONS",
]

Reducer = Callable[[np.ndarray], np.ndarray]

#: compressions accepted for masks/probabilities; lossy codecs would corrupt class labels
LOSSLESS_COMPRESSIONS = ("zlib", "deflate", "adobe_deflate", "lzw", "zstd", "lzma", "packbits", "none")
_POLL_S = 0.1  # how often a blocked handoff looks for an abort or a dead writer thread


def normalize_compression(compression: Optional[str], where: str) -> Optional[str]:
    """Lower-case a compression name, map 'none'/None to None, refuse lossy or unknown codecs."""
    name = "none" if compression in (None, False) else str(compression).lower()
    if name not in LOSSLESS_COMPRESSIONS:
        raise ValueError(f"{where}: compression {compression!r} is not supported; use a lossless one of "
                         f"{list(LOSSLESS_COMPRESSIONS)} (lossy codecs would change label values)")
    return None if name == "none" else name


# ---------------------------------------------------------------------------- reductions
def _pad_even_width(rows: np.ndarray) -> np.ndarray:
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)  # replicate the last column
    return rows


def reduce_labels_2x(rows: np.ndarray) -> np.ndarray:
    """Halve a label image (2m, W) -> (m, ceil(W/2)) by taking the mode of each 2x2 block.

    Averaging or interpolating labels would invent classes, so each output pixel is the most
    frequent label of its block; ties go to the earliest of top-left, top-right, bottom-left,
    bottom-right (so a block of four different labels keeps its top-left one, as nearest-
    neighbour would). An odd last column is paired with itself.
    """
    if rows.ndim != 2 or rows.shape[0] % 2:
        raise ValueError(f"reduce_labels_2x needs an even number of rows, got shape {rows.shape}")
    rows = _pad_even_width(rows)
    a, b = rows[0::2, 0::2], rows[0::2, 1::2]
    c, d = rows[1::2, 0::2], rows[1::2, 1::2]
    ab, ac, ad = a == b, a == c, a == d
    bc, bd, cd = b == c, b == d, c == d
    # number of *other* block members equal to each candidate
    counts = (
        ab.astype(np.uint8) + ac + ad,
        ab.astype(np.uint8) + bc + bd,
        ac.astype(np.uint8) + bc + cd,
        ad.astype(np.uint8) + bd + cd,
    )
    best, best_count = a.copy(), counts[0]
    for value, count in zip((b, c, d), counts[1:]):
        better = count > best_count  # strict: ties keep the earlier candidate
        np.copyto(best, value, where=better)
        best_count = np.maximum(best_count, count)
    return best


def reduce_mean_2x(rows: np.ndarray) -> np.ndarray:
    """Halve a continuous uint8 image (2m, W) -> (m, ceil(W/2)) by rounded 2x2 averaging."""
    if rows.ndim != 2 or rows.shape[0] % 2:
        raise ValueError(f"reduce_mean_2x needs an even number of rows, got shape {rows.shape}")
    rows = _pad_even_width(rows)
    total = rows[0::2, 0::2].astype(np.uint16)
    total += rows[0::2, 1::2]
    total += rows[1::2, 0::2]
    total += rows[1::2, 1::2]
    total += 2
    total >>= 2
    return total.astype(rows.dtype)


def pyramid_shapes(height: int, width: int, tile: int, levels: Optional[int] = None) -> List[Tuple[int, int]]:
    """(height, width) of each level; each is ceil(previous / 2).

    ``levels=None`` keeps halving until the level fits in one tile; an int asks for exactly that
    many levels (1 = no pyramid) and is refused if a level would no longer shrink.
    """
    shapes = [(int(height), int(width))]
    if levels is None:
        while max(shapes[-1]) > tile:
            h, w = shapes[-1]
            shapes.append(((h + 1) // 2, (w + 1) // 2))
        return shapes
    if int(levels) < 1:
        raise ValueError(f"levels must be >= 1 (or None for automatic), got {levels}")
    for _ in range(int(levels) - 1):
        h, w = shapes[-1]
        if h == 1 and w == 1:
            raise ValueError(f"levels={levels} is too many for a {height} x {width} image "
                             f"(level {len(shapes)} is already 1 x 1)")
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


# ---------------------------------------------------------------------------- strips
class _StripAccumulator:
    """Collects rows into tile-high strips and hands each full strip to ``emit``."""

    def __init__(self, width: int, strip_rows: int, dtype: np.dtype, emit: Callable[[np.ndarray], None]):
        self.width, self.strip_rows, self.dtype, self.emit = width, strip_rows, dtype, emit
        self._buf: Optional[np.ndarray] = None
        self._fill = 0
        self.rows_seen = 0

    def append(self, rows: np.ndarray) -> None:
        start = 0
        while start < rows.shape[0]:
            if self._buf is None:
                # a fresh buffer per strip: the previous one now belongs to the consumer
                self._buf = np.empty((self.strip_rows, self.width), dtype=self.dtype)
            n = min(self.strip_rows - self._fill, rows.shape[0] - start)
            self._buf[self._fill:self._fill + n] = rows[start:start + n]
            self._fill += n
            start += n
            if self._fill == self.strip_rows:
                self._hand_over()
        self.rows_seen += rows.shape[0]

    def flush(self) -> None:
        if self._fill:
            self._hand_over()

    def _hand_over(self) -> None:
        strip, self._buf, n, self._fill = self._buf, None, self._fill, 0
        self.emit(strip[:n])


class _StripSpool:
    """Append-only store of compressed row chunks in an anonymous temporary file.

    Chunks are small (a fraction of a tile high) so that the in-memory accumulators of all
    reduced levels stay far below one level-0 strip; :meth:`strips` reassembles tile-high strips
    when the level is finally written.
    """

    def __init__(self, directory: Path, width: int, dtype: np.dtype):
        self.width, self.dtype = width, dtype
        self._fh = tempfile.TemporaryFile(prefix=".uniseg-spool-", dir=directory)
        self._index: List[Tuple[int, int, int]] = []  # (offset, nbytes, rows)
        self._end = 0

    def write(self, chunk: np.ndarray) -> None:
        data = zlib.compress(np.ascontiguousarray(chunk).tobytes(), 1)  # labels compress well; be fast
        self._fh.seek(self._end)
        self._fh.write(data)
        self._index.append((self._end, len(data), chunk.shape[0]))
        self._end += len(data)

    def strips(self, strip_rows: int) -> Iterator[np.ndarray]:
        """Yield the stored rows regrouped into strips of ``strip_rows`` (the last may be shorter)."""
        self._fh.flush()
        pending: List[np.ndarray] = []
        count = 0
        for offset, nbytes, rows in self._index:
            self._fh.seek(offset)
            raw = zlib.decompress(self._fh.read(nbytes))
            pending.append(np.frombuffer(raw, dtype=self.dtype).reshape(rows, self.width))
            count += rows
            if count >= strip_rows:
                block = np.concatenate(pending)
                yield block[:strip_rows]
                rest = block[strip_rows:]
                pending, count = ([rest] if len(rest) else []), len(rest)
                del block
        if pending:
            yield np.concatenate(pending)

    def close(self) -> None:
        self._fh.close()


class _HalvingStage:
    """Turns a stream of rows into the stream of the next pyramid level (carrying an odd row).

    Rows are reduced in slices of about ``chunk_pixels`` output pixels so the reduction's
    temporaries stay small even for very wide bands.
    """

    def __init__(self, reduce: Reducer, chunk_pixels: int = 1 << 16):
        self.reduce = reduce
        self.chunk_pixels = chunk_pixels
        self._carry: Optional[np.ndarray] = None

    def feed(self, rows: np.ndarray) -> Optional[np.ndarray]:
        if self._carry is not None:
            rows = np.concatenate([self._carry, rows], axis=0)
            self._carry = None
        even = rows.shape[0] - rows.shape[0] % 2
        if even < rows.shape[0]:
            self._carry = rows[even:].copy()  # keep one row, not a view pinning the whole band
        if not even:
            return None
        step = 2 * max(1, self.chunk_pixels // max(1, (rows.shape[1] + 1) // 2))
        if step >= even:
            return self.reduce(rows[:even])
        return np.concatenate([self.reduce(rows[y:min(y + step, even)]) for y in range(0, even, step)])

    def finish(self) -> Optional[np.ndarray]:
        """Reduce a left-over last row by pairing it with itself (odd-height levels)."""
        if self._carry is None:
            return None
        rows, self._carry = np.concatenate([self._carry, self._carry], axis=0), None
        return self.reduce(rows)


class _Handoff:
    """A one-item rendezvous between the producer and the writer thread.

    Unlike a bounded queue, :meth:`put` returns only once the consumer has *taken* the item, so
    the producer cannot start filling a new strip while another one waits in a queue: at most
    the strip being encoded and the strip being filled are alive (the memory bound above).
    Both sides wait in short slices so an abort or a dead peer is noticed promptly.
    """

    _EMPTY = object()

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: object = self._EMPTY

    def put(self, item: object, keep_waiting: Callable[[], None]) -> None:
        with self._cond:
            while self._item is not self._EMPTY:
                keep_waiting()
                self._cond.wait(_POLL_S)
            self._item = item
            self._cond.notify_all()
            while self._item is item:
                keep_waiting()
                self._cond.wait(_POLL_S)

    def get(self, keep_waiting: Callable[[], None]) -> object:
        with self._cond:
            while self._item is self._EMPTY:
                keep_waiting()
                self._cond.wait(_POLL_S)
            item, self._item = self._item, self._EMPTY
            self._cond.notify_all()
            return item


class _Aborted(Exception):
    """Raised inside the writer thread's tile iterator to stop ``TiffWriter.write``."""


_DONE = object()  # handoff sentinel: all rows arrived, reduced-level spools are complete


class StreamingPyramidTiff:
    """One tiled pyramidal TIFF written from rows that arrive in order.

    Args:
        path: final file name.
        height, width: level-0 size.
        reduce: 2x reduction used to build each level from the previous one
            (:func:`reduce_labels_2x` or :func:`reduce_mean_2x`).
        dtype: sample type (uint8 for masks and probabilities).
        tile: tile edge in pixels (multiple of 16, as TIFF requires).
        levels: number of levels including level 0; ``None`` halves down to about one tile.
        compression: lossless codec name (see :data:`LOSSLESS_COMPRESSIONS`).
        photometric: ``'minisblack'`` or ``'palette'`` (needs ``colormap``).
        colormap: (3, 256) uint16 TIFF ColorMap for ``'palette'`` images.
        ome_metadata: OME metadata of level 0 for tifffile (:func:`uniseg.export.ome.ome_metadata`);
            ``None`` writes a bare OME-XML (size, type and, from ``mpp``, the physical pixel size).
        mpp: microns per level-0 pixel for the OME physical size and the resolution tags (each
            level gets its own).
        bigtiff: force (True) or forbid (False) BigTIFF; ``None`` picks BigTIFF when the raw
            image data would approach the 4 GiB limit of classic TIFF.
        maxworkers: threads tifffile may use to compress the tiles of one strip (1: compress in
            the writer thread itself, which already runs beside the inferencer; more threads keep
            one extra strip alive).
    """

    def __init__(self, path: PathLike, height: int, width: int, *, reduce: Reducer,
                 dtype: np.dtype = np.uint8, tile: int = 512, levels: Optional[int] = None,
                 compression: Optional[str] = "zlib", photometric: str = "minisblack",
                 colormap: Optional[np.ndarray] = None, ome_metadata: Optional[dict] = None,
                 mpp: Optional[float] = None, bigtiff: Optional[bool] = None,
                 maxworkers: Optional[int] = 1):
        self.path = Path(path)
        if int(tile) < 16 or int(tile) % 16:
            raise ValueError(f"{self.path}: tile must be a positive multiple of 16 (TIFF rule), got {tile}")
        if photometric == "palette" and colormap is None:
            raise ValueError(f"{self.path}: photometric='palette' needs a colormap")
        self.tile = int(tile)
        self.shapes = pyramid_shapes(height, width, self.tile, levels)
        self.dtype = np.dtype(dtype)
        self.reduce = reduce
        self.compression = normalize_compression(compression, str(self.path))
        self.photometric = photometric
        self.colormap = colormap
        self.ome_metadata = dict(ome_metadata or {})
        if mpp is not None:  # one source of truth for the pixel size: the mpp argument
            self.ome_metadata.update(PhysicalSizeX=float(mpp), PhysicalSizeXUnit="µm",
                                     PhysicalSizeY=float(mpp), PhysicalSizeYUnit="µm")
        self.mpp = mpp
        if bigtiff is None:
            raw = sum(h * w for h, w in self.shapes) * self.dtype.itemsize
            bigtiff = raw > 2**31  # generous margin below the 2**32 offset limit
        self.bigtiff = bool(bigtiff)
        self.maxworkers = maxworkers

        self._file: Optional[PendingFile] = None
        self._handoff = _Handoff()
        self._abort_event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._level0: Optional[_StripAccumulator] = None
        self._stages: List[_HalvingStage] = []
        self._spool_rows: List[_StripAccumulator] = []
        self._spools: List[_StripSpool] = []

    @property
    def num_levels(self) -> int:
        return len(self.shapes)

    # ------------------------------------------------------------------ producer side
    def start(self) -> None:
        """Create the temporary file and spools and start the writer thread."""
        height, width = self.shapes[0]
        self._file = PendingFile(self.path)
        self._level0 = _StripAccumulator(width, self.tile, self.dtype, self._put)
        for _, level_width in self.shapes[1:]:
            spool = _StripSpool(self.path.parent, level_width, self.dtype)
            self._spools.append(spool)
            self._stages.append(_HalvingStage(self.reduce))
            spool_chunk_rows = max(1, self.tile // 8)
            self._spool_rows.append(_StripAccumulator(level_width, spool_chunk_rows, self.dtype, spool.write))
        self._thread = threading.Thread(target=self._run, name=f"tiff-writer:{self.path.name}", daemon=True)
        self._thread.start()

    def write_rows(self, rows: np.ndarray) -> None:
        """Append the next rows (h, W) of level 0."""
        self._raise_if_failed()
        if rows.shape[1:] != (self.shapes[0][1],):
            raise ValueError(f"{self.path}: rows of width {self.shapes[0][1]} expected, got shape {rows.shape}")
        if self._level0.rows_seen + rows.shape[0] > self.shapes[0][0]:
            raise ValueError(f"{self.path}: more than {self.shapes[0][0]} rows written")
        self._level0.append(rows)
        self._cascade(rows, 0)

    def _cascade(self, rows: Optional[np.ndarray], first_stage: int) -> None:
        for stage, store in zip(self._stages[first_stage:], self._spool_rows[first_stage:]):
            rows = stage.feed(rows)
            if rows is None:
                return
            store.append(rows)

    def finish(self) -> None:
        """Complete all levels and wait for the writer thread; :meth:`commit` then publishes the file.

        The two steps are separate so a sink writing several files can publish them only once
        all are complete.
        """
        if self._level0.rows_seen != self.shapes[0][0]:
            raise ValueError(f"{self.path}: only {self._level0.rows_seen} of {self.shapes[0][0]} rows written")
        self._level0.flush()
        for i, stage in enumerate(self._stages):
            rows = stage.finish()
            if rows is not None:
                self._spool_rows[i].append(rows)
                self._cascade(rows, i + 1)
            self._spool_rows[i].flush()
            expected = self.shapes[i + 1][0]
            if self._spool_rows[i].rows_seen != expected:  # internal consistency, not user error
                raise RuntimeError(f"{self.path}: level {i + 1} has {self._spool_rows[i].rows_seen} "
                                   f"rows, expected {expected}")
        self._put(_DONE)
        self._thread.join()
        self._raise_if_failed()
        self._close_spools()

    @property
    def pending(self) -> PendingFile:
        """The file under its temporary name (complete after :meth:`finish`)."""
        return self._file

    def commit(self) -> Path:
        """Move the finished file to its final name."""
        return self._file.commit()

    def abort(self) -> None:
        """Stop the writer thread and delete the temporary file and spools."""
        self._abort_event.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=60)
        self._close_spools()
        if self._file is not None:
            self._file.discard()

    def _close_spools(self) -> None:
        for spool in self._spools:
            spool.close()
        self._spools = []

    def _put(self, item: object) -> None:
        self._handoff.put(item, self._check_writer_alive)

    def _check_writer_alive(self) -> None:
        self._raise_if_failed()
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"{self.path}: TIFF writer thread stopped unexpectedly")

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, OSError):  # full disk, read-only folder: an output error, not a bug
            reason = self._error.strerror or str(self._error)
            raise OutputWriteError(f"{self.path}: cannot write this output ({reason})") from self._error
        if self._error is not None:
            raise RuntimeError(f"{self.path}: writing the TIFF failed: {self._error}") from self._error

    # ------------------------------------------------------------------ writer thread
    def _get(self) -> object:
        return self._handoff.get(self._check_not_aborted)

    def _check_not_aborted(self) -> None:
        if self._abort_event.is_set():
            raise _Aborted()

    def _tiles(self, strips: Iterator[np.ndarray], width: int) -> Iterator[np.ndarray]:
        # Tiles are yielded as copies, not views: tifffile keeps the first item it peeks at for the
        # whole write, and a view would pin its entire strip. (tifffile would copy a
        # non-contiguous view anyway, and pads partial edge tiles itself.)
        for strip in strips:
            self._check_not_aborted()
            for x in range(0, width, self.tile):
                yield np.ascontiguousarray(strip[:, x:x + self.tile])
            del strip  # release it before the next strip is requested (memory bound)

    def _level0_strips(self) -> Iterator[np.ndarray]:
        for _ in range(math.ceil(self.shapes[0][0] / self.tile)):
            strip = self._get()
            if strip is _DONE:  # cannot happen when finish() checked the row count
                raise RuntimeError("level 0 ended early")
            yield strip
            del strip

    def _write_options(self, level: int) -> dict:
        height, width = self.shapes[level]
        options = dict(
            shape=(height, width), dtype=self.dtype, tile=(self.tile, self.tile),
            photometric=self.photometric, compression=self.compression, metadata=None,
            maxworkers=self.maxworkers,
        )
        if self.maxworkers != 1:
            # parallel encoding buffers up to `buffersize` bytes of tiles: keep it to one strip
            options["buffersize"] = self.tile * width * self.dtype.itemsize
        if self.colormap is not None:
            options["colormap"] = self.colormap
        if self.mpp is not None:
            h0, w0 = self.shapes[0]
            options["resolution"] = (1e4 / (self.mpp * w0 / width), 1e4 / (self.mpp * h0 / height))
            options["resolutionunit"] = "CENTIMETER"
        return options

    def _run(self) -> None:
        import tifffile

        try:
            with tifffile.TiffWriter(self._file.tmp, bigtiff=self.bigtiff, ome=True) as tif:
                options = self._write_options(0)
                options["metadata"] = self.ome_metadata  # OME-XML, written by tifffile at close
                tif.write(self._tiles(self._level0_strips(), self.shapes[0][1]),
                          subifds=self.num_levels - 1, software="uniseg", **options)
                if self._get() is not _DONE:
                    raise RuntimeError("unexpected data after the last level-0 strip")
                for level, spool in enumerate(self._spools, start=1):
                    tif.write(self._tiles(spool.strips(self.tile), self.shapes[level][1]), subfiletype=1,
                              **self._write_options(level))
        except BaseException as exc:  # reported to the producer on its next call
            self._error = exc


def colormap_from_palette(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """TIFF ColorMap (3, 256) uint16 for a class palette; unused entries are black."""
    cmap = np.zeros((3, 256), dtype=np.uint16)
    for index, color in enumerate(palette):
        cmap[:, index] = [int(v) * 257 for v in color]  # 8-bit -> 16-bit: 255 -> 65535
    return cmap
