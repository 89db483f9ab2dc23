"""Vendor whole-slide formats through OpenSlide.

OpenSlide knows the quirks tifffile does not (MIRAX stitching, NDPI/SCN/BIF layouts, overlapping
tiles), so :func:`uniseg.io.open_slide` prefers it for those suffixes. ``openslide-python`` and
``openslide-bin`` (which carries the native library, no system package needed) are install
requirements of uniseg. The import is still lazy: importing uniseg must not load a native library
it may never use, and a broken OpenSlide install then fails only for the slides that need it, with
an error saying how to repair it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.imageio import ImageReadError
from ..utils.typing_utils import PathLike
from .slide import Mpp, SlideReader, normalize_mpp

__all__ = ["OpenSlideReader", "WSI_INSTALL_HINT", "openslide_available"]

#: How to repair an environment whose OpenSlide is missing or broken (both are uniseg requirements).
WSI_INSTALL_HINT = "pip install openslide-python openslide-bin (or re-run `bash tools/setup_env.sh`)"


def openslide_available() -> bool:
    """Whether OpenSlide (Python binding and native library) can be imported."""
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):  # OSError: the Python package is there but libopenslide is not
        return False
    return True


def _import_openslide(path: Path) -> Any:
    try:
        import openslide
    except (ImportError, OSError) as exc:  # OSError: libopenslide itself is missing
        raise ImageReadError(f"{path}: reading this slide needs OpenSlide, which does not import "
                             f"({exc}); repair the environment: {WSI_INSTALL_HINT}") from exc
    return openslide


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns un-premultiplied RGBA, transparent where there is no tissue scan."""
    if rgba.shape[2] == 3:
        return np.ascontiguousarray(rgba)
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _property_mpp(properties: Any) -> Optional[Mpp]:
    try:
        mpp = (float(properties["openslide.mpp-x"]), float(properties["openslide.mpp-y"]))
    except (KeyError, TypeError, ValueError):
        return None
    return mpp if mpp[0] > 0 and mpp[1] > 0 else None


class OpenSlideReader(SlideReader):
    """A :class:`SlideReader` over ``openslide.OpenSlide``."""

    backend = "openslide"

    def __init__(self, path: PathLike,
                 mpp: Union[None, float, Sequence[float]] = None) -> None:
        path = Path(path)
        self._mpp_override = normalize_mpp(mpp, path)
        openslide = _import_openslide(path)
        if not path.is_file():
            raise ImageReadError(f"{path}: no such file")
        # OpenSlideError is the parent of OpenSlideUnsupportedFormatError.
        self._errors: Tuple[type, ...] = (OSError, ValueError, openslide.OpenSlideError)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except self._errors as exc:
            raise ImageReadError(f"{path}: OpenSlide cannot read this file ({type(exc).__name__}: {exc})") from exc
        mpp_pair = self._mpp_override or _property_mpp(self._slide.properties)
        self._init_levels(path, list(self._slide.level_dimensions), mpp_pair,
                          downsamples=list(self._slide.level_downsamples))

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self.path), self._mpp_override))

    def _read_inside(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        # OpenSlide takes the top-left in level-0 pixels; this is the level-0 position of level
        # pixel (x, y), which OpenSlide maps back onto the same level pixel.
        ds = self.level_downsamples[level]
        try:
            image = self._slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h))
        except self._errors as exc:  # e.g. a corrupt tile; OpenSlide's own message names no file
            raise ImageReadError(f"{self.path}: OpenSlide cannot read the {w} x {h} region at ({x}, {y}) of "
                                 f"level {level} ({type(exc).__name__}: {exc}); the file is corrupt or "
                                 f"truncated") from exc
        return _rgba_on_white(np.asarray(image))

    def close(self) -> None:
        if not self._closed:
            self._slide.close()
        super().close()
