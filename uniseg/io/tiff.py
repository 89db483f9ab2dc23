"""TIFF-based slides read tile by tile with tifffile: tiled/stripped (Big)TIFF, pyramids, SVS, OME.

The pyramid is whatever tifffile reports as the levels of the first image series, which covers
the layouts in use: SubIFDs (OME-TIFF, libvips ``--subifd``), consecutive pages flagged as
reduced-resolution (``NewSubfileType`` bit 0, libvips/tifffile pyramids) and Aperio SVS, whose
thumbnail, label and macro pages are separate series rather than levels. tifffile is more lenient
than OpenSlide in one respect, and so is this reader: unflagged pages that are exact 2x/3x/4x
reductions of the previous one also count as levels; other pages are separate images.

``read_region`` decodes only the tiles (or strips) that intersect the request, straight from their
byte ranges with the page's own decoder, so memory stays at about the region plus a few tiles
whatever the slide size; zarr is not needed. A small LRU cache of decoded tiles absorbs the
overlap between neighbouring reads (tiled inference reads every border tile twice or more).
"""
from __future__ import annotations

import collections
import os
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.imageio import ImageReadError
from ..utils.typing_utils import PathLike
from .slide import Mpp, SlideReader, normalize_mpp, white

__all__ = ["TiffSlideReader"]

_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _YCBCR = 0, 1, 2, 3, 6
_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}
# ExtraSamples values that mean alpha: 1 associated (premultiplied), 2 unassociated.
_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA = 1, 2
# Eagerly decode one chunk at open time (to report an unsupported codec early) only when cheap.
_VALIDATE_MAX_PIXELS = 1 << 24

_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_UM_PER_UNIT = {"nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
                "\\u00b5m": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
# TIFF ResolutionUnit -> micrometres per unit (2 inch, 3 centimetre; 4/5 are non-standard extensions).
_UM_PER_RESUNIT = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}
# Resolution tags in inches are mostly document/screen defaults (72-1200 dpi, i.e. 21-353 um/px),
# never a microscope's; only accept inch-based values finer than this.
_MAX_INCH_MPP = 20.0


# ---------------------------------------------------------------------------- metadata
def _svs_mpp(description: str) -> Optional[Mpp]:
    match = _APERIO_MPP.search(description or "")
    if match is None:
        return None
    value = float(match.group(1))
    return (value, value) if value > 0 else None


def _ome_mpp(xml: Optional[str]) -> Optional[Mpp]:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("X", "Y"):
        size = pixels.get(f"PhysicalSize{axis}")
        factor = _UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm").lower())
        if size is None or factor is None or float(size) <= 0:
            return None
        sizes.append(float(size) * factor)
    return sizes[0], sizes[1]


def _resolution_mpp(tif: Any, page: Any) -> Optional[Mpp]:
    """Microns per pixel from XResolution/YResolution (+ ImageJ's ``unit=micron``), if meaningful."""
    if 282 not in page.tags or 283 not in page.tags:  # XResolution, YResolution
        return None
    xres, yres = page.resolution
    if xres <= 0 or yres <= 0:
        return None
    imagej = tif.imagej_metadata if tif.is_imagej else None
    if imagej and str(imagej.get("unit", "")).lower() in _UM_PER_UNIT:
        um = _UM_PER_UNIT[str(imagej["unit"]).lower()]
        return um / xres, um / yres
    unit = int(page.resolutionunit)
    if unit not in _UM_PER_RESUNIT:  # 1 = no absolute unit
        return None
    mpp = (_UM_PER_RESUNIT[unit] / xres, _UM_PER_RESUNIT[unit] / yres)
    if unit == 2 and max(mpp) > _MAX_INCH_MPP:
        return None
    return mpp


def _tiff_mpp(tif: Any, page: Any) -> Optional[Mpp]:
    if tif.is_svs:
        return _svs_mpp(page.description)
    if tif.is_ome:
        mpp = _ome_mpp(tif.ome_metadata)
        if mpp is not None:
            return mpp
    return _resolution_mpp(tif, page)


