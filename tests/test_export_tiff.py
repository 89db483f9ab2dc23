"""PyramidTiffMaskSink: exact level 0, label-preserving pyramid, tags, bounded memory, clean-up."""
import tracemalloc
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import tifffile

from uniseg.export.base import BandOrderError, ExportContext
from uniseg.export.ome import ome_annotations, read_uniseg_metadata
from uniseg.export.pyramid import reduce_labels_2x
from uniseg.export.tiff import PyramidTiffMaskSink

CLASSES = ("background", "tumor", "stroma", "necrosis")
PALETTE = ((0, 0, 0), (200, 30, 40), (20, 160, 90), (250, 220, 10))


def _mask(height, width, seed=0) -> np.ndarray:
    """Blocky classes plus a disc and some ignore pixels: realistic, and compressible."""
    cols = ((np.arange(width) // 37) % 3).astype(np.uint8)
    rows = ((np.arange(height) // 53) % 3).astype(np.uint8)
    mask = (rows[:, None] + cols[None, :]) % 3
    cv2.circle(mask, (width // 2, height // 3), min(height, width) // 4, 3, thickness=-1)
    rng = np.random.default_rng(seed)
    mask[rng.integers(0, 100, (height, width), dtype=np.uint8) == 0] = 255
    return mask


def _write(path, mask, band=64, ctx_kwargs=None, **kwargs):
    ctx = ExportContext(mask.shape[1], mask.shape[0], CLASSES, PALETTE, **(ctx_kwargs or {}))
    sink = PyramidTiffMaskSink(path, **kwargs)
    sink.open(ctx)
    for y in range(0, mask.shape[0], band):
        sink.write_band(y, mask[y:y + band])
    return sink.close()


def test_round_trip_levels_and_tags(tmp_path):
    mask = _mask(700, 450)
    paths = _write(tmp_path / "m.tif", mask, band=50, tile=128,
                   ctx_kwargs=dict(mpp=0.5, origin=(1000.0, 2000.0), scale=2.0))
    assert paths == [tmp_path / "m.tif"]
    with tifffile.TiffFile(paths[0]) as tif:
        series = tif.series[0]
        # 700x450 -> 350x225 -> 175x113 -> 88x57 (fits one 128 tile)
        assert [lvl.shape for lvl in series.levels] == [(700, 450), (350, 225), (175, 113), (88, 57)]
        np.testing.assert_array_equal(series.asarray(), mask)
        previous = mask
        for level in series.levels[1:]:
            reduced = level.asarray()
            if previous.shape[0] % 2:
                previous = np.concatenate([previous, previous[-1:]])
            np.testing.assert_array_equal(reduced, reduce_labels_2x(previous))
            assert set(np.unique(reduced)) <= set(np.unique(mask))  # no invented labels
            previous = reduced
            page = level.pages[0]
            assert page.subfiletype == 1 and page.is_tiled
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (128, 128)
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        colormap = page.colormap
        np.testing.assert_array_equal(colormap[:, :4].T // 257, np.asarray(PALETTE))
        meta = read_uniseg_metadata(tif)
        assert meta["uniseg"] == "label_mask" and meta["classes"] == list(CLASSES) and meta["palette"] == [list(c) for c in PALETTE]
        assert meta["origin"] == [1000.0, 2000.0] and meta["scale"] == 2.0 and meta["ignore_index"] == 255
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 0.5)  # pixels per cm at 0.5 um/px
        num, den = series.levels[1].pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 1.0)  # level 1: 1 um/px
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def _ome_element(xml: str, name: str) -> dict:
    return next(el.attrib for el in ET.fromstring(xml).iter() if el.tag.rsplit("}", 1)[-1] == name)


def test_ome_tiff_for_bio_formats(tmp_path):
    """What Bio-Formats/QuPath read: OME-XML in the first IFD, the SubIFD pyramid as one image,
    the physical pixel size in µm and the class names and colours as key-value annotations."""
    classes = CLASSES[:3] + ("Nécrose <dense> & \"wet\"",)  # non-ASCII and XML-special characters
    mask = _mask(300, 260)
    ctx = ExportContext(260, 300, classes, PALETTE, mpp=0.75, origin=(10.0, 20.0), scale=1.5)
    sink = PyramidTiffMaskSink(tmp_path / "m.tif", tile=64)
    sink.open(ctx)
    sink.write_band(0, mask)
    sink.close()
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.is_ome and len(tif.series) == 1 and len(tif.pages) == 1  # levels are SubIFDs, not pages
        assert [lvl.shape for lvl in tif.series[0].levels] == [(300, 260), (150, 130), (75, 65), (38, 33)]
        assert len(tif.pages[0].subifds) == 3
        xml = tif.ome_metadata
        assert tif.pages[0].description == xml
        meta = read_uniseg_metadata(tif)
    pixels = _ome_element(xml, "Pixels")
    assert float(pixels["PhysicalSizeX"]) == float(pixels["PhysicalSizeY"]) == 0.75
    assert pixels["PhysicalSizeXUnit"] == pixels["PhysicalSizeYUnit"] == "µm"
    assert (pixels["Type"], pixels["SizeX"], pixels["SizeY"], pixels["SizeC"]) == ("uint8", "260", "300", "1")
    assert _ome_element(xml, "Channel")["Name"] == "class"
    assert _ome_element(xml, "Image")["Name"] == "m.tif: class labels"
    maps, _ = ome_annotations(xml)
    assert maps["uniseg/classes"] == {str(i): name for i, name in enumerate(classes)}
    assert maps["uniseg/palette"] == {"0": "#000000", "1": "#c81e28", "2": "#14a05a", "3": "#fadc0a"}
    assert meta == {"uniseg": "label_mask", "classes": list(classes), "palette": [list(c) for c in PALETTE],
                    "ignore_index": 255, "origin": [10.0, 20.0], "scale": 1.5, "mpp": 0.75}


def test_no_physical_size_without_mpp(tmp_path):
    _write(tmp_path / "m.tif", _mask(40, 40), tile=16)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.is_ome
        assert "PhysicalSizeX" not in _ome_element(tif.ome_metadata, "Pixels")
        assert read_uniseg_metadata(tif)["mpp"] is None


def test_openslide_and_uniseg_read_the_mask_back(tmp_path):
    """OpenSlide (generic-tiff) sees level 0 with its mpp: it does not follow SubIFDs, so it shows
    one level; uniseg's own tifffile reader sees the whole pyramid and the OME pixel size."""
    import openslide

    from uniseg.io import open_slide

    mask = _mask(700, 450)
    path = _write(tmp_path / "m.tif", mask, band=100, tile=128, ctx_kwargs=dict(mpp=0.5))[0]
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(PALETTE)] = PALETTE
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count == 1 and slide.level_dimensions == ((450, 700),)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        rgba = np.asarray(slide.read_region((0, 0), 0, (450, 700)))
    assert (rgba[..., 3] == 255).all()
    np.testing.assert_array_equal(rgba[..., :3], lut[mask])
    with open_slide(path) as reader:
        assert reader.backend == "tifffile" and reader.mpp == (0.5, 0.5)
        assert reader.level_dimensions == [(450, 700), (225, 350), (113, 175), (57, 88)]
        np.testing.assert_array_equal(reader.read_region(0, 0, 450, 700), lut[mask])
        np.testing.assert_array_equal(reader.read_region(0, 0, 225, 350, level=1), lut[reduce_labels_2x(mask)])


def test_fixed_level_count_and_compression(tmp_path):
    mask = _mask(100, 90)
    path = _write(tmp_path / "m.tiff", mask, band=33, tile=16, levels=1, compression="lzw")[0]
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == 1 and tif.pages[0].subifds is None
        assert tif.is_ome and read_uniseg_metadata(tif)["uniseg"] == "label_mask"  # OME without a pyramid too
        assert tif.pages[0].compression == tifffile.COMPRESSION.LZW
        np.testing.assert_array_equal(tif.asarray(), mask)


def test_memory_stays_bounded(tmp_path):
    """A 9000 x 6000 mask in 256-row bands must not need memory anywhere near the mask size."""
    height, width = 9000, 6000
    mask = _mask(height, width)  # allocated before tracing: only the sink's allocations count
    ctx = ExportContext(width, height, CLASSES, PALETTE)
    sink = PyramidTiffMaskSink(tmp_path / "big.tif")
    tracemalloc.start()
    try:
        sink.open(ctx)
        for y in range(0, height, 256):
            sink.write_band(y, mask[y:y + 256])
        sink.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < height * width / 4, f"peak {peak / 1e6:.1f} MB for a {height * width / 1e6:.0f} MB mask"
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        series = tif.series[0]
        assert [lvl.shape for lvl in series.levels][-1] == (282, 188)
        np.testing.assert_array_equal(series.asarray(), mask)


def test_abort_leaves_no_file(tmp_path):
    mask = _mask(300, 100)
    sink = PyramidTiffMaskSink(tmp_path / "m.tif", tile=32)
    sink.open(ExportContext(100, 300, CLASSES, PALETTE))
    sink.write_band(0, mask[:100])
    assert not (tmp_path / "m.tif").exists()
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_out_of_order_band_raises(tmp_path):
    mask = _mask(300, 100)
    sink = PyramidTiffMaskSink(tmp_path / "m.tif", tile=32)
    sink.open(ExportContext(100, 300, CLASSES, PALETTE))
    sink.write_band(0, mask[:100])
    with pytest.raises(BandOrderError, match=r"m\.tif.*expected a band starting at row 100"):
        sink.write_band(150, mask[150:200])
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_incomplete_stream_cannot_be_closed(tmp_path):
    mask = _mask(300, 100)
    sink = PyramidTiffMaskSink(tmp_path / "m.tif", tile=32)
    sink.open(ExportContext(100, 300, CLASSES, PALETTE))
    sink.write_band(0, mask[:100])
    with pytest.raises(BandOrderError, match="100 of 300 rows"):
        sink.close()
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="lossless"):
        PyramidTiffMaskSink(tmp_path / "m.tif", compression="jpeg")
    with pytest.raises(ValueError, match=r"\.tif"):
        PyramidTiffMaskSink(tmp_path / "m.png")
    sink = PyramidTiffMaskSink(tmp_path / "m.tif", tile=100)
    with pytest.raises(ValueError, match="multiple of 16"):
        sink.open(ExportContext(10, 10, CLASSES, PALETTE))
    assert list(tmp_path.iterdir()) == []
