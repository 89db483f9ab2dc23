"""The contract between the streaming inferencer and the files it produces.

A region of interest (ROI) can be 100k x 100k output pixels, so its label mask never exists in
memory at once: the inferencer hands finished horizontal *bands* of rows, top to bottom, to a set
of :class:`MaskSink` objects, each of which turns them into one output format. This module holds
what every sink shares:

* :class:`ExportContext`: the ROI geometry and class metadata, given once at :meth:`MaskSink.open`;
* :class:`MaskSink`: the template that validates the band stream (order, shapes, dtypes, label
  values) once for all formats and tracks the sink's state, so a format only implements
  ``_open`` / ``_write_band`` / ``_close`` / ``_abort``;
* :class:`~uniseg.utils.atomic.PendingFile` (re-exported here): "write under a temporary name,
  rename on success" for a file whose writing spans several method calls.

Two phases end a sink: :meth:`MaskSink.finish` does all the remaining writing (everything that
can fail: a full disk, a read-only folder) and leaves every output complete under a temporary
name; :meth:`MaskSink.commit` only renames. A caller publishing several sinks' outputs as one set
finishes all of them first and renames them together
(:func:`uniseg.utils.atomic.publish_together`); :meth:`MaskSink.close` is both phases for a sink
used on its own. Output files appear only when committed; :meth:`MaskSink.abort` (to be called on
any error or ``KeyboardInterrupt``) removes every temporary the sink made. Operating-system
errors while writing come out as :class:`~uniseg.utils.atomic.OutputWriteError` naming the output.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..utils.atomic import OutputWriteError, PendingFile
from ..utils.palette import Color, resolve_palette
from ..utils.typing_utils import PathLike

__all__ = ["BandOrderError", "ExportContext", "MaskSink", "OutputSink", "PendingFile", "PathLike", "labels_present", "palette_lut",
           "resolve_class_indices"]


class BandOrderError(ValueError):
    """A band arrived out of order, overlapping, with a gap, or after the last row."""


@dataclass(frozen=True)
class ExportContext:
    """Everything a sink needs to know about the ROI before the first band arrives.

    Attributes:
        width, height: ROI size in output pixels (the size of the label mask).
        classes: class names; label ``i`` is ``classes[i]``.
        palette: one RGB colour per class (``None``: :func:`uniseg.utils.palette.default_palette`).
        origin: slide coordinates (level-0 pixels) of the top-left corner of output pixel (0, 0).
        scale: level-0 pixels per output pixel (> 1 when the ROI was inferred at lower resolution).
        mpp: microns per output pixel, for resolution tags; ``None`` when unknown.
        ignore_index: label value meaning "no prediction" (outside tissue, padding); never a class.
    """

    width: int
    height: int
    classes: Sequence[str]
    palette: Optional[Sequence[Tuple[int, int, int]]] = None
    origin: Tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    mpp: Optional[float] = None
    ignore_index: int = 255

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ExportContext.{name} must be a positive integer, got {value!r}")
        classes = tuple(str(c) for c in self.classes)
        if not classes:
            raise ValueError("ExportContext.classes is empty")
        if len(classes) > 255:
            raise ValueError(f"ExportContext: {len(classes)} classes do not fit uint8 labels (max 255)")
        if len(set(classes)) != len(classes):
            raise ValueError(f"ExportContext.classes has duplicate names: {list(classes)}")
        if not 0 <= int(self.ignore_index) <= 255 or int(self.ignore_index) < len(classes):
            raise ValueError(
                f"ExportContext.ignore_index={self.ignore_index} must be in [{len(classes)}, 255] so it "
                f"cannot be mistaken for one of the {len(classes)} classes")
        if len(self.origin) != 2 or not all(np.isfinite(float(v)) for v in self.origin):
            raise ValueError(f"ExportContext.origin must be two finite numbers, got {self.origin!r}")
        if not float(self.scale) > 0 or not np.isfinite(float(self.scale)):
            raise ValueError(f"ExportContext.scale must be > 0, got {self.scale!r}")
        if self.mpp is not None and not float(self.mpp) > 0:
            raise ValueError(f"ExportContext.mpp must be > 0 or None, got {self.mpp!r}")
        # Normalise (frozen dataclass, hence object.__setattr__) so sinks can rely on plain types.
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "palette", tuple(resolve_palette(classes, self.palette)))
        object.__setattr__(self, "origin", (float(self.origin[0]), float(self.origin[1])))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "mpp", None if self.mpp is None else float(self.mpp))
        object.__setattr__(self, "ignore_index", int(self.ignore_index))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def metadata(self) -> dict:
        """JSON-serialisable description of the ROI, embedded in the outputs that can carry it."""
        return {
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "origin": list(self.origin),
            "scale": self.scale,
            "mpp": self.mpp,
        }


class OutputSink(abc.ABC):
    """The life cycle every streamed output shares, whatever it is fed (masks or cells).

    ``open(ctx)`` once; the subclass's ``write_*`` calls, whose bands cover rows ``0 .. height``
    exactly, top to bottom; then ``finish()`` (all writing; returns the complete temporaries) and
    ``commit()`` (renames them into place), or ``close()`` for both. ``abort()`` may be called at any
    time before the commit, any number of times, and leaves no file behind. A sink whose ``open`` or
    ``finish`` fails aborts itself. Operating-system errors while writing name the output.
    """

    def __init__(self) -> None:
        self._ctx: Optional[ExportContext] = None
        self._next_row = 0
        self._state = "new"
        self._pending: List[PendingFile] = []

    # ------------------------------------------------------------------ public API
    @property
    def ctx(self) -> ExportContext:
        if self._ctx is None:
            raise RuntimeError(f"{self.describe()}: sink is not open")
        return self._ctx

    def describe(self) -> str:
        """Short name used in error messages: the output path of file sinks (their ``path``), else the class."""
        path = getattr(self, "path", None)
        return str(path) if path is not None else type(self).__name__

    def open(self, ctx: ExportContext) -> None:
        self._require("new", "open()")
        if not isinstance(ctx, ExportContext):
            raise TypeError(f"{self.describe()}: open() needs an ExportContext, got {type(ctx).__name__}")
        self._ctx = ctx
        self._state = "open"
        try:
            with self._naming_write_errors():
                self._open(ctx)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> List[PendingFile]:
        """Complete every output under its temporary name (all the writing; may fail); rename nothing.

        The returned files are published by :meth:`commit`, or together with other sinks' files by
        :func:`uniseg.utils.atomic.publish_together`.
        """
        self._require("open", "finish()")
        try:
            if self._next_row != self.ctx.height:
                raise BandOrderError(
                    f"{self.describe()}: finished after {self._next_row} of {self.ctx.height} rows; "
                    "the output would be incomplete")
            with self._naming_write_errors():
                self._pending = list(self._finish())
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        return list(self._pending)

    def commit(self) -> List[Path]:
        """Rename the finished outputs into place; returns their final paths."""
        self._require("finished", "commit()")
        try:
            with self._naming_write_errors():
                paths = [pending.path if pending.done else pending.commit() for pending in self._pending]
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        return paths

    def close(self) -> List[Path]:
        """:meth:`finish` and :meth:`commit`: for a sink whose outputs are published on their own."""
        self._require("open", "close()")
        self.finish()
        return self.commit()

    def abort(self) -> None:
        """Remove every temporary; safe to call repeatedly and in any state (committed files stay)."""
        if self._state in ("closed", "aborted"):
            return
        was_active = self._state in ("open", "finished")
        self._state = "aborted"
        if was_active:
            self._abort()
            for pending in self._pending:
                pending.discard()

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _open(self, ctx: ExportContext) -> None:
        """Check options against ``ctx`` and create temporaries."""

    @abc.abstractmethod
    def _finish(self) -> List[PendingFile]:
        """Complete the outputs (all rows have arrived) under temporary names; do not commit them."""

    @abc.abstractmethod
    def _abort(self) -> None:
        """Discard temporaries; must not raise for partially opened state."""

    def _require(self, state: str, call: str) -> None:
        if self._state != state:
            raise RuntimeError(f"{self.describe()}: {call} called on a sink that is {self._state}")

    def _check_band_rows(self, y0, h: int, w: int) -> None:
        """A band continues where the previous one ended, fits the ROI and spans its full width."""
        ctx, where = self.ctx, self.describe()
        if isinstance(y0, bool) or not isinstance(y0, (int, np.integer)):
            raise TypeError(f"{where}: band y0 must be an int, got {y0!r}")
        if y0 != self._next_row:
            raise BandOrderError(
                f"{where}: bands must arrive top to bottom without gaps or overlaps; expected a band "
                f"starting at row {self._next_row}, got y0={y0}")
        if h < 1 or y0 + h > ctx.height:
            raise BandOrderError(f"{where}: band rows {y0}..{y0 + h} do not fit the ROI height {ctx.height}")
        if w != ctx.width:
            raise ValueError(f"{where}: band width {w} != ROI width {ctx.width} (bands must be full width)")

    @contextlib.contextmanager
    def _naming_write_errors(self) -> Iterator[None]:
        """Operating-system errors while writing say which output failed (not a temporary's name)."""
        try:
            yield
        except OutputWriteError:
            raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OutputWriteError(f"{self.describe()}: cannot write this output ({reason})") from exc


class MaskSink(OutputSink):
    """One output format fed band by band with class labels (life cycle: :class:`OutputSink`)."""

    #: whether ``write_band`` must receive ``probs`` (per-class probabilities)
    requires_probs: bool = False

    def write_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray] = None,
                   image: Optional[np.ndarray] = None) -> None:
        """Consume rows ``y0 .. y0 + labels.shape[0]`` of the ROI.

        Args:
            y0: first row of the band; must equal the end of the previous band.
            labels: ``uint8`` (h, W) class indices (or ``ignore_index``).
            probs: optional ``uint8`` (C, h, W) class probabilities, 0..255 meaning 0..1.
            image: optional ``uint8`` (h, W, 3) RGB pixels of the band (for previews).
        """
        self._require("open", "write_band()")
        self._check_band(y0, labels, probs, image)
        with self._naming_write_errors():
            self._write_band(int(y0), labels, probs, image)
        self._next_row = int(y0) + labels.shape[0]

    @abc.abstractmethod
    def _write_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray],
                    image: Optional[np.ndarray]) -> None:
        """Consume one validated band."""

    # ------------------------------------------------------------------ validation
    def _check_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray],
                    image: Optional[np.ndarray]) -> None:
        ctx, where = self.ctx, self.describe()
        if not isinstance(labels, np.ndarray) or labels.ndim != 2:
            raise ValueError(f"{where}: labels must be a 2-D (h, W) array, got "
                             f"{getattr(labels, 'shape', type(labels).__name__)}")
        h, w = labels.shape
        self._check_band_rows(y0, h, w)
        if labels.dtype != np.uint8:
            raise ValueError(f"{where}: labels must be uint8, got {labels.dtype}")
        present = labels_present(labels)
        present[ctx.ignore_index] = False
        bad = np.flatnonzero(present[ctx.num_classes:]) + ctx.num_classes
        if bad.size:
            raise ValueError(
                f"{where}: label values {bad[:5].tolist()} in rows {y0}..{y0 + h} are neither one of "
                f"the {ctx.num_classes} classes nor ignore_index={ctx.ignore_index}")
        if probs is not None:
            if not isinstance(probs, np.ndarray) or probs.shape != (ctx.num_classes, h, w):
                raise ValueError(f"{where}: probs must have shape {(ctx.num_classes, h, w)} (C, h, W), got "
                                 f"{getattr(probs, 'shape', type(probs).__name__)}")
            if probs.dtype != np.uint8:
                raise ValueError(f"{where}: probs must be uint8 (0..255 = 0..1), got {probs.dtype}")
        elif self.requires_probs:
            raise ValueError(f"{where}: this sink needs per-class probabilities, but the band has none")
        if image is not None:
            if not isinstance(image, np.ndarray) or image.shape != (h, w, 3) or image.dtype != np.uint8:
                raise ValueError(f"{where}: image must be uint8 of shape {(h, w, 3)}, got "
                                 f"{getattr(image, 'dtype', '?')} {getattr(image, 'shape', '?')}")


