"""Streaming export of segmentation results (label masks, probabilities, polygons, previews).

The large-ROI inferencer produces its result as horizontal bands, top to bottom, and passes each
band to a list of :class:`MaskSink` objects; no sink keeps the full-resolution mask of a large
ROI in memory, and every sink publishes its files only when closed (see :mod:`.base`).

Formats: :class:`IndexedPngSink` (small ROIs), :class:`PyramidTiffMaskSink` (any size, opens in
QuPath/viewers), :class:`GeoJsonSink` (QuPath annotations), :class:`OverlayPreviewSink`
(thumbnail with legend), :class:`ProbabilityMapSink` (per-class probability TIFFs);
:func:`build_sinks` creates them from format names. The TIFFs are OME-TIFF pyramids;
:func:`read_uniseg_metadata` reads uniseg's metadata back from them.
"""
from .base import BandOrderError, ExportContext, MaskSink, OutputSink
from .build import SINK_FORMATS, build_sinks
from .geojson import GeoJsonSink, mask_to_polygons
from .ome import read_uniseg_metadata
from .overlay import OverlayPreviewSink
from .png import IndexedPngSink
from .probs import ProbabilityMapSink
from .pyramid import StreamingPyramidTiff, reduce_labels_2x, reduce_mean_2x
from .tiff import PyramidTiffMaskSink

__all__ = [
    "BandOrderError", "ExportContext", "MaskSink", "OutputSink", "SINK_FORMATS", "build_sinks", "GeoJsonSink",
    "mask_to_polygons", "OverlayPreviewSink", "IndexedPngSink", "ProbabilityMapSink",
    "StreamingPyramidTiff", "reduce_labels_2x", "reduce_mean_2x", "PyramidTiffMaskSink", "read_uniseg_metadata",
]
