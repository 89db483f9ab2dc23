"""Map output format names (as given on the command line or in a config) to sinks.

One function builds the sinks of every kind of output from a *format table* (name -> output file
name pattern and sink class): :data:`SINK_FORMATS` for semantic masks here, and
:data:`uniseg.export.cells.CELL_SINK_FORMATS` for cells. The checks of the names and options are
therefore the same for both, and so are their messages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from .base import MaskSink, PathLike
from .geojson import GeoJsonSink
from .overlay import OverlayPreviewSink
from .png import IndexedPngSink
from .probs import ProbabilityMapSink
from .tiff import PyramidTiffMaskSink

__all__ = ["build_sinks", "FormatTable", "SINK_FORMATS"]

#: format name -> (output name pattern with ``{stem}``, sink class)
FormatTable = Mapping[str, Tuple[str, Type[Any]]]

# Suffixes keep a mask named after its slide from ever overwriting the slide itself
# (``case1.tif`` -> ``case1_mask.tif``).
SINK_FORMATS: Dict[str, Tuple[str, Type[MaskSink]]] = {
    "png": ("{stem}_mask.png", IndexedPngSink),
    "tiff": ("{stem}_mask.tif", PyramidTiffMaskSink),
    "geojson": ("{stem}.geojson", GeoJsonSink),
    "overlay": ("{stem}_overlay.jpg", OverlayPreviewSink),
    "probs": ("{stem}_probs", ProbabilityMapSink),  # a directory with one TIFF per class
}


def build_sinks(formats: Sequence[str], out_dir: PathLike, stem: str, *, table: FormatTable = SINK_FORMATS,
                kind: str = "output", **options: Optional[Mapping[str, Any]]) -> List[Any]:
    """Create one sink per requested format of ``table``, writing ``out_dir/<stem>...``.

    Args:
        formats: names from ``table`` (for :data:`SINK_FORMATS`: ``'png'``, ``'tiff'``,
            ``'geojson'``, ``'overlay'``, ``'probs'``), each at most once.
        out_dir: output directory.
        stem: base name of the outputs, typically the slide name.
        table: the format table: :data:`SINK_FORMATS` (semantic masks) or
            :data:`uniseg.export.cells.CELL_SINK_FORMATS` (cells).
        kind: what the table's outputs are, for the messages (``'output'``, ``'cell output'``).
        **options: per-format keyword arguments for the sink constructor, keyed by format name,
            e.g. ``build_sinks(['tiff', 'geojson'], out, 'case1', tiff={'tile': 256},
            geojson={'simplify_tolerance': 1.0})``.

    Output names (:data:`SINK_FORMATS`): ``<stem>_mask.png``, ``<stem>_mask.tif``, ``<stem>.geojson``,
    ``<stem>_overlay.jpg`` and the directory ``<stem>_probs/`` (``<class>.tif`` inside).
    """
    if isinstance(formats, str):
        formats = [formats]
    names = [str(f).strip().lower() for f in formats]
    known = sorted(table)
    if not names:
        raise ValueError(f"no {kind} formats requested in --formats (formats); choose from {known}")
    unknown = [f for f in names if f not in table]
    if unknown:
        raise ValueError(f"unknown {kind} format(s) {unknown} in --formats (formats); choose from {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} formats requested more than once in --formats (formats): {list(formats)}")
    stray = sorted(set(options) - set(names))
    if stray:
        raise ValueError(f"options given for {kind} format(s) {stray} that are not requested ({names})")
    if not stem or Path(stem).name != stem:
        raise ValueError(f"output stem must be a plain file name, got {stem!r}")
    out_dir = Path(out_dir)
    sinks: List[Any] = []
    for name in names:
        pattern, factory = table[name]
        kwargs = dict(options.get(name) or {})
        try:
            sinks.append(factory(out_dir / pattern.format(stem=stem), **kwargs))
        except TypeError as exc:  # a misspelt option: say which format it was for
            raise ValueError(f"invalid options for {kind} format {name!r}: {exc}") from exc
    return sinks
