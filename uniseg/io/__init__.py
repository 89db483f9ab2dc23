"""Reading images, pyramidal TIFFs and whole slides by region, at the model's working resolution.

``open_slide`` picks a backend (tifffile, OpenSlide, Pillow) for a file; ``plan_read`` and
``RegionSource`` turn a level-0 region into a seam-free virtual image at a target resolution.
"""
from .factory import BACKENDS, open_slide
from .openslide_backend import OpenSlideReader, openslide_available
from .plain import PlainImageReader
from .region import MPP_TOLERANCE, ReadPlan, Region, RegionSource, parse_region, plan_read
from .slide import SlideReader
from .tiff import TiffSlideReader

__all__ = [
    "SlideReader", "open_slide", "openslide_available", "BACKENDS",
    "PlainImageReader", "TiffSlideReader", "OpenSlideReader",
    "Region", "parse_region", "ReadPlan", "plan_read", "RegionSource", "MPP_TOLERANCE",
]