def resolve_class_indices(selection: Optional[Iterable[Union[int, str]]], ctx: ExportContext,
                          default_exclude: Sequence[Optional[int]], where: str) -> List[int]:
    """Class indices from names and/or indices; ``None`` means every class not excluded."""
    if selection is None:
        return [i for i in range(ctx.num_classes) if i not in default_exclude]
    if isinstance(selection, (str, int)):
        selection = [selection]
    indices = []
    for item in selection:
        if isinstance(item, str):
            if item not in ctx.classes:
                raise ValueError(f"{where}: unknown class {item!r}; classes are {list(ctx.classes)}")
            indices.append(ctx.classes.index(item))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < ctx.num_classes:
            indices.append(int(item))
        else:
            raise ValueError(f"{where}: class {item!r} is not a class name or an index in "
                             f"[0, {ctx.num_classes})")
    if not indices:
        raise ValueError(f"{where}: the class selection is empty")
    return sorted(set(indices))


def labels_present(labels: np.ndarray) -> np.ndarray:
    """Boolean (256,): which values 0..255 occur in a uint8 label image.

    ``np.bincount`` would first convert the band to int64 (8 bytes per pixel); OpenCV's histogram
    reads the uint8 data directly. (Its float32 counts are only used as "non-zero".)
    """
    hist = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [256], [0, 256])
    return hist.reshape(-1) > 0


def palette_lut(palette: Sequence[Color], fill: Color = (0, 0, 0)) -> np.ndarray:
    """A (256, 3) uint8 table mapping every label value to a colour (non-classes get ``fill``)."""
    lut = np.empty((256, 3), dtype=np.uint8)
    lut[:] = fill
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut
