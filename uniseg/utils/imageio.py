"""Reading ordinary (non-pyramidal) images with errors that name the file.

An image becomes 8-bit RGB only where that conversion is exact; otherwise it is refused, never guessed:

- 8-bit RGB, greyscale (``L``), bilevel (``1``), YCbCr and palette (``P``) images convert exactly.
- Transparency (``RGBA``, ``LA``, ``PA``, a palette or grey image with a transparent colour) is
  composited on white, as the TIFF and OpenSlide slide readers do: in a slide export, transparent
  means glass, and glass is white in brightfield.
- 16-bit, 32-bit integer and floating-point samples are refused, like 16-bit TIFF in
  :mod:`uniseg.io.tiff`. No scaling to 8 bits is right for every file (full-range 16 bit, a 12-bit
  camera in a 16-bit container, a fluorescence channel), and the libraries pick different wrong ones
  silently: Pillow clips 16-bit greyscale to 255 everywhere and keeps only the high byte of 16-bit
  RGB, OpenCV (mmcv's training loader) keeps the high byte. The user, who knows the data, converts.
- CMYK is refused: converting it without the file's ICC profile changes stain colours.

A label mask is read as the integers it stores: ``L`` and ``P`` as uint8 (palette *indices*, as mmseg
reads them, not their colours), ``1`` as 0/1, 16-bit masks as uint16 and 32-bit ones as int32, values
unchanged. Colour, alpha and floating-point masks are refused.

The checks need only the header, so :func:`check_rgb_convertible` and :func:`check_label_readable`
also serve the dataset, which refuses at load time what this module would refuse at read time.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Pillow modes carrying an alpha band; "La"/"RGBa" are premultiplied (Pillow un-premultiplies on convert).
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_EXACT_RGB_MODES = ("RGB", "L", "1", "P", "YCbCr")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_BITS_PER_SAMPLE = 258


class ImageReadError(OSError):
    """An input image is missing, unreadable or not an image; the message names the file."""


def read_rgb(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an image as ``uint8`` RGB (H, W, 3), converting only where it is exact (see the module doc)."""

    def to_rgb(im, path):
        if check_rgb_convertible(im, path):
            rgba = np.asarray(im.convert("RGBA"))
            return flatten_on_white(rgba[..., :3], rgba[..., 3])
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))

    return _read(path, "an image", to_rgb)


def read_label(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read a single-channel label or instance mask (H, W) as the integers it stores.

    uint8 for 8-bit and palette masks (indices, not colours), uint16 for 16-bit masks (native byte
    order), int32 for 32-bit ones; 1-bit masks become uint8 0/1, as mmcv reads them.
    """

    def as_integers(im, path):
        check_label_readable(im, path)
        arr = np.asarray(im, dtype=np.uint8) if im.mode == "1" else np.asarray(im)
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)  # I;16B (big-endian TIFF) -> native

    return _read(path, "a label mask", as_integers)


def read_alpha(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read the opacity (H, W) ``uint8`` of an image: 255 where it is opaque, everywhere if it has no alpha."""

    def opacity(im, path):
        check_rgb_convertible(im, path)
        return np.asarray(im.convert("RGBA"))[..., 3]

    return _read(path, "an image", opacity)


def check_rgb_convertible(im, path: Union[str, os.PathLike]) -> bool:
    """Raise :class:`ImageReadError` unless :func:`read_rgb` converts the opened image exactly.

    Looks at the header only (mode, bit depth), so it is cheap on a file opened without decoding.
    Returns whether the image can be transparent (an alpha band or a transparent colour).
    """
    bits = sample_bits(im, path)
    if bits > 8:
        raise bit_depth_error(path, bits, f"Pillow mode {im.mode}")
    if im.mode == "CMYK":
        raise ImageReadError(f"{path}: CMYK images are not supported (converting without the file's colour "
                             f"profile would change stain colours); save it as RGB")
    if im.mode in _ALPHA_MODES:
        return True
    if im.mode in _EXACT_RGB_MODES:
        return "transparency" in im.info
    raise ImageReadError(f"{path}: colour mode {im.mode} is not supported; expected RGB, greyscale or palette")


def bit_depth_error(path: Union[str, os.PathLike], bits: int, stored_as: str) -> ImageReadError:
    """The refusal of samples deeper than 8 bits, with what the user should do about it."""
    return ImageReadError(f"{path}: {bits}-bit samples ({stored_as}) are not supported; expected 8-bit RGB or "
                          f"greyscale. Convert it to 8 bits first with the scaling that fits the data "
                          f"(e.g. value // 257 for full-range 16-bit)")


def check_label_readable(im, path: Union[str, os.PathLike]) -> None:
    """Raise :class:`ImageReadError` unless the opened image is a single-channel integer label mask."""
    if im.mode == "F":
        raise ImageReadError(f"{path}: label mask has floating-point samples; labels must be integers")
    if im.mode not in ("L", "P", "1", "I") and not im.mode.startswith("I;16"):
        raise ImageReadError(f"{path}: label mask must be a single-channel index image (class numbers, "
                             f"8- or 16-bit greyscale or palette), got {len(im.getbands())}-channel mode "
                             f"{im.mode}; a mask drawn in colours must be converted back to class indices")


def sample_bits(im, path: Union[str, os.PathLike]) -> int:
    """Bits per sample as stored in the file (Pillow reports 16-bit RGB PNG/TIFF as 8-bit ``RGB``)."""
    if im.mode.startswith("I;16"):
        return 16
    if im.mode in ("I", "F"):
        return 32
    if im.format == "PNG":
        with open(path, "rb") as fh:
            head = fh.read(25)
        if head[:8] == _PNG_SIGNATURE and len(head) == 25:
            return head[24]  # IHDR bit depth: signature(8) length(4) "IHDR"(4) width(4) height(4) depth(1)
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(_TIFF_BITS_PER_SAMPLE, (8,))
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def flatten_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite un-premultiplied ``uint8`` RGB over white with ``alpha``; opaque images pass unchanged."""
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def open_image(path: Union[str, os.PathLike], what: str = "an image") -> Iterator:
    """Open ``path`` with Pillow without decoding it; unreadable files raise :class:`ImageReadError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: cannot be read as {what} ({exc})") from exc
    with im:
        yield im


def _read(path, what: str, convert) -> np.ndarray:
    """Open ``path`` with PIL, decode it fully, pass it through ``convert`` and return a contiguous array.

    Decoding happens inside the ``try`` (``im.load()``), so a truncated file fails here with its name,
    not later inside a data loader worker.
    """
    with open_image(path, what) as im:
        try:
            im.load()
            arr = np.asarray(convert(im, Path(path)))
        except ImageReadError:
            raise
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageReadError(f"{path}: cannot be read as {what} ({exc})") from exc
    return np.ascontiguousarray(arr)
