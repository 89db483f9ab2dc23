"""The predicted cells of an evaluated image as files (what ``tools/test.py --out`` writes for cell models).

Per image, in the output folder::

    <stem>.png          16-bit grey PNG, the image's original size: 0 = no cell, k = the cell in row k
    <stem>_cells.csv    one row per cell, in the columns of tools/infer.py's cell table
                        (:mod:`uniseg.export.cells.table`: id, class, class_index, score, centroid,
                        area, box; coordinates in pixels of the PNG)

These are the objects the metric scored (after painting and its score threshold), before any
evaluation-only step. The two files are published as one set with the table last
(:func:`uniseg.utils.atomic.publish_together`): a table on disk always belongs to the PNG beside it,
and an interrupted run never leaves a half-written file under either name.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from scipy import ndimage

from uniseg.structures import InstanceMap, instance_properties, relabel_dense
from uniseg.utils.atomic import PendingFile, publish_together
from uniseg.utils.typing_utils import PathLike

__all__ = ["write_cell_prediction", "MAX_PNG_ID"]

MAX_PNG_ID = 65535


def _cell_batch(ids: np.ndarray, labels: np.ndarray, scores: np.ndarray):
    """A :class:`~uniseg.export.cells.CellBatch` of dense ids ``1..n`` (every id present)."""
    from uniseg.export.cells import CellBatch

    n = len(labels)
    slices = ndimage.find_objects(ids, max_label=n)
    boxes = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices], np.int64).reshape(-1, 4)
    masks = [ids[s] == k for k, s in enumerate(slices, start=1)]
    areas, centroids = instance_properties(ids, n)
    return CellBatch(np.arange(1, n + 1), labels, scores, boxes, masks, areas, centroids, np.zeros(n, bool))


def write_cell_prediction(folder: PathLike, stem: str, cells: InstanceMap, classes: Sequence[str],
                          mpp: Optional[float] = None) -> List[Path]:
    """Write ``<stem>.png`` and ``<stem>_cells.csv`` for one image (see the module docstring).

    ``mpp`` (microns per pixel of ``cells``) fills the table's ``area_um2``; None leaves it empty.
    Returns the written paths, the table last.
    """
    from uniseg.datasets.converters.common import save_instance_png
    from uniseg.export.base import ExportContext
    from uniseg.export.cells.table import CellTableSink

    folder = Path(folder)
    png_path, table_path = folder / f"{stem}.png", folder / f"{stem}_cells.csv"
    ids, old = relabel_dense(cells.ids)  # objects without a pixel have no row
    labels, scores = cells.labels[old - 1], cells.scores[old - 1]
    if len(old) > MAX_PNG_ID:
        raise ValueError(f"{png_path}: {len(old)} cells do not fit the ids 1..{MAX_PNG_ID} of a 16-bit PNG")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{table_path}: cell classes {sorted(set(labels.tolist()))} outside the {len(classes)} "
                         f"classes {list(classes)}")
    folder.mkdir(parents=True, exist_ok=True)
    height, width = ids.shape
    png = PendingFile(png_path)
    table = CellTableSink(table_path)
    try:
        save_instance_png(ids.astype(np.uint16), png.tmp)
        table.open(ExportContext(width=width, height=height, classes=tuple(classes), mpp=mpp))
        table.write_cells(_cell_batch(ids, labels, scores))
        table.write_band(0, ids.astype(np.uint32))
        (marker,) = table.finish()
    except BaseException:
        table.abort()
        png.discard()
        raise
    return publish_together([png], marker)
