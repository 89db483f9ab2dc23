"""Cell output format names (command line, config) and their sinks; built by :func:`uniseg.export.build_sinks`."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

from ..base import PathLike
from ..build import build_sinks
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
    """One cell sink per requested format of :data:`CELL_SINK_FORMATS`, writing ``out_dir/<stem>_cells.<ext>``.

    ``options``: per-format constructor keywords, e.g. ``tiff={'tile': 256}`` (see :func:`build_sinks`).
    """
    return build_sinks(formats, out_dir, stem, table=CELL_SINK_FORMATS, kind="cell output", **options)
