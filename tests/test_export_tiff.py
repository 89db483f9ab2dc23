"""PyramidTiffMaskSink: exact level 0, label-preserving pyramid, tags, bounded memory, clean-up."""
import json
import tracemalloc

import cv2
import numpy as np
import pytest
import tifffile

from uniseg.export.base import BandOrderError, ExportContext
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
        meta = json.loads(page.description)
        assert meta["classes"] == list(CLASSES) and meta["palette"] == [list(c) for c in PALETTE]
        assert meta["origin"] == [1000.0, 2000.0] and meta["scale"] == 2.0 and meta["ignore_index"] == 255
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 0.5)  # pixels per cm at 0.5 um/px
        num, den = series.levels[1].pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 1.0)  # level 1: 1 um/px
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_fixed_level_count_and_compression(tmp_path):
    mask = _mask(100, 90)
    path = _write(tmp_path / "m.tiff", mask, band=33, tile=16, levels=1, compression="lzw")[0]
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == 1 and tif.pages[0].subifds is None
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
