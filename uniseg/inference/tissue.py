"""A cheap tissue test for skipping empty glass in whole-slide inference.

H&E and IHC tissue is coloured; glass and background are near-white and unsaturated. A tile whose
fraction of saturated, non-white pixels is below a threshold is treated as background and never
reaches the model, which on a typical slide skips half of the tiles or more.
"""
from __future__ import annotations

import numpy as np

__all__ = ["tissue_fraction"]


def tissue_fraction(rgb: np.ndarray, saturation: float = 0.07, brightness: float = 0.92) -> float:
    """Fraction of pixels that look like tissue: HSV saturation above ``saturation`` or value below ``brightness``
    (dark pixels such as dense nuclei or pen marks count as tissue too)."""
    if rgb.size == 0:
        return 0.0
    arr = rgb.astype(np.float32) / 255.0
    mx = arr.max(axis=-1)
    mn = arr.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return float(np.mean((sat > saturation) | (mx < brightness)))
