"""Converters from public histology datasets to the uniseg on-disk layout.

Each module documents the exact source format it reads; ``tools/dataset_converters/*.py`` are the
command-line front ends. See :mod:`uniseg.datasets.converters.common` for the output layout.
"""
from .bcss import convert_bcss
from .common import ConversionError, LayoutWriter
from .consep import convert_consep
from .crag import convert_crag
from .pannuke import convert_pannuke
from .segpath import convert_segpath

__all__ = ["ConversionError", "LayoutWriter", "convert_bcss", "convert_crag", "convert_pannuke", "convert_segpath"]
__all__ += ["convert_consep"]
