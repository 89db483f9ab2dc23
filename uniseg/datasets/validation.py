"""Checks that refuse a segmentation sample mmseg would misread, naming the file and the problem.

mmseg's loaders accept a lot without a word: ``LoadAnnotations`` casts every mask to uint8 (label 300
becomes 44) and keeps the colour channels of an RGB mask until ``grid_sampler()`` fails on them;
``LoadImageFromFile`` (OpenCV) keeps the high byte of a 16-bit image and drops alpha; a label beyond
the classes either crashes the loss at iteration 1 with a bare ``IndexError`` or, at test time, is
scored without complaint. The checks here run before that can happen, in two tiers:

- :func:`check_sample_headers` reads only the file headers (Pillow does not decode on open): the image
  is one :func:`uniseg.utils.imageio.read_rgb` would read unchanged (8-bit, no CMYK, no EXIF rotation),
  the mask is a single-channel integer image, and both have the same size. Cheap enough for every
  sample when the dataset loads.
- :func:`check_sample_pixels` decodes the mask (and the image, only if it can be transparent): every
  label is a class or the ignore index once mmseg's ``reduce_zero_label`` and ``label_map`` are
  applied, and the image is opaque. Run on the first read of each sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from uniseg.utils.imageio import check_label_readable, check_rgb_convertible, open_image, read_alpha, read_label

__all__ = ["LabelRule", "check_sample_headers", "check_sample_pixels"]

_EXIF_ORIENTATION = 0x0112
_SHOWN = 10  # offending values listed in a message


@dataclass(frozen=True)
class LabelRule:
    """Which stored mask values a dataset accepts, following mmseg 1.x's ``LoadAnnotations``.

    mmseg casts the mask to uint8, then with ``reduce_zero_label`` maps 0 to 255 and every other value
    v to v - 1 (255 stays 255), then remaps values through ``label_map``. What comes out must be a
    class index (0..K-1) or ``ignore_index``.
    """

    classes: Tuple[str, ...]
    ignore_index: int = 255
    reduce_zero_label: bool = False
    label_map: Optional[Dict[int, int]] = None
    allowed: np.ndarray = field(init=False, repr=False, compare=False)  # bool[256] over stored uint8 values

    def __post_init__(self) -> None:
        stored = np.arange(256)
        value = stored.copy()
        if self.reduce_zero_label:
            value = np.where(stored == 0, 255, stored - 1)
            value[value == 254] = 255
        if self.label_map:
            mapped = value.copy()
            for old, new in self.label_map.items():
                mapped[value == old] = new
            value = mapped
        object.__setattr__(self, "allowed", (value < len(self.classes)) | (value == self.ignore_index))

    def invalid_values(self, mask: np.ndarray) -> np.ndarray:
        """Sorted stored values of ``mask`` that are not accepted (values outside 0..255 never are)."""
        if mask.dtype == np.uint8:
            present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
        else:
            present = np.unique(mask)
        in_range = (present >= 0) & (present <= 255)
        ok = np.zeros(present.shape, bool)
        ok[in_range] = self.allowed[present[in_range]]
        return present[~ok]

    def describe(self) -> str:
        text = f"the {len(self.classes)} classes {tuple(self.classes)} and ignore_index {self.ignore_index}"
        if self.reduce_zero_label:
            text += f" (with reduce_zero_label: stored 1..{len(self.classes)} are the classes, 0 and 255 ignored)"
        if self.label_map:
            text += f" (after label_map {self.label_map})"
        return text


def check_sample_headers(img_path: str, seg_map_path: Optional[str]) -> None:
    """Refuse, from the headers only, an image or mask that would be misread or misaligned."""
    with open_image(img_path, "an image") as im:
        check_rgb_convertible(im, img_path)
        orientation = _exif_orientation(im)
        if orientation not in (1, None):
            # OpenCV (mmseg's image loader) applies the rotation, Pillow (its mask loader) does not.
            raise ValueError(f"{img_path}: EXIF orientation {orientation}: the training loader would rotate "
                             f"the image but not its mask; save the pixels upright without the tag")
        image_size = im.size
    if seg_map_path is None:
        return
    with open_image(seg_map_path, "a label mask") as mask:
        check_label_readable(mask, seg_map_path)
        if mask.size != image_size:
            raise ValueError(f"{seg_map_path}: mask is {mask.size[0]}x{mask.size[1]} (w x h) but its image "
                             f"{img_path} is {image_size[0]}x{image_size[1]}")


def _exif_orientation(im) -> int:
    """The EXIF orientation tag, from the header only.

    Pillow looks for a PNG's eXIf chunk by decoding the whole image when the chunk is not before the
    pixels; writers (Pillow, libpng users) put it before them, so only that place is checked.
    """
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    return im.getexif().get(_EXIF_ORIENTATION, 1)


def check_sample_pixels(img_path: str, seg_map_path: Optional[str], rule: LabelRule) -> None:
    """Refuse label values outside the classes and the ignore index, and images with transparent pixels."""
    with open_image(img_path, "an image") as im:
        may_be_transparent = check_rgb_convertible(im, img_path)
    if may_be_transparent:
        transparent = int((read_alpha(img_path) < 255).sum())
        if transparent:
            # mmseg's loader drops alpha and trains on the colours stored under it; inference
            # (read_rgb and the slide readers) composites on white. Refuse rather than differ.
            raise ValueError(f"{img_path}: {transparent} transparent pixels; flatten the image onto white "
                             f"(or make it opaque) before training on it")
    if seg_map_path is None:
        return
    bad = rule.invalid_values(read_label(seg_map_path))
    if bad.size:
        shown = bad[:_SHOWN].tolist() + (["..."] if bad.size > _SHOWN else [])
        wrap = " (mmseg reads masks as 8-bit: these would wrap around)" if (bad > 255).any() else ""
        raise ValueError(f"{seg_map_path}: label values {shown} are outside {rule.describe()}{wrap}")
