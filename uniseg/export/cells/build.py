"""Map cell output format names (command line, config) to cell sinks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from ..base import PathLike
from .base import CellSink
from .geojson import CellGeoJsonSink
from .table import CellTableSink
from .tiff import CellLabelTiffSink

__all__ = ["CELL_SINK_FORMATS", "build_cell_sinks"]

# name -> (output name for a stem, sink factory). "_cells" keeps them apart from semantic outputs of the same stem.
CELL_SINK_FORMATS: Dict[str, Tuple[str, Type[CellSink]]] = {
    "geojson": ("{stem}_cells.geojson", CellGeoJsonSink),
    "csv": ("{stem}_cells.csv", CellTableSink),
    "parquet": ("{stem}_cells.parquet", CellTableSink),  # needs pyarrow
    "tiff": ("{stem}_cells.tif", CellLabelTiffSink),
}


def build_cell_sinks(formats: Sequence[str], out_dir: PathLike, stem: str,
                     **options: Optional[Mapping[str, Any]]) -> List[CellSink]:
    """One cell sink per requested format, writing ``out_dir/<stem>_cells.<ext>``.

    Args:
        formats: names from :data:`CELL_SINK_FORMATS`, each at most once.
        out_dir: output directory.
        stem: base name of the outputs, typically the slide name.
        **options: per-format constructor keywords, e.g. ``tiff={'tile': 256}``.
    """
    if isinstance(formats, str):
        formats = [formats]
    names = [str(f).strip().lower() for f in formats]
    known = sorted(CELL_SINK_FORMATS)
    if not names:
        raise ValueError(f"no cell output formats requested; choose from {known}")
    unknown = [f for f in names if f not in CELL_SINK_FORMATS]
    if unknown:
        raise ValueError(f"unknown cell output format(s) {unknown}; choose from {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"cell output formats requested more than once: {list(formats)}")
    stray = sorted(set(options) - set(names))
    if stray:
        raise ValueError(f"options given for cell format(s) {stray} that are not requested ({names})")
    if not stem or Path(stem).name != stem:
        raise ValueError(f"output stem must be a plain file name, got {stem!r}")
    sinks: List[CellSink] = []
    for name in names:
        pattern, factory = CELL_SINK_FORMATS[name]
        try:
            sinks.append(factory(Path(out_dir) / pattern.format(stem=stem), **dict(options.get(name) or {})))
        except TypeError as exc:  # a misspelt option: say which format it was for
            raise ValueError(f"invalid options for cell output format {name!r}: {exc}") from exc
    return sinks
