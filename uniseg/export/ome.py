"""OME-XML for uniseg's pyramidal TIFFs, and reading uniseg's metadata back from it.

Why OME-TIFF: Bio-Formats (and so QuPath, Fiji, OMERO) recognises a TIFF as OME-TIFF by the OME-XML
in the ImageDescription of its first IFD, whatever the file is called, and then reads the SubIFD
pyramid as one multi-resolution image with its physical pixel size. A plain TIFF with uniseg's JSON
in the description opens uncalibrated there, and without its zoomed-out levels.

What goes into the XML (through tifffile's ``OmeXml``, with ``TiffWriter(ome=True)``):

* ``Pixels/@PhysicalSizeX/Y`` in µm from the output microns per pixel, when known;
* ``Image/@Name``, ``Image/Description`` (how to read the pixel values) and ``Channel/@Name``
  (the class name for a probability map), ``Channel/@Color`` (its palette colour);
* for the label mask, ``MapAnnotation``\\ s ``uniseg/classes`` (label value -> class name) and
  ``uniseg/palette`` (label value -> ``#rrggbb``), the form OMERO and QuPath show as key-value pairs;
* a ``CommentAnnotation`` ``uniseg/metadata`` holding the JSON that uniseg's TIFFs used to carry in
  their ImageDescription (class names, palette, ignore index, slide origin and scale, mpp, kind).
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from ..version import __version__

__all__ = [
    "METADATA_NAMESPACE", "CLASSES_NAMESPACE", "PALETTE_NAMESPACE", "ome_metadata", "ome_color",
    "ome_annotations", "read_uniseg_metadata",
]

#: Annotation namespaces (relative URI references, as the schema's ``anyURI`` allows).
METADATA_NAMESPACE = "uniseg/metadata"
CLASSES_NAMESPACE = "uniseg/classes"
PALETTE_NAMESPACE = "uniseg/palette"


def ome_color(rgb: Sequence[int]) -> int:
    """OME's ``Color``: RGBA packed into a *signed* 32-bit integer (opaque)."""
    r, g, b = (int(v) & 255 for v in rgb)
    value = (r << 24) | (g << 16) | (b << 8) | 255
    return value - (1 << 32) if value >= 1 << 31 else value


def ome_metadata(*, name: str, description: str, channel: str, uniseg: Dict[str, Any],
                 channel_color: Optional[Sequence[int]] = None,
                 class_names: Optional[Sequence[str]] = None,
                 palette: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, Any]:
    """The ``metadata`` for ``tifffile.TiffWriter(ome=True).write`` of a single-channel level 0.

    The physical pixel size is added by :class:`~uniseg.export.pyramid.StreamingPyramidTiff` from
    its ``mpp``, the same number its resolution tags use.

    Args:
        name: Image name shown by viewers.
        description: one sentence on what the pixel values mean.
        channel: the channel's name.
        uniseg: uniseg's own JSON metadata, kept whole in a CommentAnnotation.
        channel_color: RGB display colour of the channel.
        class_names, palette: for label images, the label value -> class name / colour maps.
    """
    metadata: Dict[str, Any] = {
        "Creator": f"uniseg {__version__}", "Name": name, "Description": description,
        "Channel": {"Name": channel},
    }
    if channel_color is not None:
        metadata["Channel"]["Color"] = ome_color(channel_color)
    maps = []
    if class_names is not None:
        maps.append({"Namespace": CLASSES_NAMESPACE, "Value": {str(i): str(n) for i, n in enumerate(class_names)}})
    if palette is not None:
        maps.append({"Namespace": PALETTE_NAMESPACE,
                     "Value": {str(i): "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c)) for i, c in enumerate(palette)}})
    if maps:
        metadata["MapAnnotation"] = maps
    metadata["CommentAnnotation"] = {"Namespace": METADATA_NAMESPACE,
                                     "Value": json.dumps(uniseg, ensure_ascii=False)}
    return metadata


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def ome_annotations(xml: str) -> Tuple[Dict[str, Dict[str, str]], Dict[str, str]]:
    """``(maps, comments)`` of an OME-XML document, each keyed by annotation Namespace."""
    root = ET.fromstring(xml)
    maps: Dict[str, Dict[str, str]] = {}
    comments: Dict[str, str] = {}
    for element in root.iter():
        kind = _local(element.tag)
        namespace = element.get("Namespace", "")
        value = next((child for child in element if _local(child.tag) == "Value"), None)
        if value is None:
            continue
        if kind == "MapAnnotation":
            maps[namespace] = {m.get("K", ""): m.text or "" for m in value if _local(m.tag) == "M"}
        elif kind == "CommentAnnotation":
            comments[namespace] = value.text or ""
    return maps, comments


def read_uniseg_metadata(source: Union[str, Path, Any]) -> Dict[str, Any]:
    """uniseg's JSON metadata of one of its OME-TIFFs (a path or an open ``tifffile.TiffFile``)."""
    import tifffile

    if isinstance(source, (str, Path)):
        with tifffile.TiffFile(source) as tif:
            return read_uniseg_metadata(tif)
    where = getattr(source, "filename", source)
    xml = source.ome_metadata if source.is_ome else None
    if not xml:
        raise ValueError(f"{where}: not an OME-TIFF (no OME-XML in the first ImageDescription)")
    _, comments = ome_annotations(xml)
    if METADATA_NAMESPACE not in comments:
        raise ValueError(f"{where}: OME-XML has no CommentAnnotation {METADATA_NAMESPACE!r}; not written by uniseg")
    return json.loads(comments[METADATA_NAMESPACE])
