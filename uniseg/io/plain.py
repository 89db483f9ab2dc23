"""Ordinary images (PNG, JPEG, BMP) seen as a one-level slide.

These formats cannot be read by region, so the image is decoded once and kept in memory; the
reader only exists so that the inferencer handles a PNG region of interest and a whole slide
through the same interface.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..utils.imageio import ImageReadError, bit_depth_error, flatten_on_white, read_rgb
from ..utils.typing_utils import PathLike
from .slide import Mpp, SlideReader, normalize_mpp

__all__ = ["PlainImageReader"]


def _load_rgb(path: Path) -> np.ndarray:
    """``read_rgb``, plus OpenCV for images larger than Pillow's decompression-bomb limit.

    Pillow refuses images above ~179 Mpx, but a 15k x 15k region of interest exported as PNG is
    exactly what this reader is for; OpenCV decodes up to 2**30 pixels. It decodes the samples
    unchanged, so that ``read_rgb``'s rules hold here too: deeper than 8 bits is refused (OpenCV's
    own colour conversion would silently keep the high byte) and alpha is composited on white
    (OpenCV would drop it).
    """
    from PIL import Image

    try:
        return read_rgb(path)
    except Image.DecompressionBombError:
        pass
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageReadError(f"{path}: image is too large for Pillow and OpenCV could not decode it; "
                             f"convert it to a tiled TIFF")
    return _rgb_from_opencv(pixels, path)


def _rgb_from_opencv(pixels: np.ndarray, path: Path) -> np.ndarray:
    """OpenCV's unchanged samples (grey, BGR or BGRA) as RGB uint8, refusing what read_rgb refuses."""
    if pixels.dtype != np.uint8:
        raise bit_depth_error(path, pixels.dtype.itemsize * 8, f"OpenCV dtype {pixels.dtype}")
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels[..., ::-1])
    if pixels.shape[2] == 4:
        return flatten_on_white(pixels[..., 2::-1], pixels[..., 3])
    raise ImageReadError(f"{path}: {pixels.shape[2]}-channel images are not supported; expected RGB or greyscale")


class PlainImageReader(SlideReader):
    """A single-level reader over an RGB array decoded once from a PNG/JPEG/BMP (or any) file."""

    backend = "plain"

    def __init__(self, path: PathLike, mpp: Union[None, float, Sequence[float]] = None,
                 *, image: Optional[np.ndarray] = None) -> None:
        path = Path(path)
        mpp_pair: Optional[Mpp] = normalize_mpp(mpp, path)
        if image is None:
            image = _load_rgb(path)
        elif image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{path}: image must be uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
        self._image: Optional[np.ndarray] = image
        self._init_levels(path, [(image.shape[1], image.shape[0])], mpp_pair)

    @classmethod
    def from_array(cls, image: np.ndarray, name: str = "<array>",
                   mpp: Union[None, float, Sequence[float]] = None) -> "PlainImageReader":
        """Wrap an in-memory RGB array; ``name`` stands in for the path in messages."""
        return cls(name, mpp=mpp, image=image)

    def _read_inside(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        assert self._image is not None
        return self._image[y:y + h, x:x + w].copy()

    def close(self) -> None:
        self._image = None
        super().close()
