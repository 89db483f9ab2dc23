"""The one check of inference options, shared by the Python API and ``tools/infer.py``.

:func:`segment_file` and :class:`SlidingWindowInferencer` raise ``ValueError`` for an option out of
range; ``tools/infer.py`` runs the same checks right after parsing and reports them as argparse
errors (exit status 2). So that one message serves both, it names the command-line flag and the
Python argument together: ``--batch-size (batch_size) must be an integer >= 1, got 0``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .tiling import WINDOWS

__all__ = ["OPTION_FLAGS", "check_window_options", "check_segment_options", "check_pair"]

#: Python argument -> command-line flag of tools/infer.py
OPTION_FLAGS: Dict[str, str] = {
    "tile": "--tile", "stride": "--stride", "batch_size": "--batch-size", "window": "--window",
    "tissue_threshold": "--tissue-threshold", "level": "--level", "target_mpp": "--mpp",
    "slide_mpp": "--slide-mpp", "region": "--region", "formats": "--formats",
}


def _name(argument: str) -> str:
    flag = OPTION_FLAGS.get(argument)
    return f"{flag} ({argument})" if flag else argument


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_pair(argument: str, value: Any) -> Optional[Tuple[int, int]]:
    """``None``, or (height, width) of positive integers (one integer means a square)."""
    if value is None:
        return None
    pair = (value, value) if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{_name(argument)} must be a positive integer or a (height, width) pair of them, "
                         f"got {value!r}")
    return int(pair[0]), int(pair[1])


def check_window_options(tile: Any = None, stride: Any = None, batch_size: Any = 4, window: Any = "cosine",
                         tissue_threshold: Any = None, *, tile_source: str = "") -> None:
    """Checks of the sliding-window settings (see :class:`SlidingWindowInferencer`).

    ``tile_source`` says where a tile or stride the caller did not pass came from (for the message).
    """
    tile = check_pair("tile", tile)
    stride = check_pair("stride", stride)
    if tile is not None and stride is not None and (stride[0] > tile[0] or stride[1] > tile[1]):
        raise ValueError(f"{_name('stride')} {stride} is larger than the window {_name('tile')} {tile}"
                         f"{tile_source}: windows would leave gaps; choose a stride <= the tile")
    if not (_is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"{_name('batch_size')} must be an integer >= 1, got {batch_size!r}")
    if window not in WINDOWS:
        raise ValueError(f"{_name('window')} must be one of {', '.join(WINDOWS)}, got {window!r}")
    if tissue_threshold is not None and not (_is_number(tissue_threshold) and 0 <= tissue_threshold <= 1):
        raise ValueError(f"{_name('tissue_threshold')} must be a fraction in [0, 1] (the share of tissue "
                         f"pixels a window needs to be run), got {tissue_threshold!r}")


def check_segment_options(*, formats: Sequence[str] = ("png",), region: Optional[str] = None,
                          level: Any = None, target_mpp: Any = None, slide_mpp: Any = None, tile: Any = None,
                          stride: Any = None, batch_size: Any = 4, window: Any = "cosine",
                          tissue_threshold: Any = None, export_options: Optional[Mapping[str, dict]] = None,
                          default_tile: Optional[Tuple[int, int]] = None,
                          default_stride: Optional[Tuple[int, int]] = None) -> None:
    """Every check of :func:`~uniseg.inference.api.segment_file`'s options, before any file is touched.

    ``default_tile`` / ``default_stride`` are the model's (config) values used where ``tile`` /
    ``stride`` are ``None``; without them a stride is checked against an explicit tile only.
    """
    from ..export.build import build_sinks
    from ..io import parse_region

    if level is not None and not (_is_int(level) and level >= 0):
        raise ValueError(f"{_name('level')} must be a pyramid level >= 0, got {level!r}")
    for argument, value in (("target_mpp", target_mpp), ("slide_mpp", slide_mpp)):
        if value is not None and not (_is_number(value) and value > 0):
            raise ValueError(f"{_name(argument)} must be a positive number of microns per pixel, got {value!r}")
    if region is not None:
        try:
            parse_region(region)
        except ValueError as exc:
            raise ValueError(f"{_name('region')}: {exc}") from None
    check_pair("tile", tile)  # before it is combined with the defaults: name the caller's value
    check_pair("stride", stride)
    defaults = []
    if tile is None and default_tile is not None:
        tile = default_tile
        defaults.append("the tile is the config's test_cfg.crop_size")
    if stride is None and default_stride is not None:
        stride = default_stride
        defaults.append("the stride is the config's test_cfg.stride")
    check_window_options(tile, stride, batch_size, window, tissue_threshold,
                         tile_source=f" ({'; '.join(defaults)})" if defaults else "")
    # the sinks' constructors check the format names and the per-format options; they touch no file
    build_sinks(formats, ".", "check", **dict(export_options or {}))