# ---------------------------------------------------------------------------- levels
@dataclass
class _Level:
    """Everything needed to locate and decode the chunks (tiles or strips) of one level."""

    page: Any
    width: int
    height: int
    chunk_w: int
    chunk_h: int
    ncols: int
    nrows: int
    planes: int  # 1 for interleaved samples, samplesperpixel for planar-separate storage
    offsets: Sequence[int]
    bytecounts: Sequence[int]
    decode_kwargs: Dict[str, Any]
    photometric: int
    alpha: int  # 0, _ASSOCIATED_ALPHA or _UNASSOCIATED_ALPHA
    lut: Optional[np.ndarray]  # (256, 3) uint8 for palette images


def _describe_level(path: Path, index: int, page: Any) -> _Level:
    where = f"{path}: level {index} (TIFF page {page.index})"
    if page.imagedepth != 1:
        raise ImageReadError(f"{where}: volumetric (ImageDepth > 1) images are not supported")
    if page.dtype != np.uint8:
        raise ImageReadError(f"{where}: {page.dtype} samples ({page.bitspersample} bit) are not supported; "
                             f"expected 8-bit RGB or greyscale")
    photometric = int(page.photometric)
    spp = int(page.samplesperpixel)
    if photometric == _YCBCR and page.compression not in _JPEG_COMPRESSIONS:
        raise ImageReadError(f"{where}: uncompressed/non-JPEG YCbCr images are not supported")
    colours = {_MINISWHITE: 1, _MINISBLACK: 1, _PALETTE: 1, _RGB: 3, _YCBCR: 3}.get(photometric)
    if colours is None or spp < colours:
        raise ImageReadError(f"{where}: photometric interpretation {photometric} with {spp} samples is "
                             f"not supported; expected RGB, greyscale or palette")
    alpha = 0
    extras = tuple(page.extrasamples or ())
    if spp > colours and extras and extras[0] in (_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA):
        alpha = int(extras[0])
    lut = None
    if photometric == _PALETTE:
        lut = np.ascontiguousarray((np.asarray(page.colormap) >> 8).astype(np.uint8).T[:256])
    if page.is_tiled:
        chunk_h, chunk_w = int(page.tilelength), int(page.tilewidth)
    else:
        chunk_h, chunk_w = min(int(page.rowsperstrip), int(page.imagelength)), int(page.imagewidth)
    width, height = int(page.imagewidth), int(page.imagelength)
    ncols, nrows = -(-width // chunk_w), -(-height // chunk_h)
    planes = spp if page.planarconfig == 2 else 1
    offsets, bytecounts = page.dataoffsets, page.databytecounts
    if len(offsets) < planes * nrows * ncols or len(bytecounts) < len(offsets):
        raise ImageReadError(f"{where}: corrupt TIFF: {len(offsets)} data offsets for "
                             f"{planes * nrows * ncols} tiles/strips")
    decode_kwargs: Dict[str, Any] = {}
    if page.compression in _JPEG_COMPRESSIONS:
        decode_kwargs = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
    page.decode  # noqa: B018  (builds tifffile's cached decoder now, in this thread)
    return _Level(page, width, height, chunk_w, chunk_h, ncols, nrows, planes, offsets, bytecounts,
                  decode_kwargs, photometric, alpha, lut)


def _to_rgb(samples: np.ndarray, level: _Level) -> np.ndarray:
    """Decoded samples (h, w, s) -> RGB uint8 composited on white where there is alpha."""
    if level.photometric in (_RGB, _YCBCR):  # tifffile's JPEG decoder already outputs RGB
        rgb, alpha = samples[..., :3], samples[..., 3] if level.alpha else None
    elif level.photometric == _PALETTE:
        assert level.lut is not None
        rgb, alpha = level.lut[samples[..., 0]], None
    else:
        grey = samples[..., 0] if level.photometric == _MINISBLACK else 255 - samples[..., 0]
        rgb = np.repeat(grey[..., None], 3, axis=2)
        alpha = samples[..., 1] if level.alpha else None
    if alpha is None:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    if level.alpha == _ASSOCIATED_ALPHA:
        out = rgb.astype(np.float32) + 255.0 * (1.0 - a)
    else:
        out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class _ChunkCache:
    """Thread-safe LRU of decoded RGB chunks bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: "collections.OrderedDict[Tuple[int, int, int], np.ndarray]" = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Tuple[int, int, int]) -> Optional[np.ndarray]:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Tuple[int, int, int], value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# ---------------------------------------------------------------------------- reader
class TiffSlideReader(SlideReader):
    """Region reader for TIFF-based slides; see the module docstring for the layouts it handles.

    ``cache_bytes`` bounds the decoded-tile cache (0 disables it). The reader may be used from
    several threads, and from DataLoader workers: it reopens its file after a fork and pickles as
    ``(path, mpp)``.
    """

    backend = "tifffile"

    def __init__(self, path: PathLike, mpp: Union[None, float, Sequence[float]] = None,
                 *, cache_bytes: int = 64 << 20) -> None:
        import tifffile

        path = Path(path)
        self._mpp_override = normalize_mpp(mpp, path)
        self._cache_bytes = cache_bytes
        if not path.is_file():
            raise ImageReadError(f"{path}: no such file")
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # corrupt files surface as TiffFileError, struct.error, IndexError, ...
            raise ImageReadError(f"{path}: not a readable TIFF file ({type(exc).__name__}: {exc})") from exc
        try:
            self._levels = self._discover_levels(path)
            mpp_pair = self._mpp_override or _tiff_mpp(self._tif, self._levels[0].page)
            self._init_levels(path, [(lv.width, lv.height) for lv in self._levels], mpp_pair)
            self._lock = threading.Lock()
            self._fh: Any = None
            self._pid = -1
            self._cache = _ChunkCache(cache_bytes)
            self._validate_codec()
        except BaseException:
            self._tif.close()
            raise

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_reopen, (type(self), str(self.path), self._mpp_override, self._cache_bytes))

    @property
    def pages(self) -> list:
        """The tifffile page behind each level (for inspection and tests)."""
        return [lv.page for lv in self._levels]

    # ------------------------------------------------------------------ discovery
    def _discover_levels(self, path: Path) -> list:
        try:
            series = self._tif.series
        except Exception as exc:  # malformed IFDs surface here rather than at TiffFile()
            raise ImageReadError(f"{path}: corrupt TIFF structure ({type(exc).__name__}: {exc})") from exc
        if not series:
            raise ImageReadError(f"{path}: TIFF file contains no image")
        main = series[0]
        if "C" in main.axes and main.shape[main.axes.index("C")] > 1:
            raise ImageReadError(f"{path}: multi-channel image (axes {main.axes}, shape {main.shape}) is not "
                                 f"supported; expected a brightfield RGB or greyscale slide")
        pages = []
        for level in main.levels:
            page = level.pages[0] if len(level.pages) else None
            if page is None:
                raise ImageReadError(f"{path}: pyramid level {len(pages)} has no image data")
            if not hasattr(page, "decode"):  # a TiffFrame: it shares tags with a keyframe
                page = page.aspage()
            pages.append(page)
        # Largest first, whatever order the file stores them in.
        pages.sort(key=lambda p: int(p.imagewidth) * int(p.imagelength), reverse=True)
        return [_describe_level(path, i, page) for i, page in enumerate(pages)]

    def _validate_codec(self) -> None:
        """Decode one chunk of the smallest level now so an unsupported codec fails at open."""
        level = self.level_count - 1
        lv = self._levels[level]
        if lv.chunk_w * lv.chunk_h > _VALIDATE_MAX_PIXELS:
            return
        for index, count in enumerate(lv.bytecounts[:lv.nrows * lv.ncols]):
            if count:
                self._decode_segment(level, index)
                return

    # ------------------------------------------------------------------ reading
    def _read_bytes(self, offset: int, count: int) -> bytes:
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path}: reader is closed")
            if self._fh is None or self._pid != os.getpid():
                # A forked DataLoader worker must not share the parent's file offset.
                self._fh = open(self.path, "rb")
                self._pid = os.getpid()
            self._fh.seek(offset)
            data = self._fh.read(count)
        if len(data) != count:
            raise ImageReadError(f"{self.path}: file is truncated (needed {count} bytes at offset {offset}, "
                                 f"got {len(data)})")
        return data

    def _decode_segment(self, level: int, index: int) -> Optional[np.ndarray]:
        """Decode tile/strip ``index`` of ``level`` to (rows, cols, samples); None if it is empty."""
        lv = self._levels[level]
        offset, count = int(lv.offsets[index]), int(lv.bytecounts[index])
        if count == 0 or offset == 0:  # sparse TIFF: the chunk was never written
            return None
        data = self._read_bytes(offset, count)
        try:
            segment, _, _ = lv.page.decode(data, index, **lv.decode_kwargs)
        except Exception as exc:  # each codec raises its own error type
            kind = "tile" if lv.page.is_tiled else "strip"
            raise ImageReadError(f"{self.path}: cannot decode {kind} {index} of level {level} "
                                 f"(compression {int(lv.page.compression)}): {type(exc).__name__}: {exc}") from exc
        return segment[0]

    def _chunk(self, level: int, row: int, col: int) -> np.ndarray:
        """RGB pixels of one tile/strip, cropped to the image, through the cache."""
        key = (level, row, col)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        lv = self._levels[level]
        ch = min(lv.chunk_h, lv.height - row * lv.chunk_h)
        cw = min(lv.chunk_w, lv.width - col * lv.chunk_w)
        planes = []
        for plane in range(lv.planes):
            segment = self._decode_segment(level, (plane * lv.nrows + row) * lv.ncols + col)
            if segment is not None and (segment.shape[0] < ch or segment.shape[1] < cw):
                raise ImageReadError(f"{self.path}: corrupt chunk ({row}, {col}) of level {level}: decoded "
                                     f"{segment.shape[:2]}, expected at least {(ch, cw)}")
            planes.append(None if segment is None else segment[:ch, :cw])
        if all(p is None for p in planes):
            rgb = white(ch, cw)
        else:
            filled = [np.full((ch, cw, 1), 255, np.uint8) if p is None else p for p in planes]
            samples = filled[0] if len(filled) == 1 else np.concatenate(filled, axis=2)
            rgb = _to_rgb(samples, lv)
        self._cache.put(key, rgb)
        return rgb

    def _read_inside(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        lv = self._levels[level]
        out = np.empty((h, w, 3), np.uint8)
        for row in range(y // lv.chunk_h, (y + h - 1) // lv.chunk_h + 1):
            cy = row * lv.chunk_h
            for col in range(x // lv.chunk_w, (x + w - 1) // lv.chunk_w + 1):
                cx = col * lv.chunk_w
                chunk = self._chunk(level, row, col)
                x0, y0 = max(x, cx), max(y, cy)
                x1, y1 = min(x + w, cx + chunk.shape[1]), min(y + h, cy + chunk.shape[0])
                out[y0 - y:y1 - y, x0 - x:x1 - x] = chunk[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
        return out

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
        self._tif.close()
        self._cache.clear()
        super().close()


def _reopen(cls: type, path: str, mpp: Optional[Mpp], cache_bytes: int) -> TiffSlideReader:
    return cls(path, mpp=mpp, cache_bytes=cache_bytes)
