"""Reading ordinary (non-pyramidal) images with errors that name the file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageReadError(OSError):
    """An input image is missing, unreadable or not an image; the message names the file."""


def read_rgb(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an image as ``uint8`` RGB (H, W, 3). Grey and RGBA inputs are converted."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: cannot be read as an image ({exc})") from exc
    return np.ascontiguousarray(arr)


def read_label(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read a single-channel label mask (H, W) without any colour conversion."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                raise ImageReadError(f"{path}: label mask must be single-channel, got mode {im.mode}")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"{path}: cannot be read as a label mask ({exc})") from exc
    return np.ascontiguousarray(arr)
