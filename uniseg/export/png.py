"""Indexed (palette) PNG label mask, for ROIs small enough for ordinary image viewers.

The PNG is encoded incrementally (each band is deflated into IDAT chunks as it arrives), so even
the largest allowed mask is never held in memory. The size limit exists for the *readers*: most
viewers and Pillow decode the whole image at once, so masks beyond ``max_pixels`` are refused at
``open`` with a pointer to the tiled TIFF output, which viewers read tile by tile.

File layout: 8-bit palette image (colour type 3) whose pixel values are the class indices, a
256-entry PLTE (class colours, black for unused entries and ``ignore_index``), and a ``tEXt``
chunk ``uniseg`` holding the class names/palette as JSON.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, List, Optional

import numpy as np

from .base import ExportContext, MaskSink, PathLike, PendingFile, palette_lut

__all__ = ["IndexedPngSink", "DEFAULT_PNG_MAX_PIXELS"]

DEFAULT_PNG_MAX_PIXELS = 16384 * 16384
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_DIM = 2**31 - 1  # PNG stores width/height as 31-bit unsigned integers


def _write_chunk(fh: BinaryIO, kind: bytes, data: bytes) -> None:
    fh.write(struct.pack(">I", len(data)))
    fh.write(kind)
    fh.write(data)
    fh.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


class IndexedPngSink(MaskSink):
    """Write the label mask as a palette ("P" mode) PNG.

    Args:
        path: output file (``.png``).
        max_pixels: refuse ROIs with more pixels than this (default 16k x 16k).
        compress_level: zlib level 0..9.
    """

    def __init__(self, path: PathLike, max_pixels: int = DEFAULT_PNG_MAX_PIXELS, compress_level: int = 6):
        super().__init__()
        self.path = Path(path)
        if self.path.suffix.lower() != ".png":
            raise ValueError(f"{self.path}: IndexedPngSink writes .png files")
        if max_pixels < 1:
            raise ValueError(f"{self.path}: max_pixels must be positive, got {max_pixels}")
        if not 0 <= compress_level <= 9:
            raise ValueError(f"{self.path}: compress_level must be 0..9, got {compress_level}")
        self.max_pixels = int(max_pixels)
        self.compress_level = int(compress_level)
        self._file: Optional[PendingFile] = None
        self._fh: Optional[BinaryIO] = None
        self._deflate = None

    def _open(self, ctx: ExportContext) -> None:
        pixels = ctx.width * ctx.height
        if pixels > self.max_pixels or max(ctx.width, ctx.height) > _MAX_DIM:
            raise ValueError(
                f"{self.path}: ROI of {ctx.width} x {ctx.height} px ({pixels:,} pixels) exceeds the PNG "
                f"limit of {self.max_pixels:,} pixels; most viewers cannot open such a PNG. Export a "
                "tiled pyramidal TIFF instead (--formats tiff, format 'tiff' from Python), or raise max_pixels.")
        self._file = PendingFile(self.path)
        self._fh = open(self._file.tmp, "wb")
        self._fh.write(_PNG_SIGNATURE)
        # width, height, bit depth 8, colour type 3 (palette), deflate, adaptive filtering, no interlace
        _write_chunk(self._fh, b"IHDR", struct.pack(">IIBBBBB", ctx.width, ctx.height, 8, 3, 0, 0, 0))
        _write_chunk(self._fh, b"PLTE", palette_lut(ctx.palette).tobytes())
        meta = json.dumps(ctx.metadata(), ensure_ascii=True)  # tEXt is Latin-1; keep it ASCII
        _write_chunk(self._fh, b"tEXt", b"uniseg\x00" + meta.encode("ascii"))
        self._deflate = zlib.compressobj(self.compress_level)

    def _write_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray],
                    image: Optional[np.ndarray]) -> None:
        # Every PNG scanline starts with its filter type; 0 (None) suits flat label images.
        rows = np.zeros((labels.shape[0], labels.shape[1] + 1), dtype=np.uint8)
        rows[:, 1:] = labels
        self._emit(self._deflate.compress(rows.tobytes()))

    def _emit(self, data: bytes) -> None:
        if data:
            _write_chunk(self._fh, b"IDAT", data)

    def _finish(self) -> List[PendingFile]:
        self._emit(self._deflate.flush())
        _write_chunk(self._fh, b"IEND", b"")
        self._fh.close()
        return [self._file]

    def _abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._file is not None:
            self._file.discard()
