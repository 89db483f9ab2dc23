"""The one check of inference options, shared by the Python API and ``tools/infer.py``.

:func:`segment_file` and :class:`SlidingWindowInferencer` raise ``ValueError`` for an option out of
range; ``tools/infer.py`` runs the same checks right after parsing and reports them as argparse
errors (exit status 2). So that one message serves both, it names the command-line flag and the
Python argument together: ``--batch-size (batch_size) must be an integer >= 1, got 0``.

Two kinds of model are run (the *task*, decided by the config, see
:func:`uniseg.inference.api.config_task`): ``'semantic'`` (a class per pixel: masks) and
``'cells'`` (an instance model: one object per cell). Some options belong to one kind only
(:data:`TASK_OPTIONS`); giving one to the other kind is an error that names it, never ignored.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from .tiling import WINDOWS

__all__ = ["OPTION_FLAGS", "TASKS", "TASK_OPTIONS", "DEFAULT_FORMATS", "BORDER_CELLS",
           "check_window_options", "check_segment_options", "check_tissue_options", "check_cell_options",
           "check_task_options", "check_pair", "check_num_workers", "default_num_workers", "format_table"]

#: Python argument -> command-line flag of tools/infer.py
OPTION_FLAGS: Dict[str, str] = {
    "tile": "--tile", "stride": "--stride", "batch_size": "--batch-size", "window": "--window",
    "tissue_threshold": "--tissue-threshold", "level": "--level", "target_mpp": "--mpp",
    "slide_mpp": "--slide-mpp", "region": "--region", "formats": "--formats",
    "simplify_tolerance": "--simplify", "tissue_mask": "--tissue-mask", "tissue_detection": "--no-tissue-detection",
    "tissue_min_fraction": "--tissue-min-fraction",
    "score_thr": "--score-thr", "min_visible": "--min-visible", "max_per_window": "--max-per-window",
    "duplicate_overlap": "--duplicate-overlap", "edge_width": "--edge-width", "border_cells": "--border-cells",
    "num_workers": "--workers",
}

TASKS = ("semantic", "cells")
_TASK_NAMES = {"semantic": "semantic segmentation models (a class per pixel)",
               "cells": "instance models (cells as objects)"}

#: the options only one kind of model uses (Python argument names; None means "not given")
TASK_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "semantic": ("window", "simplify_tolerance"),
    "cells": ("score_thr", "min_visible", "max_per_window", "duplicate_overlap", "edge_width", "border_cells"),
}

#: outputs written when none are requested (Python API; tools/infer.py adds the overlay for semantic models)
DEFAULT_FORMATS: Dict[str, Tuple[str, ...]] = {"semantic": ("png",), "cells": ("geojson", "csv")}

#: what :class:`~uniseg.inference.cell_stitching.CellStitcher` does with cells cut by a window border
BORDER_CELLS = ("keep", "drop")


def _name(argument: str) -> str:
    flag = OPTION_FLAGS.get(argument)
    return f"{flag} ({argument})" if flag else argument


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def format_table(task: str) -> Tuple[Mapping[str, tuple], str]:
    """The output formats of ``task`` (name -> (file name pattern, sink class)) and what they are called."""
    if task == "cells":
        from ..export.cells.build import CELL_SINK_FORMATS

        return CELL_SINK_FORMATS, "cell output"
    if task == "semantic":
        from ..export.build import SINK_FORMATS

        return SINK_FORMATS, "output"
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def check_pair(argument: str, value: Any) -> Optional[Tuple[int, int]]:
    """``None``, or (height, width) of positive integers (one integer means a square)."""
    if value is None:
        return None
    pair = (value, value) if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{_name(argument)} must be a positive integer or a (height, width) pair of them, "
                         f"got {value!r}")
    return int(pair[0]), int(pair[1])


def default_num_workers() -> int:
    """Reader threads when none are asked for (``--workers``, ``segment_file(num_workers=None)``).

    One core stays with the model's thread; more than 4 readers do not help one model (see
    benchmarks/README.md, window pipeline).
    """
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def check_num_workers(num_workers: Any) -> None:
    """Reader threads of the window pipeline: an integer >= 0 (0: read, run and write in one thread)."""
    if not (_is_int(num_workers) and num_workers >= 0):
        raise ValueError(f"{_name('num_workers')} must be an integer >= 0 (threads reading windows ahead of the "
                         f"model; 0 reads them in the model's thread), got {num_workers!r}")


def check_window_options(tile: Any = None, stride: Any = None, batch_size: Any = 4, window: Any = "cosine",
                         tissue_threshold: Any = None, *, tile_source: str = "") -> None:
    """Checks of the sliding-window settings (see :class:`SlidingWindowInferencer`).

    ``tile_source`` says where a tile or stride the caller did not pass came from (for the message);
    ``window=None`` (cell models blend nothing) is not checked.
    """
    tile = check_pair("tile", tile)
    stride = check_pair("stride", stride)
    if tile is not None and stride is not None and (stride[0] > tile[0] or stride[1] > tile[1]):
        raise ValueError(f"{_name('stride')} {stride} is larger than the window {_name('tile')} {tile}"
                         f"{tile_source}: windows would leave gaps; choose a stride <= the tile")
    if not (_is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"{_name('batch_size')} must be an integer >= 1, got {batch_size!r}")
    if window is not None and window not in WINDOWS:
        raise ValueError(f"{_name('window')} must be one of {', '.join(WINDOWS)}, got {window!r}")
    if tissue_threshold is not None and not (_is_number(tissue_threshold) and 0 <= tissue_threshold <= 1):
        raise ValueError(f"{_name('tissue_threshold')} must be a fraction in [0, 1] (the share of tissue "
                         f"pixels a window needs to be run), got {tissue_threshold!r}")


def check_tissue_options(tissue_mask: Any = None, tissue_detection: Any = True, tissue_min_fraction: Any = 0.0) -> None:
    """Which windows run (see :mod:`uniseg.inference.window_plan`): a user mask that exists, or detection on/off,
    and the share of a window the tissue must cover."""
    if not isinstance(tissue_detection, bool):
        raise ValueError(f"tissue_detection must be True or False, got {tissue_detection!r}")
    if tissue_mask is not None:
        if not tissue_detection:
            raise ValueError(f"{_name('tissue_mask')} and {OPTION_FLAGS['tissue_detection']} (tissue_detection=False) "
                             f"contradict each other: a mask says where to segment, the other says everywhere")
        if not os.path.isfile(str(tissue_mask)):
            raise ValueError(f"{_name('tissue_mask')}: {tissue_mask}: no such file (a binary image, or a GeoJSON of "
                             f"regions in level-0 pixels)")
    if not (_is_number(tissue_min_fraction) and 0 <= tissue_min_fraction <= 1):
        raise ValueError(f"{_name('tissue_min_fraction')} must be a fraction in [0, 1] (the share of a window the "
                         f"tissue mask must cover for it to run; 0: any tissue), got {tissue_min_fraction!r}")


def check_cell_options(score_thr: Any = None, min_visible: Any = None, max_per_window: Any = None,
                       duplicate_overlap: Any = None, edge_width: Any = None, border_cells: Any = None) -> None:
    """Ranges of the cell options (``None``: not given; the defaults of :class:`CellStitcher` and
    :class:`Mask2FormerCellPredictor` apply)."""
    if score_thr is not None and not (_is_number(score_thr) and 0 <= score_thr <= 1):
        raise ValueError(f"{_name('score_thr')} must be a score in [0, 1] (masks scoring below it are ignored), "
                         f"got {score_thr!r}")
    for argument, value, what in (
            ("min_visible", min_visible, "the share of a mask left visible after more confident masks"),
            ("duplicate_overlap", duplicate_overlap, "the share of a cell another window's cell covers")):
        if value is not None and not (_is_number(value) and 0 < value <= 1):
            raise ValueError(f"{_name(argument)} must be a fraction in (0, 1] ({what}), got {value!r}")
    for argument, value, what in (("max_per_window", max_per_window, "cells kept per window"),
                                  ("edge_width", edge_width, "pixels from an inner window border")):
        if value is not None and not (_is_int(value) and value >= 1):
            raise ValueError(f"{_name(argument)} must be an integer >= 1 ({what}), got {value!r}")
    if border_cells is not None and border_cells not in BORDER_CELLS:
        raise ValueError(f"{_name('border_cells')} must be one of {', '.join(BORDER_CELLS)}, got {border_cells!r}")


def check_task_options(task: str, config: str = "", **given: Any) -> None:
    """Refuse an option of the other kind of model; ``given``: argument -> value (``None``: not given)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    for argument, value in given.items():
        owner = next((t for t, arguments in TASK_OPTIONS.items() if argument in arguments), None)
        if owner is None:
            raise TypeError(f"check_task_options: {argument!r} is not an option of one kind of model")
        if value is not None and owner != task:
            raise ValueError(f"{_name(argument)} applies to {_TASK_NAMES[owner]} only; {config or 'the config'} "
                             f"describes one of the {_TASK_NAMES[task]}")


