"""Which entries of an mmcv results dict are label maps that must move with the image."""
from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["seg_map_keys"]


def seg_map_keys(results: Dict[str, Any]) -> List[str]:
    """``results['seg_fields']`` in order without repeats, plus ``gt_seg_map`` if present but not listed.

    mmseg's ``LoadAnnotations`` lists the map it loads in ``seg_fields``; a results dict built by hand (or
    by a loader that leaves ``seg_fields`` empty) may not, and a geometric transform that missed the map
    would leave labels misaligned with the image without any error.
    """
    keys = list(dict.fromkeys(results.get("seg_fields", [])))
    if "gt_seg_map" in results and "gt_seg_map" not in keys:
        keys.append("gt_seg_map")
    return keys
