"""Per-class probability maps as tiled pyramidal TIFFs, one file per class.

One single-channel (grey, 0..255 = probability 0..1) TIFF per class was chosen over one
multi-page or multi-sample file because:

* every viewer (QuPath, OpenSlide-based tools, Fiji) opens a grey pyramidal TIFF and can overlay
  it on the slide; a C-sample TIFF is only understood by a few tools, and pages of a multi-page
  file are often ignored;
* the files stream: a multi-page file would have to store page 0 completely before page 1, so
  all other classes would need to be spooled for the whole ROI;
* a user who needs only the tumour probability copies one file.

Each file is written with :class:`~uniseg.export.pyramid.StreamingPyramidTiff` (the machinery of
the label-mask TIFF), with reduced levels from rounded 2x2 means, as an OME-TIFF whose channel is
named after the class and shown in its palette colour (:mod:`uniseg.export.ome`). Memory is about two tile-high
strips per exported class. Files are named ``<dir>/<class>.tif`` when given a directory, or
``<stem>_<class><suffix>`` next to a given ``.tif`` path (``x.ome.tif`` gives ``x_<class>.ome.tif``);
class names are made file-safe.
All files appear together when committed.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from .base import ExportContext, MaskSink, PathLike, PendingFile, resolve_class_indices
from .ome import ome_metadata
from .pyramid import StreamingPyramidTiff, normalize_compression, reduce_mean_2x
from .tiff import TIFF_SUFFIXES

__all__ = ["ProbabilityMapSink", "safe_file_stem"]


def safe_file_stem(name: str) -> str:
    """A file-name-safe version of a class name ('Tumour, invasive' -> 'Tumour_invasive')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")


class ProbabilityMapSink(MaskSink):
    """Write per-class probability maps (uint8, 255 = probability 1) as pyramidal TIFFs.

    Args:
        dir_or_path: a directory (files ``<class>.tif`` inside, created if needed), or a
            ``.tif``/``.tiff`` path used as a name template (``<stem>_<class><suffix>``).
        classes: names or indices of the classes to write; default all classes.
        tile, levels, compression, bigtiff, maxworkers: as for
            :class:`~uniseg.export.tiff.PyramidTiffMaskSink`.
    """

    requires_probs = True

    def __init__(self, dir_or_path: PathLike, classes: Optional[Sequence[Union[int, str]]] = None,
                 tile: int = 512, levels: Optional[int] = None, compression: Optional[str] = "zlib",
                 bigtiff: Optional[bool] = None, maxworkers: Optional[int] = 1):
        super().__init__()
        self.target = Path(dir_or_path)
        self.classes = classes
        self.tile, self.levels, self.bigtiff, self.maxworkers = tile, levels, bigtiff, maxworkers
        self.compression = normalize_compression(compression, str(self.target))
        self._writers: List[StreamingPyramidTiff] = []
        self._indices: List[int] = []
        self._created_dir: Optional[Path] = None

    def describe(self) -> str:
        return str(self.target)

    def output_paths(self, ctx: ExportContext) -> List[Path]:
        """Where the files for ``ctx`` go (one per selected class, in class order)."""
        indices = resolve_class_indices(self.classes, ctx, [], str(self.target))
        stems = [safe_file_stem(ctx.classes[i]) or f"class{i}" for i in indices]
        if len(set(stems)) != len(stems):
            raise ValueError(f"{self.target}: class names {[ctx.classes[i] for i in indices]} give clashing "
                             f"file names {stems}; rename the classes")
        if self.target.suffix.lower() in TIFF_SUFFIXES:
            stem, suffix = self.target.stem, self.target.suffix
            if stem.lower().endswith(".ome"):  # keep the OME-TIFF double suffix at the end
                stem, suffix = stem[:-4], stem[-4:] + suffix
            return [self.target.with_name(f"{stem}_{s}{suffix}") for s in stems]
        return [self.target / f"{s}.tif" for s in stems]

    def _open(self, ctx: ExportContext) -> None:
        paths = self.output_paths(ctx)
        self._indices = resolve_class_indices(self.classes, ctx, [], str(self.target))
        if self.target.suffix.lower() not in TIFF_SUFFIXES:
            if self.target.exists() and not self.target.is_dir():
                raise ValueError(f"{self.target}: exists and is not a directory")
            if not self.target.exists():
                self.target.mkdir(parents=True)
                self._created_dir = self.target
        for index, path in zip(self._indices, paths):
            metadata = ome_metadata(
                name=f"{path.name}: probability of {ctx.classes[index]}", channel=ctx.classes[index],
                channel_color=ctx.palette[index],
                description=f"uniseg class probability of {ctx.classes[index]!r}: pixel value / 255",
                uniseg={"uniseg": "class_probability", "class": ctx.classes[index], "class_index": index,
                        "value_range": [0, 255], "probability_range": [0.0, 1.0], **ctx.metadata()})
            writer = StreamingPyramidTiff(
                path, ctx.height, ctx.width, reduce=reduce_mean_2x, tile=self.tile, levels=self.levels,
                compression=self.compression, photometric="minisblack", ome_metadata=metadata,
                mpp=ctx.mpp, bigtiff=self.bigtiff, maxworkers=self.maxworkers)
            self._writers.append(writer)
            writer.start()

    def _write_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray],
                    image: Optional[np.ndarray]) -> None:
        for index, writer in zip(self._indices, self._writers):
            writer.write_rows(probs[index])

    def _finish(self) -> List[PendingFile]:
        for writer in self._writers:
            writer.finish()
        return [writer.pending for writer in self._writers]

    def _abort(self) -> None:
        for writer in self._writers:
            writer.abort()
        if self._created_dir is not None:
            with contextlib.suppress(OSError):
                self._created_dir.rmdir()  # only if still empty
