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
    return _read(path, "an image", lambda im, _: im.convert("RGB"))


def read_label(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read a single-channel label mask (H, W) without any colour conversion."""

    def single_channel(im, path):
        if im.mode in ("RGB", "RGBA"):
            raise ImageReadError(f"{path}: label mask must be single-channel, got mode {im.mode}")
        return im

    return _read(path, "a label mask", single_channel)


def _read(path, what: str, check) -> np.ndarray:
    """Open ``path`` with PIL, decode it fully, pass it through ``check`` and return a contiguous array.

    Decoding happens inside the ``try`` (``im.load()``), so a truncated file fails here with its name,
    not later inside a data loader worker.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(check(im, path))
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: cannot be read as {what} ({exc})") from exc
    return np.ascontiguousarray(arr)
