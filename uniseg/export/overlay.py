"""A small JPEG/PNG preview: the ROI image with the colourised mask blended on top, plus a legend.

Meant for a quick look (reports, e-mails, a thumbnail next to the slide), not for analysis. The
preview is built while bands stream in, and only the preview itself is kept in memory:

* image: each band is shrunk horizontally with area averaging (``cv2.INTER_AREA``), then its
  rows are summed into the preview row they fall in; a preview row that spans two bands is
  finished when the next band arrives. The result equals a box-filter reduction.
* labels: nearest sampling at the centre of each preview pixel (averaging labels would invent
  classes).

Pixels of ``background_index`` and ``ignore_index`` are left as the image; other pixels get
``(1 - alpha) * image + alpha * class_colour``. Without an image (bands given no ``image``) the
preview is the colourised mask alone. The legend, drawn with OpenCV to the right of the preview,
lists the classes that occur in the ROI; the whole picture fits in ``max_size`` x ``max_size``.
OpenCV's Hershey fonts only draw ASCII, so other characters in class names appear as ``?``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from .base import ExportContext, MaskSink, PathLike, PendingFile, labels_present, palette_lut

__all__ = ["OverlayPreviewSink"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.5
_PAD, _LINE, _SWATCH, _GAP = 8, 20, 14, 6
_SUFFIXES = (".jpg", ".jpeg", ".png")


def _ascii(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


def _text_width(text: str) -> int:
    (width, _), _ = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
    return width


def _fit_text(text: str, max_width: int) -> str:
    """Shorten ``text`` with '..' until it is at most ``max_width`` pixels wide."""
    if _text_width(text) <= max_width:
        return text
    while text and _text_width(text + "..") > max_width:
        text = text[:-1]
    return text + ".."


class OverlayPreviewSink(MaskSink):
    """Write a reduced-size preview of image + mask with a class legend.

    Args:
        path: ``.jpg``/``.jpeg`` or ``.png`` output.
        max_size: the preview including the legend fits in ``max_size`` x ``max_size`` pixels
            (ROIs smaller than that are not enlarged).
        alpha: opacity of the class colours over the image (0..1).
        background_index: class shown as the bare image (``None``: colour every class).
        legend: draw the legend panel.
        jpeg_quality: 1..100, for JPEG output.
    """

    def __init__(self, path: PathLike, max_size: int = 2048, alpha: float = 0.4,
                 background_index: Optional[int] = 0, legend: bool = True, jpeg_quality: int = 90):
        super().__init__()
        self.path = Path(path)
        if self.path.suffix.lower() not in _SUFFIXES:
            raise ValueError(f"{self.path}: OverlayPreviewSink writes {_SUFFIXES} files")
        if max_size < 64:
            raise ValueError(f"{self.path}: max_size must be at least 64 px, got {max_size}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{self.path}: alpha must be in [0, 1], got {alpha}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"{self.path}: jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.max_size, self.alpha, self.legend = int(max_size), float(alpha), bool(legend)
        self.background_index, self.jpeg_quality = background_index, int(jpeg_quality)

    # ------------------------------------------------------------------ life cycle
    def _open(self, ctx: ExportContext) -> None:
        if self.background_index is not None and not 0 <= self.background_index < ctx.num_classes:
            raise ValueError(f"{self.path}: background_index {self.background_index} is not a class index")
        names = [_ascii(name) for name in ctx.classes] + ["+000 more"]
        text_width = min(max(_text_width(n) for n in names), self.max_size // 3)
        self._legend_width = (2 * _PAD + _SWATCH + _GAP + text_width) if self.legend else 0
        scale = min(1.0, (self.max_size - self._legend_width) / ctx.width, self.max_size / ctx.height)
        self._size = (max(1, round(ctx.height * scale)), max(1, round(ctx.width * scale)))  # (Hp, Wp)
        hp, wp = self._size
        # nearest label sample (pixel centres) for every preview row / column
        self._sample_rows = np.minimum(((np.arange(hp) + 0.5) * ctx.height / hp).astype(np.int64), ctx.height - 1)
        self._sample_cols = np.minimum(((np.arange(wp) + 0.5) * ctx.width / wp).astype(np.int64), ctx.width - 1)
        self._labels = np.full((hp, wp), ctx.ignore_index, dtype=np.uint8)
        self._image: Optional[np.ndarray] = None
        self._has_image: Optional[bool] = None
        self._acc_row = -1
        self._acc_sum = np.zeros((wp, 3), dtype=np.float64)
        self._acc_count = 0
        self._seen = np.zeros(256, dtype=bool)

    def _write_band(self, y0: int, labels: np.ndarray, probs: Optional[np.ndarray],
                    image: Optional[np.ndarray]) -> None:
        h = labels.shape[0]
        self._seen |= labels_present(labels)
        first, last = np.searchsorted(self._sample_rows, [y0, y0 + h])
        if last > first:
            self._labels[first:last] = labels[self._sample_rows[first:last] - y0][:, self._sample_cols]
        if self._has_image is None:
            self._has_image = image is not None
            if self._has_image:
                self._image = np.zeros((*self._size, 3), dtype=np.uint8)
        elif self._has_image != (image is not None):
            raise ValueError(f"{self.path}: bands must either all carry the RGB image or none "
                             f"(band at row {y0} differs)")
        if image is not None:
            self._accumulate_image(y0, image)

    def _accumulate_image(self, y0: int, image: np.ndarray) -> None:
        ctx, (hp, wp) = self.ctx, self._size
        h = image.shape[0]
        narrow = image if wp == ctx.width else cv2.resize(image, (wp, h), interpolation=cv2.INTER_AREA)
        dest = (np.arange(y0, y0 + h) * hp) // ctx.height  # preview row of every source row
        starts = np.flatnonzero(np.diff(dest, prepend=-1))
        sums = np.add.reduceat(narrow, starts, axis=0, dtype=np.uint32)
        counts = np.diff(np.append(starts, h))
        for row, total, count in zip(dest[starts], sums, counts):
            if row != self._acc_row:
                self._flush_image_row()
                self._acc_row = int(row)
            self._acc_sum += total
            self._acc_count += int(count)

    def _flush_image_row(self) -> None:
        if self._acc_count:
            self._image[self._acc_row] = np.rint(self._acc_sum / self._acc_count).astype(np.uint8)
        self._acc_sum[:] = 0
        self._acc_count = 0

    def _finish(self) -> List[PendingFile]:
        ctx = self.ctx
        colours = palette_lut(ctx.palette)[self._labels]
        if self._has_image:
            self._flush_image_row()
            preview = self._image
            tinted = self._labels != ctx.ignore_index
            if self.background_index is not None:
                tinted &= self._labels != self.background_index
            blend = (1 - self.alpha) * preview[tinted] + self.alpha * colours[tinted]
            preview[tinted] = np.rint(blend).astype(np.uint8)
        else:
            preview = colours
        canvas = self._compose(preview)
        bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if self.path.suffix.lower() != ".png" else []
        ok, encoded = cv2.imencode(self.path.suffix.lower(), bgr, params)
        if not ok:
            raise OSError(f"{self.path}: OpenCV could not encode the preview")
        pending = PendingFile(self.path)
        try:
            pending.tmp.write_bytes(encoded.tobytes())
        except BaseException:
            pending.discard()
            raise
        return [pending]

    def _abort(self) -> None:
        self._image = None  # nothing on disk before finish(), whose file the template discards

    # ------------------------------------------------------------------ legend
    def legend_entries(self) -> List[Tuple[str, Tuple[int, int, int]]]:
        """(name, colour) of the classes the legend shows: those present, minus the untinted background."""
        ctx = self.ctx
        shown = [i for i in range(ctx.num_classes) if self._seen[i]]
        if self._has_image and self.background_index is not None:
            shown = [i for i in shown if i != self.background_index]
        return [(ctx.classes[i], tuple(ctx.palette[i])) for i in shown]

    def _compose(self, preview: np.ndarray) -> np.ndarray:
        hp, wp = preview.shape[:2]
        if not self.legend:
            return preview
        entries = self.legend_entries()
        max_lines = max(1, (self.max_size - 2 * _PAD) // _LINE)
        if len(entries) > max_lines:
            hidden = len(entries) - (max_lines - 1)
            entries = entries[: max_lines - 1] + [(f"+{hidden} more", None)]
        if not entries:
            entries = [("no classes", None)]
        height = min(self.max_size, max(hp, 2 * _PAD + len(entries) * _LINE))
        canvas = np.full((height, wp + self._legend_width, 3), 255, dtype=np.uint8)
        canvas[:hp, :wp] = preview
        x0 = wp + _PAD
        text_room = self._legend_width - 2 * _PAD - _SWATCH - _GAP
        for line, (name, colour) in enumerate(entries):
            top = _PAD + line * _LINE
            if colour is not None:
                cv2.rectangle(canvas, (x0, top), (x0 + _SWATCH - 1, top + _SWATCH - 1),
                              tuple(int(v) for v in colour), thickness=cv2.FILLED)
                cv2.rectangle(canvas, (x0, top), (x0 + _SWATCH - 1, top + _SWATCH - 1), (0, 0, 0), 1)
            cv2.putText(canvas, _fit_text(_ascii(name), text_room), (x0 + _SWATCH + _GAP, top + _SWATCH - 2),
                        _FONT, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
        return canvas