def _check_formats(task: Optional[str], formats: Sequence[str], export_options: Mapping[str, dict],
                   config: str) -> None:
    """The sinks' constructors check the format names and the per-format options; they touch no file.

    Without a task (the command line, before the config is read) the formats must be valid for one
    of the two kinds of model.
    """
    from ..export.build import build_sinks

    errors = []
    for candidate in ((task,) if task else TASKS):
        table, kind = format_table(candidate)
        try:
            build_sinks(formats, ".", "<stem>", table=table, kind=kind, **dict(export_options))
            return
        except ValueError as exc:
            errors.append(exc)
    if task and config:
        raise ValueError(f"{errors[0]} ({config} describes one of the {_TASK_NAMES[task]})") from None
    if task is None:
        names = [str(f).strip().lower() for f in ([formats] if isinstance(formats, str) else formats)]
        owners = {name: [t for t in TASKS if name in format_table(t)[0]] for name in names}
        if all(owners.values()) and not any(all(t in o for o in owners.values()) for t in TASKS):
            # each is known, but no kind of model writes them all
            raise ValueError(f"--formats (formats) mixes outputs of semantic models ("
                             f"{', '.join(n for n in names if 'semantic' in owners[n])}) and of cell models ("
                             f"{', '.join(n for n in names if 'cells' in owners[n])}); one config writes one kind")
    raise errors[0]


def check_segment_options(*, task: Optional[str] = None, config: str = "", formats: Optional[Sequence[str]] = None,
                          region: Optional[str] = None, level: Any = None, target_mpp: Any = None,
                          slide_mpp: Any = None, tile: Any = None, stride: Any = None, batch_size: Any = 4,
                          window: Any = None, tissue_threshold: Any = None,
                          export_options: Optional[Mapping[str, dict]] = None, score_thr: Any = None,
                          min_visible: Any = None, max_per_window: Any = None, duplicate_overlap: Any = None,
                          edge_width: Any = None, border_cells: Any = None, num_workers: Any = None,
                          tissue_mask: Any = None, tissue_detection: Any = True, tissue_min_fraction: Any = 0.0,
                          default_tile: Optional[Tuple[int, int]] = None,
                          default_stride: Optional[Tuple[int, int]] = None,
                          default_sources: Tuple[str, str] = ("the config's test_cfg.crop_size",
                                                              "the config's test_cfg.stride")) -> None:
    """Every check of :func:`~uniseg.inference.api.segment_file`'s options, before any file is touched.

    ``task``: ``'semantic'`` or ``'cells'`` (the options of the other kind must not be given), or
    ``None`` when it is not known yet (then only what is wrong for both kinds is refused);
    ``config`` names the config in messages. ``formats=None`` means the task's
    :data:`DEFAULT_FORMATS`. ``default_tile`` / ``default_stride`` are the model's values used where
    ``tile`` / ``stride`` are ``None`` and ``default_sources`` says where they come from; without
    them a stride is checked against an explicit tile only.
    """
    from ..io import parse_region

    cell_options = dict(score_thr=score_thr, min_visible=min_visible, max_per_window=max_per_window,
                        duplicate_overlap=duplicate_overlap, edge_width=edge_width, border_cells=border_cells)
    if task is not None:
        check_task_options(task, config, window=window, **cell_options)
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
        defaults.append(f"the tile is {default_sources[0]}")
    if stride is None and default_stride is not None:
        stride = default_stride
        defaults.append(f"the stride is {default_sources[1]}")
    check_window_options(tile, stride, batch_size, window, tissue_threshold,
                         tile_source=f" ({'; '.join(defaults)})" if defaults else "")
    if num_workers is not None:  # None: default_num_workers()
        check_num_workers(num_workers)
    check_tissue_options(tissue_mask, tissue_detection, tissue_min_fraction)
    check_cell_options(**cell_options)
    if formats is None:
        if task is None:
            return  # the task's defaults, known to be valid
        formats = DEFAULT_FORMATS[task]
    _check_formats(task, formats, export_options or {}, config)
