"""Resample samples to the encoder's working resolution (microns per pixel).

A foundation-model encoder learned tissue at one scale (UNI: 20x, about 0.5 um/px). Datasets
scanned at 40x (0.25 um/px) or served at other magnifications show nuclei at a different size
in pixels; resampling them to the encoder's resolution matters more than any augmentation.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
from mmseg.registry import TRANSFORMS

from .seg_fields import seg_map_keys

__all__ = ["ResampleToMPP", "resize_nearest"]

_UPSCALE_INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def resize_nearest(seg: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``(height, width)``, any dtype.

    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * in / out)``: pixel centres line up
    the same way as in OpenCV's area and linear resizing, so labels stay on the resized image.
    Indexing instead of ``cv2.resize`` keeps every integer dtype (cv2 rejects int64).
    """
    out_h, out_w = size_hw
    in_h, in_w = seg.shape[:2]
    rows = np.minimum(((np.arange(out_h) + 0.5) * (in_h / out_h)).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (in_w / out_w)).astype(np.int64), in_w - 1)
    return np.ascontiguousarray(seg[rows[:, None], cols[None, :]])


@MMDET_TRANSFORMS.register_module()
@TRANSFORMS.register_module()
class ResampleToMPP(BaseTransform):
    """Rescale image and seg maps from ``results['mpp']`` to ``target_mpp`` microns per pixel.

    The scale is ``mpp / target_mpp`` (0.25 -> 0.5 um/px halves each side). Shrinking uses area
    interpolation (averages, no aliasing); enlarging uses ``upscale_interpolation``. Seg maps use
    nearest neighbour, so no new label values appear.

    Required keys: ``img``, ``mpp`` (float or None; set by the dataset). Modified keys: ``img``,
    every map in ``seg_fields``, ``img_shape``, ``mpp`` (set to ``target_mpp`` when resampled).
    Added key: ``resample_factor`` = ``(w_scale, h_scale)`` actually applied after rounding to
    whole pixels, ``(1.0, 1.0)`` when nothing was done. ``ori_shape`` is left alone, so mmseg's
    post-processing resizes predictions back to the input's size.

    Args:
        target_mpp: Working resolution in microns per pixel (UNI: 0.5).
        tolerance: Relative difference ``|mpp / target_mpp - 1|`` up to which the sample is left
            as it is (``mpp`` is then kept as given), avoiding a blurring resample for a 1% gain.
        strict: If True, a missing or None ``mpp`` is an error; otherwise the sample passes
            through unchanged.
        upscale_interpolation: ``'bicubic'`` or ``'bilinear'``, used when enlarging.
    """

    def __init__(
        self,
        target_mpp: float = 0.5,
        tolerance: float = 0.02,
        strict: bool = False,
        upscale_interpolation: str = "bicubic",
    ) -> None:
        if not _is_positive_number(target_mpp):
            raise ValueError(f"ResampleToMPP: target_mpp must be a positive number, got {target_mpp!r}")
        if not (isinstance(tolerance, numbers.Real) and 0 <= tolerance < 1):
            raise ValueError(f"ResampleToMPP: tolerance must be in [0, 1), got {tolerance!r}")
        if upscale_interpolation not in _UPSCALE_INTERPOLATIONS:
            raise ValueError(
                f"ResampleToMPP: upscale_interpolation must be one of {sorted(_UPSCALE_INTERPOLATIONS)}, "
                f"got {upscale_interpolation!r}"
            )
        self.target_mpp = float(target_mpp)
        self.tolerance = float(tolerance)
        self.strict = bool(strict)
        self.upscale_interpolation = upscale_interpolation

    def transform(self, results: Dict[str, Any]) -> Dict[str, Any]:
        src = results.get("img_path", "<image>")
        mpp = results.get("mpp")
        results["resample_factor"] = (1.0, 1.0)
        if mpp is None:
            if self.strict:
                raise ValueError(f"ResampleToMPP: {src}: no 'mpp' (microns per pixel) for this sample")
            return results
        if not _is_positive_number(mpp):
            raise ValueError(f"ResampleToMPP: {src}: 'mpp' must be a positive number, got {mpp!r}")

        factor = float(mpp) / self.target_mpp
        if abs(factor - 1.0) <= self.tolerance:
            return results

        img = results["img"]
        in_h, in_w = img.shape[:2]
        out_h = max(1, int(round(in_h * factor)))
        out_w = max(1, int(round(in_w * factor)))
        interp = cv2.INTER_AREA if factor < 1.0 else _UPSCALE_INTERPOLATIONS[self.upscale_interpolation]
        resized = cv2.resize(img, (out_w, out_h), interpolation=interp)
        if img.ndim == 3 and resized.ndim == 2:  # cv2 drops a trailing channel axis of size 1
            resized = resized[..., None]
        results["img"] = resized

        for key in seg_map_keys(results):
            seg = results[key]
            if seg.shape[:2] != (in_h, in_w):
                raise ValueError(
                    f"ResampleToMPP: {src}: seg map {key!r} has shape {seg.shape[:2]} but the image has "
                    f"{(in_h, in_w)}"
                )
            results[key] = resize_nearest(seg, (out_h, out_w))

        results["img_shape"] = (out_h, out_w)
        results["mpp"] = self.target_mpp
        results["resample_factor"] = (out_w / in_w, out_h / in_h)
        return results

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(target_mpp={self.target_mpp}, tolerance={self.tolerance}, "
            f"strict={self.strict}, upscale_interpolation={self.upscale_interpolation!r})"
        )


def _is_positive_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) > 0
    )
