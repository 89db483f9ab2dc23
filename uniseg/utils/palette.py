"""Class colours shared by datasets, visualisation and export."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

Color = Tuple[int, int, int]

# Distinct, colour-blind-aware first entries (background black); later classes are generated.
_BASE = [(0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
         (0, 114, 178), (213, 94, 0), (204, 121, 167), (128, 128, 128), (255, 255, 255)]


def default_palette(num_classes: int) -> List[Color]:
    """A stable palette of ``num_classes`` RGB colours (same input, same colours, every run)."""
    colors = list(_BASE[:num_classes])
    rng = np.random.default_rng(12345)
    while len(colors) < num_classes:
        colors.append(tuple(int(v) for v in rng.integers(0, 256, 3)))
    return colors


def resolve_palette(classes: Sequence[str], palette: Optional[Sequence[Sequence[int]]]) -> List[Color]:
    """Validate a configured palette against the class list, or make one."""
    if palette is None:
        return default_palette(len(classes))
    if len(palette) != len(classes):
        raise ValueError(f"palette has {len(palette)} colours for {len(classes)} classes {list(classes)}")
    out = []
    for cls, color in zip(classes, palette):
        if len(color) != 3 or not all(0 <= int(v) <= 255 for v in color):
            raise ValueError(f"palette colour for class {cls!r} must be three 0..255 values, got {color}")
        out.append(tuple(int(v) for v in color))
    return out

